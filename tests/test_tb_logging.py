"""Optional TensorBoard logging: the logger itself and train.tensorboard=true in the Trainer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import read_metrics, tiny_config
from ddpmkit.errors import ConfigError
from ddpmkit.tb_logging import TensorBoardLogger
from ddpmkit.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    return [event.step for event in events(log_dir).Scalars(tag)]


def test_logger_writes_scalars_and_grids_and_nothing_before(tmp_path):
    logger = TensorBoardLogger(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # the event file opens on the first write
    logger.scalars(3, {"step": 3, "loss": 0.25, "lr": 1e-3, "note": "text", "flag": True})
    images = torch.linspace(-1, 1, 4 * 8 * 8).reshape(4, 1, 8, 8)
    logger.image_grid(3, "samples", images)
    logger.close()
    logger.close()  # twice is harmless
    acc = events(tmp_path / "run" / "tensorboard")
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr"]
    (loss,) = acc.Scalars("train/loss")
    assert (loss.step, loss.value) == (3, pytest.approx(0.25))
    (grid,) = acc.Images("samples")
    assert grid.step == 3 and grid.width > 16 and grid.height > 16


def test_missing_tensorboard_stops_the_trainer_before_it_starts(shapes_npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = tiny_config(shapes_npz, "train.steps=2", "train.tensorboard=true")
    with pytest.raises(ConfigError, match=r"pip install 'ddpmkit\[tensorboard\]'"):
        Trainer(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_training_with_tensorboard_logs_the_loss_and_the_grids(shapes_npz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(
        shapes_npz, "train.steps=4", "train.sample_every=2", "train.tensorboard=true"
    )
    Trainer(config, run, progress=False).train()
    log_dir = run / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*"))
    acc = events(log_dir)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in read_metrics(run)])
    assert "train/loss_t_q1" in acc.Tags()["scalars"] or "train/loss_t_q2" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Images("samples")] == [2, 4]

    # resume: steps continue, and none is logged twice
    more = tiny_config(shapes_npz, "train.steps=6", "train.tensorboard=true")
    Trainer(more, run, resume=True, progress=False).train()
    assert scalar_steps(log_dir, "train/loss") == [1, 2, 3, 4, 5, 6]


def test_training_without_tensorboard_writes_no_events(shapes_npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not needed without it
    Trainer(tiny_config(shapes_npz, "train.steps=1"), tmp_path / "run", progress=False).train()
    assert not (tmp_path / "run" / "tensorboard").exists()
