"""The training loop: Algorithm 1 of Ho et al. (2020) with AdamW, warm-up, clipping and EMA.

All state that a step changes lives in :class:`~ddpmkit.train_state.TrainState`; every file goes
through :class:`~ddpmkit.rundir.RunDir`. A checkpoint is the state between two steps, so a run
stopped at any moment (Ctrl-C, SIGTERM, SIGKILL, a crash) and resumed continues bit for bit as
if it had not stopped. A step whose loss or gradient norm is not finite is skipped and counted.
Multi-GPU: ``torchrun --nproc_per_node N -m ddpmkit.cli train ...``; each process draws
batch_size/N images and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ddpmkit.batch_draws import BatchDraws, draw_batch, global_rows
from ddpmkit.config import RunConfig
from ddpmkit.data import ImageDataset, from_uint8, load_dataset
from ddpmkit.data.loader import (
    DeviceBatches,
    Position,
    StreamBatches,
    choose_hold,
    default_workers,
    epoch_share,  # noqa: F401 (re-exported)
    next_indices,
)
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError, DataError, DdpmkitError, RunDirError
from ddpmkit.generate import SampleRequest, generate
from ddpmkit.interrupts import EXIT_CODES, StopRequests, signal_name
from ddpmkit.nn import UNet
from ddpmkit.precision import bf16_autocast_supported
from ddpmkit.run.loaded import resolve_device
from ddpmkit.rundir import CLASSES_FILE, RunDir
from ddpmkit.sharding import join_process_group
from ddpmkit.timesteps import make_timestep_sampler
from ddpmkit.trackers import check_installed, make_tracker
from ddpmkit.train_state import TrainState
from ddpmkit.viz import save_grid

TIMESTEP_BUCKETS = 4  # loss is also logged per quartile of t


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


def prepare_run(
    config_file: str | None = None,
    overrides: list[str] = (),
    data: str | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
) -> tuple[RunConfig, Path]:
    """The config and run directory of ``ddpm train``: defaults → ``config_file`` →
    ``overrides`` (``data`` is ``data.source``); ``resume`` continues a run in place from its
    saved config; without ``out`` a new ``runs/<data>-<date>-<time>``."""
    import re
    import time

    from ddpmkit.config import resolve_config

    overrides = [*overrides, *([f"data.source={data}"] if data is not None else [])]
    if resume:
        if out and Path(out) != Path(resume):
            raise ConfigError("--resume continues RUN_DIR in place: drop --out")
        base = RunDir(resume).read_config_dict()
        return resolve_config(config_file, overrides, base=base), Path(resume)
    config = resolve_config(config_file, overrides)
    if out:
        return config, Path(out)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(config.data.source).stem).strip("_")
    return config, Path("runs") / f"{stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"


def learning_rate(step: int, config, time_fraction: float = 0.0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant or cosine decay to 0. The
    decay follows the larger of the share of steps done and ``time_fraction``, the share of the
    time limit used, so a time-limited run ends its decay when its time runs out."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, max((step - config.warmup_steps) / span, time_fraction))
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """EMA decay at optimizer step ``step`` (0-based); with warm-up min(decay, (1+k)/(10+k))."""
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def training_precision(device: torch.device, amp: bool, amp_dtype: str) -> tuple:
    """``(autocast dtype or None, use a GradScaler, note)`` for ``train.amp``/``amp_dtype``:
    ``auto`` is bfloat16 where the device has it natively (:func:`bf16_autocast_supported`:
    compute capability >= 8, CPUs with AVX-512 BF16/AMX), float16 with a GradScaler on other
    CUDA GPUs (V100, T4: bf16 is only emulated there), else float32 (with a note why)."""
    if not amp:
        return None, False, None
    if amp_dtype == "bf16":
        return torch.bfloat16, False, None
    if amp_dtype == "fp16":
        return torch.float16, True, None
    if bf16_autocast_supported(device):
        return torch.bfloat16, False, None
    if device.type == "cuda":
        return torch.float16, True, None
    return None, False, f"train.amp: {device} has no fast bfloat16 support; training in float32"


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


class _Interval:
    """Sums between two log lines: loss, gradient norm, loss per quartile of t, skipped steps.
    The sums stay on the training device; they reach the host once per log line."""

    def __init__(self, started: float, device: torch.device) -> None:
        self.start = started
        self.steps = 0
        self.skipped = 0
        self.paused = 0.0  # time spent on grids and checkpoints, left out of images/s
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, gradient norm
        self.bucket_sum = torch.zeros(TIMESTEP_BUCKETS, dtype=torch.float64, device=device)
        self.bucket_count = torch.zeros(TIMESTEP_BUCKETS, dtype=torch.float64, device=device)

    def add(self, loss_and_norm: torch.Tensor, buckets: torch.Tensor, losses: torch.Tensor):
        self.sums += loss_and_norm
        self.steps += 1
        self.bucket_sum.index_add_(0, buckets, losses)
        self.bucket_count.index_add_(0, buckets, torch.ones_like(losses))

    def record(self, step: int, lr: float, batch_size: int, now: float, elapsed: float) -> dict:
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
        return record


class Trainer:
    """Trains the U-Net of ``config`` and keeps the run directory ``run_dir`` up to date."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        config.validate()
        self.config = config
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.progress = progress
        self.rank, local_rank, self.world = _distributed()
        self.is_main = self.rank == 0
        self.device = self._join_processes(local_rank)
        checkpoint = self._previous_checkpoint(resume)
        dataset = self._load_data(progress)
        self.labels, self.class_names = self._class_labels(dataset)
        self.diffusion = GaussianDiffusion.from_config(config.diffusion)
        self.state = self._new_state()
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint, self.rank, self.world)
        self.start_step = self.state.step
        self._saved_step = self.start_step if checkpoint is not None else None
        self._position_the_stream()
        if self.is_main:  # drop the log lines of steps that this run is going to redo
            self.run.truncate_metrics(self.start_step)
        check_installed(config.train.tracker)  # every rank, before any work; rank 0 tracks
        self.tracker = (
            make_tracker(config.train.tracker, self.run, config, self.start_step)
            if self.is_main
            else None
        )
        self.train_model = self._training_model()

    def _join_processes(self, local_rank: int) -> torch.device:
        """The training device; under torchrun, after joining the process group (one GPU per
        process) and checking that the global batch splits evenly."""
        tc = self.config.train
        if self.world == 1:
            return resolve_device(tc.device)
        if tc.batch_size % (self.world * tc.grad_accum):
            raise ConfigError(
                f"train.batch_size ({tc.batch_size}) must split evenly over {self.world} "
                f"processes × {tc.grad_accum} accumulation steps"
            )
        join_process_group()  # left to the caller afterwards: the command destroys it
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device

    def _previous_checkpoint(self, resume: bool):
        """The checkpoint to resume from (None: a new run, or one stopped before its first
        checkpoint); a run directory already holding a run needs ``resume``."""
        tc = self.config.train
        checkpoint = None
        if self.run.path.is_dir() and self.run.has_checkpoint():
            if not resume:
                step = self.run.load_checkpoint(files=()).step
                raise RunDirError(
                    f"'{self.run_dir}' already holds a run at step {step}: resume it with "
                    f"`ddpm train --resume {self.run_dir}` or choose another --out"
                )
            checkpoint = self.run.load_checkpoint()
        elif resume and not self.run.has_config():
            raise RunDirError(f"nothing to resume: '{self.run_dir}' holds no run")
        if checkpoint is not None and checkpoint.step > tc.steps:
            raise ConfigError(
                f"the run in '{self.run_dir}' is already at step {checkpoint.step}, past "
                f"train.steps={tc.steps}: give train.steps >= {checkpoint.step}"
            )
        return checkpoint

    def _new_state(self) -> TrainState:
        """A fresh TrainState: the U-Net initialised from ``train.seed`` alone, its EMA copy,
        AdamW, the sampler of t, the GradScaler of float16; the state seeds this process's
        global generators (:meth:`TrainState.seed_process`)."""
        tc = self.config.train
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tc.seed)
            model = UNet(self.config.model).to(self.device)
        if tc.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._autocast_dtype, scaled, self._precision_note = training_precision(
            self.device, tc.amp, tc.amp_dtype
        )
        state = TrainState(
            model=model,
            ema=copy.deepcopy(model).requires_grad_(False).eval(),
            optimizer=torch.optim.AdamW(
                model.parameters(),
                lr=tc.lr,
                betas=(tc.adam_beta1, tc.adam_beta2),
                weight_decay=tc.weight_decay,
                # one fused kernel for all parameters on CUDA; the CPU keeps the default
                fused=True if self.device.type == "cuda" else None,
            ),
            timestep_sampler=None
            if tc.timestep_sampler == "uniform"
            else make_timestep_sampler(tc.timestep_sampler, self.diffusion.num_steps),
            seed=tc.seed,
            device=self.device,
            scaler=torch.amp.GradScaler(self.device.type) if scaled else None,
        )
        state.seed_process(self.rank)
        return state

    def _position_the_stream(self) -> None:
        """A streaming loader starts at the state's data position (epoch order and cursor)."""
        if isinstance(self.batches, StreamBatches):
            tc = self.config.train
            micro = tc.batch_size // self.world // tc.grad_accum
            position = Position(self.state.order, self.state.cursor, self.state.epoch)
            self.batches.start(position, micro)

    def _training_model(self) -> torch.nn.Module:
        """The model the steps call: wrapped in DDP under torchrun, compiled if asked."""
        model: torch.nn.Module = self.state.model
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.config.train.compile:
            model = torch.compile(model)
        return model

    def _load_data(self, progress: bool) -> ImageDataset:
        """Load (or decode into the cache) the training images, rank 0 first under DDP so that
        one process decodes and the others find the cache; then hold them on the device or
        stream them (``data.hold``), and describe both in ``dataset_description``."""
        data = self.config.data
        dataset = load_dataset(data, progress=progress and self.is_main, distributed=True)
        images = dataset.images_uint8
        if len(images) == 0:
            raise DataError(f"data source '{data.source}' holds no images")
        self.data_count = len(images)
        hold, why = choose_hold(data.hold, images.numel(), self.device)
        if hold == "device":
            self.batches: DeviceBatches | StreamBatches = DeviceBatches(
                images, self.device, mapped=dataset.cache_file is not None
            )
            where = f"held on {self.device} ({why})"
        else:
            workers = data.loader_workers
            if workers < 0:
                workers = default_workers(self.device, self.world)
            self.batches = StreamBatches(
                images,
                dataset.cache_file,
                self.device,
                workers,
                dict(
                    seed=self.config.train.seed, count=len(images), rank=self.rank, world=self.world
                ),
            )
            origin = f"the cache {dataset.cache_file.parent}" if dataset.cache_file else "memory"
            helpers = (
                f"{workers} loader worker{'s' if workers != 1 else ''}"
                if workers
                else "the training process"
            )
            where = f"streamed from {origin} by {helpers} ({why})"
        self.dataset_description = f"{dataset.describe()}; {where}"
        return dataset

    def _class_labels(self, dataset: ImageDataset) -> tuple[torch.Tensor | None, list[str] | None]:
        """The labels a class-conditional run trains on, and ``model.num_classes`` derived from
        them (the U-Net adds one "null" class for label dropout)."""
        tc, model = self.config.train, self.config.model
        if not tc.conditional:
            if model.num_classes:
                raise ConfigError("model.num_classes is set: train it with train.conditional=true")
            return None, None
        labels = dataset.labels
        if labels is None:
            raise DataError(
                f"train.conditional=true needs class labels, and '{self.config.data.source}' "
                "has none (labelled sources: digits, class subfolders, hf: ClassLabel, npz "
                "labels, CIFAR)"
            )
        names, count = dataset.class_names, dataset.num_classes
        if model.num_classes and model.num_classes != count:
            raise ConfigError(
                f"model.num_classes={model.num_classes} but the data has {count} classes"
            )
        self.config.model = dataclasses.replace(model, num_classes=count)
        names = list(names) if names else [str(k) for k in range(count)]
        return labels.to(torch.long).to(self.device), names

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

    # ------------------------------------------------------------------ one step
    def _next_batch(self, size: int, draws: BatchDraws) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``size`` images of a fresh random permutation per epoch, scaled to [-1, 1] and
        flipped where ``draws`` say, and their labels for a conditional run, those that
        ``draws`` drop replaced by the null class (Ho & Salimans 2022, Algorithm 1)."""
        index = next_indices(
            self.state,
            size,
            seed=self.config.train.seed,
            count=self.data_count,
            rank=self.rank,
            world=self.world,
        )
        batch = from_uint8(self.batches.fetch(index))
        if self.config.train.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.config.data.random_flip:
            flip = draws.flip.to(batch.device).view(-1, 1, 1, 1)
            batch = torch.where(flip, batch.flip(-1), batch)
        if self.labels is None:
            return batch, None
        labels = self.labels[index.to(self.labels.device)]
        labels[draws.drop_label.to(labels.device)] = self.config.model.num_classes  # null class
        return batch, labels

    def _forward_backward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients of one step over ``grad_accum`` micro-batches: ([loss, gradient norm before
        clipping] as one device tensor, t and per-example losses of every example). Nothing
        here waits for the device."""
        tc, state = self.config.train, self.state
        micro = tc.batch_size // self.world // tc.grad_accum
        state.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        ts, losses = [], []
        data = self.config.data
        scaler = state.scaler
        for index in range(tc.grad_accum):
            draws = draw_batch(
                seed=tc.seed,
                attempt=state.step + state.skipped_steps,
                rows=global_rows(index, tc.grad_accum, tc.batch_size, self.rank, self.world),
                batch_size=tc.batch_size,
                image_shape=(data.channels, data.image_size, data.image_size),
                num_steps=self.diffusion.num_steps,
                device=self.device,
                timestep_sampler=state.timestep_sampler,
                label_dropout=tc.label_dropout if self.labels is not None else 0.0,
            )
            x0, labels = self._next_batch(micro, draws)
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
                dtype = self._autocast_dtype
                with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                    out = self.diffusion.training_loss(
                        model, x0, t=draws.t, noise=draws.noise, weights=draws.weights
                    )
                part = out.loss / tc.grad_accum
                (scaler.scale(part) if scaler is not None else part).backward()
            loss += part.detach().float()
            ts.append(out.t.detach())
            losses.append(out.per_example.detach().float())
        if scaler is not None:
            scaler.unscale_(state.optimizer)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm)
        return torch.stack([loss, grad_norm.float()]), torch.cat(ts), torch.cat(losses)

    def _update_timestep_sampler(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Feed the importance sampler every process's (t, loss) pairs, so all ranks agree."""
        if self.world > 1:
            ts = [torch.empty_like(t) for _ in range(self.world)]
            ls = [torch.empty_like(losses) for _ in range(self.world)]
            dist.all_gather(ts, t)
            dist.all_gather(ls, losses)
            t, losses = torch.cat(ts), torch.cat(ls)
        self.state.timestep_sampler.update(t, losses)

    def _any_process(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the processes (one all-reduce), so that all ranks decide alike."""
        if self.world == 1:
            return list(flags)
        value = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return [bool(v) for v in value.tolist()]

    def _time_fraction(self) -> float:
        """Share of ``train.time_limit_min`` used by ``state.elapsed_s`` (0 without a limit);
        under DDP the largest over the processes, so that all of them stop at the same step."""
        limit = self.config.train.time_limit_min
        if not limit:
            return 0.0
        fraction = self.state.elapsed_s / (60.0 * limit)
        if self.world > 1:
            value = torch.tensor([fraction], dtype=torch.float64, device=self.device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            fraction = value.item()
        return fraction

    # ------------------------------------------------------------------ files
    def save_checkpoint(self) -> None:
        """Write the state of the last completed step (every rank's generators included)."""
        if self._saved_step == self.state.step:
            return
        rank_state = self.state.rank_state()
        ranks = [rank_state]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, rank_state)
        failed: Exception | None = None
        if self.is_main:
            tensors, metadata, state = self.state.state_dict(ranks)
            try:
                self.run.save_checkpoint(
                    self.state.step, tensors, metadata, state, self.config.train.keep_checkpoints
                )
            except DdpmkitError as err:
                failed = err
        if self._any_process(failed is not None)[0]:
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

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Run steps until ``train.steps`` (or the time limit), then save and sample a grid.
        SIGINT/SIGTERM stop at the next step boundary with the state of that step saved."""
        tc, state = self.config.train, self.state
        if self.is_main:
            self.run.write_config(self.config)
            if self.class_names is not None:
                self.run.write_json(CLASSES_FILE, self.class_names)
        if self._precision_note and self.is_main:
            warnings.warn(self._precision_note, stacklevel=2)
        self._bar = tqdm(
            total=tc.steps,
            initial=state.step,
            desc="training",
            unit="step",
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
        )
        self._clock = (time.perf_counter(), state.elapsed_s)
        self._interval = _Interval(self._clock[0], self.device)
        self._smoothed, self._last_loss = None, float("nan")
        self._fraction = self._time_fraction()
        state.model.train()
        with StopRequests() as stop:
            while not self._finished():
                updated = self._step()
                self._tick()
                if updated and (state.step % tc.log_every == 0 or self._finished()):
                    self._log()
                if self._any_process(stop.requested)[0]:
                    self._bar.close()
                    self.save_checkpoint()
                    self._close()
                    raise TrainingInterrupted(self.run_dir, state.step, stop.received or 2)
                if updated and not self._finished():
                    self._periodic_work()
        self._bar.close()
        grid_path = None
        if self._saved_step != state.step:
            self.save_checkpoint()
            grid_path = self.sample_grid(state.step)
        self._close()
        return TrainResult(self.run_dir, state.step, self._last_loss, state.elapsed_s, grid_path)

    def _finished(self) -> bool:
        return self.state.step >= self.config.train.steps or self._fraction >= 1.0

    def _step(self) -> bool:
        """One step of Algorithm 1. A non-finite loss or gradient norm on any process skips the
        update (weights, EMA and step count stay), counts towards ``train.max_bad_steps`` and
        returns False. With float16 and a GradScaler, a non-finite gradient of a finite loss is
        the scaler's overflow: the step is skipped and the scale lowered, but it is not a bad
        step. One host synchronisation per step: the two numbers that decide it."""
        tc, state = self.config.train, self.state
        self._lr = learning_rate(state.step, tc, self._fraction)
        for group in state.optimizer.param_groups:
            group["lr"] = self._lr
        loss_and_norm, ts, losses = self._forward_backward()
        loss, grad_norm = loss_and_norm.tolist()
        bad_loss, bad_norm = self._any_process(
            not math.isfinite(loss), not math.isfinite(grad_norm)
        )
        scaler = state.scaler
        if bad_loss or (bad_norm and scaler is None):
            state.optimizer.zero_grad(set_to_none=True)
            state.bad_steps += 1
            state.skipped_steps += 1
            self._interval.skipped += 1
            if state.bad_steps >= tc.max_bad_steps:
                self._bar.close()
                raise self._diverged(loss, grad_norm)
            return False
        if scaler is not None:
            scaler.step(state.optimizer)  # skips the update when the scaled gradients overflowed
            scaler.update()
            if bad_norm:
                state.optimizer.zero_grad(set_to_none=True)
                state.skipped_steps += 1
                self._interval.skipped += 1
                return False
        else:
            state.optimizer.step()
        update_ema(state.ema, state.model, ema_decay(state.step, tc.ema_decay, tc.ema_warmup))
        if state.timestep_sampler is not None:
            self._update_timestep_sampler(ts, losses)
        state.step += 1
        state.bad_steps = 0
        self._last_loss = loss
        self._smoothed = loss if self._smoothed is None else 0.98 * self._smoothed + 0.02 * loss
        buckets = ts * TIMESTEP_BUCKETS // self.diffusion.num_steps
        self._interval.add(loss_and_norm.double(), buckets, losses.double())
        self._bar.update(1)
        return True

    def _tick(self) -> None:
        """Training time (across resumes) and the share of the time limit used."""
        started, before = self._clock
        self.state.elapsed_s = before + time.perf_counter() - started
        self._fraction = self._time_fraction()

    def _log(self) -> None:
        """One metrics.jsonl record (and tracker entry) for the steps since the last one."""
        now, tc = time.perf_counter(), self.config.train
        record = self._interval.record(
            self.state.step, self._lr, tc.batch_size, now, self.state.elapsed_s
        )
        self._bar.set_postfix(loss=f"{self._smoothed:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if self.is_main:
            self.run.append_metrics(record)
            if self.tracker is not None:
                self.tracker.scalars(self.state.step, record)
        self._interval = _Interval(now, self.device)

    def _periodic_work(self) -> None:
        """The sample grid and the checkpoint when their step comes (their time is left out of
        images/s)."""
        tc, step = self.config.train, self.state.step
        pause_start = time.perf_counter()
        if tc.sample_every and step % tc.sample_every == 0:
            self.sample_grid(step)
            self.state.model.train()
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            self.save_checkpoint()
        self._interval.paused += time.perf_counter() - pause_start

    def _close(self) -> None:
        self.batches.close()
        if self.tracker is not None:
            self.tracker.close()
        if self.world > 1:
            dist.barrier()
