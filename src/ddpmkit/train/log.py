"""What a run reports while it trains: the progress bar, metrics.jsonl and the tracker."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

TIMESTEP_BUCKETS = 4  # loss is also logged per quartile of t


class TrainingLog:
    """Sums between two log lines (loss, gradient norm, loss per quartile of t, skipped steps),
    kept on the training device and read once per line; images/s leaves out the time spent on
    grids and checkpoints (:meth:`pause`)."""

    def __init__(
        self, run, tracker, device: torch.device, num_steps: int, bar: tqdm, write: bool
    ) -> None:
        self.run, self.tracker, self.device = run, tracker, device
        self.num_steps, self.bar, self.write = num_steps, bar, write
        self.smoothed: float | None = None
        self.last_loss = float("nan")
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start, self.steps, self.skipped, self.paused = now, 0, 0, 0.0
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, grad norm
        self.bucket_sum = torch.zeros(TIMESTEP_BUCKETS, dtype=torch.float64, device=self.device)
        self.bucket_count = torch.zeros_like(self.bucket_sum)

    def updated(
        self, loss: float, loss_and_norm: torch.Tensor, t: torch.Tensor, losses: torch.Tensor
    ) -> None:
        """A step applied: its loss, [loss, gradient norm] on the device, and the t and loss of
        every example."""
        self.last_loss = loss
        self.smoothed = loss if self.smoothed is None else 0.98 * self.smoothed + 0.02 * loss
        self.sums += loss_and_norm.double()
        self.steps += 1
        buckets = t * TIMESTEP_BUCKETS // self.num_steps
        self.bucket_sum.index_add_(0, buckets, losses.double())
        self.bucket_count.index_add_(0, buckets, torch.ones_like(losses, dtype=torch.float64))
        self.bar.update(1)

    def skipped_step(self) -> None:
        self.skipped += 1

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def line(self, step: int, lr: float, batch_size: int, elapsed: float) -> dict:
        """Write one metrics.jsonl record (and tracker entry) for the steps since the last."""
        now = time.perf_counter()
        rate = self.steps * batch_size / max(1e-9, now - self.start - self.paused)
        loss, grad_norm = (self.sums / max(1, self.steps)).tolist()
        record = {
            "step": step,
            "loss": loss if self.steps else float("nan"),
            "grad_norm": grad_norm if self.steps else float("nan"),
            "lr": lr,
            "images_per_s": round(rate, 2),
            "elapsed_s": round(elapsed, 3),
        }
        if self.skipped:
            record["skipped_steps"] = self.skipped
        sums, counts = self.bucket_sum.tolist(), self.bucket_count.tolist()
        for b in range(TIMESTEP_BUCKETS):
            if counts[b] > 0:
                record[f"loss_t_q{b + 1}"] = sums[b] / counts[b]
        self.bar.set_postfix(loss=f"{self.smoothed:.4f}", img_s=f"{rate:.0f}")
        if self.write:
            self.run.append_metrics(record)
            if self.tracker is not None:
                self.tracker.scalars(step, record)
        self._reset(now)
        return record

    def close(self) -> None:
        self.bar.close()
