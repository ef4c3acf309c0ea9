"""`ddpm inpaint` and `ddpm edit` on a tiny trained run: outputs, exact known pixels, batch-size
independence, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, shapes_array
from ddpmkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_and_images(shapes_npz, tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["train", "--data", str(shapes_npz), "--out", str(root / "run"), "--no-progress"]
        assert main([*argv, *TINY, "train.steps=4"]) == 0
    finally:
        torch.set_num_threads(threads)
    folder = root / "images"
    folder.mkdir()
    for i, image in enumerate(shapes_array(3)):
        Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 5:] = 255  # fill the right three columns
    Image.fromarray(mask).save(root / "mask.png")
    return root / "run", folder, root / "mask.png"


def read(npz):
    with np.load(npz) as data:
        return data["arr_0"]


@pytest.mark.parametrize("method", ["repaint", "replace"])
def test_inpaint_keeps_the_known_pixels_and_ignores_the_batch_size(
    run_and_images, tmp_path, capsys, method
):
    run, folder, mask = run_and_images
    outputs = []
    for batch in ("1", "3"):
        npz = tmp_path / f"{method}{batch}.npz"
        argv = ["inpaint", str(run), "--image", str(folder), "--mask", str(mask), "--steps", "10"]
        argv += ["--method", method, "--jump", "2", "--resample", "2", "--batch", batch]
        assert main([*argv, "--npz", str(npz), "--out", str(tmp_path / "g.png")]) == 0
        outputs.append(read(npz))
    assert "3 images" in capsys.readouterr().out
    assert np.array_equal(outputs[0], outputs[1])
    originals = shapes_array(3)
    assert outputs[0].shape == originals.shape
    assert np.array_equal(outputs[0][:, :, :5], originals[:, :, :5])  # known columns exact
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.width > 6 * 8  # input/result pairs


def test_edit_writes_results_close_to_the_input_at_low_strength(run_and_images, tmp_path):
    run, folder, _ = run_and_images
    npz = tmp_path / "e.npz"
    argv = ["edit", str(run), "--image", str(folder / "0.png"), "--strength", "0.05"]
    assert main([*argv, "--sampler", "ddim", "--steps", "3", "--npz", str(npz)]) == 0
    out = read(npz)[0].astype(int)
    assert out.shape == (8, 8, 1)
    assert np.abs(out - shapes_array(1)[0].astype(int)).mean() < 40


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "missing.png"], "not found"),
        (["--image", "IMAGES", "--mask", "diagonal"], "unknown mask region 'diagonal'"),
        (["--image", "IMAGES", "--sampler", "ddim"], "RePaint is an ancestral method"),
        (["--image", "IMAGES", "--sampler", "euler"], "unknown sampler 'euler'"),
    ],
)
def test_inpaint_mistakes_are_one_line(run_and_images, capsys, extra, message):
    run, folder, _ = run_and_images
    extra = [str(folder) if e == "IMAGES" else e for e in extra]
    assert main(["inpaint", str(run), *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
