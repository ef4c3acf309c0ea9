"""`ddpm eval --guidance`: one row per weight with the samples' class accuracy, the table, the
trade-off plot; classifiers (the digits CNN, a user's TorchScript model)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import TINY, train_run
from ddpmkit.cli import main
from ddpmkit.errors import ConfigError
from ddpmkit.evaluation.quality import coverage, run_eval
from ddpmkit.metrics.classifier import (
    class_accuracy,
    class_shares,
    load_classifier,
    predicted_classes,
)

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
    assert all(len(r["class_shares"]) == 10 for r in rows)
    assert all(sum(r["class_shares"]) == pytest.approx(1.0, abs=1e-5) for r in rows)
    assert "| classes (smallest share) |" in done.table
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
    predicted, num_classes = predicted_classes(classify, images, batch_size=3)
    assert predicted.tolist() == [1, 1, 0, 0] and num_classes == 2
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


def test_class_shares_count_each_class_and_show_a_missing_one():
    predicted = torch.tensor([2, 0, 2, 2, 1, 0, 2, 2])
    counts = Counter(predicted.tolist())
    expected = [counts[k] / len(predicted) for k in range(5)]
    assert class_shares(predicted, 5) == expected  # classes 3 and 4 got nothing
    assert coverage(expected) == "3/5 (0.0 %)"
    assert coverage([0.25, 0.5, 0.25]) == "3/3 (25.0 %)" and coverage(None) == "–"


def test_eval_of_real_digits_reports_their_class_shares(tmp_path):
    """Scoring 60 real digits as samples: the shares the digits CNN reports are the labels'
    histogram (the CNN gets at most one of them wrong; it is > 99 % on all 1,797)."""
    from ddpmkit.data import DataConfig, load_dataset

    digits = load_dataset(DataConfig(source="digits", image_size=16), progress=False)
    images, labels = digits.images_uint8[:60], digits.labels[:60]
    npz = tmp_path / "real.npz"
    np.savez(npz, arr_0=images.permute(0, 2, 3, 1).numpy())
    run = tmp_path / "run"
    train_run(run, [*TINY, "data.source=digits", "data.image_size=16", "train.steps=1"])
    done = run_eval(run, samples=str(npz), progress=False, cache_dir=tmp_path / "cache")
    (row,) = json.loads((run / "eval.json").read_text())["results"]
    histogram = [int((labels == k).sum()) / 60 for k in range(10)]
    assert len(row["class_shares"]) == 10
    off = sum(abs(a - b) for a, b in zip(row["class_shares"], histogram, strict=True))
    assert off <= 2 / 60 + 1e-9
    assert row["accuracy"] is None  # no labels were asked for
    smallest = 100 * min(row["class_shares"])
    assert f"| 10/10 ({smallest:.1f} %) |" in done.table
