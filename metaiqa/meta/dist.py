"""Data parallelism over tasks: `torchrun --nproc-per-node N -m metaiqa meta-train ...`.

Each rank computes the meta-gradients of its share of a meta-batch's tasks (task i goes
to rank i % world), the sums are all-reduced and every rank takes the identical optimizer
step. The process group is built from torchrun's environment variables when WORLD_SIZE > 1
(gloo on CPU, nccl on CUDA); otherwise everything here is a no-op.
"""

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(use_cuda: bool) -> DistInfo:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_ADDR/... when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", rank, world, backend)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def all_reduce_sum(vec: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    return vec


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if info.enabled:
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                flat = t.detach().contiguous()  # channels_last weights are not "contiguous"
                dist.broadcast(flat, src=0)
                t.copy_(flat)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
