"""Typed parameters: one schema for params.yaml, used by the CLI and by the Snakefile.

The JSON schema in ``workflow/schemas/params.schema.json`` is generated from these models
(``gmnr schema --write``); a test fails when the two drift.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.json"

DatasetName = Literal["demo", "ffhq256", "ffhq512", "ffhq1024", "afhqcat", "metfaces", "celebahq", "afhqv2"]
ModelName = Literal["gmpi", "gmnr"]  # mvcgan joins when it lands
CameraFamily = Literal["ffhq", "metfaces", "afhq"]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ParamsError(ValueError):
    """A params problem, already phrased as one line naming the key and what was expected."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Strict):
    raw: str = "data/raw"
    interim: str = "data/interim"
    processed: str = "data/processed"
    downloads: str = "data/downloads"
    reports: str = "reports"
    runs: str = "runs"


class Camera(Strict):
    fov_deg: float = Field(gt=0, lt=180, description="full field of view across the image, degrees")
    radius: PositiveFloat = Field(description="distance from the camera to the look-at point")
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    depth_range: tuple[PositiveFloat, PositiveFloat]
    yaw_std: float = Field(ge=0, description="pose prior, radians")
    pitch_std: float = Field(ge=0, description="pose prior, radians")
    truncation: PositiveFloat = Field(description="pose prior truncation, in standard deviations")

    @model_validator(mode="after")
    def _near_before_far(self):
        if not self.depth_range[0] < self.depth_range[1]:
            raise ValueError(f"depth_range must be [near, far] with near < far, got {list(self.depth_range)}")
        return self


class Download(Strict):
    from_dir: str | None = None
    retries: Annotated[int, Field(ge=0, le=100)] = 5
    timeout_s: PositiveFloat = 60.0


class Synth(Strict):
    count: PositiveInt = 200
    resolution: Annotated[int, Field(ge=32, le=2048)] = 256
    roll_std: Annotated[float, Field(ge=0, le=0.5)] = 0.03
    threads: PositiveInt = 2


class Landmarks(Strict):
    min_confidence: Annotated[float, Field(ge=0, le=1)] = 0.9
    min_face_size: Annotated[int, Field(ge=8)] = 20
    batch_size: PositiveInt = 16
    export_txt: bool = True


class Pose(Strict):
    backend: Literal["builtin", "deep3dfacerecon"] = "builtin"
    deep3dfacerecon_root: str | None = None
    max_reprojection_iod: PositiveFloat = 0.08
    shift_sigma_iod: PositiveFloat = 0.05
    keypoint_sigma_iod: PositiveFloat = 0.04


class Pack(Strict):
    resolution: Annotated[int, Field(ge=16, le=2048)] | None = Field(
        None, description="training resolution; null = the dataset's published resolution")
    max_abs_yaw_deg: Annotated[float, Field(gt=0, le=180)] = 90.0


def _power_of_two(n: int) -> int:
    if n < 4 or n & (n - 1):
        raise ValueError(f"must be a power of two >= 4, got {n}")
    return n


PowerOfTwo = Annotated[int, AfterValidator(_power_of_two)]


class GMPI(Strict):
    """Generator sizes (published GMPI values); the discriminator shares channel_base/max."""
    z_dim: PositiveInt = 512
    w_dim: PositiveInt = 512
    mapping_layers: PositiveInt = 8
    channel_base: PositiveInt = 32768
    channel_max: PositiveInt = 512
    planes_train: Annotated[int, Field(ge=2)] = 32
    planes_eval: Annotated[int, Field(ge=2)] = 96
    alpha_max_res: PowerOfTwo = 256
    mbstd_group_size: PositiveInt = 4


class GMNR(Strict):
    """GMNR's additions to GMPI (published settings); each switch is an ablation row."""
    vdr: bool = Field(True, description="alpha-VdR view-dependent colour on/off")
    vdr_fraction: Annotated[float, Field(ge=0, le=1)] = 0.6
    vdr_threshold: Annotated[float, Field(ge=0, lt=1)] = Field(
        1e-4, description="a (plane, pixel) pair is eligible when its compositing weight exceeds this")
    pos_freqs: PositiveInt = 10
    depth_freqs: PositiveInt = 8
    dir_freqs: list[PositiveFloat] = Field(default_factory=lambda: [1.0, 2.0, 4.0], description="times pi/2")
    k_hidden: PositiveInt = 784
    k_layers: PositiveInt = 3
    h_hidden: PositiveInt = 64
    h_layers: PositiveInt = 2
    zero_init: bool = Field(False, description="start alpha-VdR as an exact no-op (fine-tuning from GMPI)")
    consistency_weight: Annotated[float, Field(ge=0)] = 0.5
    consistency_view: Literal["mirrored", "prior"] = "mirrored"


class Train(Strict):
    steps: PositiveInt = 5000
    gpus: Annotated[int, Field(ge=0)] = Field(0, description="processes per node under torchrun; 0 or 1 = one process")
    batch_per_gpu: PositiveInt | None = Field(None, description="null: 8 at <= 256 px, 4 above (published)")
    lr_g: PositiveFloat = 0.002
    lr_d: PositiveFloat = 0.002
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.0, 0.9)
    grad_clip: PositiveFloat | None = 10.0
    ema_kimg: Annotated[float, Field(ge=0)] = 10.0
    r1_gamma: Annotated[float, Field(ge=0)] = 10.0
    r1_interval: PositiveInt = 16
    views_per_latent: PositiveInt = 4
    noise_mode: Literal["random", "const", "none"] = "random"
    pretrained: str | None = Field(None, description="weights registry name or .pkl path; null = from scratch")
    amp: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    checkpoint_every: PositiveInt = 500
    keep_last: PositiveInt = 3
    sample_every: PositiveInt = 500
    log_every: PositiveInt = 10
    grid_latents: PositiveInt = 4
    grid_views: PositiveInt = 5
    threads: PositiveInt = 2


