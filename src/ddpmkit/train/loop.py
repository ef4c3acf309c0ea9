"""The training loop: Algorithm 1 of Ho et al. (2020) with AdamW, warm-up, clipping and EMA.

Read :meth:`Trainer.train` top to bottom: learning rate, micro-batches (``no_sync`` under DDP),
loss, non-finite guard, optimizer, EMA, log, grid, checkpoint, stop. Everything a step changes
lives in :class:`~ddpmkit.train.state.TrainState`; every file goes through
:class:`~ddpmkit.rundir.RunDir`. A checkpoint is the state between two steps, so a run stopped at
any moment (Ctrl-C, SIGTERM, SIGKILL, a crash) and resumed continues bit for bit as if it had not
stopped. Multi-GPU: ``torchrun --nproc_per_node N -m ddpmkit.cli train ...``; each process draws
batch_size/N images and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpmkit.batch_draws import draw_batch, global_rows
from ddpmkit.config import RunConfig
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import DdpmkitError, RunDirError
from ddpmkit.generate import SampleRequest, generate
from ddpmkit.interrupts import EXIT_CODES, StopRequests, signal_name
from ddpmkit.rundir import CLASSES_FILE, RunDir
from ddpmkit.trackers import check_installed, make_tracker
from ddpmkit.train.batches import TrainingBatches
from ddpmkit.train.ema import decay_at, update_ema
from ddpmkit.train.log import TrainingLog
from ddpmkit.train.lr import learning_rate
from ddpmkit.train.precision import training_precision
from ddpmkit.train.processes import Processes
from ddpmkit.train.setup import new_state, previous_checkpoint, training_model
from ddpmkit.viz import save_grid


class TrainingDiverged(DdpmkitError):
    """The loss or the gradient norm stayed NaN or infinite for train.max_bad_steps steps."""


class TrainingInterrupted(Exception):
    """Raised after SIGINT or SIGTERM, once the last completed step is saved."""

    def __init__(self, run_dir: Path, step: int, signum: int) -> None:
        super().__init__(
            f"{signal_name(signum)}: stopped at step {step}; checkpoint saved in {run_dir}"
        )
        self.run_dir = run_dir
        self.step = step
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float
    elapsed_s: float
    grid_path: Path | None


class Trainer:
    """Trains the U-Net of ``config`` and keeps the run directory ``run_dir`` up to date."""

    def __init__(
        self, config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
    ) -> None:
        config.validate()
        self.config, self.run, self.progress = config, RunDir(run_dir), progress
        self.run_dir = self.run.path
        self.processes = Processes(config.train)
        self.rank, self.world, self.is_main = (
            self.processes.rank,
            self.processes.world,
            self.processes.is_main,
        )
        self.device = self.processes.device
        checkpoint = previous_checkpoint(self.run, config.train, resume)
        # the data set first: a conditional run's model takes its number of classes from it
        self.data = TrainingBatches(
            config, self.device, rank=self.rank, world=self.world, progress=progress
        )
        self.diffusion = GaussianDiffusion.from_config(config.diffusion)
        self.autocast_dtype, scaled, self.precision_note = training_precision(
            self.device, config.train.amp, config.train.amp_dtype
        )
        self.state = new_state(config, self.diffusion, self.device, scaled=scaled, rank=self.rank)
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint, self.rank, self.world)
        self.start_step = self.state.step
        self._saved_step = self.start_step if checkpoint is not None else None
        self.data.start(self.state.position)
        if self.is_main:  # drop the log lines of steps that this run is going to redo
            self.run.truncate_metrics(self.start_step)
        check_installed(config.train.tracker)  # every rank, before any work; rank 0 tracks
        self.tracker = (
            make_tracker(config.train.tracker, self.run, config, self.start_step)
            if self.is_main
            else None
        )
        self.train_model = training_model(self.state.model, config.train, self.device, self.world)

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Run steps until ``train.steps`` (or the time limit), then save and sample a grid.
        SIGINT/SIGTERM stop at the next step boundary with the state of that step saved."""
        tc, state = self.config.train, self.state
        self._write_run_files()
        log = self._log = self._open_log()
        started, before = time.perf_counter(), state.elapsed_s
        fraction = self._time_fraction()
        state.model.train()
        with StopRequests() as stop:
            while state.step < tc.steps and fraction < 1.0:
                lr = learning_rate(state.step, tc, fraction)
                for group in state.optimizer.param_groups:
                    group["lr"] = lr
                loss_and_norm, t, losses = self._forward_backward()
                updated = self._update(loss_and_norm, t, losses)
                state.elapsed_s = before + time.perf_counter() - started
                fraction = self._time_fraction()
                finished = state.step >= tc.steps or fraction >= 1.0
                if updated and (state.step % tc.log_every == 0 or finished):
                    log.line(state.step, lr, tc.batch_size, state.elapsed_s)
                if self.processes.any(stop.requested)[0]:
                    log.close()
                    self.save_checkpoint()
                    self._close()
                    raise TrainingInterrupted(self.run_dir, state.step, stop.received or 2)
                if updated and not finished:
                    paused = time.perf_counter()
                    if tc.sample_every and state.step % tc.sample_every == 0:
                        self.sample_grid(state.step)
                        state.model.train()
                    if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                        self.save_checkpoint()
                    log.pause(time.perf_counter() - paused)
        log.close()
        grid_path = None
        if self._saved_step != state.step:
            self.save_checkpoint()
            grid_path = self.sample_grid(state.step)
        self._close()
        return TrainResult(self.run_dir, state.step, log.last_loss, state.elapsed_s, grid_path)

    # ------------------------------------------------------------------ one step
    def _forward_backward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients of one step over ``grad_accum`` micro-batches: ([loss, gradient norm before
        clipping] as one device tensor, t and per-example losses of every example). Nothing
        here waits for the device."""
        tc, state, data = self.config.train, self.state, self.config.data
        state.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        ts, losses = [], []
        for index in range(tc.grad_accum):
            draws = draw_batch(
                seed=tc.seed,
                attempt=state.attempt,
                rows=global_rows(index, tc.grad_accum, tc.batch_size, self.rank, self.world),
                batch_size=tc.batch_size,
                image_shape=(data.channels, data.image_size, data.image_size),
                num_steps=self.diffusion.num_steps,
                device=self.device,
                timestep_sampler=state.timestep_sampler,
                label_dropout=tc.label_dropout if self.data.labels is not None else 0.0,
            )
            x0, labels = self.data.next(draws)
            model = self.train_model
            if labels is not None:

                def model(x_t, t, _labels=labels):
                    return self.train_model(x_t, t, _labels)

            last = index == tc.grad_accum - 1
            # under DDP, gradients are all-reduced once per step, on the last micro-batch only
            # (DDP decides in the forward pass, so no_sync covers forward and backward)
            sync = (
                contextlib.nullcontext() if last or self.world == 1 else self.train_model.no_sync()
            )
            with sync:
                dtype = self.autocast_dtype
                with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                    out = self.diffusion.training_loss(
                        model, x0, t=draws.t, noise=draws.noise, weights=draws.weights
                    )
                part = out.loss / tc.grad_accum
                (state.scaler.scale(part) if state.scaler is not None else part).backward()
            loss += part.detach().float()
            ts.append(out.t.detach())
            losses.append(out.per_example.detach().float())
        if state.scaler is not None:
            state.scaler.unscale_(state.optimizer)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm)
        return torch.stack([loss, grad_norm.float()]), torch.cat(ts), torch.cat(losses)

    def _update(self, loss_and_norm: torch.Tensor, t: torch.Tensor, losses: torch.Tensor) -> bool:
        """Apply the step's gradients: optimizer, EMA, sampler of t, counters. A non-finite loss
        or gradient norm on any process skips the update (weights, EMA and step count stay),
        counts towards ``train.max_bad_steps`` and returns False. With float16's GradScaler, a
        non-finite gradient of a finite loss is the scaler's overflow: the step is skipped and
        the scale lowered, but it is not a bad step. One host synchronisation per step: the two
        numbers that decide it."""
        tc, state = self.config.train, self.state
        loss, grad_norm = loss_and_norm.tolist()
        bad_loss, bad_norm = self.processes.any(
            not math.isfinite(loss), not math.isfinite(grad_norm)
        )
        scaler = state.scaler
        if bad_loss or (bad_norm and scaler is None):
            state.optimizer.zero_grad(set_to_none=True)
            state.skipped(bad=True)
            self._log.skipped_step()
            if state.bad_steps >= tc.max_bad_steps:
                self._log.close()
                raise self._diverged(loss, grad_norm)
            return False
        if scaler is not None:
            scaler.step(state.optimizer)  # skips the update when the scaled gradients overflowed
            scaler.update()
            if bad_norm:
                state.optimizer.zero_grad(set_to_none=True)
                state.skipped(bad=False)
                self._log.skipped_step()
                return False
        else:
            state.optimizer.step()
        update_ema(state.ema, state.model, decay_at(state.step, tc))
        # a sampler that learns from the losses sees every process's (t, loss): all ranks agree
        if state.timestep_sampler is not None and state.timestep_sampler.learns:
            state.timestep_sampler.update(self.processes.gather(t), self.processes.gather(losses))
        state.updated()
        self._log.updated(loss, loss_and_norm, t, losses)
        return True

    def _time_fraction(self) -> float:
        """Share of ``train.time_limit_min`` used by ``state.elapsed_s`` (0 without a limit);
        under DDP the largest over the processes, so that all of them stop at the same step."""
        limit = self.config.train.time_limit_min
        if not limit:
            return 0.0
        return self.processes.largest(self.state.elapsed_s / (60.0 * limit))

    def _diverged(self, loss: float, grad_norm: float) -> TrainingDiverged:
        steps = self.run.checkpoint_steps()
        last = (
            f"the last good checkpoint is {self.run.checkpoint_path(steps[-1])}"
            if steps
            else "no checkpoint was written yet"
        )
        return TrainingDiverged(
            f"{self.state.bad_steps} steps in a row with a non-finite loss or gradient norm "
            f"after step {self.state.step} (loss {loss}, gradient norm {grad_norm}): lower "
            f"train.lr or raise train.warmup_steps; {last}"
        )

    # ------------------------------------------------------------------ files
    def _write_run_files(self) -> None:
        if self.is_main:
            self.run.write_config(self.config)
            if self.data.class_names is not None:
                self.run.write_json(CLASSES_FILE, self.data.class_names)
        if self.precision_note and self.is_main:
            warnings.warn(self.precision_note, stacklevel=3)

    def _open_log(self) -> TrainingLog:
        bar = tqdm(
            total=self.config.train.steps,
            initial=self.state.step,
            desc="training",
            unit="step",
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
        )
        return TrainingLog(
            self.run, self.tracker, self.device, self.diffusion.num_steps, bar, self.is_main
        )

    def save_checkpoint(self) -> None:
        """Write the state of the last completed step (every rank's generators included)."""
        if self._saved_step == self.state.step:
            return
        ranks = self.processes.gather_objects(self.state.rank_state())
        failed: Exception | None = None
        if self.is_main:
            tensors, metadata, state = self.state.state_dict(ranks)
            try:
                self.run.save_checkpoint(
                    self.state.step, tensors, metadata, state, self.config.train.keep_checkpoints
                )
            except DdpmkitError as err:
                failed = err
        if self.processes.any(failed is not None)[0]:
            raise failed or RunDirError("rank 0 could not write the checkpoint")
        self._saved_step = self.state.step

    def sample_grid(self, step: int) -> Path | None:
        """Sample the configured grid from the EMA weights and write samples/step_NNNNNN.png."""
        if not self.is_main:
            return None
        sc = self.config.sample
        classes = self.config.model.num_classes
        per_class = max(1, sc.num_samples // classes) if classes else sc.num_samples
        labels = [k for k in range(classes) for _ in range(per_class)] if classes else None
        request = SampleRequest(
            n=len(labels) if labels else sc.num_samples,
            labels=labels,  # a conditional run's grid: a row per class, never the null class
            null_label=classes if classes else None,
            sampler=sc.sampler,
            # the grid's step count is capped at the model's T (the default 100 exceeds a short T)
            steps=None if sc.steps is None else min(sc.steps, self.diffusion.num_steps),
            eta=sc.eta,
            clip_x0=sc.clip_x0,
            seed=self.config.train.seed,
        )
        data = self.config.data
        shape = (data.channels, data.image_size, data.image_size)
        result = generate(self.ema, self.diffusion, shape, request, self.device, progress=False)
        path = save_grid(result.images, self.run.grid_path(step), per_class if classes else None)
        if self.tracker is not None:
            self.tracker.image_grid(step, "samples", result.images)
        return path

    def _close(self) -> None:
        self.data.close()
        if self.tracker is not None:
            self.tracker.close()
        self.processes.barrier()

    # ------------------------------------------------------------------ short names
    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    @property
    def ema(self) -> torch.nn.Module:
        return self.state.ema

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    @property
    def dataset_description(self) -> str:
        return self.data.description
