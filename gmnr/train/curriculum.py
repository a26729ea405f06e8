"""Training schedules: which phase (resolution, batch, learning rates) a step belongs to, and the
per-model regularisation recipe the trainer applies.

A curriculum is a list of phases with increasing start steps; the phase of step s is the last one
whose start <= s, so it is a pure function of the step (a resumed run re-enters the right phase).
("Phase", not "stage": a stage is a step of the pipeline.)
Each model's spec (gmnr.models.specs) chooses its schedule: GMPI and GMNR train in one phase
built from ``train`` (:func:`single_phase_curriculum`); MVCGAN's phases come from
``mvcgan.curriculum`` (progressive growing, pi-GAN style).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from gmnr.config import Params


@dataclass(frozen=True)
class Phase:
    index: int
    start: int
    resolution: int  # output and real-image resolution
    ray_resolution: int | None  # volume-rendered rays per side (None: no ray renderer)
    batch_per_gpu: int
    lr_g: float
    lr_d: float
    pose_weight: float = 0.0
    grows: bool = False  # True when the output resolution is larger than the previous phase's


@dataclass(frozen=True)
class Curriculum:
    phases: tuple[Phase, ...]
    fade_steps: int = 0

    def __post_init__(self):
        starts = [s.start for s in self.phases]
        if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"curriculum phases need starts 0 < ... strictly increasing, got {starts}")

    def phase_at(self, step: int) -> Phase:
        return self.phases[bisect.bisect_right([s.start for s in self.phases], step) - 1]

    def fade(self, step: int) -> float:
        """Fade-in of the phase's output resolution: 0 -> 1 over ``fade_steps`` from the first step
        at that resolution, 1 without ``fade_steps``. As in pi-GAN / MVCGAN (``alpha = (step -
        last_upsample_step) / fade_steps``), the first phase fades in too: its discriminator starts
        on the half-resolution path."""
        if self.fade_steps <= 0:
            return 1.0
        resolution = self.phase_at(step).resolution
        since = min(s.start for s in self.phases if s.resolution == resolution and s.start <= step)
        return min(1.0, (step - since) / self.fade_steps)


@dataclass(frozen=True)
class Recipe:
    """Regularisation and sampling settings the trainer applies, per model family."""
    r1_gamma: float
    r1_interval: int
    grad_clip: float | None
    views_per_latent: int


def default_batch_per_gpu(params: Params) -> int:
    if params.train.batch_per_gpu:
        return params.train.batch_per_gpu
    return 8 if params.training_resolution() <= 256 else 4  # the published GMPI setting


def single_phase_curriculum(params: Params) -> Curriculum:
    """One phase from ``train`` at the packed resolution (GMPI, GMNR, the 2D backbone)."""
    t = params.train
    res = params.training_resolution()
    return Curriculum((Phase(0, 0, res, None, default_batch_per_gpu(params), t.lr_g, t.lr_d),))


def train_recipe(params: Params, views_per_latent: int | None = None) -> Recipe:
    """The recipe of ``train`` (R1, clipping, views per latent: ``views_per_latent`` overrides it)."""
    t = params.train
    return Recipe(t.r1_gamma, t.r1_interval, t.grad_clip,
                  t.views_per_latent if views_per_latent is None else views_per_latent)


def curriculum_from_params(params: Params) -> Curriculum:
    """The schedule of ``params.model`` (its spec's)."""
    from gmnr.models.registry import get
    return get(params.model).curriculum(params)


def recipe_from_params(params: Params) -> Recipe:
    """The regularisation recipe of ``params.model`` (its spec's)."""
    from gmnr.models.registry import get
    return get(params.model).recipe(params)
