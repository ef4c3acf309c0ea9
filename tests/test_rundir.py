"""Run directories: atomic writes, weights and optimizer state in safetensors, step consistency."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ddpmkit
from conftest import TINY, temp_files
from ddpmkit import checkpoint as ckpt
from ddpmkit import fileio
from ddpmkit.config import resolve_config
from ddpmkit.errors import RunDirError
from ddpmkit.fileio import atomic_save_tensors, atomic_write_bytes, atomic_write_text
from ddpmkit.generate import load_run
from ddpmkit.nn import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------- atomic writes
def test_atomic_write_leaves_only_the_file(tmp_path):
    path = tmp_path / "sub" / "config.json"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    atomic_save_tensors(tmp_path / "w.safetensors", {"a": torch.arange(3.0)}, {"step": "1"})
    assert path.read_text(encoding="utf-8") == "second\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "sub", "w.safetensors"]


def test_written_files_get_the_usual_permissions(tmp_path):
    """A temporary file is private (0600); the renamed result must not stay so."""
    expected = 0o666 & ~current_umask()
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_save_tensors(tmp_path / "b.safetensors", {"a": torch.zeros(1)}, {})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == expected
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == expected


@pytest.mark.parametrize("exception", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_tensor_write_keeps_the_previous_file(tmp_path, monkeypatch, exception):
    path = tmp_path / "model.safetensors"
    old = {"w": torch.arange(6.0).view(2, 3)}
    atomic_save_tensors(path, old, {"step": "1"})
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])  # half of the new file is on disk
        raise exception

    monkeypatch.setattr(fileio, "save_file", half_then_fail)
    with pytest.raises(type(exception)):
        atomic_save_tensors(path, {"w": torch.ones(2, 3)}, {"step": "2"})
    assert path.read_bytes() == before
    assert torch.equal(load_file(str(path))["w"], old["w"])
    assert temp_files(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_interrupted_text_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_text(path, '{"step": 1}\n')

    def fail(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(fileio.os, "fsync", fail)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_bytes(path, b'{"step": 2}\n')
    assert path.read_text(encoding="utf-8") == '{"step": 1}\n'
    assert temp_files(tmp_path) == []


# ---------------------------------------------------------------------- a saved run
@pytest.fixture
def config():
    return resolve_config(overrides=TINY)


def trained(config, steps=3, seed=0):
    """A tiny model, its perturbed EMA copy and an AdamW that has taken ``steps`` steps."""
    torch.manual_seed(seed)
    model = UNet(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 5, 10, 40])
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (model(x, t)[:, :1] - x).pow(2).mean()
        loss.backward()
        optimizer.step()
    ema = UNet(config.model)
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.copy_(0.5 * p + 0.01)
    return model, ema, optimizer


def save(run_dir, config, model, ema, optimizer, step=3):
    rng = torch.arange(10, dtype=torch.uint8)
    ckpt.save_checkpoint(run_dir, config, model, ema, optimizer, rng, ckpt.TrainingState(step, 1.5))


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_checkpoint_files_and_state(tmp_path, config):
    model, ema, optimizer = trained(config)
    save(tmp_path, config, model, ema, optimizer, step=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert json.loads((tmp_path / "state.json").read_text()) == {"step": 3, "elapsed_s": 1.5}
    assert ckpt.load_run_config(tmp_path) == config
    assert ckpt.read_training_state(tmp_path) == ckpt.TrainingState(3, 1.5)


def test_state_json_is_written_last(tmp_path, config, monkeypatch):
    order = []
    real_text, real_tensors = ckpt.atomic_write_text, ckpt.atomic_save_tensors

    def text(path, data):
        order.append(path.name)
        real_text(path, data)

    def tensors(path, data, metadata):
        order.append(path.name)
        assert metadata["step"] == "3"
        real_tensors(path, data, metadata)

    monkeypatch.setattr(ckpt, "atomic_write_text", text)
    monkeypatch.setattr(ckpt, "atomic_save_tensors", tensors)
    save(tmp_path, config, *trained(config, steps=1), step=3)
    assert order[-1] == "state.json"
    assert set(order) == {
        "config.json",
        "optimizer.safetensors",
        "model.safetensors",
        "ema.safetensors",
        "state.json",
    }


def test_model_and_ema_weights_round_trip(tmp_path, config):
    model, ema, optimizer = trained(config)
    save(tmp_path, config, model, ema, optimizer, step=3)
    fresh_model, fresh_ema = UNet(config.model), UNet(config.model)
    assert ckpt.load_weights(tmp_path, fresh_model, "model") == 3
    assert ckpt.load_weights(tmp_path, fresh_ema, "ema") == 3
    assert_same_state(fresh_model, model)
    assert_same_state(fresh_ema, ema)
    # the two files really hold different weights
    assert not torch.equal(fresh_model.out[-1].weight, fresh_ema.out[-1].weight)
    # load_run rebuilds the model from config.json alone and uses the EMA by default
    run = load_run(tmp_path, device="cpu")
    assert run.step == 3 and run.config == config
    assert_same_state(run.model, ema)
    assert_same_state(load_run(tmp_path, weights="model", device="cpu").model, model)


def test_optimizer_state_round_trips_without_pickle(tmp_path, config):
    model, ema, optimizer = trained(config, steps=3)
    save(tmp_path, config, model, ema, optimizer)
    # the file is plain safetensors: tensors plus JSON metadata
    tensors = load_file(str(tmp_path / "optimizer.safetensors"))
    assert torch.equal(tensors["rng.train"], torch.arange(10, dtype=torch.uint8))

    restored_model = UNet(config.model)
    ckpt.load_weights(tmp_path, restored_model, "model")
    restored = torch.optim.AdamW(restored_model.parameters(), lr=123.0)
    rng = ckpt.load_optimizer(tmp_path, restored)
    assert torch.equal(rng, torch.arange(10, dtype=torch.uint8))

    original, loaded = optimizer.state_dict(), restored.state_dict()
    assert loaded["param_groups"] == original["param_groups"]  # lr, betas, eps, ...
    assert original["state"].keys() == loaded["state"].keys()
    assert len(original["state"]) == len(list(model.parameters()))
    for pid, state in original["state"].items():
        assert state.keys() == loaded["state"][pid].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in state.items():
            assert torch.equal(loaded["state"][pid][key], value), (pid, key)
            assert loaded["state"][pid][key].dtype == value.dtype

    # the restored optimizer continues exactly like the original
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 30])
    for m, opt in ((model, optimizer), (restored_model, restored)):
        opt.zero_grad()
        m(x, t).square().mean().backward()
        opt.step()
    assert_same_state(restored_model, model)


def test_no_pickle_is_ever_loaded():
    """Our own files are safetensors; the one torch.load (checking a third-party Inception .pth
    before torch-fidelity reads it) uses the restricted tensors-only unpickler."""
    sources = Path(ddpmkit.__file__).parent.rglob("*.py")
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (path, line)
        assert "import pickle" not in text, path
        assert "allow_pickle=True" not in text, path


@pytest.mark.parametrize("which", ["model", "ema", "optimizer"])
def test_step_mismatch_between_files_and_state_json(tmp_path, config, which):
    model, ema, optimizer = trained(config, steps=1)
    save(tmp_path, config, model, ema, optimizer, step=3)
    # a later checkpoint got as far as writing one file, then died before state.json
    later = {"model": model, "ema": ema}.get(which)
    path = tmp_path / f"{which}.safetensors"
    if later is None:
        tensors, meta = ckpt.optimizer_to_tensors(optimizer)
        tensors["rng.train"] = torch.zeros(1, dtype=torch.uint8)
        atomic_save_tensors(path, tensors, {"step": "4", "optimizer": meta})
    else:
        atomic_save_tensors(path, later.state_dict(), {"step": "4"})

    fresh = UNet(config.model)
    with pytest.raises(RunDirError) as info:
        if which == "optimizer":
            ckpt.load_optimizer(tmp_path, torch.optim.AdamW(fresh.parameters()))
        else:
            ckpt.load_weights(tmp_path, fresh, which)
    message = str(info.value)
    assert f"{which}.safetensors holds step 4 but state.json says 3" in message
    # the files of the consistent checkpoint still load
    other = "ema" if which == "model" else "model"
    assert ckpt.load_weights(tmp_path, UNet(config.model), other) == 3


def test_run_dir_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    for load in (ckpt.require_run_dir, ckpt.load_run_config, ckpt.load_config_dict, load_run):
        with pytest.raises(RunDirError, match="is not a run directory: it has no config.json"):
            load(tmp_path)
    with pytest.raises(RunDirError, match="not found"):
        load_run(tmp_path / "missing")


def test_run_dir_without_weights(tmp_path, config):
    (tmp_path / "config.json").write_text(config.to_json())
    with pytest.raises(RunDirError, match="is missing: the run has no saved weights yet"):
        load_run(tmp_path, device="cpu")
    with pytest.raises(RunDirError, match="cannot resume the optimizer"):
        ckpt.load_optimizer(tmp_path, torch.optim.AdamW(UNet(config.model).parameters()))


def test_corrupt_json_files_are_run_dir_errors(tmp_path, config):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        ckpt.load_run_config(tmp_path)
    with pytest.raises(RunDirError, match="not valid JSON"):
        ckpt.load_config_dict(tmp_path)
    (tmp_path / "config.json").write_text(config.to_json())
    (tmp_path / "state.json").write_text('{"step": ')
    with pytest.raises(RunDirError, match="state.json is unreadable"):
        ckpt.read_training_state(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path, config):
    model, ema, optimizer = trained(config, steps=1)
    save(tmp_path, config, model, ema, optimizer)
    wider = resolve_config(overrides=[*TINY, "model.base_channels=16"])
    with pytest.raises(RunDirError, match="does not fit the model"):
        ckpt.load_weights(tmp_path, UNet(wider.model), "ema")
    deeper = resolve_config(overrides=[*TINY, "model.blocks_per_resolution=2"])
    with pytest.raises(RunDirError, match="does not fit the model"):
        ckpt.load_weights(tmp_path, UNet(deeper.model), "ema")


def test_append_metrics(tmp_path):
    ckpt.append_metrics(tmp_path, {"step": 1, "loss": 0.5})
    ckpt.append_metrics(tmp_path, {"step": 2, "loss": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 0.5},
        {"step": 2, "loss": 0.25},
    ]
