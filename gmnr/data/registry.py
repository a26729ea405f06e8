"""Registry of the datasets and pretrained StyleGAN2 weights that gmnr can fetch or prepare.

Why a registry: every number a download is checked against (file name, byte size, checksum,
image count, resolution) lives here, next to the official page it was read from, so that a
reviewer can audit one file instead of chasing constants through the pipeline.

Sources (read from the official repositories, not invented):
  * FFHQ: NVlabs/ffhq-dataset README and ``download_ffhq.py`` (70,000 PNGs at 1024x1024,
    ``images1024x1024`` 89.1 GB, ``ffhq-dataset-v2.json`` 267,793,842 bytes with MD5
    425ae20f06a4da1d4dc0f46d40ba5fd6). Hosted on Google Drive only.
  * MetFaces: NVlabs/metfaces-dataset README (1,336 PNGs at 1024x1024, ``images`` 1.6 GB).
    Hosted on Google Drive only.
  * AFHQ / AFHQv2: clovaai/stargan-v2 README and ``download.sh`` (Dropbox links; AFHQ has
    16,130 images at 512x512 of which ``train/cat`` holds 5,153; AFHQv2 has 15,803 PNGs).
  * CelebA-HQ: tkarras/progressive_growing_of_gans README (30,000 images at 1024x1024,
    rebuilt from CelebA plus 27.6 GB of deltas on Google Drive).
  * Weights: NVlabs/stylegan2-ada-pytorch README "Data repository" table and the download
    commands of apple/ml-gmpi ``docs/TRAIN_EVAL.md`` / GMNR README.

Checksums: none of these projects publishes a checksum for the image archives or for the
network pickles; those fields are ``None`` and each entry says so in ``checksum_note``. The
only published digests are FFHQ's metadata JSON (and per-image MD5s inside that JSON).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

CAMERA_FAMILIES = ("ffhq", "metfaces", "afhq")
_CHECKSUM_RE = re.compile(r"^(md5|sha1|sha256):([0-9a-f]+)$")
_DIGEST_HEX_LEN = {"md5": 32, "sha1": 40, "sha256": 64}
_NVLABS_CDN = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"


class UnknownEntryError(KeyError):
    """Raised for a dataset or weights name that is not registered.

    A ``KeyError`` subclass so ``except KeyError`` keeps working, but with a readable message
    (``KeyError`` would otherwise print the repr of its argument).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def parse_checksum(spec: str, where: str = "checksum", *, exact: bool = False) -> tuple[str, str]:
    """Split ``"md5:<hex>"`` / ``"sha256:<hex>"`` into (algorithm, lowercase hex digest), or raise
    ``ValueError`` naming ``where``. A checksum handed to a download may be in any case; the
    registry's own entries are checked ``exact`` (lowercase, as written), at import time rather
    than mid-download."""
    text = spec
    if not exact:
        algo, sep, digest = spec.strip().partition(":")
        text = f"{algo.lower()}:{digest.lower()}" if sep else spec
    match = _CHECKSUM_RE.match(text)
    if not match:
        raise ValueError(f"{where}: checksum {text!r} must look like 'md5:<hex>' or 'sha256:<hex>'")
    algo, digest = match.groups()
    if len(digest) != _DIGEST_HEX_LEN[algo]:
        raise ValueError(
            f"{where}: {algo} digest must have {_DIGEST_HEX_LEN[algo]} hex digits, got {len(digest)}")
    return algo, digest


