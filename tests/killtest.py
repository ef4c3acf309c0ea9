"""The kill test: SIGKILL a training run at random moments, resume it each time, and compare the
finished run with one that was never interrupted, bit for bit.

A "zygote" process imports torch and ddpmkit once and forks one trainer per launch, so a launch
costs milliseconds instead of the second that importing torch takes; the zygote itself never runs
a torch operation before forking. The parent sends SIGKILL to the forked trainer after a random
delay. Besides the random kills, a launch can be told to SIGKILL itself at a precise point of a
checkpoint write (``die_at``): the n-th file written into a checkpoint directory, the n-th update
of the ``latest`` pointer, or the n-th pruning of old checkpoints.

Used by tests/test_killtest.py (20+ kills) and benchmarks/kill_test.py (200 kills).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

DIE_POINTS = ("file", "latest", "prune")


def _zygote() -> None:
    """Read one JSON request per line; fork a trainer for it; report its pid, then its status."""
    import torch._dynamo  # noqa: F401 - imported lazily by the optimizer: 1 s, once, here

    torch.set_num_threads(1)

    from ddpmkit import rundir
    from ddpmkit.config import resolve_config
    from ddpmkit.train import Trainer

    for line in sys.stdin:
        request = json.loads(line)
        if "warm_up" in request:  # one short run in this process, so that the forked trainers
            # inherit oneDNN's kernels and every lazy import (one thread: no OpenMP pool to fork)
            with tempfile.TemporaryDirectory() as folder:
                overrides = [*request["warm_up"], "train.steps=2", "train.checkpoint_every=1"]
                Trainer(resolve_config(overrides=overrides), folder, progress=False).train()
            print(json.dumps({"pid": 0}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:  # the trainer
            code = 1
            try:
                if request.get("die_at"):
                    _arm_self_kill(rundir, *request["die_at"])
                config = resolve_config(overrides=request["overrides"])
                trainer = Trainer(
                    config, request["run_dir"], resume=request["resume"], progress=False
                )
                trainer.train()
                code = 0
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                print(f"trainer failed: {err!r}", file=sys.stderr, flush=True)
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)


def _arm_self_kill(rundir, point: str, count: int) -> None:
    """SIGKILL this process at the ``count``-th ``point`` of a checkpoint write."""
    calls = 0

    def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == count:
            os.kill(os.getpid(), signal.SIGKILL)

    if point == "file":
        real_write = rundir._write_synced

        def write(path, data):
            if calls + 1 == count:  # half of the file reaches the disk, then the process dies
                with open(path, "xb") as handle:
                    handle.write(data[: len(data) // 2])
            tick()
            return real_write(path, data)

        rundir._write_synced = write
    elif point == "latest":
        real_text = rundir.atomic_write_text

        def text(path, data):
            if path.name == rundir.LATEST_FILE:
                tick()
            return real_text(path, data)

        rundir.atomic_write_text = text
    elif point == "prune":
        real_prune = rundir.RunDir._prune

        def prune(self, keep, newest):
            tick()
            return real_prune(self, keep, newest)

        rundir.RunDir._prune = prune
    else:
        raise ValueError(f"unknown die point {point}")


class Zygote:
    """The parent's handle on the zygote process."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def warm_up(self, overrides: list[str]) -> None:
        self.launch({"warm_up": overrides})

    def launch(self, request: dict) -> int:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["pid"]

    def status(self) -> int:
        """Wait for the launched trainer; its raw wait status."""
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return json.loads(line)["status"]

    def run(self, request: dict, kill_after: float | None = None) -> bool:
        """Launch; SIGKILL after ``kill_after`` seconds (if still running). True if it was
        killed, False if it finished by itself (an error is raised if it failed)."""
        pid = self.launch(request)
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = self.status()
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            return True
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return False
        raise RuntimeError(f"the trainer failed (wait status {status}); see stderr")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@dataclass
class KillReport:
    kills: int = 0
    inside_checkpoint_writes: int = 0  # a .tmp- directory was left behind
    forced: int = 0
    runs: int = 0
    recovered: int = 0  # runs that finished bit-identical to the uninterrupted one
    launches: int = 0
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)


def checkpoint_tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    folder = run_dir / "checkpoints"
    latest = folder / (folder / "latest").read_text().strip()
    return {
        name: load_file(str(latest / f"{name}.safetensors"))
        for name in ("model", "ema", "optimizer", "train_state")
    }


def losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(json.loads(x)["step"], json.loads(x)["loss"]) for x in lines]


def compare_runs(a: Path, b: Path) -> list[str]:
    """Names of the tensors (and the log) that differ between two finished runs."""
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    differences = []
    for group in ta:
        if ta[group].keys() != tb[group].keys():
            differences.append(f"{group}: other tensor names")
            continue
        for key in ta[group]:
            if not torch.equal(ta[group][key], tb[group][key]):
                differences.append(f"{group}/{key}")
    if losses(a) != losses(b):
        differences.append("metrics.jsonl losses")
    return differences


def kill_test(
    workdir: Path,
    overrides: list[str],
    kills: int,
    seed: int = 0,
    forced: list[tuple[str, int]] = (),
    max_delay: float | None = None,
) -> KillReport:
    """Train the run of ``overrides`` straight once, then again under at least ``kills`` random
    SIGKILLs (plus one forced kill per ``forced`` point), resuming after each, run after run,
    until ``kills`` is reached; every finished run is compared with the straight one."""
    started = time.perf_counter()
    report = KillReport()
    rng = random.Random(seed)
    zygote = Zygote()
    try:
        zygote.warm_up(overrides)
        reference = workdir / "straight"
        t0 = time.perf_counter()
        assert not zygote.run({"run_dir": str(reference), "overrides": overrides, "resume": False})
        duration = time.perf_counter() - t0
        max_delay = max_delay if max_delay is not None else 0.6 * duration
        pending_forced = list(forced)
        while report.kills < kills or pending_forced:
            report.runs += 1
            run_dir = workdir / f"killed{report.runs}"
            while True:
                from ddpmkit.rundir import RunDir

                request = {
                    "run_dir": str(run_dir),
                    "overrides": overrides,
                    "resume": RunDir(run_dir).has_config(),
                }
                report.launches += 1
                if pending_forced:
                    request["die_at"] = list(pending_forced.pop(0))
                    if zygote.run(request):
                        report.forced += 1
                        continue
                    break
                if report.kills >= kills:
                    zygote.run(request)
                    break
                if not zygote.run(request, kill_after=rng.uniform(0.0, max_delay)):
                    break
                report.kills += 1
                folder = run_dir / "checkpoints"
                if folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir()):
                    report.inside_checkpoint_writes += 1
            differences = compare_runs(reference, run_dir)
            if differences:
                report.mismatches.append(f"{run_dir.name}: {', '.join(differences[:5])}")
            else:
                report.recovered += 1
    finally:
        zygote.close()
    report.seconds = time.perf_counter() - started
    return report


if __name__ == "__main__" and sys.argv[1:] == ["zygote"]:
    _zygote()
