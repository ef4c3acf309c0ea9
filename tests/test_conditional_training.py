"""Class-conditional training with label dropout, the U-Net's class embedding and null class,
the class names in the run directory, and `ddpm sample --class/--guidance`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY, read_metrics, train_run
from ddpmkit.cli import main
from ddpmkit.config import resolve_config
from ddpmkit.edit import edit_run
from ddpmkit.errors import ConfigError, DataError
from ddpmkit.generate import sample_run
from ddpmkit.nn import UNet
from ddpmkit.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = [*TINY, "data.source=digits", "data.image_size=8"]


def test_class_embedding_shapes_null_class_and_unconditional_networks():
    config = resolve_config(overrides=[*TINY, "model.num_classes=3"]).model
    net = UNet(config)
    assert net.class_embed.num_embeddings == 4  # three classes and the null class
    torch.manual_seed(0)
    for param in net.parameters():  # zero-initialised branches would hide the labels
        torch.nn.init.normal_(param, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 30])
    outputs = [net(x, t, torch.tensor([k, k])) for k in range(4)]
    assert all(not torch.equal(outputs[0], o) for o in outputs[1:])
    assert torch.equal(net(x, t), outputs[3])  # no label = the null class
    with pytest.raises(ConfigError, match="labels y must have shape"):
        net(x, t, torch.tensor([0]))
    plain = UNet(resolve_config(overrides=TINY).model)
    assert not any("class_embed" in k for k in plain.state_dict())  # unchanged parameter set
    with pytest.raises(ConfigError, match="unconditional"):
        plain(x, t, torch.tensor([0, 1]))


@pytest.mark.slow
def test_conditional_training_derives_classes_and_drops_labels(tmp_path, monkeypatch):
    seen = []
    real_forward = UNet.forward

    def record(self, x, t, y=None):
        if y is not None:
            seen.append(y.clone())
        return real_forward(self, x, t, y)

    monkeypatch.setattr(UNet, "forward", record)
    config = resolve_config(
        overrides=[*DIGITS, "train.conditional=true", "train.steps=30", "train.label_dropout=0.3"]
    )
    run = tmp_path / "run"
    Trainer(config, run, progress=False).train()
    monkeypatch.undo()
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["num_classes"] == 10
    assert json.loads((run / "classes.json").read_text()) == [str(k) for k in range(10)]
    labels = torch.cat(seen[:30])  # the 30 training batches (the grid's calls come after)
    assert labels.min() >= 0 and labels.max() <= 10
    dropped = (labels == 10).double().mean().item()
    assert dropped == pytest.approx(0.3, abs=3 * (0.3 * 0.7 / len(labels)) ** 0.5)
    assert len(read_metrics(run)) == 30


def test_conditional_runs_need_labelled_data(shapes_npz, tmp_path):
    config = resolve_config(
        overrides=[*TINY, f"data.source={shapes_npz}", "train.conditional=true"]
    )
    with pytest.raises(DataError, match="needs class labels"):
        Trainer(config, tmp_path / "run", progress=False)
    config = resolve_config(overrides=[*DIGITS, "model.num_classes=10"])
    with pytest.raises(ConfigError, match="train.conditional=true"):
        Trainer(config, tmp_path / "run2", progress=False)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cond") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(run, [*DIGITS, "train.conditional=true", "train.steps=4"])
    finally:
        torch.set_num_threads(threads)
    return run


def test_sample_classes_with_guidance(conditional_run, tmp_path):
    npz, grid = tmp_path / "s.npz", tmp_path / "g.png"
    options = {"npz": npz, "grid": grid, "progress": False}
    done = sample_run(
        conditional_run, classes="all", n=2, sampler="ddim", steps=4, guidance=3.0, **options
    )
    assert done.n == 20
    with np.load(npz) as data:
        assert data["arr_1"].tolist() == [k for k in range(10) for _ in range(2)]
        assert data["arr_0"].shape == (20, 8, 8, 1)
    sample_run(conditional_run, classes="7,3", n=3, steps=4, **options)
    with np.load(npz) as data:
        assert data["arr_1"].tolist() == [7, 7, 7, 3, 3, 3]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--class", "12"], "unknown class '12'"),
        (["--class", "cat"], "unknown class 'cat'"),
        (["--guidance", "2"], "--guidance needs --class"),
    ],
)
def test_class_mistakes_are_one_line(conditional_run, capsys, extra, message):
    assert main(["sample", str(conditional_run), "--n", "1", "--steps", "2", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_class_on_an_unconditional_run_is_one_clear_error(shapes_npz, tmp_path, capsys):
    run = tmp_path / "plain"
    train_run(run, [*TINY, "train.steps=1"], data=str(shapes_npz))
    capsys.readouterr()
    assert main(["sample", str(run), "--class", "1", "--steps", "2"]) == 2
    assert "is not class-conditional" in capsys.readouterr().err


def test_inpaint_and_edit_steer_towards_a_class(conditional_run, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    outputs = {}
    commands = {  # what `ddpm inpaint --steps 4` and `ddpm edit --strength 0.5` ask edit_run for
        "inpaint": {"method": "repaint", "steps": 4},
        "edit": {"method": "sdedit", "strength": 0.5},
    }
    for command, extra in commands.items():
        for classes in ({"classes": "3", "guidance": 2.0}, {}):
            npz = tmp_path / f"{command}{len(classes)}.npz"
            grid = tmp_path / "g.png"
            edit_run(
                conditional_run, str(image), **extra, **classes, npz=npz, grid=grid, progress=False
            )
            with np.load(npz) as data:
                outputs[command, len(classes)] = data["arr_0"]
        assert not np.array_equal(outputs[command, 2], outputs[command, 0])
    capsys.readouterr()
    argv = ["edit", str(conditional_run), "--image", str(image), "--guidance", "1"]
    assert main(argv) == 2
    assert "--guidance needs --class" in capsys.readouterr().err


@pytest.mark.slow
def test_conditional_training_is_deterministic_and_resumes_exactly(tmp_path):
    overrides = [*DIGITS, "train.conditional=true", "train.steps=6", "train.label_dropout=0.5"]
    config = resolve_config(overrides=overrides)
    Trainer(config, tmp_path / "a", progress=False).train()
    Trainer(resolve_config(overrides=overrides), tmp_path / "b", progress=False).train()
    half = resolve_config(overrides=[*overrides[:-2], "train.steps=3", "train.label_dropout=0.5"])
    Trainer(half, tmp_path / "c", progress=False).train()
    Trainer(
        resolve_config(overrides=overrides), tmp_path / "c", resume=True, progress=False
    ).train()
    losses = [[r["loss"] for r in read_metrics(tmp_path / name)] for name in "abc"]
    assert losses[0] == losses[1] == losses[2]
