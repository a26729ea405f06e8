"""torchrun integration: one process per GPU (NCCL) or per CPU worker (Gloo).

`torchrun --nproc_per_node N -m gmnr train` sets RANK/WORLD_SIZE/LOCAL_RANK; without them the
trainer runs as a single process. `gmnr train --gpus N` re-launches itself under torchrun.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_preference: str = "auto") -> DistInfo:
    """Join the process group when started by torchrun; pick the device of this rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_preference in ("auto", "cuda")
    if device_preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params, info: DistInfo) -> None:
    """All-reduce-mean the gradients of ``params`` (one flat buffer: one collective per phase)."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """All-reduce-mean floating buffers (the mapping network's w_avg). Each rank updates w_avg
    with a lerp towards its own batch mean; the lerp is linear, so the mean over ranks is
    exactly the value one process with the whole batch computes."""
    if not info.enabled:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= info.world_size


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def launch_torchrun(nproc: int, argv: list[str], nnodes: int = 1, node_rank: int = 0,
                    master_addr: str | None = None, master_port: int = 29500) -> int:
    """Run ``python -m gmnr <argv>`` under torchrun with ``nproc`` processes on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes > 1:
        if not master_addr:
            raise ValueError("several nodes need --master-addr (the address of node 0)")
        cmd += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                f"--master_port={master_port}"]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "gmnr", *argv]
    return subprocess.call(cmd)
