"""The training loop: short, because networks, losses, checkpoints and sampling live elsewhere.

Every random draw of step s comes from generators seeded by (seed, step, stream), and the
batch of step s is a pure function of s (`gmnr.data.dataset.sample_indices`), so a run killed
at any point and resumed from its last checkpoint produces the same weights as an
uninterrupted run, and N processes with batch b draw the same samples as one process with
batch N * b (each rank takes its slice of the global draw).
"""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch
from tqdm import tqdm

from gmnr.config import Params
from gmnr.data.dataset import PackedDataset, data_fingerprint, load_batch, sample_indices
from gmnr.models import registry
from gmnr.models.factory import build_discriminator, build_generator, resolve_architecture
from gmnr.train import checkpoint as ckpt
from gmnr.train import distributed as dist
from gmnr.train.curriculum import Phase, curriculum_from_params, default_batch_per_gpu, recipe_from_params
from gmnr.train.losses import PosePrior
from gmnr.train.samples import grid_cameras, grid_latents, render_grid

STREAM_Z_D, STREAM_POSE_D, STREAM_Z_G, STREAM_POSE_G, STREAM_NOISE = range(5)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2 ** 63))


def batch_per_gpu(params: Params) -> int:
    """The batch of a single-phase run (GMPI, GMNR); curricula set theirs per phase."""
    return default_batch_per_gpu(params)


def _global_draw(n_total: int, rank: int, n_rank: int, fn):
    """Draw for the whole global batch, keep this rank's slice (rank-count independent)."""
    return fn(n_total)[rank * n_rank:(rank + 1) * n_rank]


def _ema_beta(params: Params, total_batch: int, step: int) -> float:
    """The EMA's decay at (0-based) ``step``: torch_ema's ``min(decay, (1 + n) / (10 + n))`` after its
    n-th update (GMPI, GMNR and pi-GAN average their generators with torch_ema, decay 0.999), or,
    with ``ema_decay`` null, StyleGAN2's half-life of ``ema_kimg`` thousand images."""
    t = params.train
    if t.ema_decay is not None:
        n = step + 1
        return min(t.ema_decay, (1 + n) / (10 + n))
    if t.ema_kimg <= 0:
        return 0.0
    return 0.5 ** (total_batch / (t.ema_kimg * 1000.0))


def _clip(parameters, max_norm: float | None) -> torch.Tensor:
    params = [p for p in parameters if p.grad is not None]
    if max_norm is None:
        return torch.norm(torch.stack([p.grad.norm() for p in params])) if params else torch.tensor(0.0)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


