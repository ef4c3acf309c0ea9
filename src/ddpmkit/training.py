"""The training loop: AdamW with warm-up, gradient clipping, EMA, grids, checkpoints, resume, DDP.

Algorithm 1 of Ho et al. (2020) run for a fixed number of steps. Multi-GPU: launch with
``torchrun --nproc_per_node N -m ddpmkit.cli train ...``; each process draws batch_size/N images
and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ddpmkit import checkpoint as ckpt
from ddpmkit.config import RunConfig
from ddpmkit.data import from_uint8, load_dataset, random_hflip
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError, DataError, DdpmkitError, RunDirError
from ddpmkit.generate import SampleRequest, generate, resolve_device
from ddpmkit.nn import UNet
from ddpmkit.tb_logging import TensorBoardLogger
from ddpmkit.timesteps import LossSecondMomentSampler, make_timestep_sampler
from ddpmkit.viz import save_grid

TIMESTEP_BUCKETS = 4  # loss is also logged per quartile of t


class TrainingDiverged(DdpmkitError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C, once the checkpoint of the current step is safely on disk."""

    def __init__(self, run_dir: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}")
        self.run_dir = run_dir
        self.step = step


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float
    elapsed_s: float
    grid_path: Path | None


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


@contextlib.contextmanager
def _defer_sigint() -> Iterator[None]:
    """Hold back Ctrl-C until the block is done, then raise KeyboardInterrupt.

    Wraps the optimizer step, the EMA update, the step count and its metrics line, so that an
    interrupt never saves weights that are half-updated or one step ahead of the step written in
    state.json, nor loses the log line of a step it saves."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and previous is not signal.SIG_IGN:
        if callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
        else:
            raise KeyboardInterrupt


def _global_rng_state(device: torch.device) -> torch.Tensor:
    """State of the default generator that dropout draws from on ``device``."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return torch.get_rng_state()


def _set_global_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)
    else:
        torch.set_rng_state(state)


def bf16_autocast_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast pays off: CUDA GPUs with bf16, CPUs whose oneDNN has bf16
    kernels (AVX-512 BF16 or AMX); elsewhere it would emulate bf16 slowly."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


