"""Splitting an evaluation between the processes of ``torchrun`` (``ddpm eval``, ``ddpm nll``):
each process takes a contiguous share made of whole batches, so every batch is the one a single
process would form and the gathered results equal one process's bit for bit."""

from __future__ import annotations

from typing import TypeVar

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
