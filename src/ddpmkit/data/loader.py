"""Training batches: which images, in which order, and where they are read from.

Order: one permutation of the data set per epoch, drawn from (seed, epoch) alone, split between
the processes by position (:func:`epoch_share`, :class:`EpochPlan`). A :class:`Position` (saved
with the training state, so that a resumed run draws exactly the batches it would have drawn)
names the next images; the batch source below hands them out and moves the position.

Where from (``data.hold``, decided by :func:`choose_hold`):

* ``device`` — every image held on the training device as one uint8 tensor; a batch is an
  index into it (:class:`DeviceBatches`). Fastest for data that fits.
* ``stream`` — the images stay in memory or in the memory-mapped disk cache; a DataLoader
  (:class:`StreamBatches`) assembles the planned batches on the CPU, ahead of time, in worker
  processes when asked, in pinned memory on CUDA, and each batch is moved to the device when
  its step comes. The device holds only the batch.

Both give the same uint8 batch for the same indices, so the choice never changes a run.
"""

from __future__ import annotations

import collections
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ddpmkit.data.decoded import physical_memory
from ddpmkit.seeding import sample_seed

CUDA_HOLD_SHARE = 0.1
"""``hold=auto`` keeps the images on a GPU when they take at most this share of its memory."""
CPU_HOLD_SHARE = 0.25
"""… and in the memory of a CPU run when they take at most this share of the machine's."""


def epoch_share(seed: int, epoch: int, count: int, rank: int, world: int) -> torch.Tensor:
    """This process's share of epoch ``epoch``: one permutation of the ``count`` images, drawn
    from (seed, epoch) alone so every process draws the same one, split between the ``world``
    processes by position (rank, rank + world, ...): each image once per epoch, on one process."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch))
    return torch.randperm(count, generator=generator)[rank::world]


@dataclass(frozen=True)
class EpochPlan:
    """What fixes a process's data order: the seed, the number of images, the process's rank
    and the number of processes (:func:`epoch_share`)."""

    seed: int
    count: int
    rank: int = 0
    world: int = 1

    def share(self, epoch: int) -> torch.Tensor:
        return epoch_share(self.seed, epoch, self.count, self.rank, self.world)


@dataclass
class Position:
    """Where a process is in its data: its share of the current epoch, how much of it is used,
    and the number of the next epoch (saved with the training state)."""

    order: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    cursor: int = 0
    epoch: int = 0  # epochs of this process's share begun so far

    def take(self, size: int, plan: EpochPlan) -> torch.Tensor:
        """The indices of the next ``size`` images, crossing into the next epoch's share when
        this one runs out; the position moves past them."""
        parts, needed = [], size
        while needed > 0:
            if self.cursor >= len(self.order):
                self.order = plan.share(self.epoch)
                self.epoch += 1
                self.cursor = 0
            took = self.order[self.cursor : self.cursor + needed]
            self.cursor += len(took)
            needed -= len(took)
            parts.append(took)
        return torch.cat(parts)

    def copy_from(self, other: Position) -> None:
        self.order, self.cursor, self.epoch = other.order, other.cursor, other.epoch


def choose_hold(requested: str, nbytes: int, device: torch.device) -> tuple[str, str]:
    """``("device" | "stream", why)`` for ``data.hold=requested`` and ``nbytes`` of images: with
    ``auto``, on the device when they take at most :data:`CUDA_HOLD_SHARE` of a GPU's memory or
    :data:`CPU_HOLD_SHARE` of the machine's (for a CPU run), else streamed."""
    size = _size(nbytes)
    if requested != "auto":
        return requested, f"{size}, data.hold={requested}"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        share, what = CUDA_HOLD_SHARE, f"{device}'s {_size(total)}"
    elif device.type == "cpu":
        total = physical_memory() or 0
        share, what = CPU_HOLD_SHARE, f"the machine's {_size(total)}"
    else:  # mps and others: unified memory, but no way to ask how much
        total, share, what = 0, 0.0, f"{device}"
    if total and nbytes <= share * total:
        return "device", f"{size}, at most {share:.0%} of {what}"
    if not total:
        return "stream", f"{size}, the memory of {what} is unknown"
    return "stream", f"{size}, more than {share:.0%} of {what}"


