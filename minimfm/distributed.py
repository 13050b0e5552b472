"""Several processes, one model: torchrun + DistributedDataParallel (PyTorch's own engine, nothing home-made).

`torchrun --nproc_per_node N -m minimfm train ...` starts N copies of the training command with RANK,
LOCAL_RANK and WORLD_SIZE set; `setup()` joins them into one process group (NCCL between GPUs, gloo on CPU)
and the training loop wraps the model in DDP, which averages gradients across processes during backward.

How a step's global batch is shared. The batch of step s is a fixed list of `batch_size` examples (train.py
draws it from (seed, s) alone). It is cut into micro-batches of `micro_batch_size` rows; process r runs
micro-batches r, r + N, r + 2N, ... and accumulates their gradients. So the global batch, the data order and
(because each micro-batch draws its noise/masking from its own generator seeded by (seed, step, index)) every
random draw are the same for 1, 2 or 8 processes: the update only depends on the world size through the
order of floating-point sums. This replaces torch's DistributedSampler, whose order depends on the number of
replicas, and is what lets a run started on 2 processes resume on 1 (tests/test_distributed.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process sits among the torchrun processes (rank 0 of 1 when run on its own)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun prepared (a no-op for a single process); returns (context, device)."""
    if not launched_by_torchrun():
        return Context(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # generous timeout: the other ranks wait at a barrier while rank 0 trains any missing tokenizer
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return Context(dist.get_rank(), dist.get_world_size(), local_rank), device


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def micro_batches(batch_size: int, micro_batch_size: int, ctx: Context) -> tuple[list[tuple[int, int]], int]:
    """This process's (start, stop) rows of the global batch, and the number of micro-batches in all."""
    micro = micro_batch_size or batch_size // ctx.world_size
    if micro <= 0 or batch_size % micro or (batch_size // micro) % ctx.world_size:
        raise ValueError(f"--batch-size {batch_size} must split into micro-batches of {micro_batch_size or micro} "
                         f"rows, equally over {ctx.world_size} processes (set --micro-batch-size to a divisor)")
    total = batch_size // micro
    return [(i * micro, (i + 1) * micro) for i in range(ctx.rank, total, ctx.world_size)], total


def mean_over_processes(logs: dict[str, float], ctx: Context, device: torch.device) -> dict[str, float]:
    """Average logged floats over processes, so rank 0's log describes the global batch."""
    if not ctx.active:
        return logs
    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, values.tolist())}