class Trainer:
    def __init__(self, params: Params, data_dir: Path, run_dir: Path, info: dist.DistInfo,
                 data_print: str | None = None):
        params = resolve_architecture(params)  # null gmpi sizes: the pretrained file's own; what checkpoints record
        self.params, self.info, self.run_dir = params, info, Path(run_dir)
        t = params.train
        torch.set_num_threads(t.threads)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=info.device.type == "cuda")
            torch.backends.cudnn.benchmark = False
        self.device = info.device
        self.spec = registry.get(params.model)
        self.curriculum = curriculum_from_params(params)
        self.recipe = recipe_from_params(params)
        self.phase: Phase = self.curriculum.phase_at(0)
        self.batch = self.phase.batch_per_gpu
        self.total_batch = self.batch * info.world_size
        self.dataset = PackedDataset(data_dir, params.training_resolution())
        self.data_fingerprint = data_print or data_fingerprint(data_dir)  # recorded with every checkpoint
        torch.manual_seed(params.seed)  # initial weights: identical on every rank
        self.G = build_generator(params).to(self.device).train()
        self.D = build_discriminator(params).to(self.device).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.spec.prepare(self.G, params)  # e.g. GMPI's frozen mapping: out of the optimiser
        interval = self.recipe.r1_interval
        self.d_ratio = interval / (interval + 1) if interval > 1 else 1.0  # lazy regularisation (StyleGAN2, App. B)
        self.opt_G = torch.optim.Adam([p for p in self.G.parameters() if p.requires_grad], lr=self.phase.lr_g,
                                      betas=tuple(t.betas))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=self.phase.lr_d * self.d_ratio,
                                      betas=tuple(b ** self.d_ratio for b in t.betas))
        cam = params.model_camera()  # the generator's own camera (MVCGAN's differs from the dataset's)
        self.prior = PosePrior(cam.yaw_std, cam.pitch_std, cam.truncation, cam.radius, tuple(cam.center))
        use_amp = t.amp and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
        self.loss: registry.TrainingLoss = self.spec.build_loss(params, registry.LossContext(
            self.G, self.D, self.prior, self.recipe, self.autocast, self.device))
        self.step = 0
        self.mlflow_run_id: str | None = None

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(), "rng": ckpt.rng_state(),
                "config": self.params.model_dump(mode="json"), "model": self.params.model,
                "mlflow_run_id": self.mlflow_run_id or "", "data_fingerprint": self.data_fingerprint}

    def resume(self) -> Path | None:
        """Continue from the latest checkpoint when it was written by a run of these params (a killed
        or extended run). Checkpoints of other params (the pipeline reran train because a param
        changed) are moved to ``checkpoints/stale-<time>/`` and training starts afresh."""
        folder = self.run_dir / "checkpoints"
        if self.info.is_main:
            ckpt.clean_orphans(self.run_dir)  # temporaries of a killed run
        # The newest checkpoint that is whole; damaged ones are reported and moved aside.
        path, state = ckpt.newest_valid(folder, self.device, {"G": self.G, "D": self.D, "G_ema": self.G_ema},
                                        {"opt_G": self.opt_G, "opt_D": self.opt_D}, self.info.is_main,
                                        model=self.params.model)
        if path is None:
            return None
        if state.get("model") != self.params.model:
            raise RuntimeError(f"{path} holds a '{state.get('model')}' model, params say '{self.params.model}'")
        changed = changed_training_params(state.get("config", {}), self.params)
        why = ""
        if changed:
            why = f"a run of other params ({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})"
        elif state.get("data_fingerprint", self.data_fingerprint) != self.data_fingerprint:
            # (a checkpoint written before fingerprints were recorded cannot tell: it is resumed)
            why = f"a run on other data (the packed set in {self.dataset.folder} has changed since)"
        elif int(state["step"]) > self.params.train.steps:
            # A longer run is another run: resuming it would label its weights with the lower step count.
            why = (f"a run past train.steps (step {int(state['step'])}, train.steps is now "
                   f"{self.params.train.steps})")
        if why:
            if self.info.is_main:
                stale = ckpt.move_aside(folder)
                print(f"gmnr train: {folder} holds {why}; moved it to {stale}, training from the start", flush=True)
            dist.barrier(self.info)
            return None
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.mlflow_run_id = state.get("mlflow_run_id") or None
        self.enter_phase(self.step)
        return path

    def init_pretrained(self) -> dict | None:
        """Start G (and its EMA) and D from the weights the model's spec names (GMPI, GMNR and the
        2D backbone: ``gmpi.pretrained``, the StyleGAN2 weights; MVCGAN trains from scratch, as
        published). Returns the load reports, or None when there is nothing to load."""
        source = self.spec.pretrained(self.params)
        if not source:
            return None
        from gmnr.data.download import resolve_weights
        from gmnr.models.pretrained import init_from_pretrained
        path = resolve_weights(source, Path(self.params.paths.downloads) / "weights")
        report = init_from_pretrained(self.G, self.D, path)
        self.G_ema.load_state_dict(self.G.state_dict())
        return report

    # -- curriculum -----------------------------------------------------------------------------
    def enter_phase(self, step: int) -> Phase:
        """Apply the curriculum phase of ``step``: batch, learning rates (also after an optimizer state was
        loaded, which carries the lr it was saved with) and the loss's per-step schedule."""
        phase = self.curriculum.phase_at(step)
        self.phase, self.batch = phase, phase.batch_per_gpu
        self.total_batch = self.batch * self.info.world_size
        for group in self.opt_G.param_groups:
            group["lr"] = phase.lr_g
        for group in self.opt_D.param_groups:
            group["lr"] = phase.lr_d * self.d_ratio
        self.loss.set_step(step, phase, self.curriculum.fade(step))  # phase-dependent loss/model state
        return phase

    def _real_batch(self, step: int) -> dict[str, torch.Tensor]:
        idx = sample_indices(step, self.info.rank, self.info.world_size, self.batch, len(self.dataset), self.params.seed)
        real = load_batch(self.dataset, idx, self.device)
        res = self.phase.resolution
        if real["image"].shape[-1] != res:  # a curriculum phase below the packed resolution
            real["image"] = torch.nn.functional.interpolate(real["image"], size=(res, res), mode="bilinear",
                                                            align_corners=False, antialias=True)
        return real

    # -- one step -------------------------------------------------------------------------------
    def _draws(self, step: int):
        seed, n, b, r = self.params.seed, self.total_batch, self.batch, self.info.rank
        z_dim, views = self.G.z_dim, self.recipe.views_per_latent
        dev = self.device

        def z(stream):
            return _global_draw(n, r, b, lambda m: torch.randn(m, z_dim, generator=step_generator(seed, step, stream))).to(dev)

        def cams(stream, per):
            return _global_draw(n * per, r, b * per,
                                lambda m: self.prior.sample(m, step_generator(seed, step, stream), dev))
        return z(STREAM_Z_D), cams(STREAM_POSE_D, 1), z(STREAM_Z_G), cams(STREAM_POSE_G, views)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        recipe = self.recipe
        phase = self.enter_phase(step)
        torch.manual_seed(step_generator(self.params.seed, step, STREAM_NOISE).initial_seed() + self.info.rank)
        real = self._real_batch(step)
        real["image"] = self.loss.augment_reals(real["image"])  # a model's own real-image augmentation
        z_d, cam_d, z_g, cam_g = self._draws(step)
        stats: dict[str, torch.Tensor] = {"curriculum_phase": torch.tensor(float(phase.index)),
                                          "resolution": torch.tensor(float(phase.resolution))}

        # Discriminator: main loss, and lazy R1 every r1_interval steps.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        loss_d, s = self.loss.discriminator_loss(real["image"], real["cam2world"], z_d, cam_d)
        loss_d.backward()
        stats.update(s)
        if step % recipe.r1_interval == 0 and recipe.r1_gamma > 0:
            loss_r1, s = self.loss.r1_loss(real["image"], real["cam2world"], recipe.r1_interval)
            loss_r1.backward()
            stats.update(s)
        dist.average_gradients(self.D.parameters(), self.info)
        stats["grad_norm_D"] = _clip(self.D.parameters(), recipe.grad_clip)
        self.opt_D.step()

        # Generator: worst of N views per latent.
        self.D.requires_grad_(False)
        self.G.requires_grad_(True)
        self.opt_G.zero_grad(set_to_none=True)
        loss_g, s = self.loss.generator_loss(z_g, cam_g)
        loss_g.backward()
        stats.update(s)
        dist.average_gradients(self.G.parameters(), self.info)
        stats["grad_norm_G"] = _clip(self.G.parameters(), recipe.grad_clip)
        self.opt_G.step()

        dist.average_buffers(self.G, self.info)
        with torch.no_grad():  # EMA of the generator (buffers such as w_avg are copied)
            beta = _ema_beta(self.params, self.total_batch, step)
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.lerp_(p, 1 - beta)
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        return {k: dist.all_mean(v.float(), self.info) for k, v in stats.items()}

    # -- outputs --------------------------------------------------------------------------------
    def save_grid(self, name: str) -> Path:
        from gmnr.data.images import write_png_atomic
        t, cam = self.params.train, self.params.model_camera()
        grid = render_grid(self.G_ema, grid_latents(t.grid_latents, self.G.z_dim, self.device),
                           grid_cameras(t.grid_views, cam.sweep_stds() * cam.yaw_std, cam.radius, cam.center, self.device))
        path = self.run_dir / "samples" / f"{name}.png"
        write_png_atomic(path, grid)
        return path

    def save_final(self) -> Path:
        from gmnr.io import atomic_write
        final = {"G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(),  # D: to start another run from
                 "config": self.params.model_dump(mode="json"),
                 "model": self.params.model, "step": self.step, "mlflow_run_id": self.mlflow_run_id or "",
                 "data_fingerprint": self.data_fingerprint}
        return atomic_write(self.run_dir / "final.pt", lambda tmp: torch.save(final, tmp))


