"""Per-sample seeding: image i of a request depends only on (seed, i)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion, normal_like
from ddpmkit.errors import ConfigError
from ddpmkit.generate import SampleRequest, SampleResult, generate
from ddpmkit.schedules import make_schedule
from ddpmkit.seeding import PerSampleGenerator, sample_seed
from gaussian_oracle import GaussianOracle

T = 20
SHAPE = (2, 4, 4)
CPU = torch.device("cpu")
SAMPLERS = [
    pytest.param("ddpm", None, 0.0, id="ddpm"),
    pytest.param("ddim", 8, 0.0, id="ddim-eta0"),
    pytest.param("ddim", 8, 0.5, id="ddim-eta0.5"),
    pytest.param("dpm++", 6, 0.0, id="dpm++"),
    pytest.param("heun", 5, 0.0, id="heun"),
]


class Recorder:
    """The exact Gaussian denoiser, keeping every input it is called with."""

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        alpha_bar = diffusion.schedule.alphas_cumprod.numpy()
        self.model = GaussianOracle(alpha_bar, 0.1, 0.3, diffusion.prediction)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.model(x, t)


def draw(
    n: int,
    batch: int,
    seed: int = 0,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    shape: tuple[int, int, int] = SHAPE,
    gif_frames: int = 0,
    model: Recorder | None = None,
) -> SampleResult:
    diffusion = GaussianDiffusion(make_schedule("cosine", T))
    request = SampleRequest(
        n=n,
        sampler=sampler,
        steps=steps,
        eta=eta,
        seed=seed,
        batch_size=batch,
        gif_frames=gif_frames,
    )
    model = model or Recorder(diffusion)
    return generate(model, diffusion, shape, request, CPU, progress=False)


def initial_noise(
    n: int, batch: int, seed: int, shape: tuple[int, int, int] = SHAPE
) -> torch.Tensor:
    """x_T of ``n`` samples, flattened: one-step sampling calls the model once per batch, on x_T."""
    recorder = Recorder(GaussianDiffusion(make_schedule("cosine", T)))
    draw(n, batch, seed, "ddpm", steps=1, shape=shape, model=recorder)
    return torch.cat(recorder.inputs).flatten(1)


@pytest.mark.parametrize("sampler, steps, eta", SAMPLERS)
def test_batch_size_does_not_change_the_images(sampler, steps, eta):
    images = [draw(7, batch, 3, sampler, steps, eta).images for batch in (2, 3, 256)]
    assert torch.equal(images[0], images[1])
    assert torch.equal(images[0], images[2])


@pytest.mark.parametrize("sampler, steps, eta", SAMPLERS)
def test_fewer_images_are_the_first_images_of_more(sampler, steps, eta):
    few = draw(3, 256, 5, sampler, steps, eta).images
    many = draw(10, 4, 5, sampler, steps, eta).images
    assert torch.equal(few, many[:3])


def test_two_seeds_share_no_image_and_no_noise():
    noise = [initial_noise(64, 2, seed) for seed in (0, 1)]
    assert torch.cdist(noise[0], noise[1]).min() > 1.0
    images = [draw(64, 2, seed, "ddpm").images.flatten(1) for seed in (0, 1)]
    assert torch.cdist(images[0], images[1]).min() > 1e-3  # the old seed + k scheme shared 62


def test_per_sample_seeds_are_distinct_over_a_grid():
    seeds = {sample_seed(seed, i) for seed in range(100) for i in range(1000)}
    assert len(seeds) == 100 * 1000
    assert 0 <= min(seeds) and max(seeds) < 2**63


def test_sample_seed_is_the_spawned_child_seed_sequence():
    children = np.random.SeedSequence(7).spawn(4)
    expected = [int(c.generate_state(1, np.uint64)[0]) >> 1 for c in children]
    assert [sample_seed(7, i) for i in range(4)] == expected


def test_eval_replicates_have_uncorrelated_noise():
    shape = (3, 16, 16)
    size = math.prod(shape)
    a, b = (initial_noise(64, 16, seed, shape).double() for seed in (0, 1))
    a = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)
    b = (b - b.mean(1, keepdim=True)) / b.std(1, keepdim=True)
    corr = a @ b.T / (size - 1)  # each entry ~ N(0, 1/size) for independent rows
    assert corr.abs().max() < 6 / math.sqrt(size)


def test_rows_come_from_their_own_generators():
    generator = PerSampleGenerator.for_samples(4, range(10, 13))
    noise = normal_like((3, *SHAPE), generator, torch.empty((), dtype=torch.float64))
    for row, i in zip(noise, range(10, 13), strict=True):
        alone = torch.Generator().manual_seed(sample_seed(4, i))
        assert torch.equal(row, torch.randn(SHAPE, generator=alone, dtype=torch.float64))


def test_gif_frames_follow_the_first_batch():
    small = draw(5, 2, 1, "ddim", 6, gif_frames=4)
    large = draw(5, 4, 1, "ddim", 6, gif_frames=4)
    assert len(small.frames) == len(large.frames) > 1
    assert all(f.shape[0] == 2 for f in small.frames)
    assert all(f.shape[0] == 4 for f in large.frames)
    for f_small, f_large in zip(small.frames, large.frames, strict=True):
        assert torch.equal(f_small, f_large[:2])


def test_bad_seeds_and_shapes_are_refused():
    with pytest.raises(ConfigError, match="seed"):
        draw(2, 2, seed=-1)
    with pytest.raises(ConfigError, match="shape"):
        PerSampleGenerator.for_samples(0, range(3)).randn((4, 2))
    with pytest.raises(ConfigError):
        PerSampleGenerator([])
