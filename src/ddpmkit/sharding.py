"""Splitting an evaluation between the processes of ``torchrun`` (``ddpm eval``, ``ddpm nll``):
each process takes a contiguous share made of whole batches, so every batch is the one a single
process would form and the gathered results equal one process's bit for bit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def process_group() -> tuple[int, int] | None:
    """(rank, world size) of an initialised group of two or more processes, else ``None``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def shard_range(count: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Process ``rank``'s contiguous share ``[first, last)`` of ``count`` items, made of whole
    batches of ``batch_size``."""
    batches = -(-count // batch_size)
    first = batches * rank // world * batch_size
    last = batches * (rank + 1) // world * batch_size
    return min(first, count), min(last, count)


def gather_shares(share: T) -> list[T]:
    """Every process's ``share``, in rank order, on every process (one all_gather_object)."""
    group = process_group()
    if group is None:
        return [share]
    shares: list = [None] * group[1]
    dist.all_gather_object(shares, share)
    return shares


def join_process_group() -> bool:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) unless this process has;
    whether this call created it, and so must destroy it before the process exits: a process
    leaving with gloo's threads still holding its last collective is aborted by the C++ runtime
    at interpreter shutdown ("terminate called without an active exception", exit −6)."""
    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def leave_process_group() -> None:
    """Destroy the process group, if any, before the process exits (:func:`join_process_group`
    says why): what ``ddpm train`` does after training under torchrun."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def torchrun_processes(device: str) -> Iterator[tuple[bool, int, str]]:
    """(distributed, rank, device) of an evaluation command: under ``torchrun`` (WORLD_SIZE >
    1) the process group is joined (NCCL on GPUs, gloo on CPUs) and each process takes one GPU;
    alone, (False, 0, device). A group created here is destroyed on the way out, on every path
    (see :func:`join_process_group`): without that a two-process eval failed about one run in
    five on a busy machine."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield False, 0, device
        return
    created = join_process_group()
    if device == "auto" and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(torch.device(device))
    try:
        yield True, dist.get_rank(), device
    finally:
        if created:
            leave_process_group()
