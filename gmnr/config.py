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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.json"

DatasetName = Literal["demo", "ffhq256", "ffhq512", "ffhq1024", "afhqcat", "metfaces", "celebahq", "afhqv2"]
ModelName = Literal["gmpi", "gmnr", "mvcgan"]
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


class Pack(Strict):
    resolution: Annotated[int, Field(ge=16, le=2048)] = 128
    max_abs_yaw_deg: Annotated[float, Field(gt=0, le=180)] = 90.0


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

    def camera_family(self) -> str:
        if self.dataset == "demo":
            return "ffhq"
        from gmnr.data.registry import get_dataset
        return get_dataset(self.dataset).camera_family

    def camera(self) -> Camera:
        return self.cameras[self.camera_family()]


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


def validate(data: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping; raise :class:`ParamsError` with one line per problem."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_format_error(e)}" for e in exc.errors(include_url=False)]
        raise ParamsError("; ".join(lines)) from None


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
    return validate(apply_overrides(data or {}, overrides or []), source=str(path))


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
