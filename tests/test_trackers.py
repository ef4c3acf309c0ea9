"""Experiment trackers: TensorBoard event files, an MLflow file store, and wandb through a stand-in
module that records what the real client would be sent; run ids survive --resume."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import read_metrics, tiny_config
from ddpmkit.errors import ConfigError
from ddpmkit.rundir import RunDir
from ddpmkit.trackers import TensorBoardTracker
from ddpmkit.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    return [event.step for event in events(log_dir).Scalars(tag)]


def test_logger_writes_scalars_and_grids_and_nothing_before(tmp_path):
    logger = TensorBoardTracker(RunDir(tmp_path / "run"))
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
    config = tiny_config(shapes_npz, "train.steps=2", "train.tracker=tensorboard")
    with pytest.raises(ConfigError, match=r"pip install 'ddpmkit\[tensorboard\]'"):
        Trainer(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_training_with_tensorboard_logs_the_loss_and_the_grids(shapes_npz, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(
        shapes_npz, "train.steps=4", "train.sample_every=2", "train.tracker=tensorboard"
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
    more = tiny_config(shapes_npz, "train.steps=6", "train.tracker=tensorboard")
    Trainer(more, run, resume=True, progress=False).train()
    assert scalar_steps(log_dir, "train/loss") == [1, 2, 3, 4, 5, 6]


def test_training_without_tensorboard_writes_no_events(shapes_npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not needed without it
    Trainer(tiny_config(shapes_npz, "train.steps=1"), tmp_path / "run", progress=False).train()
    assert not (tmp_path / "run" / "tensorboard").exists()


# ---------------------------------------------------------------------- MLflow (a file store)
@pytest.mark.slow
def test_training_with_mlflow_logs_metrics_params_and_grids_and_resumes_the_run(
    shapes_npz, tmp_path
):
    mlflow = pytest.importorskip("mlflow")
    run = tmp_path / "run"
    config = tiny_config(
        shapes_npz, "train.steps=4", "train.sample_every=2", "train.tracker=mlflow"
    )
    Trainer(config, run, progress=False).train()
    ids = json.loads((run / "trackers.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    logged = client.get_run(ids["mlflow"])
    assert logged.info.status == "FINISHED"
    assert (
        logged.data.params["train.steps"] == "4" and logged.data.params["train.tracker"] == "mlflow"
    )
    history = client.get_metric_history(ids["mlflow"], "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in read_metrics(run)])
    artifacts = {a.path for a in client.list_artifacts(ids["mlflow"], "samples")}
    assert artifacts == {"samples/step_000002.png", "samples/step_000004.png"}

    more = tiny_config(shapes_npz, "train.steps=6", "train.tracker=mlflow")
    Trainer(more, run, resume=True, progress=False).train()
    assert json.loads((run / "trackers.json").read_text()) == ids  # the same MLflow run
    history = client.get_metric_history(ids["mlflow"], "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------- wandb (a stand-in)
class FakeWandbRun:
    def __init__(self, calls: list, **kwargs) -> None:
        self.calls = calls
        calls.append(("init", kwargs))

    def log(self, data: dict, step: int) -> None:
        self.calls.append(("log", step, data))

    def finish(self) -> None:
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    """A module with wandb's init / Image / Run.log / Run.finish signatures that records calls."""
    calls: list = []
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: FakeWandbRun(calls, **kwargs)
    module.Image = lambda array: ("image", array.shape)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_training_with_wandb_logs_every_record_and_keeps_the_run_id(
    shapes_npz, tmp_path, fake_wandb
):
    run = tmp_path / "run"
    config = tiny_config(
        shapes_npz,
        "train.steps=4",
        "train.sample_every=2",
        "train.tracker=wandb",
        "train.tracker_project=digits",
    )
    Trainer(config, run, progress=False).train()
    init = fake_wandb[0]
    assert init[0] == "init"
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    assert init[1]["id"] == run_id and init[1]["resume"] == "allow"
    assert init[1]["project"] == "digits" and init[1]["name"] == "run"
    assert init[1]["config"]["train.steps"] == 4
    losses = [
        (c[1], c[2]["train/loss"]) for c in fake_wandb if c[0] == "log" and "train/loss" in c[2]
    ]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in read_metrics(run)]
    grids = [c[1] for c in fake_wandb if c[0] == "log" and "samples" in c[2]]
    assert grids == [2, 4] and fake_wandb[-1] == ("finish",)

    fake_wandb.clear()
    more = tiny_config(shapes_npz, "train.steps=5", "train.tracker=wandb")
    Trainer(more, run, resume=True, progress=False).train()
    assert fake_wandb[0][1]["id"] == run_id  # --resume continues the same wandb run
    assert [c[1] for c in fake_wandb if c[0] == "log" and "train/loss" in c[2]] == [5]


@pytest.mark.parametrize(
    ("tracker", "module", "extra"),
    [
        ("wandb", "wandb", "wandb"),
        ("mlflow", "mlflow", "mlflow"),
        ("tensorboard", "torch.utils.tensorboard", "tensorboard"),
    ],
)
def test_a_missing_tracker_package_is_one_line_with_the_install_command(
    shapes_npz, tmp_path, monkeypatch, tracker, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)
    config = tiny_config(shapes_npz, "train.steps=1", f"train.tracker={tracker}")
    with pytest.raises(ConfigError, match=rf"pip install 'ddpmkit\[{extra}\]'"):
        Trainer(config, tmp_path / "run", progress=False)


def test_an_unknown_tracker_is_a_config_error(shapes_npz):
    with pytest.raises(ConfigError, match="unknown train.tracker 'neptune'"):
        tiny_config(shapes_npz, "train.tracker=neptune")


def test_a_config_json_of_version_0_1_with_tensorboard_true_keeps_logging(shapes_npz):
    from ddpmkit.config import config_from_dict

    old = json.loads(tiny_config(shapes_npz).to_json())
    del old["train"]["tracker"]
    old["train"]["tensorboard"] = True
    assert config_from_dict(old).train.tracker == "tensorboard"
    old["train"]["tensorboard"] = False
    assert config_from_dict(old).train.tracker == "none"