class Render(Strict):
    seeds: PositiveInt = 4
    frames: PositiveInt = 48
    fps: PositiveInt = 24


class Params(Strict):
    dataset: DatasetName = "demo"
    model: ModelName = "gmpi"
    seed: Annotated[int, Field(ge=0)] = 0
    paths: Paths = Paths()
    cameras: dict[CameraFamily, Camera]
    download: Download = Download()
    synth: Synth = Synth()
    landmarks: Landmarks = Landmarks()
    pose: Pose = Pose()
    pack: Pack = Pack()
    gmpi: GMPI = GMPI()
    gmnr: GMNR = GMNR()
    train: Train = Train()
    render: Render = Render()
    demo: dict[Literal["pack", "gmpi", "gmnr", "train"], dict[str, Any]] = Field(
        default_factory=dict, description="values that replace the ones above when dataset is demo")

    @model_validator(mode="after")
    def _all_camera_families(self):
        missing = sorted(set(CameraFamily.__args__) - set(self.cameras))
        if missing:
            raise ValueError(f"cameras must define every family; missing {missing}")
        return self

    # Derived locations: every stage reads and writes below these, per dataset.
    def raw_dir(self) -> Path:
        return Path(self.paths.raw) / self.dataset

    def interim_dir(self) -> Path:
        return Path(self.paths.interim) / self.dataset

    def processed_dir(self) -> Path:
        return Path(self.paths.processed) / self.dataset

    def reports_dir(self) -> Path:
        return Path(self.paths.reports) / self.dataset

    def run_dir(self) -> Path:
        return Path(self.paths.runs) / self.dataset / self.model

    def camera_family(self) -> str:
        if self.dataset == "demo":
            return "ffhq"
        from gmnr.data.registry import get_dataset
        return get_dataset(self.dataset).camera_family

    def camera(self) -> Camera:
        return self.cameras[self.camera_family()]

    def training_resolution(self) -> int:
        if self.pack.resolution is not None:
            return self.pack.resolution
        if self.dataset == "demo":
            return self.synth.resolution
        from gmnr.data.registry import get_dataset
        entry = get_dataset(self.dataset)
        return entry.resize_to or entry.resolution


def _format_error(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<top level>"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'"
    if kind == "missing":
        return f"missing key '{key}'"
    got = err.get("input")
    got_text = "" if isinstance(got, (dict, list)) and len(repr(got)) > 60 else f" (got {got!r})"
    return f"'{key}': {err['msg']}{got_text}"


def _validate_model(data: dict[str, Any], source: str) -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_format_error(e)}" for e in exc.errors(include_url=False)]
        raise ParamsError("; ".join(lines)) from None


def validate(data: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping as it stands; raise :class:`ParamsError`, one line for all problems."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return _validate_model(data, source)


def resolve(data: dict[str, Any], overrides: list[str] | None = None, source: str = "params") -> Params:
    """params.yaml data -> validated params, in order of precedence (last wins):

    1. the values in the file (the published settings);
    2. when the dataset is ``demo``, the ``demo`` section's values (sizes that fit a laptop);
    3. ``KEY=VALUE`` overrides (``-S`` on the CLI, ``--config`` in Snakemake).
    """
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    overrides = list(overrides or [])
    dataset = data.get("dataset")
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["dataset"]:
            dataset = value
    merged = json.loads(json.dumps(data))
    demo = merged.get("demo") or {}
    if dataset == "demo" and isinstance(demo, dict):
        for section, values in demo.items():
            if isinstance(merged.get(section), dict) and isinstance(values, dict):
                merged[section].update(values)
    return validate(apply_overrides(merged, overrides), source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], yaml-parsed value), as in ``dvc exp run -S``."""
    if "=" not in text:
        raise ParamsError(f"override '{text}': expected KEY=VALUE, e.g. synth.count=50")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
    return data


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Read params.yaml (default: the project's), apply ``KEY=VALUE`` overrides, validate."""
    path = Path(path) if path else DEFAULT_PARAMS
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return resolve(data or {}, overrides, source=str(path))


def overrides_between(base: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """``KEY=VALUE`` strings for every leaf of ``config`` that differs from ``base`` (what
    ``snakemake --config`` changed relative to params.yaml)."""
    ours, theirs = flatten(config), flatten(base)
    return [f"{k}={json.dumps(v)}" for k, v in ours.items() if theirs.get(k, object()) != v]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and empty mappings stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def section_hash(params: Params, *sections: str) -> str:
    """Stable short hash of the given top-level sections (all when none): an MLflow tag."""
    dumped = params.model_dump(mode="json")
    chosen = {k: dumped[k] for k in (sections or sorted(dumped))}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def json_schema() -> dict[str, Any]:
    schema = Params.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gmnr params.yaml"
    return schema


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return path
