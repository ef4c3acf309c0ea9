"""`ddpm eval --guidance`: one row per weight with the samples' class accuracy, the table, the
trade-off plot; classifiers (the digits CNN, a user's TorchScript model)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, train_run
from ddpmkit.cli import main
from ddpmkit.errors import ConfigError
from ddpmkit.evaluation.quality import run_eval
from ddpmkit.metrics.classifier import class_accuracy, load_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("evalcond") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = [*TINY, "data.source=digits", "data.image_size=8"]
        train_run(run, [*overrides, "train.conditional=true", "train.steps=3"])
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.mark.slow
def test_eval_scores_each_guidance_weight_with_class_accuracy(conditional_run):
    options = {"n": 20, "samplers": ["ddim"], "steps": [3], "progress": False}
    done = run_eval(conditional_run, guidance=[0.0, 2.0], **options)
    assert "| guidance | accuracy |" in done.table
    report = json.loads((conditional_run / "eval.json").read_text())
    rows = report["results"]
    assert [r["guidance"] for r in rows] == [0.0, 2.0]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n"] == 20 for r in rows)
    assert (conditional_run / "guidance_tradeoff.png").is_file()
    # evaluating one weight again replaces its row and keeps the other
    assert run_eval(conditional_run, guidance=[2.0], **options) is not None
    again = json.loads((conditional_run / "eval.json").read_text())["results"]
    assert [r["guidance"] for r in again] == [0.0, 2.0]


def test_guidance_on_an_unconditional_run_is_one_line(shapes_npz, tmp_path, capsys):
    run = tmp_path / "plain"
    train_run(run, [*TINY, "train.steps=1"], data=str(shapes_npz))
    capsys.readouterr()
    eval_argv = ["eval", str(run), "--n", "8", "--steps", "2", "--features", "digits"]
    assert main([*eval_argv, "--guidance", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a class-conditional run" in err[0]
    assert main([*eval_argv, "--guidance", "x", "--no-progress"]) == 2


class FixedClassifier(torch.nn.Module):
    """Class 1 where the mean pixel is positive, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.mean(dim=(1, 2, 3))
        return torch.stack([-score, score], dim=1)


def test_an_exported_classifier_judges_the_samples(tmp_path):
    path = tmp_path / "clf.pt2"
    example = (torch.zeros(2, 1, 4, 4),)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(FixedClassifier(), example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    classify = load_classifier(str(path))
    images = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
    images[:2] = 255  # bright: class 1
    labels = torch.tensor([1, 0, 0, 0])
    assert class_accuracy(classify, images, labels, batch_size=3) == 0.75
    (tmp_path / "junk.pt2").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not an exported classifier"):
        load_classifier(str(tmp_path / "junk.pt2"))
    with pytest.raises(ConfigError, match="not found"):
        load_classifier(str(tmp_path / "missing.pt2"))


def test_the_digits_classifier_recognises_real_digits():
    from ddpmkit.data import DataConfig, load_dataset

    digits = load_dataset(DataConfig(source="digits", image_size=16), progress=False)
    accuracy = class_accuracy(load_classifier("digits"), digits.images_uint8, digits.labels)
    assert accuracy > 0.99  # trained on 80% of them, 100% on the held-out fifth
