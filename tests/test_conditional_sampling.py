"""Class-conditional sampling through generate(): labels per image, guidance, arr_1 in the npz."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.errors import ConfigError
from ddpmkit.generate import SampleRequest, generate, write_outputs
from ddpmkit.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")
NULL = 3


def conditional_model(x, t, y):
    """A stand-in network whose output depends on the class (the null class 3 included)."""
    return torch.tanh(0.5 * x + 0.3 * (y.view(-1, 1, 1, 1).to(x.dtype) - 1.5))


def draw(batch_size: int, guidance: float = 2.0, labels=(0, 1, 2, 2, 1)) -> object:
    diffusion = GaussianDiffusion(make_schedule("cosine", 40), "eps", "fixed_small")
    request = SampleRequest(
        n=len(labels),
        sampler="ddim",
        steps=5,
        eta=0.5,
        seed=4,
        batch_size=batch_size,
        labels=list(labels),
        guidance=guidance,
        null_label=NULL,
    )
    return generate(conditional_model, diffusion, (1, 4, 4), request, torch.device("cpu"), False)


def test_labels_and_guidance_do_not_depend_on_the_batch_size():
    a, b = draw(2), draw(5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, torch.tensor([0, 1, 2, 2, 1]))
    assert not torch.equal(draw(5, guidance=0.0).images, a.images)  # the weight matters
    same_class = draw(5, labels=(2, 2, 2, 2, 2))
    assert torch.equal(same_class.images[2:4], a.images[2:4])  # image i: (seed, i, class)


def test_npz_holds_labels_under_arr_1(tmp_path):
    result = draw(5)
    write_outputs(result, npz=tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as data:
        assert data.files == ["arr_0", "arr_1"]
        assert data["arr_1"].tolist() == [0, 1, 2, 2, 1] and data["arr_0"].shape == (5, 4, 4, 1)


def test_guidance_without_labels_is_refused():
    diffusion = GaussianDiffusion(make_schedule("cosine", 40), "eps", "fixed_small")
    with pytest.raises(ConfigError, match="guidance needs class labels"):
        generate(
            conditional_model,
            diffusion,
            (1, 4, 4),
            SampleRequest(n=2, guidance=1.0),
            torch.device("cpu"),
            False,
        )
