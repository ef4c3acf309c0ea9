"""Many processes done right, launched as users launch them (``python -m torch.distributed.run``,
gloo on the CPU): two processes with the same global batch train like one; a resumed
two-process run equals an uninterrupted one; a run resumed with another number of processes
continues with the semantics the README documents (Training: *Multi-GPU and multi-node*); a
non-finite loss on one process is skipped by both; sampling and the likelihood bound split
between processes give the results of one. (``ddpm eval``/``ddpm nll`` launched by torchrun:
tests/test_eval_sharded.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ddpm_launcher, read_metrics, run_two_processes, tiny_overrides
from ddpmkit.rundir import RunDir

pytestmark = pytest.mark.slow  # multi-process, kill or fuzz runs: seconds each

WORKER = Path(__file__).with_name("ddp_worker.py")

# flips on (their draws must follow the images), dropout off (a per-process global-RNG draw)
COMMON = [
    "data.random_flip=true",
    "model.dropout=0",
    "train.lr=2e-3",
    "train.warmup_steps=0",
    "train.lr_schedule=constant",  # a stopped run's schedule must not depend on its last step
]
# every step checkpointed, so one 6-step run also gives the weights after step 1
EVERY_STEP = ["train.steps=6", "train.checkpoint_every=1", "train.keep_checkpoints=6"]


def _train(
    run: Path,
    processes: int,
    *overrides: str,
    resume: bool = False,
    hooks: tuple[str, ...] | None = None,
) -> None:
    """``ddpm train`` in ``processes`` processes (torch.distributed.run for 2 or more); with
    ``hooks``, through tests/ddp_worker.py with those options (``--sgd``, ``--record DIR``)."""
    program = ("-m", "ddpmkit.cli") if hooks is None else (str(WORKER), *hooks)
    launcher = ddpm_launcher(processes, program)
    where = ["--resume", str(run)] if resume else ["--out", str(run)]
    cmd = [*launcher, "train", *where, "--no-progress", *overrides]
    # the decoded-data cache set explicitly: module-scoped runs start before conftest's fixture
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDPMKIT_CACHE": str(run.parent / "cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    checkpoint = RunDir(run).load_checkpoint(step)
    return {
        f"{which}.{k}": v
        for which in ("model", "ema")
        for k, v in checkpoint.tensors[which].items()
    }


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _outputs(run: Path) -> torch.Tensor:
    from ddpmkit.generate import load_run

    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(32, 1, 8, 8, generator=generator), torch.arange(32) % 50
    with torch.no_grad():
        return load_run(run, device="cpu", weights="model").model(x, t)


@pytest.fixture(scope="module")
def adamw_runs(shapes_npz, tmp_path_factory) -> dict[str, Path]:
    """6 steps of the same config, checkpointed after every step: 1 process, 2 processes, 2
    processes × 2 micro-batches, and 1 process without flips (a small change of the data,
    same initial weights, as the yardstick of a real difference)."""
    root = tmp_path_factory.mktemp("adamw")
    overrides = tiny_overrides(shapes_npz, *COMMON, *EVERY_STEP)
    runs = {name: root / name for name in ("one", "two", "two-accum", "no-flips")}
    _train(runs["one"], 1, *overrides)
    _train(runs["two"], 2, *overrides)
    _train(runs["two-accum"], 2, *overrides, "train.grad_accum=2")
    _train(runs["no-flips"], 1, *overrides, "data.random_flip=false")
    return runs


def test_two_processes_train_like_one_with_the_same_global_batch(adamw_runs):
    """Global batch 16 (and 2 micro-batches of 8 per process), AdamW as configured. After one
    step the weights and EMA of 2 processes equal those of 1 up to float rounding (the
    gradients agree). After 6 the networks' outputs agree to a relative 2.5e-4 (measured), 50×
    closer than those of the run whose only change is no flips (1.3e-2). The weights drift
    further apart (2e-3): AdamW divides each gradient element by its running RMS, so elements
    whose gradient is ~0 take steps of ±lr decided by rounding — 1 process drifts as far from
    itself when its batch is only split into 2 micro-batches (1.2e-3 measured). The next test
    takes that amplifier out."""
    one = _weights(adamw_runs["one"], step=1)
    for name in ("two", "two-accum"):
        difference = _max_difference(one, _weights(adamw_runs[name], step=1))
        assert difference < 1e-7, (name, difference)
    reference = _outputs(adamw_runs["one"])

    def relative(name: str) -> float:
        return float((_outputs(adamw_runs[name]) - reference).norm() / reference.norm())

    control = relative("no-flips")
    assert control > 5e-3
    for name in ("two", "two-accum"):
        assert relative(name) < min(1e-3, control / 20), name


def test_with_sgd_two_processes_keep_the_weights_of_one_to_float_rounding(shapes_npz, tmp_path):
    """The same comparison over 6 steps with plain SGD (a test hook, tests/ddp_worker.py):
    weights and EMA of 2 processes (and 2 × 2 micro-batches) equal 1 process's to 1e-6 — the
    rounding of a few summations, ~3e-8 measured — while dropping the flips, a change of about
    one image in eight, moves them by more than 1e-5."""
    overrides = tiny_overrides(shapes_npz, *COMMON, "train.steps=6")
    sgd = ("--sgd",)
    _train(tmp_path / "one", 1, *overrides, hooks=sgd)
    _train(tmp_path / "two", 2, *overrides, hooks=sgd)
    _train(tmp_path / "two-accum", 2, *overrides, "train.grad_accum=2", hooks=sgd)
    _train(tmp_path / "no-flips", 1, *overrides, "data.random_flip=false", hooks=sgd)
    one = _weights(tmp_path / "one")
    assert _max_difference(one, _weights(tmp_path / "no-flips")) > 1e-5
    for name in ("two", "two-accum"):
        difference = _max_difference(one, _weights(tmp_path / name))
        assert difference < 1e-6, (name, difference)


def test_a_two_process_run_saves_every_process_and_logs_once(adamw_runs):
    run = adamw_runs["two-accum"]
    assert RunDir(run).checkpoint_steps() == [1, 2, 3, 4, 5, 6]
    state = RunDir(run).load_checkpoint()
    assert state.step == 6 and state.state["world_size"] == 2
    ranks = {k.split(".")[0] for k in state.tensors["train_state"] if k.startswith("rank")}
    assert ranks == {"rank0", "rank1"}  # every process's generators and data position
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]  # written by rank 0
    assert (run / "samples" / "step_000006.png").is_file()


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(adamw_runs, shapes_npz, tmp_path):
    """Stopped after step 3 and resumed with 2 processes: weights, EMA, optimizer, every
    process's generators and data position, and the metrics equal the uninterrupted run's."""
    straight, stopped = adamw_runs["two"], tmp_path / "stopped"
    overrides = tiny_overrides(shapes_npz, *COMMON, *EVERY_STEP)
    _train(stopped, 2, *overrides, "train.steps=3")
    _train(stopped, 2, "train.steps=6", resume=True)
    a, b = RunDir(straight).load_checkpoint(), RunDir(stopped).load_checkpoint()
    for part in ("model", "ema", "optimizer", "train_state"):
        assert a.tensors[part].keys() == b.tensors[part].keys(), part
        assert all(torch.equal(a.tensors[part][k], b.tensors[part][k]) for k in a.tensors[part])
    assert a.state["ranks"] == b.state["ranks"]
    strip = ("elapsed_s", "images_per_s")
    logged = [
        [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(run)]
        for run in (straight, stopped)
    ]
    assert logged[0] == logged[1]


def _recorded(folder: Path) -> dict[int, dict[int, list[int]]]:
    """rank -> step -> the data indices that process trained on in that step."""
    out: dict[int, dict[int, list[int]]] = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        steps = out.setdefault(int(path.stem.removeprefix("rank")), {})
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], []).extend(record["indices"])
    return out


def test_resuming_with_another_number_of_processes_starts_the_next_epoch(shapes_npz, tmp_path):
    """256 images, global batch 16. 2 processes for 3 steps (48 images of epoch 0), then 1
    process for 8 steps, then 2 processes for 16: at each change the step count goes on and
    the new processes start the next epoch from its beginning, so after the last change each
    of the 256 images is trained on exactly once in 16 steps, half by each process."""
    run = tmp_path / "run"
    overrides = tiny_overrides(shapes_npz, *COMMON, "train.checkpoint_every=100")
    _train(run, 2, *overrides, "train.steps=3", hooks=("--record", str(tmp_path / "a")))
    before = RunDir(run).load_checkpoint(files=()).state
    assert before["world_size"] == 2 and [r["epoch"] for r in before["ranks"]] == [1, 1]
    _train(run, 1, "train.steps=11", resume=True, hooks=("--record", str(tmp_path / "b")))
    middle = RunDir(run).load_checkpoint(files=()).state
    assert middle["step"] == 11 and middle["world_size"] == 1
    # epoch 1 begun at the resume (the counter names the next epoch: 2), 8 steps of 16 in
    assert [(r["epoch"], r["cursor"]) for r in middle["ranks"]] == [(2, 128)]
    _train(run, 2, "train.steps=27", resume=True, hooks=("--record", str(tmp_path / "c")))
    after = RunDir(run).load_checkpoint(files=()).state
    assert after["step"] == 27 and after["world_size"] == 2
    assert [(r["epoch"], r["cursor"]) for r in after["ranks"]] == [(3, 128), (3, 128)]
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 28))

    a, b, c = (_recorded(tmp_path / name) for name in "abc")
    assert sorted(a) == [0, 1] and sorted(a[0]) == [0, 1, 2]
    seen_in_epoch_0 = {i for rank in a.values() for step in rank.values() for i in step}
    assert len(seen_in_epoch_0) == 48  # each image once within an epoch
    assert sorted(b) == [0] and sorted(b[0]) == list(range(3, 11))
    epoch_1 = [i for step in b[0].values() for i in step]
    assert len(set(epoch_1)) == 128  # the first half of a new permutation: not the rest of
    assert set(epoch_1) & seen_in_epoch_0  # epoch 0 (which would avoid the 48 seen images),
    assert set(epoch_1[:48]) != seen_in_epoch_0  # nor epoch 0 again from its start
    assert sorted(c) == [0, 1]
    for rank in (0, 1):
        assert sorted(c[rank]) == list(range(11, 27))
        assert all(len(step) == 8 for step in c[rank].values())
    shares = [[i for step in c[rank].values() for i in step] for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(256))  # every image once, one process


def test_ddp_skips_a_step_that_is_non_finite_on_one_rank_only(shapes_npz, tmp_path):
    """Rank 1's loss is NaN in step 3, rank 0's is finite: both skip the update (one all-reduced
    flag) and neither hangs waiting for the other."""
    from ddp_worker import train_rank

    run = tmp_path / "ddp"
    overrides = tiny_overrides(shapes_npz, "train.steps=5")
    run_two_processes(train_rank, lambda port: (2, str(run), overrides, port, 3), 180)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert sum(r.get("skipped_steps", 0) for r in records) == 1  # rank 0 skipped it as well
    state = RunDir(run).load_checkpoint(files=())
    assert state.step == 5 and state.state["skipped_steps"] == 1


def test_sampling_split_between_processes_gives_the_images_of_one(tmp_path):
    """Per-sample seeds make image i independent of who draws it: 2 processes × their blocks
    of 7 images equal one process drawing all 7."""
    from ddp_worker import generate_rank, stand_in_model
    from ddpmkit.diffusion import GaussianDiffusion
    from ddpmkit.generate import SampleRequest, generate
    from ddpmkit.schedules import make_schedule

    out = tmp_path / "images.npy"
    run_two_processes(generate_rank, lambda port: (2, port, str(out)), 120)
    diffusion = GaussianDiffusion(make_schedule("cosine", 30), "eps", "fixed_small")
    request = SampleRequest(n=7, sampler="ddpm", steps=6, seed=3, batch_size=2)
    alone = generate(stand_in_model, diffusion, (1, 4, 4), request, torch.device("cpu"), False)
    assert np.array_equal(np.load(out), alone.images.numpy())


def test_the_bound_split_between_processes_is_the_bound_of_one(shapes_npz, tmp_path):
    """evaluate_nll(distributed=True) in 2 processes: both get the report of one process, also
    when process 1 has nothing to bound (5 images, one batch) and when the shares are unequal
    (19 images in 5 batches of 4: 2 and 3)."""
    from dataclasses import asdict

    from ddp_worker import nll_rank
    from ddpmkit.cli import main
    from ddpmkit.generate import load_run
    from ddpmkit.nll import evaluate_nll

    run = tmp_path / "run"
    overrides = tiny_overrides(
        shapes_npz, "train.steps=2", "diffusion.schedule=cosine", "diffusion.num_steps=20"
    )
    assert main(["train", "--out", str(run), "--no-progress", *overrides]) == 0
    out = str(tmp_path / "nll")
    run_two_processes(nll_rank, lambda port: (2, port, str(run), out), 120)
    loaded = load_run(run, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: other thread counts sum convolutions otherwise
    try:
        alone = [
            asdict(evaluate_nll(loaded, n=n, batch_size=b, seed=2, progress=False))
            for n, b in ((5, 8), (19, 4))
        ]
    finally:
        torch.set_num_threads(threads)
    assert [r["n"] for r in alone] == [5, 19]
    for rank in (0, 1):
        assert json.loads(Path(f"{out}-{rank}.json").read_text()) == alone, rank


def test_the_rows_of_all_processes_and_micro_batches_draw_what_one_process_draws():
    """world × grad_accum splits of a global batch of 12: every row once, and each row's t,
    noise and flip are those of one process drawing all 12 at once."""
    from ddpmkit.batch_draws import draw_batch, global_rows

    def draws(rows):
        return draw_batch(
            seed=5,
            attempt=7,
            rows=rows,
            batch_size=12,
            image_shape=(1, 2, 2),
            num_steps=50,
            device=torch.device("cpu"),
            label_dropout=0.3,
        )

    alone = draws(range(12))
    for world, accum in ((1, 1), (2, 1), (3, 2), (2, 3), (4, 3)):
        seen = []
        for rank in range(world):
            for micro in range(accum):
                rows = global_rows(micro, accum, 12, rank, world)
                part = draws(rows)
                index = torch.tensor(list(rows))
                assert torch.equal(part.t, alone.t[index])
                assert torch.equal(part.noise, alone.noise[index])
                assert torch.equal(part.flip, alone.flip[index])
                assert torch.equal(part.drop_label, alone.drop_label[index])
                seen += list(rows)
        assert sorted(seen) == list(range(12)), (world, accum)
    other = draw_batch(
        seed=5,
        attempt=8,
        rows=range(12),
        batch_size=12,
        image_shape=(1, 2, 2),
        num_steps=50,
        device=torch.device("cpu"),
    )
    assert not torch.equal(other.noise, alone.noise)  # another step draws other noise