class Trainer:
    """Trains the U-Net of ``config`` and keeps ``run_dir`` up to date."""

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
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.rank, local_rank, self.world = _distributed()
        tc = config.train
        if self.world > 1:
            if tc.batch_size % (self.world * tc.grad_accum):
                raise ConfigError(
                    f"train.batch_size ({tc.batch_size}) must split evenly over {self.world} "
                    f"processes × {tc.grad_accum} accumulation steps"
                )
            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                dist.init_process_group(backend)
            self.device = (
                torch.device("cuda", local_rank)
                if torch.cuda.is_available()
                else torch.device("cpu")
            )
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        else:
            self.device = resolve_device(tc.device)
        self.is_main = self.rank == 0

        state = ckpt.read_training_state(self.run_dir) if self.run_dir.exists() else None
        if state is not None and not resume:
            raise RunDirError(
                f"'{self.run_dir}' already holds a run at step {state.step}: resume it with "
                f"`ddpm train --resume {self.run_dir}` or choose another --out"
            )
        if resume and state is None:
            raise RunDirError(f"nothing to resume: '{self.run_dir}' has no saved checkpoint")
        if state is not None and state.step > tc.steps:
            raise ConfigError(
                f"the run in '{self.run_dir}' is already at step {state.step}, past "
                f"train.steps={tc.steps}: give train.steps >= {state.step}"
            )
        self.start_step = state.step if state else 0
        self.elapsed_before = state.elapsed_s if state else 0.0
        self.tensorboard: TensorBoardLogger | None = None
        if tc.tensorboard:  # every rank checks that TensorBoard is installed; rank 0 writes
            logger = TensorBoardLogger(self.run_dir, purge_step=self.start_step + 1)
            self.tensorboard = logger if self.is_main else None

        dataset = load_dataset(config.data, progress=progress and self.is_main)
        images = getattr(dataset, "images_uint8", None)
        if images is None or len(images) == 0:
            raise DataError(f"data source '{config.data.source}' holds no images")
        self.dataset_description = dataset.describe()
        self.images = images.to(self.device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tc.seed)
            self.model = UNet(config.model).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.diffusion = GaussianDiffusion.from_config(config.diffusion)
        self.timestep_sampler = (
            None
            if tc.timestep_sampler == "uniform"
            else make_timestep_sampler(tc.timestep_sampler, self.diffusion.num_steps)
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=tc.lr,
            betas=(tc.adam_beta1, tc.adam_beta2),
            weight_decay=tc.weight_decay,
        )
        self.data_gen = torch.Generator().manual_seed(tc.seed * 1000 + self.rank)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(tc.seed * 1000 + self.rank)
        torch.manual_seed(tc.seed * 1000 + self.rank)  # dropout draws from the global generator
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        if resume:
            ckpt.load_weights(self.run_dir, self.model, "model")
            ckpt.load_weights(self.run_dir, self.ema, "ema")
            rng = ckpt.load_optimizer(self.run_dir, self.optimizer)
            extra = ckpt.load_extra_tensors(self.run_dir)
            if isinstance(self.timestep_sampler, LossSecondMomentSampler) and (
                "timesteps.losses" in extra
            ):
                self.timestep_sampler.load_state_tensors(
                    {k.removeprefix("timesteps."): v for k, v in extra.items()}
                )
            if self.rank == 0:
                self._set_rng_state(rng)
            else:  # only rank 0's generators are saved: give the others fresh, distinct streams
                seed = (tc.seed * 1000 + self.rank) * 1_000_003 + self.start_step
                self.data_gen.manual_seed(seed)
                self.noise_gen.manual_seed(seed)
                torch.manual_seed(seed)
        self._truncate_metrics()  # a fresh run drops the lines of one that died before saving
        self.train_model: torch.nn.Module = self.model
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    # ------------------------------------------------------------------ state helpers
    def _rng_state(self) -> torch.Tensor:
        """Everything random about the rest of the run, as bytes: the data and noise generators,
        the global generator (dropout), and the epoch's permutation with the position in it.

        Layout: int64 header ``[-len(parts), cursor, *part sizes]``, then the parts."""
        parts = [
            self.data_gen.get_state(),
            self.noise_gen.get_state().cpu(),
            _global_rng_state(self.device).cpu(),
            self._order.to(torch.int64).contiguous().view(torch.uint8),
        ]
        header = torch.tensor([-len(parts), self._cursor, *(p.numel() for p in parts)])
        return torch.cat([header.to(torch.int64).view(torch.uint8), *parts])

    def _set_rng_state(self, state: torch.Tensor) -> None:
        first = int(state[:8].clone().view(torch.int64)[0])
        if first > 0:  # the first layout: [data size, data, noise]
            self.data_gen.set_state(state[8 : 8 + first].clone())
            self.noise_gen.set_state(state[8 + first :].clone())
            return
        header = state[: 8 * (2 - first)].clone().view(torch.int64).tolist()
        cursor, sizes = header[1], header[2:]
        offsets = [8 * len(header)]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        data, noise, global_state, order = (
            state[a:b].clone() for a, b in zip(offsets, offsets[1:], strict=False)
        )
        self.data_gen.set_state(data)
        # states of another device kind (a run moved between CPU and GPU) do not fit: those
        # streams restart from the seed
        if noise.numel() == self.noise_gen.get_state().numel():
            self.noise_gen.set_state(noise)
        if global_state.numel() == _global_rng_state(self.device).numel():
            _set_global_rng_state(self.device, global_state)
        self._order = order.view(torch.int64)
        self._cursor = cursor

    def _truncate_metrics(self) -> None:
        """Drop metric lines logged after the checkpoint we resume from."""
        path = self.run_dir / ckpt.METRICS_FILE
        if not path.is_file() or not self.is_main:
            return

        def step_of(line: str) -> int:
            try:
                return int(json.loads(line).get("step", 0))
            except (ValueError, AttributeError):  # a line cut short by a crash
                return self.start_step + 1

        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and step_of(line) <= self.start_step
        ]
        ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _next_batch(self, size: int) -> torch.Tensor:
        """``size`` images of a fresh random permutation per epoch, scaled to [-1, 1]."""
        parts, needed = [], size
        while needed > 0:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(len(self.images), generator=self.data_gen)
                self._cursor = 0
            take = self._order[self._cursor : self._cursor + needed]
            self._cursor += len(take)
            needed -= len(take)
            parts.append(take)
        index = torch.cat(parts).to(self.images.device)
        batch = from_uint8(self.images[index])
        if self.config.data.random_flip:
            batch = random_hflip(batch, self.data_gen)
        return batch

    def _update_timestep_sampler(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Feed the importance sampler every process's (t, loss) pairs, so all ranks agree."""
        if self.world > 1:
            ts, ls = (
                [torch.empty_like(t) for _ in range(self.world)],
                [torch.empty_like(losses) for _ in range(self.world)],
            )
            dist.all_gather(ts, t)
            dist.all_gather(ls, losses)
            t, losses = torch.cat(ts), torch.cat(ls)
        self.timestep_sampler.update(t, losses)

    def _time_fraction(self, started: float) -> float:
        """Share of ``train.time_limit_min`` used (0 without a limit); under DDP the largest over
        the processes, so that all of them stop at the same step."""
        limit = self.config.train.time_limit_min
        if not limit:
            return 0.0
        fraction = (self.elapsed_before + time.perf_counter() - started) / (60.0 * limit)
        if self.world > 1:
            value = torch.tensor([fraction], dtype=torch.float64, device=self.device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            fraction = value.item()
        return fraction

    def _save(self, step: int, elapsed: float) -> None:
        if not self.is_main:
            return
        ckpt.save_checkpoint(
            self.run_dir,
            self.config,
            self.model,
            self.ema,
            self.optimizer,
            self._rng_state(),
            ckpt.TrainingState(step=step, elapsed_s=elapsed),
            extra=self._timestep_sampler_state(),
        )

    def _timestep_sampler_state(self) -> dict[str, torch.Tensor]:
        if isinstance(self.timestep_sampler, LossSecondMomentSampler):
            return {f"timesteps.{k}": v for k, v in self.timestep_sampler.state_tensors().items()}
        return {}

    def sample_grid(self, step: int) -> Path | None:
        """Sample the configured grid from the EMA weights and write samples/step_NNNNNN.png."""
        if not self.is_main:
            return None
        sc = self.config.sample
        request = SampleRequest(
            n=sc.num_samples,
            sampler=sc.sampler,
            # the grid's step count is capped at the model's T (the default 100 exceeds a short T)
            steps=None if sc.steps is None else min(sc.steps, self.diffusion.num_steps),
            eta=sc.eta,
            clip_x0=sc.clip_x0,
            seed=self.config.train.seed,
        )
        shape = (
            self.config.data.channels,
            self.config.data.image_size,
            self.config.data.image_size,
        )
        result = generate(self.ema, self.diffusion, shape, request, self.device, progress=False)
        path = save_grid(result.images, self.run_dir / ckpt.SAMPLES_DIR / f"step_{step:06d}.png")
        if self.tensorboard is not None:
            self.tensorboard.image_grid(step, "samples", result.images)
        return path

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        tc = self.config.train
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.run_dir / ckpt.CONFIG_FILE, self.config.to_json())
        step = self.start_step
        per_process = tc.batch_size // self.world
        micro = per_process // tc.grad_accum
        bar = tqdm(
            total=tc.steps,
            initial=step,
            desc="training",
            unit="step",
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        interval_start, interval_loss, interval_count = started, 0.0, 0
        bucket_sum = torch.zeros(TIMESTEP_BUCKETS, dtype=torch.float64)
        bucket_count = torch.zeros(TIMESTEP_BUCKETS, dtype=torch.float64)
        paused = 0.0  # time spent on grids and checkpoints, left out of images/s
        smoothed, last_loss, grid_path = None, float("nan"), None
        autocast = self.config.train.amp and bf16_autocast_supported(self.device)
        if self.config.train.amp and not autocast and self.is_main:
            warnings.warn(
                f"train.amp: {self.device} has no fast bfloat16 support; training in float32",
                stacklevel=2,
            )
        self.model.train()
        time_fraction = self._time_fraction(started)
        try:
            while step < tc.steps and time_fraction < 1.0:
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(step, tc, time_fraction)
                self.optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                for _ in range(tc.grad_accum):
                    x0 = self._next_batch(micro)
                    t, weights = None, None
                    if self.timestep_sampler is not None:
                        t, weights = self.timestep_sampler.sample(
                            micro, self.device, self.noise_gen
                        )
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                        out = self.diffusion.training_loss(
                            self.train_model, x0, t=t, generator=self.noise_gen, weights=weights
                        )
                    if self.timestep_sampler is not None:
                        self._update_timestep_sampler(out.t, out.per_example.detach())
                    (out.loss / tc.grad_accum).backward()
                    step_loss += out.loss.item() / tc.grad_accum
                    buckets = (out.t * TIMESTEP_BUCKETS // self.diffusion.num_steps).cpu()
                    per_example = out.per_example.detach().double().cpu()
                    bucket_sum.index_add_(0, buckets, per_example)
                    bucket_count.index_add_(0, buckets, torch.ones_like(per_example))
                if not math.isfinite(step_loss):
                    raise TrainingDiverged(
                        f"the loss became {step_loss} at step {step + 1}: lower train.lr or "
                        "raise train.warmup_steps (the last checkpoint is intact)"
                    )
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
                with _defer_sigint():
                    self.optimizer.step()
                    update_ema(self.ema, self.model, ema_decay(step, tc.ema_decay, tc.ema_warmup))
                    step += 1
                    last_loss = step_loss
                    smoothed = step_loss if smoothed is None else 0.98 * smoothed + 0.02 * step_loss
                    interval_loss += step_loss
                    interval_count += 1
                    bar.update(1)
                    time_fraction = self._time_fraction(started)
                    last_step = step == tc.steps or time_fraction >= 1.0

                    if step % tc.log_every == 0 or last_step:
                        now = time.perf_counter()
                        rate = (
                            interval_count
                            * tc.batch_size
                            / max(1e-9, now - interval_start - paused)
                        )
                        bar.set_postfix(loss=f"{smoothed:.4f}", img_s=f"{rate:.0f}")
                        if self.is_main:
                            record = {
                                "step": step,
                                "loss": interval_loss / interval_count,
                                "lr": self.optimizer.param_groups[0]["lr"],
                                "images_per_s": round(rate, 2),
                                "elapsed_s": round(self.elapsed_before + now - started, 3),
                            }
                            for b in range(TIMESTEP_BUCKETS):
                                if bucket_count[b] > 0:
                                    record[f"loss_t_q{b + 1}"] = (
                                        bucket_sum[b] / bucket_count[b]
                                    ).item()
                            ckpt.append_metrics(self.run_dir, record)
                            if self.tensorboard is not None:
                                self.tensorboard.scalars(step, record)
                        interval_start, interval_loss, interval_count, paused = now, 0.0, 0, 0.0
                        bucket_sum.zero_()
                        bucket_count.zero_()

                if not last_step and (
                    (tc.sample_every and step % tc.sample_every == 0)
                    or (tc.checkpoint_every and step % tc.checkpoint_every == 0)
                ):
                    pause_start = time.perf_counter()
                    if tc.sample_every and step % tc.sample_every == 0:
                        self.sample_grid(step)
                        self.model.train()
                    if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                        self._save(step, self.elapsed_before + time.perf_counter() - started)
                    paused += time.perf_counter() - pause_start
                    if self.world > 1:
                        dist.barrier()
        except KeyboardInterrupt:
            bar.close()
            self._save(step, self.elapsed_before + time.perf_counter() - started)
            if self.tensorboard is not None:
                self.tensorboard.close()
            raise TrainingInterrupted(self.run_dir, step) from None
        bar.close()
        elapsed = self.elapsed_before + time.perf_counter() - started
        if step > self.start_step or not (self.run_dir / ckpt.EMA_FILE).exists():
            self._save(step, elapsed)
            grid_path = self.sample_grid(step)
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.world > 1:
            dist.barrier()
        return TrainResult(self.run_dir, step, last_loss, elapsed, grid_path)