@dataclass(frozen=True)
class RemoteFile:
    """One file as published upstream.

    ``urls`` holds plain-HTTP links that return the file bytes (tried in order); it is empty
    when the only official host is a web page (Google Drive folder, registration wall).
    ``size_bytes`` / ``checksum`` are exact published values or ``None``; ``approx_size`` keeps
    the rounded size the upstream page prints, for messages only.
    """

    filename: str
    urls: tuple[str, ...] = ()
    size_bytes: int | None = None
    checksum: str | None = None
    checksum_note: str = ""
    approx_size: str = ""

    def __post_init__(self) -> None:
        if not self.filename or "/" in self.filename or "\\" in self.filename or ".." in self.filename:
            raise ValueError(f"RemoteFile.filename {self.filename!r} must be a plain file name")
        if self.size_bytes is not None and self.size_bytes <= 0:
            raise ValueError(f"{self.filename}: size_bytes must be positive, got {self.size_bytes}")
        if self.checksum is not None:
            parse_checksum(self.checksum, self.filename, exact=True)
        if self.checksum is None and not self.checksum_note:
            raise ValueError(f"{self.filename}: checksum is None, so checksum_note must say why")


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset gmnr can prepare into ``raw_dir/images``.

    ``subset`` selects images whose relative path contains these consecutive folder names
    (e.g. ``("train", "cat")`` picks AFHQ cats whatever the archive's top folder is).
    ``derive_from`` / ``resize_to`` describe datasets that upstream does not ship at this
    resolution: the images of ``derive_from`` are resized (Pillow LANCZOS, PNG out), which is
    what StyleGAN2-ADA's ``dataset_tool.py --width/--height`` does for FFHQ 256/512.
    """

    name: str
    description: str
    source_urls: tuple[str, ...]
    licence: str
    archives: tuple[RemoteFile, ...]
    expected_count: int | None  # None: unknown (a custom folder)
    resolution: int
    camera_family: str
    direct_download: bool
    manual_instructions: str = ""
    metadata_files: tuple[RemoteFile, ...] = ()
    subset: tuple[str, ...] = ()
    derive_from: str | None = None
    resize_to: int | None = None
    notes: str = ""
    # Whether the images are face crops aligned already (FFHQ's, AFHQ's, MetFaces' own alignment):
    # `align.mode: auto` passes them through, and crops a custom folder's photos (gmnr/preprocess/align.py).
    aligned: bool = True
    # The attributes every source of images shares (see LocalSource): downloaded, framed by FFHQ's crop,
    # its side fixed here.
    kind = "download"
    framing = "ffhq_crop"
    resolution_param = None
    defaults_section = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if self.camera_family not in CAMERA_FAMILIES:
            raise ValueError(f"{where}: camera_family {self.camera_family!r} not in {CAMERA_FAMILIES}")
        if (self.expected_count is not None and self.expected_count <= 0) or self.resolution <= 0:
            raise ValueError(f"{where}: expected_count and resolution must be positive, got "
                             f"{self.expected_count} and {self.resolution}")
        if not self.source_urls:
            raise ValueError(f"{where}: needs at least one official source URL")
        if self.direct_download and not all(a.urls for a in self.archives):
            raise ValueError(f"{where}: direct_download=True but an archive has no download URL")
        if self.direct_download and not self.archives:
            raise ValueError(f"{where}: direct_download=True but no archives are listed")
        if not self.direct_download and not self.manual_instructions.strip():
            raise ValueError(f"{where}: direct_download=False requires manual_instructions")
        if (self.derive_from is None) != (self.resize_to is None):
            raise ValueError(f"{where}: derive_from and resize_to must be given together")
        if self.resize_to is not None and self.resize_to != self.resolution:
            raise ValueError(f"{where}: resize_to={self.resize_to} must equal resolution={self.resolution}")


@dataclass(frozen=True)
class WeightsEntry:
    """Pretrained StyleGAN2 weights that GMPI / GMNR training starts from: an NVlabs
    stylegan2-ada-pytorch pickle to download, or a gmnr weights file ``bundled`` with the project
    (a path relative to the project root; it needs an exact size and checksum)."""

    name: str
    description: str
    file: RemoteFile
    resolution: int
    dataset: str
    licence: str
    notes: str = ""
    bundled: str | None = None

    @property
    def url(self) -> str:
        return self.file.urls[0]

    def __post_init__(self) -> None:
        if self.bundled is None and not self.file.urls:
            raise ValueError(f"weights {self.name!r}: needs a download URL or a bundled file")
        if self.bundled is not None and (self.file.checksum is None or self.file.size_bytes is None
                                         or PurePosixPath(self.bundled).name != self.file.filename
                                         or PurePosixPath(self.bundled).is_absolute() or ".." in self.bundled):
            raise ValueError(f"weights {self.name!r}: a bundled file needs a relative path inside the project "
                             f"ending in {self.file.filename!r}, an exact size and a checksum")
        if self.resolution <= 0:
            raise ValueError(f"weights {self.name!r}: resolution must be positive")


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

_FFHQ_README = "https://github.com/NVlabs/ffhq-dataset"
_FFHQ_LICENCE = ("Images: CC BY 2.0 / CC BY-NC 2.0 / PDM 1.0 / CC0 1.0 / US Gov works (per image, see "
                 "metadata); dataset (JSON, script, docs): CC BY-NC-SA 4.0 by NVIDIA. Non-commercial.")
_FFHQ_NO_CHECKSUM = ("not published: NVlabs lists no digest for the zip; per-image MD5s are in "
                     "ffhq-dataset-v2.json")
_FFHQ_IMAGES_ZIP = RemoteFile(
    filename="images1024x1024.zip",
    urls=(),  # only on Google Drive ("zips" folder), which serves quota/confirmation pages
    checksum_note=_FFHQ_NO_CHECKSUM,
    approx_size="89.1 GB (unzipped PNG folder size from the README)",
)
_FFHQ_JSON = RemoteFile(
    filename="ffhq-dataset-v2.json",
    urls=("https://drive.google.com/uc?id=16N0RV4fHI6joBuKbQAoG34V_cQk7vxSA",),
    size_bytes=267793842,
    checksum="md5:425ae20f06a4da1d4dc0f46d40ba5fd6",
    checksum_note="published in NVlabs/ffhq-dataset download_ffhq.py (json_spec)",
    approx_size="255 MB",
)
_FFHQ_SOURCES = (
    _FFHQ_README,
    "https://drive.google.com/open?id=1tZUcXDBeOibC6jcMCtgRRz67pzrAHeHL",  # images1024x1024
    "https://drive.google.com/open?id=1WocxvZ4GEZ1DI8dOz30aSj2zT6pkATYS",  # zips
    "https://drive.google.com/open?id=16N0RV4fHI6joBuKbQAoG34V_cQk7vxSA",  # ffhq-dataset-v2.json
)
_FFHQ_MANUAL = (
    "FFHQ is hosted only on Google Drive, which answers scripted downloads with quota and "
    "confirmation pages. Get the 70,000 aligned 1024x1024 PNGs from "
    f"{_FFHQ_README} (folder 'images1024x1024', 89.1 GB, or 'zips/images1024x1024.zip'; the "
    "official download_ffhq.py --images also works), optionally with ffhq-dataset-v2.json, "
    "then run `gmnr download {name} --from DIR` where DIR holds images1024x1024.zip or the "
    "extracted PNG folder."
)


def _ffhq(resolution: int) -> DatasetEntry:
    name = f"ffhq{resolution}"
    derived = resolution != 1024
    return DatasetEntry(
        name=name,
        description=(f"Flickr-Faces-HQ, 70,000 aligned faces at {resolution}x{resolution}"
                     + (" (resized from the official 1024x1024 PNGs)" if derived else "")),
        source_urls=_FFHQ_SOURCES,
        licence=_FFHQ_LICENCE,
        archives=(_FFHQ_IMAGES_ZIP,),
        metadata_files=(_FFHQ_JSON,),
        expected_count=70000,
        resolution=resolution,
        camera_family="ffhq",
        direct_download=False,
        manual_instructions=_FFHQ_MANUAL.format(name=name),
        derive_from="ffhq1024" if derived else None,
        resize_to=resolution if derived else None,
        notes=("Upstream ships 1024x1024 and 128x128 only; GMPI/GMNR train 256/512 on the "
               "1024 images downscaled (StyleGAN2-ADA dataset_tool --width/--height). The 128 "
               "thumbnails are too small to derive 256/512 from." if derived else
               "GMPI/GMNR use all 70,000 images."),
    )


_AFHQ_LICENCE = "CC BY-NC 4.0 by NAVER Corporation (clovaai/stargan-v2). Non-commercial."
_AFHQ_SOURCES = ("https://github.com/clovaai/stargan-v2#animal-faces-hq-dataset-afhq",)
_DROPBOX_NO_CHECKSUM = "not published: clovaai/stargan-v2 gives only the Dropbox link"

DATASETS: dict[str, DatasetEntry] = {}


def _register(entry: DatasetEntry) -> None:
    if entry.name in DATASETS:
        raise ValueError(f"dataset {entry.name!r} registered twice")
    DATASETS[entry.name] = entry


for _res in (256, 512, 1024):
    _register(_ffhq(_res))

_register(DatasetEntry(
    name="afhqcat",
    description="AFHQ (v1) cats, train split: 5,153 cat faces at 512x512 (StyleGAN2-ADA 'afhqcat')",
    source_urls=_AFHQ_SOURCES + ("https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=0",),
    licence=_AFHQ_LICENCE,
    archives=(RemoteFile(
        filename="afhq.zip",
        # dl=1 makes Dropbox redirect to the file instead of its preview page
        urls=("https://www.dropbox.com/s/t9l9o3vsx2jai3z/afhq.zip?dl=1",),
        checksum_note=_DROPBOX_NO_CHECKSUM,
    ),),
    expected_count=5153,
    resolution=512,
    camera_family="afhq",
    direct_download=True,
    manual_instructions=(
        "If the Dropbox link fails, get afhq.zip via `bash download.sh afhq-dataset` from "
        "https://github.com/clovaai/stargan-v2 and run `gmnr download afhqcat --from DIR` with "
        "DIR holding afhq.zip or the extracted afhq/ folder."),
    subset=("train", "cat"),
    notes=("Same split StyleGAN2-ADA's afhqcat.pkl was trained on (dataset_tool --source "
           "afhq/train/cat). GMPI/GMNR's AFHQCat instead uses EG3D's processed AFHQv2 train/cat "
           "(see 'afhqv2'). Count 5,153 is the train/cat size reported for afhq.zip; upstream "
           "prints only 'about 5000 per domain'."),
))

_register(DatasetEntry(
    name="afhqv2",
    description="AFHQv2: 15,803 cat/dog/wild faces at 512x512, Lanczos-resized PNGs (train+test)",
    source_urls=_AFHQ_SOURCES + ("https://www.dropbox.com/s/vkzjokiwof5h8w6/afhq_v2.zip?dl=0",),
    licence=_AFHQ_LICENCE,
    archives=(RemoteFile(
        filename="afhq_v2.zip",
        urls=("https://www.dropbox.com/s/vkzjokiwof5h8w6/afhq_v2.zip?dl=1",),
        checksum_note=_DROPBOX_NO_CHECKSUM,
    ),),
    expected_count=15803,
    resolution=512,
    camera_family="afhq",
    direct_download=True,
    manual_instructions=(
        "If the Dropbox link fails, get afhq_v2.zip via `bash download.sh afhq-v2-dataset` from "
        "https://github.com/clovaai/stargan-v2 and run `gmnr download afhqv2 --from DIR`."),
    notes=("Count 15,803 from the stargan-v2 README (v1 had 16,130). EG3D/GMPI's AFHQCat is the "
           "train/cat subset of this archive, mirrored."),
))

_register(DatasetEntry(
    name="metfaces",
    description="MetFaces: 1,336 aligned faces from Met Museum artworks at 1024x1024",
    source_urls=(
        "https://github.com/NVlabs/metfaces-dataset",
        "https://drive.google.com/open?id=1iChdwdW7mZFUyivKtDwL8ehCNhYKQz6D",  # images
    ),
    licence=("Source images CC0 (Metropolitan Museum of Art); dataset (JSON, processed images, "
             "docs) CC BY-NC 2.0 by NVIDIA. Non-commercial."),
    archives=(),  # upstream publishes a Drive folder, not an archive with a fixed name
    expected_count=1336,
    resolution=1024,
    camera_family="metfaces",
    direct_download=False,
    manual_instructions=(
        "MetFaces is hosted only on Google Drive. Download the 'images' folder (1,336 PNGs, "
        "1.6 GB) of the metfaces-dataset folder linked from https://github.com/NVlabs/metfaces-dataset "
        "and run `gmnr download metfaces --from DIR` with DIR holding the PNGs or the zip(s) "
        "Google Drive produced."),
    notes=("No checksum for the folder is published; metfaces.json (1.8 MB) lists an MD5 per "
           "image. GMPI/GMNR augment with horizontal flips later, not here."),
))

_register(DatasetEntry(
    name="celebahq",
    description="CelebA-HQ: 30,000 faces at 1024x1024 rebuilt from CelebA (PGGAN)",
    source_urls=(
        "https://github.com/tkarras/progressive_growing_of_gans#preparing-datasets-for-training",
        "https://drive.google.com/open?id=0B4qLcYyJmiz0TXY1NG02bzZVRGs",  # celeba-hq-deltas
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    ),
    licence=("Deltas/tools: CC BY-NC 4.0 by NVIDIA; underlying CelebA images: CUHK agreement, "
             "non-commercial research only."),
    archives=(),
    expected_count=30000,
    resolution=1024,
    camera_family="ffhq",
    direct_download=False,
    manual_instructions=(
        "CelebA-HQ is not distributed as images: download CelebA (img_celeba + "
        "Anno/list_landmarks_celeba.txt, after accepting the CUHK terms) and the 27.6 GB "
        "celeba-hq-deltas from Google Drive, rebuild it with `dataset_tool.py create_celebahq` "
        "from https://github.com/tkarras/progressive_growing_of_gans, export the 30,000 "
        "1024x1024 images as PNG, then run `gmnr download celebahq --from DIR`. (StarGAN v2's "
        "celeba_hq.zip is a 256x256 re-split and does not match this entry.)"),
    notes="Aligned like FFHQ closely enough that GMPI-style pipelines reuse the FFHQ camera.",
))


# --------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------

_WEIGHTS_LICENCE = ("NVIDIA Source Code License (non-commercial), see "
                    "https://nvlabs.github.io/stylegan2-ada-pytorch/license.html")
_NO_PKL_CHECKSUM = "not published: the NVlabs data repository lists no digest for its pickles"


def _pkl(path: str) -> RemoteFile:
    return RemoteFile(filename=path.rsplit("/", 1)[-1], urls=(_NVLABS_CDN + path,),
                      checksum_note=_NO_PKL_CHECKSUM)


WEIGHTS: dict[str, WeightsEntry] = {w.name: w for w in (
    WeightsEntry(
        name="ffhq256",
        description="StyleGAN2 FFHQ 256x256 transfer-learning source net (paper256 config, no aug)",
        file=_pkl("transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl"),
        resolution=256, dataset="ffhq256", licence=_WEIGHTS_LICENCE,
        notes="GMPI/GMNR FFHQ256 starting point."),
    WeightsEntry(
        name="ffhq512",
        description="StyleGAN2 FFHQ 512x512 transfer-learning source net (stylegan2 config, no aug)",
        file=_pkl("transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl"),
        resolution=512, dataset="ffhq512", licence=_WEIGHTS_LICENCE,
        notes="GMPI/GMNR FFHQ512 starting point."),
    WeightsEntry(
        name="ffhq1024",
        description="StyleGAN2 FFHQ 1024x1024 transfer-learning source net (stylegan2 config, no aug)",
        file=_pkl("transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl"),
        resolution=1024, dataset="ffhq1024", licence=_WEIGHTS_LICENCE,
        notes=("The FFHQ1024 pickle GMPI (docs/TRAIN_EVAL.md) and GMNR (README) download; "
               "'ffhq1024-pretrained' is the README's pretrained/ffhq.pkl alternative.")),
    WeightsEntry(
        name="ffhq1024-pretrained",
        description="StyleGAN2-ADA data repository pretrained/ffhq.pkl: FFHQ 1024x1024, original StyleGAN2",
        file=_pkl("ffhq.pkl"),
        resolution=1024, dataset="ffhq1024", licence=_WEIGHTS_LICENCE),
    WeightsEntry(
        name="metfaces",
        description="StyleGAN2-ADA MetFaces 1024x1024, transfer learning from FFHQ using ADA",
        file=_pkl("metfaces.pkl"),
        resolution=1024, dataset="metfaces", licence=_WEIGHTS_LICENCE,
        notes="GMPI/GMNR MetFaces starting point."),
    WeightsEntry(
        name="afhqcat",
        description="StyleGAN2-ADA AFHQ Cat 512x512, trained from scratch using ADA",
        file=_pkl("afhqcat.pkl"),
        resolution=512, dataset="afhqcat", licence=_WEIGHTS_LICENCE,
        notes="GMPI/GMNR AFHQCat starting point."),
    WeightsEntry(
        name="demo64",
        description=("2D StyleGAN2 (model stylegan2) trained on the procedural demo set: the demo's GMPI / GMNR "
                     "backbone at 64 px (w 128, 2 mapping layers, channel_base 2048, channel_max 64), G_ema and D "
                     "in float16"),
        file=RemoteFile(filename="demo64-stylegan2.pt", size_bytes=1661095,
                        checksum="sha256:207a70aa121abd81072e07d3729a8072d7cf08898cbfe7fd145952661bd3fe6c"),
        bundled="weights/demo64-stylegan2.pt",
        resolution=64, dataset="demo", licence="this project's (trained on its own procedural data)",
        notes=("Made by `make demo-weights`: 6,000 steps of batch 8 (about 25 minutes on 2 CPU cores), R1 gamma "
               "0.1, Adam betas (0, 0.99), then `gmnr export-weights`; FID 147.9 / KID 0.159 on the demo set "
               "(160 images, `gmnr evaluate -S model=stylegan2`).")),
)}


def _check_derivations() -> None:
    """Fail at import if a derived dataset points at a missing or itself-derived source."""
    for entry in DATASETS.values():
        if entry.derive_from is None:
            continue
        source = DATASETS.get(entry.derive_from)
        if source is None or source.derive_from is not None:
            raise ValueError(f"dataset {entry.name!r}: derive_from={entry.derive_from!r} must name "
                             "a registered, non-derived dataset")
        if source.resolution < entry.resolution:
            raise ValueError(f"dataset {entry.name!r}: cannot derive {entry.resolution}px images "
                             f"by upscaling {source.name!r} ({source.resolution}px)")


_check_derivations()


def _lookup(table: dict, name: str, kind: str):
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise UnknownEntryError(f"unknown {kind} {name!r}; known {kind}s: {known}") from None


def custom_entry(name: str, resolution: int) -> DatasetEntry:
    """The entry of a custom dataset (``dataset: custom``): the user's photos from
    ``download.from_dir``, any size and count, not aligned (the align stage crops them as FFHQ)."""
    return DatasetEntry(
        name=name,
        description=f"custom dataset {name!r}: the user's own photos, aligned by the align stage (FFHQ's crop)",
        source_urls=("download.from_dir",),
        licence="the user's own photos: their licence is the user's to check",
        archives=(),
        expected_count=None,
        resolution=resolution,
        camera_family="ffhq",
        direct_download=False,
        manual_instructions="point download.from_dir (or `gmnr source --from`) at a folder or archive of photos",
        aligned=False,
    )


# A custom folder's side while align.resolution and pack.resolution are null: FFHQ-256, GMPI's and GMNR's
# main setting
CUSTOM_RESOLUTION = 256


@dataclass(frozen=True)
class LocalSource:
    """A dataset this project makes instead of downloading: what the pipeline needs to know about it,
    as :class:`DatasetEntry` says it of a downloaded one (kind, camera family, alignment, framing,
    resolution), so no stage asks for the dataset's name.

    ``kind``: ``synth`` (rendered offline by the source stage, ``gmnr synth``) or ``folder`` (the
    user's photos, read by the source stage from ``download.from_dir``). ``framing``: how a face sits
    in its images: ``look_at`` for renders by a camera looking at the head (the face moves in the image
    as the camera turns, a pose cue), ``ffhq_crop`` for FFHQ's crop (centred whatever the pose).
    ``resolution_param``: the param its images' side comes from (else ``resolution``).
    ``defaults_section``: a params section whose values replace the published ones for this dataset."""
    name: str
    kind: str
    description: str
    camera_family: str = "ffhq"
    aligned: bool = True
    framing: str = "ffhq_crop"
    resolution: int = CUSTOM_RESOLUTION
    resolution_param: str | None = None
    defaults_section: str | None = None
    resize_to = None

    def __post_init__(self) -> None:
        if self.kind not in ("synth", "folder") or self.framing not in ("look_at", "ffhq_crop"):
            raise ValueError(f"source {self.name!r}: kind must be synth or folder and framing look_at or ffhq_crop, "
                             f"got {self.kind!r}, {self.framing!r}")
        if self.camera_family not in CAMERA_FAMILIES:
            raise ValueError(f"source {self.name!r}: camera_family {self.camera_family!r} not in {CAMERA_FAMILIES}")


LOCAL_SOURCES: dict[str, LocalSource] = {s.name: s for s in (
    LocalSource("demo", "synth", "procedural heads rendered offline with known cameras (gmnr/data/synth), placed "
                "where FFHQ's crop puts a face", aligned=True, framing="look_at", resolution_param="synth.resolution",
                defaults_section="demo"),
    LocalSource("custom", "folder", "a folder or archive of your own photos (download.from_dir), cropped as FFHQ by "
                "the align stage", aligned=False),
)}


def source_of(name: str) -> DatasetEntry | LocalSource:
    """Where a dataset's images come from: a downloaded registry entry, or a source made here (the demo's
    renders, a custom folder). An unknown name raises ``UnknownEntryError`` listing the known ones."""
    return LOCAL_SOURCES[name] if name in LOCAL_SOURCES else _lookup(DATASETS, name, "dataset")


def get_dataset(name: str) -> DatasetEntry:
    """Return the registered dataset, or raise ``UnknownEntryError`` listing the known names."""
    return _lookup(DATASETS, name, "dataset")


def get_weights(name: str) -> WeightsEntry:
    """Return the registered weights, or raise ``UnknownEntryError`` listing the known names."""
    return _lookup(WEIGHTS, name, "weights")
