"""TrainState: everything that one training step changes, and its (de)serialisation.

The model, its EMA, the optimizer (and float16's loss scaler), the step count and training time,
the importance sampler of t, the epoch's permutation of the data with the position in it, and
every random number generator (torch's global generators, numpy's and Python's), per process.
The draws of a training batch (t, ε, flips, dropped labels) need no saved generator: they are
keyed by the step (:mod:`ddpmkit.batch_draws`). A checkpoint is ``state_dict()`` taken between
two steps; ``load_state_dict`` of it continues the run exactly as if it had never stopped.
Tensors are named, metadata is JSON: no pickle.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddpmkit import __version__
from ddpmkit.data.loader import Position
from ddpmkit.errors import RunDirError
from ddpmkit.rundir import Checkpoint
from ddpmkit.timesteps import LossSecondMomentSampler, UniformSampler

RankState = tuple[dict[str, torch.Tensor], dict[str, Any]]


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """An optimizer state_dict as named tensors plus JSON for everything else."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    return tensors, json.dumps(meta)


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta_json: str) -> dict[str, Any]:
    """The inverse of :func:`optimizer_to_tensors`: a state_dict for ``load_state_dict``."""
    meta = json.loads(meta_json)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    # JSON turned tuples such as AdamW's betas into lists
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def _global_generator_state(device: torch.device) -> torch.Tensor:
    """State of the default generator that dropout draws from on ``device``."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return torch.get_rng_state()


def _set_global_generator_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)
    else:
        torch.set_rng_state(state)


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        first = str(err).strip().splitlines()[-1].strip()
        raise RunDirError(
            f"the {what} weights do not fit the model in config.json: {first}"
        ) from None
    if missing or unexpected:
        raise RunDirError(
            f"the {what} weights do not fit the model in config.json (missing {len(missing)} "
            f"and unexpected {len(unexpected)} tensors, e.g. {(missing or unexpected)[0]})"
        )


def load_module_weights(module: torch.nn.Module, checkpoint: Checkpoint, which: str) -> None:
    """Load the ``model`` or ``ema`` weights of ``checkpoint`` into ``module``."""
    _load_module(module, checkpoint.tensors[which], which)


@dataclass
class TrainState:
    """The state of a training run between two steps (see the module docstring)."""

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    timestep_sampler: UniformSampler | None
    seed: int  # train.seed: the base of the streams of a process whose saved state is missing
    device: torch.device
    scaler: torch.amp.GradScaler | None = None  # float16 training: the loss scale
    step: int = 0
    elapsed_s: float = 0.0
    position: Position = field(default_factory=Position)  # moved by the batch source
    bad_steps: int = 0  # non-finite steps in a row
    skipped_steps: int = 0  # non-finite steps in total

    # ------------------------------------------------------------------ what a step changes
    @property
    def attempt(self) -> int:
        """The number of the step being tried: the key of its random draws (skipped steps
        count, so a retried step draws afresh)."""
        return self.step + self.skipped_steps

    def updated(self) -> None:
        """A step whose update was applied."""
        self.step += 1
        self.bad_steps = 0

    def skipped(self, *, bad: bool) -> None:
        """A step skipped: ``bad`` for a non-finite loss or gradient (counted towards the
        divergence limit), not for float16's loss-scale overflow."""
        self.skipped_steps += 1
        if bad:
            self.bad_steps += 1

    # ------------------------------------------------------------------ this process
    def rank_state(self) -> RankState:
        """This process's generators and data position: named tensors and JSON metadata."""
        np_state = np.random.get_state()
        py_version, py_internal, py_gauss = random.getstate()
        tensors = {
            "rng.torch": _global_generator_state(self.device).cpu(),
            "rng.numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "rng.python": torch.tensor(py_internal, dtype=torch.int64),
            "data.order": self.position.order.to(torch.int64).cpu(),
        }
        if self.device.type != "cpu":
            tensors["rng.torch_cpu"] = torch.get_rng_state()
        meta = {
            "cursor": self.position.cursor,
            "epoch": self.position.epoch,
            "device": self.device.type,
            "numpy": {"pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": np_state[4]},
            "python": {"version": py_version, "gauss_next": py_gauss},
        }
        return tensors, meta

    def load_rank_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`rank_state` saved. Generator states of another device kind (a run
        moved between CPU and GPU) do not fit: those streams restart from the seed. The data and
        noise generators of checkpoints written before 0.3 (``rng.data``, ``rng.noise``) are no
        longer used."""
        torch_state = tensors.get("rng.torch")
        if torch_state is not None and meta.get("device", self.device.type) == self.device.type:
            if torch_state.numel() == _global_generator_state(self.device).numel():
                _set_global_generator_state(self.device, torch_state)
        if "rng.torch_cpu" in tensors:
            torch.set_rng_state(tensors["rng.torch_cpu"])
        if "rng.numpy" in tensors and "numpy" in meta:
            m = meta["numpy"]
            keys = tensors["rng.numpy"].numpy().astype(np.uint32)
            np.random.set_state(("MT19937", keys, m["pos"], m["has_gauss"], m["gauss"]))
        if "rng.python" in tensors and "python" in meta:
            p = meta["python"]
            internal = tuple(int(v) for v in tensors["rng.python"].tolist())
            random.setstate((p["version"], internal, p["gauss_next"]))
        self.position = Position(
            tensors.get("data.order", torch.empty(0, dtype=torch.long)).to(torch.long),
            int(meta.get("cursor", 0)),
            int(meta.get("epoch", 0)),
        )

    # ------------------------------------------------------------------ the whole run
    def state_dict(
        self, ranks: list[RankState] | None = None
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, str]], dict[str, Any]]:
        """(tensors per file, safetensors metadata per file, state.json) of a checkpoint;
        ``ranks`` holds every process's :meth:`rank_state` (default: this process only)."""
        ranks = ranks if ranks is not None else [self.rank_state()]
        opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
        train_tensors: dict[str, torch.Tensor] = {}
        for r, (tensors, _) in enumerate(ranks):
            train_tensors.update({f"rank{r}.{k}": v for k, v in tensors.items()})
        if isinstance(self.timestep_sampler, LossSecondMomentSampler):
            sampler = self.timestep_sampler.state_tensors()
            train_tensors.update({f"timesteps.{k}": v for k, v in sampler.items()})
        tensors = {
            "model": dict(self.model.state_dict()),
            "ema": dict(self.ema.state_dict()),
            "optimizer": opt_tensors,
            "train_state": train_tensors,
        }
        step_meta = {"step": str(self.step)}
        metadata = {
            "model": step_meta,
            "ema": step_meta,
            "optimizer": {**step_meta, "optimizer": opt_meta},
            "train_state": step_meta,
        }
        state = {
            "step": self.step,
            "elapsed_s": round(self.elapsed_s, 3),
            "bad_steps": self.bad_steps,
            "skipped_steps": self.skipped_steps,
            "world_size": len(ranks),
            "ranks": [meta for _, meta in ranks],
            "ddpmkit": __version__,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()  # scale, growth tracker, factors
        return tensors, metadata, state

    def load_state_dict(self, checkpoint: Checkpoint, rank: int = 0, world_size: int = 1) -> None:
        """Continue from ``checkpoint``. Each process takes its own generators when the world
        size is the one saved; otherwise every process reseeds from (seed, rank, step) — see
        :meth:`reseed` — and the data order restarts."""
        _load_module(self.model, checkpoint.tensors["model"], "model")
        _load_module(self.ema, checkpoint.tensors["ema"], "ema")
        meta = checkpoint.metadata.get("optimizer", {})
        if "optimizer" not in meta:
            raise RunDirError(f"{checkpoint.path}: the optimizer file lacks its metadata")
        # the kernel (fused, foreach) is this process's choice, not the checkpoint's: a run
        # resumed on another device, or imported, runs the kernel its config and device ask for.
        # Set before loading, so that torch places each state's step where that kernel wants it
        # (the fused CUDA kernel needs it on the GPU)
        try:
            saved = optimizer_from_tensors(checkpoint.tensors["optimizer"], meta["optimizer"])
            groups = self.optimizer.param_groups  # a count that differs: load_state_dict says
            for group, fresh in zip(saved["param_groups"], groups, strict=False):
                group.update({k: fresh[k] for k in ("fused", "foreach") if k in fresh})
            self.optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as err:
            raise RunDirError(
                f"{checkpoint.path}: the optimizer state does not fit: {err}"
            ) from None
        train = checkpoint.tensors.get("train_state", {})
        if isinstance(self.timestep_sampler, LossSecondMomentSampler) and (
            "timesteps.losses" in train
        ):
            self.timestep_sampler.load_state_tensors(
                {k.removeprefix("timesteps."): v for k, v in train.items() if "timesteps." in k}
            )
        self.step = checkpoint.step
        self.elapsed_s = checkpoint.elapsed_s
        self.bad_steps = int(checkpoint.state.get("bad_steps", 0))
        self.skipped_steps = int(checkpoint.state.get("skipped_steps", 0))
        scaler = checkpoint.state.get("scaler")
        if self.scaler is not None and scaler:
            try:
                self.scaler.load_state_dict(dict(scaler))
            except (RuntimeError, KeyError, TypeError, ValueError) as err:
                raise RunDirError(
                    f"{checkpoint.path}: the float16 loss scaler's state does not fit: {err}"
                ) from None
        ranks = checkpoint.state.get("ranks") or []
        prefix = f"rank{rank}."
        if int(checkpoint.state.get("world_size", 1)) == world_size and rank < len(ranks):
            mine = {k.removeprefix(prefix): v for k, v in train.items() if k.startswith(prefix)}
            if any(k.startswith("rng.") for k in mine):
                self.load_rank_state(mine, ranks[rank])
                return
        self.reseed(rank)
        # another world size: every process starts the epoch after the latest one begun (the
        # saved counters count the epochs begun, i.e. they name the next epoch)
        self.position.epoch = max(
            (int(r.get("epoch", 0)) for r in ranks if isinstance(r, dict)), default=0
        )

    def seed_process(self, rank: int) -> None:
        """The global generators of a process starting a run (dropout draws from torch's;
        Python's and numpy's for code that uses them): from ``train.seed`` and the rank. A
        resumed run then restores its saved states, or :meth:`reseed` derives new ones."""
        stream = self.seed * 1000 + rank
        torch.manual_seed(stream)
        random.seed(stream)
        np.random.seed(stream % 2**32)

    def reseed(self, rank: int) -> None:
        """Fresh, distinct streams for a process whose saved state does not exist (another
        world size): derived from ``train.seed``, the rank and the step."""
        seed = (self.seed * 1_000_003 + rank) * 1_000_003 + self.step
        seed %= 2**63
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.position = Position()
