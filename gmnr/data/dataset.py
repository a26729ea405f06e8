"""The packed training set (`gmnr pack`) as tensors, and a resumable sample order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gmnr.preprocess.pack import read_labels


def data_fingerprint(folder: Path) -> str:
    """sha256 over a packed set's dataset.json and the bytes of every image it lists, in its order: what
    a training run records, so that a rerun on other data (the same params, new poses or crops) trains
    afresh instead of resuming. Reads the set once (FFHQ-256's 70k PNGs: about 4 GB)."""
    import hashlib
    folder = Path(folder)
    digest = hashlib.sha256((folder / "dataset.json").read_bytes())
    for name in read_labels(folder)[0]:
        digest.update(name.encode() + b"\0")
        with open(folder / "images" / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class PackedDataset(torch.utils.data.Dataset):
    """Images in [-1, 1] as float32 [3, R, R], with cam2world [4, 4] and normalised intrinsics [3, 3]."""

    def __init__(self, folder: Path, resolution: int | None = None):
        self.folder = Path(folder)
        if not (self.folder / "dataset.json").is_file():
            raise FileNotFoundError(f"{self.folder}/dataset.json not found: run `gmnr pack` first")
        self.names, c2w, k = read_labels(self.folder)
        if not self.names:
            raise ValueError(f"{self.folder}/dataset.json lists no images")
        self.cam2world = torch.from_numpy(c2w).float()
        self.intrinsics = torch.from_numpy(k).float()
        self.resolution = None
        self.resolution = self._load(0).shape[-1]
        if resolution is not None and resolution != self.resolution:
            raise ValueError(f"{self.folder}: images are {self.resolution} px but the model expects {resolution}; "
                             f"repack with pack.resolution={resolution}")

    def _load(self, index: int) -> torch.Tensor:
        from gmnr.data.images import read_rgb
        path = self.folder / "images" / self.names[index]
        array = read_rgb(path).astype(np.float32)  # the one reader: regular files, pixel cap, any mode
        h, w, _ = array.shape
        if h != w or (self.resolution is not None and h != self.resolution):
            raise ValueError(f"{path}: {w} x {h} px in a set of {self.resolution} px images; the packed set is "
                             f"inconsistent (interrupted or edited by hand): rerun `gmnr pack`")
        return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self._load(index), "cam2world": self.cam2world[index],
                "intrinsics": self.intrinsics[index], "index": torch.tensor(index)}


def sample_indices(step: int, rank: int, world_size: int, batch_per_gpu: int, n: int, seed: int) -> list[int]:
    """Dataset indices of one rank's batch at ``step``.

    Sample number ``g = (step * world_size + rank) * batch_per_gpu + j`` of the whole run reads
    ``permutation(seed, epoch)[g mod n]`` with ``epoch = g // n``: a pure function of the step,
    so a resumed run reads exactly what the uninterrupted run would have read, and N ranks
    with batch b read exactly what one process with batch N*b reads.
    """
    out = []
    for j in range(batch_per_gpu):
        g = (step * world_size + rank) * batch_per_gpu + j
        epoch, offset = divmod(g, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[offset]))
    return out


def load_batch(dataset: PackedDataset, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
