"""The processes of a run: one, or N under torchrun (one GPU each), deciding every step alike."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ddpmkit.config import TrainConfig
from ddpmkit.errors import ConfigError
from ddpmkit.run.loaded import resolve_device
from ddpmkit.sharding import join_process_group


class Processes:
    """This process's ``rank`` among ``world`` (torchrun's environment; 0 of 1 otherwise), its
    ``device``, and the collective decisions of a step."""

    def __init__(self, tc: TrainConfig) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world <= 1:
            self.world, self.rank, local_rank = 1, 0, 0
        else:
            self.rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self.device = self._join(tc, local_rank)

    def _join(self, tc: TrainConfig, local_rank: int) -> torch.device:
        """The training device; under torchrun, after joining the process group (one GPU per
        process) and checking that the global batch splits evenly. The group is left to the
        caller afterwards (``ddpm train`` destroys it)."""
        if self.world == 1:
            return resolve_device(tc.device)
        if tc.batch_size % (self.world * tc.grad_accum):
            raise ConfigError(
                f"train.batch_size ({tc.batch_size}) must split evenly over {self.world} "
                f"processes × {tc.grad_accum} accumulation steps"
            )
        join_process_group()
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the processes (one all-reduce), so that all ranks decide alike."""
        if self.world == 1:
            return list(flags)
        value = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return [bool(v) for v in value.tolist()]

    def largest(self, value: float) -> float:
        """The largest ``value`` over the processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.item()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` (same shape), concatenated in rank order."""
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def gather_objects(self, value: object) -> list:
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