def default_workers(device: torch.device, world: int) -> int:
    """DataLoader workers for ``data.loader_workers=-1``: none for a CPU run (the two compete
    for the same cores; reading a batch from memory or the page cache takes well under a
    millisecond), else up to 8 per process, leaving one core per process for the training loop."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) // max(1, world) - 1))


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


class DeviceBatches:
    """All images on the device; a batch is an index into them, taken from the position."""

    def __init__(self, images: torch.Tensor, device: torch.device, mapped: bool) -> None:
        # a memory-mapped cache is read into memory (on a CPU run .to() alone keeps the map);
        # images already in memory are not copied on a CPU run
        self.images = images.to(device, copy=mapped)

    def start(self, position: Position, plan: EpochPlan, size: int) -> None:
        self._position, self._plan, self._size = position, plan, size

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._position.take(self._size, self._plan)
        return index, self.images[index.to(self.images.device)]

    def close(self) -> None:
        self.images = None


class _Rows(torch.utils.data.Dataset):
    """Batches of images read by index: from a cache file with positioned reads (the process
    maps nothing, so its resident memory holds only batches; the OS page cache keeps what is
    read often), or from an in-memory tensor."""

    def __init__(self, images: torch.Tensor, file: Path | None) -> None:
        self.shape = tuple(images.shape[1:])
        self.file = file
        self.images = None if file is not None else images
        self.row_bytes = int(np.prod(self.shape))
        self._fd: tuple[int, int] | None = None  # (pid, fd): a worker opens its own

    def __len__(self) -> int:
        raise TypeError("batches are planned by the trainer")

    def _descriptor(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.file, os.O_RDONLY))
        return self._fd[1]

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            return index, self.images[index]
        out = np.empty((len(index), *self.shape), dtype=np.uint8)
        fd, n = self._descriptor(), self.row_bytes
        for k, i in enumerate(index.tolist()):
            view = memoryview(out[k].reshape(-1))
            got = os.preadv(fd, [view], i * n)
            if got != n:
                raise OSError(f"short read of image {i} from {self.file}")
        return index, torch.from_numpy(out)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = None
        return state


def _identity(batch):
    return batch


class StreamBatches:
    """The batches of the position onwards, assembled ahead of time by a DataLoader
    (``workers`` processes, 0: in this process) and moved to the device one step at a time.

    The DataLoader plans from a copy of the position; each planned batch carries the position
    after it, and :meth:`next` moves the real position there when it hands the batch out, so
    the position always names the next batch the training loop will take.
    """

    PREFETCH = 2  # batches each worker prepares ahead

    def __init__(
        self, images: torch.Tensor, file: Path | None, device: torch.device, workers: int
    ) -> None:
        self.rows = _Rows(images, file)
        self.device = device
        self.workers = workers
        self._batches: Iterator | None = None

    def start(self, position: Position, plan: EpochPlan, size: int) -> None:
        """Plan batches of ``size`` from ``position`` onwards."""
        self.close()
        self._position = position
        ahead = copy.deepcopy(position)
        after: collections.deque[Position] = collections.deque()

        def indices() -> Iterator[torch.Tensor]:
            while True:  # the DataLoader draws its plan in this process, in order
                index = ahead.take(size, plan)
                after.append(Position(ahead.order, ahead.cursor, ahead.epoch))
                yield index

        loader = DataLoader(
            self.rows,
            batch_size=None,
            sampler=indices(),
            num_workers=self.workers,
            collate_fn=_identity,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=self.PREFETCH if self.workers else None,
            persistent_workers=False,
        )
        self._batches = iter(loader)
        self._after = after

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        index, images = next(self._batches)
        self._position.copy_from(self._after.popleft())
        return index, images.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._batches = None  # shuts the workers down
