"""The model registry: every model family is one :class:`ModelSpec` in a module of its own
(``gmnr/models/specs/<name>.py``), and nothing outside that module asks which model it has.

The trainer, the render stage, evaluation, the params validation and the pipeline ask the spec of
``params.model`` instead: which params sections it reads, how to build its networks and its loss,
its schedule, the weights it starts from, whether it has a viewpoint to render. Adding a model is
one new spec module (plus, when it has knobs of its own, its params section), or, from code (a
test, a plugin), :func:`register`.

The interfaces the trainer and renderer call are the Protocols below; the built-in networks and
losses satisfy them (tests/test_model_registry.py checks it).

This module and the spec modules import no torch at module level: params validation (and the
Snakefile) read the registry's names and sections without loading any network code.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:  # for annotations only: no torch import when the registry is only read
    import torch
    from torch import Tensor

    from gmnr.config import Params
    from gmnr.train.curriculum import Curriculum, Recipe


@runtime_checkable
class Generator(Protocol):
    """What training, rendering and evaluation call on every generator."""
    z_dim: int
    mapping: Any  # z [B, z_dim] (, c, truncation_psi=, update_w_avg=) -> ws [B, L, w_dim]

    def render(self, ws: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, n_planes: int | None = None,
               noise_mode: str = "const") -> dict[str, Tensor]:
        """``image`` [B * V, 3, R, R] in [-1, 1] (and ``depth`` [B * V, 1, R, R] for a 3D model)."""

    def __call__(self, z: Tensor, cam2world: Tensor, *args, **kwargs) -> dict[str, Tensor]: ...


@runtime_checkable
class MPIRenderer(Protocol):
    """A generator whose scene is an MPI: synthesised once per latent, rendered from any number of
    views (a video pays for the synthesis once). ``bake`` readies an MPI for many views (GMNR's
    texel-grid K under ``vdr: baked``; the MPI unchanged when ``baking()`` is false)."""

    def synthesize(self, ws: Tensor, n_planes: int, noise_mode: str = "const") -> dict[str, Tensor]: ...

    def render_mpi(self, mpi: dict[str, Tensor], cam2world: Tensor, intrinsics: Tensor | None = None,
                   **kwargs) -> dict[str, Tensor]: ...

    def baking(self) -> bool: ...

    def bake(self, mpi: dict[str, Tensor]) -> dict[str, Tensor]: ...


@runtime_checkable
class ViewDependentColour(Protocol):
    """A generator with a view-dependent colour mode at inference (GMNR: ``all | baked | sampled | off``)."""

    def set_inference_vdr(self, mode: str) -> Any: ...


@runtime_checkable
class TrainingLoss(Protocol):
    """The losses of one model family, as the trainer calls them every step."""

    def set_step(self, step: int, phase: Any, fade: float) -> None:
        """The schedule of ``step`` (curriculum phase, fade-in): called before each step and on resume."""

    def augment_reals(self, images: Tensor) -> Tensor:
        """The real batch as D sees it (MVCGAN's own augmentation; identity for the others)."""

    def discriminator_loss(self, real: Tensor, real_cam2world: Tensor, z: Tensor, fake_cam2world: Tensor
                           ) -> tuple[Tensor, dict]: ...

    def r1_loss(self, real: Tensor, real_cam2world: Tensor, interval: int) -> tuple[Tensor, dict]: ...

    def generator_loss(self, z: Tensor, cam2world: Tensor) -> tuple[Tensor, dict]: ...


@dataclass(frozen=True)
class LossContext:
    """What a spec's loss builder is given by the trainer."""
    G: Any
    D: Any
    prior: Any  # gmnr.train.losses.PosePrior of the model's camera
    recipe: Any  # gmnr.train.curriculum.Recipe
    autocast: Callable[[], Any]
    device: Any


def _no_pretrained(params: Params) -> str | None:
    return None


def _no_planes(params: Params) -> int | None:
    return None


def _nothing_to_prepare(G: Any, params: Params) -> None:
    return None


def _single_phase(params: Params) -> Curriculum:
    from gmnr.train.curriculum import single_phase_curriculum
    return single_phase_curriculum(params)


def _train_recipe(params: Params) -> Recipe:
    from gmnr.train.curriculum import train_recipe
    return train_recipe(params)


@dataclass(frozen=True)
class ModelSpec:
    """One model family: everything the rest of the project needs to know about it."""
    name: str
    summary: str  # one line, for help texts and docs
    # The params sections its training reads besides the common ones (seed, dataset, cameras, pack, train):
    # dvc.yaml's train params, the MLflow params of its runs and the resume check all come from this.
    sections: tuple[str, ...]
    build_generator: Callable[[Params], Any]
    build_discriminator: Callable[[Params], Any]
    build_loss: Callable[[Params, LossContext], TrainingLoss]
    curriculum: Callable[[Params], Curriculum] = _single_phase
    recipe: Callable[[Params], Recipe] = _train_recipe
    pretrained: Callable[[Params], str | None] = _no_pretrained  # the weights training starts from
    prepare: Callable[[Any, Params], None] = _nothing_to_prepare  # on G before its optimiser is built (freezing)
    planes: Callable[[Params], int | None] = _no_planes  # planes to render with at evaluation (MPI models)
    has_viewpoint: bool = True  # renders views and depth: videos, identity, pose and depth metrics
    multi_view_batches: bool = False  # its generator step renders train.views_per_latent views per latent
    extra: dict[str, Any] = field(default_factory=dict)

    def reads(self, section: str) -> bool:
        return section in self.sections


def _builtin() -> dict[str, str]:
    """The built-in families: every module of gmnr/models/specs, by file name (read without importing
    them; a module is imported when its spec is first asked for). The published four first."""
    import pkgutil

    from gmnr.models import specs
    found = sorted(m.name for m in pkgutil.iter_modules(specs.__path__) if not m.name.startswith("_"))
    first = [n for n in ("gmpi", "gmnr", "mvcgan", "stylegan2") if n in found]
    return {n: f"gmnr.models.specs.{n}" for n in (*first, *(n for n in found if n not in first))}


BUILTIN: dict[str, str] = _builtin()
_REGISTERED: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add a model family (from a test or a plugin). A name already taken raises unless ``replace``."""
    if not replace and (spec.name in BUILTIN or spec.name in _REGISTERED):
        raise ValueError(f"model '{spec.name}' is registered already")
    _REGISTERED[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    if name in BUILTIN:
        raise ValueError(f"model '{name}' is built in")
    _REGISTERED.pop(name, None)


def names() -> tuple[str, ...]:
    """Every model name ``model:`` / ``models:`` accept (no network code is imported)."""
    return (*BUILTIN, *(n for n in _REGISTERED if n not in BUILTIN))


def get(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name raises, listing the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN:
        raise KeyError(f"unknown model '{name}' (known: {', '.join(names())})")
    spec = importlib.import_module(BUILTIN[name]).SPEC
    if spec.name != name:
        raise RuntimeError(f"{BUILTIN[name]} holds the spec of '{spec.name}', not '{name}'")
    return spec


COMMON_TRAIN_PARAMS = ("seed", "cameras", "pack.resolution", "demo.pack", "train", "demo.train")


def train_params(name: str) -> list[str]:
    """The params keys a model's train stage reads, as dvc.yaml lists them: the common ones, then
    each section of the spec and its demo values."""
    own = [key for s in get(name).sections for key in (s, f"demo.{s}")]
    return [*COMMON_TRAIN_PARAMS[:4], *own, *COMMON_TRAIN_PARAMS[4:]]


def section_of(key: str) -> str:
    """The params section a dotted key belongs to (``demo.gmpi.planes_train`` -> ``gmpi``)."""
    parts = key.split(".")
    return parts[1] if parts[0] == "demo" and len(parts) > 1 else parts[0]


def params_read_by(model: str, listed: list[str]) -> list[str]:
    """Of the params keys dvc.yaml lists for a stage that trains ``model``, those the model reads.

    DVC gives every item of a ``foreach`` stage one params list (it interpolates no list per item),
    so dvc.yaml's train stage lists the sections of every model; this drops the sections of other
    models (``gmpi`` for MVCGAN). Snakemake tracks exactly these; DVC reruns the stage on the rest,
    and the trainer then finds its run finished under the params it reads and changes nothing."""
    every = {*names(), *(s for name in names() for s in get(name).sections)}  # ${item} names a model too
    mine = set(get(model).sections)
    return [k for k in listed if section_of(k) not in every or section_of(k) in mine]
