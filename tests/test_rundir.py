"""RunDir: checkpoint directories with manifests, fallback, pruning, disk errors, the 0.1 layout,
and TrainState's named-tensor serialisation (no pickle)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ddpmkit
from conftest import TINY
from ddpmkit import rundir as rundir_module
from ddpmkit.config import resolve_config
from ddpmkit.errors import RunDirError
from ddpmkit.generate import load_run
from ddpmkit.nn import UNet
from ddpmkit.rundir import CheckpointWriteError, NonFiniteStateError, RunDir
from ddpmkit.train.state import TrainState, optimizer_to_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def config():
    return resolve_config(overrides=TINY)


def make_state(config, steps=3, seed=0) -> TrainState:
    """A tiny model, a perturbed EMA copy, and an AdamW that has taken ``steps`` steps."""
    torch.manual_seed(seed)
    model = UNet(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 10, 40])
    for _ in range(steps):
        optimizer.zero_grad()
        (model(x, t)[:, :1] - x).pow(2).mean().backward()
        optimizer.step()
    ema = UNet(config.model)
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.copy_(0.5 * p + 0.01)
    return TrainState(
        model=model,
        ema=ema,
        optimizer=optimizer,
        timestep_sampler=None,
        seed=seed,
        device=torch.device("cpu"),
        step=steps,
        elapsed_s=1.5,
    )


def save(run: RunDir, state: TrainState, keep: int = 3) -> Path:
    tensors, metadata, meta = state.state_dict()
    return run.save_checkpoint(state.step, tensors, metadata, meta, keep=keep)


def new_run(tmp_path, config) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.write_config(config)
    return run


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------------- layout and manifest
def test_checkpoint_directory_and_manifest(tmp_path, config):
    run = new_run(tmp_path, config)
    state = make_state(config)
    folder = save(run, state)
    assert folder == run.path / "checkpoints" / "step_0000003"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "ema.safetensors",
        "manifest.json",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "train_state.safetensors",
    ]
    assert (run.path / "checkpoints" / "latest").read_text() == "step_0000003\n"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 3 and set(manifest["files"]) == set(names) - {"manifest.json"}
    for name, entry in manifest["files"].items():  # hashes recomputed here, independently
        data = (folder / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    state_json = json.loads((folder / "state.json").read_text())
    assert state_json["step"] == 3 and state_json["elapsed_s"] == 1.5
    assert run.read_config() == config
    assert [p.name for p in run.path.iterdir() if p.name.startswith(".")] == []


def test_weights_round_trip_and_load_run_picks_a_step(tmp_path, config):
    run = new_run(tmp_path, config)
    early = make_state(config, steps=1)
    save(run, early)
    late = make_state(config, steps=4)
    save(run, late)
    loaded = load_run(run.path, device="cpu")
    assert loaded.step == 4 and loaded.config == config
    assert_same_state(loaded.model, late.ema)
    assert_same_state(load_run(run.path, weights="model", device="cpu").model, late.model)
    assert_same_state(load_run(run.path, device="cpu", step=1).model, early.ema)
    with pytest.raises(RunDirError, match=r"has no checkpoint of step 2 \(it has 1, 4\)"):
        load_run(run.path, device="cpu", step=2)


def test_keep_checkpoints_deletes_the_oldest_only_after_the_new_one(tmp_path, config):
    run = new_run(tmp_path, config)
    for steps in range(1, 6):
        save(run, make_state(config, steps=steps), keep=2)
        assert run.checkpoint_steps() == list(range(max(1, steps - 1), steps + 1))
    assert run.latest_step() == 5


def test_saving_a_step_again_replaces_it(tmp_path, config):
    run = new_run(tmp_path, config)
    save(run, make_state(config, steps=2, seed=0))
    other = make_state(config, steps=2, seed=5)
    save(run, other)
    assert run.checkpoint_steps() == [2]
    assert_same_state(load_run(run.path, device="cpu").model, other.ema)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["latest", "step_0000002"]


def test_optimizer_and_generators_round_trip_without_pickle(tmp_path, config):
    run = new_run(tmp_path, config)
    state = make_state(config, steps=3)
    torch.manual_seed(2)
    torch.rand(5)  # move the streams somewhere particular
    state.position.order, state.position.cursor = torch.randperm(20), 7
    np.random.seed(3)
    random.seed(4)
    save(run, state)
    expected = (
        torch.rand(3),
        np.random.rand(3),
        random.random(),
    )
    # the file is plain safetensors: named tensors, metadata as JSON
    folder = run.checkpoint_path(3)
    train = load_file(str(folder / "train_state.safetensors"))
    assert {"rank0.rng.torch", "rank0.rng.numpy", "rank0.rng.python"} <= set(train)

    fresh = make_state(config, steps=0, seed=9)
    torch.manual_seed(123)
    np.random.seed(0)
    random.seed(0)
    fresh.load_state_dict(run.load_checkpoint())
    assert fresh.step == 3 and fresh.position.cursor == 7
    assert torch.equal(fresh.position.order, state.position.order)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]

    original, loaded = state.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert loaded["param_groups"] == original["param_groups"]  # lr, betas, eps, ...
    assert len(original["state"]) == len(list(state.model.parameters()))
    for pid, values in original["state"].items():
        assert values.keys() == loaded["state"][pid].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in values.items():
            assert torch.equal(loaded["state"][pid][key], value), (pid, key)
    # the restored optimizer continues exactly like the original
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 30])
    for s in (state, fresh):
        s.optimizer.zero_grad()
        s.model(x, t).square().mean().backward()
        s.optimizer.step()
    assert_same_state(fresh.model, state.model)


def test_another_world_size_reseeds_every_rank_distinctly(tmp_path, config):
    run = new_run(tmp_path, config)
    save(run, make_state(config))
    checkpoint = run.load_checkpoint()
    draws = []
    for rank in range(2):
        fresh = make_state(config, steps=0)
        fresh.load_state_dict(checkpoint, rank=rank, world_size=2)
        assert fresh.step == 3 and fresh.position.cursor == 0
        assert len(fresh.position.order) == 0
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])


def test_no_pickle_is_ever_loaded():
    """Our own files are safetensors; the one torch.load (checking a third-party Inception .pth
    before torch-fidelity reads it) uses the restricted tensors-only unpickler. The only module
    that imports pickle reads CIFAR's python batches through an allow-list of numpy's array
    reconstruction helpers."""
    import pickle

    from ddpmkit.data import safe_pickle

    package = Path(ddpmkit.__file__).parent
    allowed = package / "data" / "safe_pickle.py"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (path, line)
        if path != allowed:
            assert "import pickle" not in text and "Unpickler" not in text, path
        assert "allow_pickle=True" not in text, path
    assert safe_pickle.ALLOWED_GLOBALS == {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
    unpickler = safe_pickle.RestrictedUnpickler(io.BytesIO(b""))
    for module, name in safe_pickle.ALLOWED_GLOBALS:
        assert unpickler.find_class(module, name) is not None
    for module, name in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("numpy", "load"),
        ("numpy.core.multiarray", "scalar"),
        ("torch", "load"),
    ]:
        with pytest.raises(pickle.UnpicklingError):
            unpickler.find_class(module, name)


# ---------------------------------------------------------------------- damaged checkpoints
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: same size, still valid safetensors
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_one_byte, Path.unlink])
def test_a_damaged_latest_falls_back_to_the_newest_good_one(tmp_path, config, damage):
    run = new_run(tmp_path, config)
    good = make_state(config, steps=2)
    save(run, good)
    save(run, make_state(config, steps=3))
    damage(run.checkpoint_path(3) / "ema.safetensors")
    with pytest.warns(UserWarning, match="checkpoint of step 3 is unusable .* step 2 instead"):
        loaded = load_run(run.path, device="cpu")
    assert loaded.step == 2
    assert_same_state(loaded.model, good.ema)
    with pytest.raises(RunDirError, match="ema.safetensors"):  # asked for by step: no fallback
        load_run(run.path, device="cpu", step=3)


def test_a_truncated_only_checkpoint_is_one_clear_error(tmp_path, config, capsys):
    from ddpmkit.cli import main

    run = new_run(tmp_path, config)
    save(run, make_state(config))
    truncate(run.checkpoint_path(3) / "ema.safetensors")
    assert main(["sample", str(run.path), "--n", "2", "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no usable checkpoint" in err and "SHA-256" in err


def test_a_missing_manifest_or_latest_pointer(tmp_path, config):
    run = new_run(tmp_path, config)
    save(run, make_state(config, steps=2))
    save(run, make_state(config, steps=3))
    (run.checkpoints_dir / "latest").unlink()
    assert run.load_checkpoint(files=()).step == 3  # the newest complete one
    (run.checkpoint_path(3) / "manifest.json").unlink()  # incomplete: not a checkpoint
    assert run.checkpoint_steps() == [2]
    assert run.load_checkpoint(files=()).step == 2


@pytest.mark.parametrize("damage", ["manifest", "folder"])
def test_a_latest_pointer_to_a_lost_checkpoint_warns_and_falls_back(tmp_path, config, damage):
    """``latest`` names step 3, whose folder lost its manifest (half-written) or is gone: the
    newest complete checkpoint is used, with a warning naming both steps (README, Reliability)."""
    import shutil

    run = new_run(tmp_path, config)
    good = make_state(config, steps=2)
    save(run, good)
    save(run, make_state(config, steps=3))
    assert run.latest_step() == 3
    if damage == "manifest":
        (run.checkpoint_path(3) / "manifest.json").unlink()
    else:
        shutil.rmtree(run.checkpoint_path(3))
    with pytest.warns(
        UserWarning, match="latest names step 3, .* missing or incomplete; .* step 2"
    ):
        loaded = load_run(run.path, device="cpu")
    assert loaded.step == 2
    assert_same_state(loaded.model, good.ema)


def test_leftovers_of_an_interrupted_write_are_ignored_then_removed(tmp_path, config):
    run = new_run(tmp_path, config)
    save(run, make_state(config, steps=2))
    leftover = run.checkpoints_dir / ".tmp-step_0000003-deadbeef"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    assert run.checkpoint_steps() == [2]
    save(run, make_state(config, steps=3))
    assert not leftover.exists()


def test_non_finite_tensors_are_never_written(tmp_path, config):
    run = new_run(tmp_path, config)
    save(run, make_state(config, steps=2))
    state = make_state(config, steps=3)
    with torch.no_grad():
        next(state.ema.parameters())[0].fill_(float("nan"))
    with pytest.raises(NonFiniteStateError, match="ema/.* holds NaN or Inf"):
        save(run, state)
    assert run.checkpoint_steps() == [2]
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["latest", "step_0000002"]


# ---------------------------------------------------------------------- disk errors
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_is_one_clear_error_and_keeps_earlier_checkpoints(
    tmp_path, config, monkeypatch, code
):
    run = new_run(tmp_path, config)
    good = make_state(config, steps=2)
    save(run, good)
    real = rundir_module._write_synced
    calls = 0

    def fail_on_the_third_file(path, data):
        nonlocal calls
        calls += 1
        if calls == 3:
            with open(path, "wb") as handle:  # part of the file reached the disk
                handle.write(data[: len(data) // 3])
            raise OSError(code, os.strerror(code), str(path))
        return real(path, data)

    monkeypatch.setattr(rundir_module, "_write_synced", fail_on_the_third_file)
    with pytest.raises(CheckpointWriteError) as info:
        save(run, make_state(config, steps=3))
    message = str(info.value)
    assert "cannot write the checkpoint of step 3" in message and os.strerror(code) in message
    assert "earlier checkpoints are intact (newest: step 2)" in message
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["latest", "step_0000002"]
    monkeypatch.undo()
    assert_same_state(load_run(run.path, device="cpu").model, good.ema)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_run_directory(tmp_path, config):
    run = new_run(tmp_path, config)
    save(run, make_state(config, steps=2))
    os.chmod(run.checkpoints_dir, 0o555)
    try:
        with pytest.raises(CheckpointWriteError, match="Permission denied"):
            save(run, make_state(config, steps=3))
    finally:
        os.chmod(run.checkpoints_dir, 0o755)
    assert run.checkpoint_steps() == [2]


# ---------------------------------------------------------------------- plain errors
def test_run_dir_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RunDirError, match="is not a run directory: it has no config.json"):
        load_run(tmp_path)
    with pytest.raises(RunDirError, match="not found"):
        load_run(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a run directory"):
        load_run(tmp_path / "file")


def test_run_dir_without_checkpoint(tmp_path, config):
    run = new_run(tmp_path, config)
    with pytest.raises(RunDirError, match="has no checkpoint yet"):
        load_run(run.path, device="cpu")


def test_corrupt_config_json_is_a_run_dir_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        RunDir(tmp_path).read_config()


def test_weights_that_do_not_fit_the_config(tmp_path, config):
    run = new_run(tmp_path, config)
    save(run, make_state(config))
    wider = resolve_config(overrides=[*TINY, "model.base_channels=16"])
    run.write_config(wider)
    with pytest.raises(RunDirError, match="do not fit the model"):
        load_run(run.path, device="cpu")


def test_metrics_lines_and_truncation(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 4, "lo')  # cut short by a crash
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.metrics_path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(RunDirError, match="line 2, is not valid JSON"):
        run.read_metrics()


# ---------------------------------------------------------------------- ddpmkit 0.1 run dirs
def write_flat_run(folder: Path, config, state: TrainState, cursor: int) -> None:
    """A run directory exactly as ddpmkit 0.1 wrote it (format 1), built here by hand."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config.to_json())
    meta = {"step": str(state.step)}
    save_file(dict(state.model.state_dict()), str(folder / "model.safetensors"), meta)
    save_file(dict(state.ema.state_dict()), str(folder / "ema.safetensors"), meta)
    parts = [
        torch.Generator().manual_seed(11).get_state(),  # 0.1's data and noise generators
        torch.Generator().manual_seed(12).get_state(),
        torch.get_rng_state(),
        state.position.order.to(torch.int64).view(torch.uint8),
    ]
    header = torch.tensor([-4, cursor, *(p.numel() for p in parts)], dtype=torch.int64)
    tensors, opt_meta = optimizer_to_tensors(state.optimizer)
    tensors["rng.train"] = torch.cat([header.view(torch.uint8), *parts])
    save_file(tensors, str(folder / "optimizer.safetensors"), {**meta, "optimizer": opt_meta})
    (folder / "state.json").write_text(json.dumps({"step": state.step, "elapsed_s": 2.0}))


def test_a_run_directory_of_version_0_1_still_loads_and_resumes(tmp_path, config):
    state = make_state(config, steps=3)
    state.position.order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(4)
    write_flat_run(tmp_path / "old", config, state, cursor=4)
    expected = torch.rand(3)  # the global stream continues from the packed state
    loaded = load_run(tmp_path / "old", device="cpu")
    assert loaded.step == 3
    assert_same_state(loaded.model, state.ema)
    fresh = make_state(config, steps=0, seed=7)
    torch.manual_seed(99)
    fresh.load_state_dict(RunDir(tmp_path / "old").load_checkpoint())
    assert fresh.step == 3 and fresh.position.cursor == 4
    assert torch.equal(fresh.position.order, state.position.order)
    assert torch.equal(torch.rand(3), expected)
    assert_same_state(fresh.model, state.model)
    # a 0.1 file of another step than its state.json: one clear line
    meta = {"step": "4"}
    save_file(dict(state.ema.state_dict()), str(tmp_path / "old" / "ema.safetensors"), meta)
    with pytest.raises(RunDirError, match="holds step 4 but state.json says 3"):
        load_run(tmp_path / "old", device="cpu")