# Params that change how a run is executed or recorded, not what it computes: a checkpoint written
# under other values of these is resumed. Any other difference in what training reads starts afresh.
RESUMABLE_KEYS = frozenset({"train.steps", "train.device", "train.checkpoint_every", "train.keep_last",
                            "train.sample_every", "train.log_every", "train.threads", "train.grid_latents",
                            "train.grid_views"})


def changed_training_params(config: dict, params: Params) -> list[str]:
    """The keys (dotted) that training reads whose value in a checkpoint's ``config`` differs from
    ``params``, less :data:`RESUMABLE_KEYS`. A key the checkpoint does not record was added to the
    schema after it was written; when ``params`` holds that key's schema default (what the code did
    before the key existed) it is no difference."""
    from gmnr.config import flatten
    from gmnr.pipeline_spec import stage_sections
    sections = ("dataset", *stage_sections(f"train@{params.model}", params))  # what dvc.yaml says it reads
    ours = flatten({k: v for k, v in params.model_dump(mode="json").items() if k in sections})
    theirs = flatten({k: v for k, v in config.items() if k in sections})
    return sorted(k for k in ours.keys() | theirs.keys()
                  if k not in RESUMABLE_KEYS and ours.get(k, "<absent>") != theirs.get(k, "<absent>")
                  and not (k not in theirs and ours[k] == schema_default(k)))


_NO_DEFAULT = object()


def schema_default(dotted: str):
    """The JSON value of the default :class:`Params` gives the dotted key (``mvcgan.photometric_on``), or a
    marker equal to nothing when it has none of its own (a required field, a key inside a dict of sections)."""
    import pydantic
    model = Params
    *parents, leaf = dotted.split(".")
    for part in parents:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel)):
            return _NO_DEFAULT
        model = field.annotation
    field = model.model_fields.get(leaf)
    if field is None or field.is_required():
        return _NO_DEFAULT
    return pydantic.TypeAdapter(field.annotation).dump_python(field.get_default(call_default_factory=True), mode="json")


def _renew_times(run_dir: Path) -> None:
    """Give the finished run's outputs (final.pt, train.json, samples/) the time of this rerun, bytes
    untouched: an engine that reran the stage (its inputs are newer than the outputs) must find them
    newer than those inputs, or Snakemake would rerun it (deleting samples/ first) next time."""
    import os
    for path in (run_dir / "final.pt", run_dir / "train.json", *sorted((run_dir / "samples").glob("*")),
                 run_dir / "samples"):
        if path.exists():
            os.utime(path)


def finished_run(run_dir: Path, params: Params, data_dir: Path, data_print: str | None = None) -> dict | None:
    """The summary (train.json) of the finished run in ``run_dir`` when its ``final.pt`` was trained
    on the packed set in ``data_dir`` as it is now (:func:`data_fingerprint`) with these params, as far
    as training reads them (:func:`changed_training_params`), to ``train.steps``; None when there is
    none or it differs. ``data_print``: the set's fingerprint when the caller has it already."""
    import json
    final, summary = Path(run_dir) / "final.pt", Path(run_dir) / "train.json"
    if not (final.is_file() and summary.is_file()):
        return None
    try:
        state = ckpt.load_checkpoint(final, "cpu")
        recorded = json.loads(summary.read_text())
    except Exception:  # unreadable: train as usual, which reports or replaces it
        return None
    same = (state.get("model") == params.model and int(state.get("step", -1)) == params.train.steps
            and recorded.get("step") == params.train.steps
            and state.get("data_fingerprint") == (data_print or data_fingerprint(data_dir))
            and not changed_training_params(state.get("config", {}), params))
    return recorded if same else None


def model_sections(model: str) -> tuple[str, ...]:
    """The params sections a model family reads (its spec's: GMNR and the 2D backbone build on GMPI's)."""
    return registry.get(model).sections


def train(params: Params, data_dir: Path, run_dir: Path, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train (or resume) ``params.model`` on the packed set in ``data_dir``; outputs in ``run_dir``.

    ``stop_after`` ends the process after that many steps of this invocation (tests use it
    to interrupt a run at a known point)."""
    from gmnr.io import write_json
    from gmnr.tracking import stage_run

    info = dist.init(params.train.device)
    data_print = data_fingerprint(data_dir)  # read once: the finished-run check and the checkpoints use it
    done = finished_run(run_dir, resolve_architecture(params), data_dir, data_print)
    if done is not None:
        # DVC reruns a train stage when any param it lists changes (its params lists cannot differ per model:
        # dvc.yaml), e.g. a GMPI knob for MVCGAN. What this model reads is unchanged: keep its outputs as
        # they are, byte for byte, so DVC skips its render and evaluation.
        if info.is_main:
            print(f"gmnr train: {run_dir / 'final.pt'} is this run, finished (step {done['step']}); "
                  f"no param {params.model} reads has changed: nothing to do", flush=True)
            _renew_times(run_dir)
        dist.shutdown()
        return done
    trainer = Trainer(params, data_dir, run_dir, info, data_print)
    resumed = trainer.resume()
    pretrained = None if resumed else trainer.init_pretrained()
    t = params.train
    with stage_run("train", params, {"resumed_from": str(resumed or "")}, trainer.mlflow_run_id,
                   enabled=info.is_main) as run:
        trainer.mlflow_run_id = run.run_id or trainer.mlflow_run_id
        if pretrained:
            run.log_dict(pretrained, "pretrained_report.json")
        bar = tqdm(total=t.steps, initial=trainer.step, desc=f"train {params.model}", unit="step",
                   disable=not (progress and info.is_main))
        history: dict[str, float] = {}
        steps_this_run = 0
        while trainer.step < t.steps and (stop_after is None or steps_this_run < stop_after):
            start = time.perf_counter()
            stats = trainer.train_step(trainer.step)
            trainer.step += 1
            steps_this_run += 1
            seconds = time.perf_counter() - start
            history = {k: float(v) for k, v in stats.items()}
            ckpt.check_finite(history, trainer.step, run_dir)  # NaN/inf: stop before saving anything of it
            history.update(sec_per_step=seconds, images_per_sec=trainer.total_batch / seconds)
            if info.is_main and (trainer.step % t.log_every == 0 or trainer.step == t.steps):
                run.log_metrics(history, step=trainer.step)
                bar.set_postfix(loss_G=f"{history['loss_G']:.3f}", loss_D=f"{history['loss_D']:.3f}")
            if info.is_main and (trainer.step % t.sample_every == 0 or trainer.step == t.steps):
                run.log_artifact(trainer.save_grid(f"step-{trainer.step:06d}"), "samples")
            if trainer.step % t.checkpoint_every == 0 or trainer.step == t.steps:
                if info.is_main:
                    ckpt.save_checkpoint(run_dir / "checkpoints", trainer.step, trainer.state(), t.keep_last)
                dist.barrier(info)
            bar.update(1)
        bar.close()
        summary = {"stage": "train", "model": params.model, "step": trainer.step, "steps": t.steps,
                   "world_size": info.world_size, "batch_per_gpu": trainer.batch, "resumed_from": str(resumed or ""),
                   **{k: v for k, v in history.items()}}
        if info.is_main and trainer.step >= t.steps:
            final = trainer.save_final()
            grid = trainer.save_grid("final")
            run.log_artifact(grid)
            run.set_tags({"final_checkpoint": str(final.resolve())})
            summary["final_checkpoint"] = str(final)
            run.log_artifact(write_json(summary, run_dir / "train.json"))  # holds the checkpoint path
    dist.shutdown()
    return summary
