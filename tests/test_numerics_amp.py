"""bfloat16 autocast (``train.amp``): the U-Net's output layer and the training loss run in float32.

Under ``torch.autocast(device, dtype=torch.bfloat16)`` the U-Net body computes in bf16, but its
last GroupNorm/conv runs with autocast off on float32 inputs, and ``training_loss`` casts the
output to float32 and computes targets, the elementwise loss and the VLB terms in float32. CPU
autocast exercises the same code path as CUDA's, so these tests run anywhere.
"""

import math

import pytest
import torch

from ddpmkit.diffusion import GaussianDiffusion, loss_dtype
from ddpmkit.nn import UNet, UNetConfig
from ddpmkit.precision import autocast_enabled
from ddpmkit.schedules import make_schedule

T = 100


def tiny_unet(learned_variance: bool, seed: int = 0) -> UNet:
    """A two-level U-Net whose zero-initialised layers are re-drawn, so its output is not 0."""
    torch.manual_seed(seed)
    model = UNet(
        UNetConfig(
            base_channels=8,
            channel_mults=(1, 2),
            blocks_per_resolution=1,
            attention=("none", "full"),
            mid_attention="linear",
            attention_heads=2,
            norm_groups=4,
            learned_variance=learned_variance,
        )
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(16, 1, 8, 8, generator=gen) * 255).round() / 127.5 - 1  # 8-bit data
    t = torch.randint(0, T, (16,), generator=gen)
    t[:2] = torch.tensor([0, T - 1])  # the decoder term and the last step
    noise = torch.randn(16, 1, 8, 8, generator=gen)
    return x0, t, noise


def test_output_layer_is_float32_under_cpu_autocast(one_thread):
    model = tiny_unet(learned_variance=True)
    x0, t, _ = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x0, t)
        assert autocast_enabled("cpu")  # the output layer restores autocast after it
        inner = model.mid[0].block.in_layers[2](torch.randn(1, 16, 4, 4))
    assert out.dtype == torch.float32
    assert inner.dtype == torch.bfloat16  # the body does run in bf16
    # without autocast nothing changes: float32 in, float32 out; a bf16 model stays bf16
    assert model(x0, t).dtype == torch.float32
    assert model.to(torch.bfloat16)(x0.bfloat16(), t).dtype == torch.bfloat16


CASES = [
    ("fixed_small", "l2", False),
    ("learned_range", "hybrid", True),
    ("learned_range", "kl", True),
]


@pytest.mark.parametrize("variance, loss, learned", CASES)
def test_bf16_loss_is_float32_and_close_to_the_float32_loss(one_thread, variance, loss, learned):
    diffusion = GaussianDiffusion(make_schedule("linear", T), variance=variance, loss=loss)
    model = tiny_unet(learned)
    x0, t, noise = batch()
    ref = diffusion.training_loss(model, x0, t=t, noise=noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = diffusion.training_loss(model, x0, t=t, noise=noise)
    assert amp.loss.dtype == torch.float32 and amp.per_example.dtype == torch.float32
    assert torch.isfinite(amp.per_example).all()
    # only the network body is rounded to bf16 (8-bit mantissa, relative steps of 2^-8 = 0.4%):
    # measured 0.003-0.04% on the batch loss and up to 0.4% per example (3 seeds, 3 losses)
    assert amp.loss.item() == pytest.approx(ref.loss.item(), rel=2e-3)
    torch.testing.assert_close(amp.per_example, ref.per_example, rtol=2e-2, atol=1e-4)
    amp.loss.backward()  # and the backward pass through the float32 loss is finite
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_of_a_bf16_output_is_computed_in_float32():
    """A model that returns bf16 (e.g. a bf16 network without autocast): the loss equals the
    float32 loss of the same, exactly representable, output values."""
    diffusion = GaussianDiffusion(
        make_schedule("linear", T), variance="learned_range", loss="hybrid"
    )
    x0, t, noise = batch(1)

    def bf16_model(x, t):
        return torch.cat([0.5 * x, torch.full_like(x, 0.25)], dim=1).bfloat16()

    def same_in_float32(x, t):
        return bf16_model(x, t).float()

    low = diffusion.training_loss(bf16_model, x0, t=t, noise=noise)
    high = diffusion.training_loss(same_in_float32, x0, t=t, noise=noise)
    assert low.loss.dtype == torch.float32
    torch.testing.assert_close(low.per_example, high.per_example, rtol=0, atol=0)
    assert loss_dtype(torch.bfloat16) == torch.float32
    assert loss_dtype(torch.float16) == torch.float32
    assert loss_dtype(torch.float64) == torch.float64


def test_bf16_loss_is_close_over_seeds(one_thread):
    """The relative bf16-vs-fp32 difference of the batch loss over a few weight/data draws."""
    diffusion = GaussianDiffusion(
        make_schedule("linear", T), variance="learned_range", loss="hybrid"
    )
    worst = 0.0
    for seed in range(3):
        model = tiny_unet(True, seed)
        x0, t, noise = batch(seed)
        ref = diffusion.training_loss(model, x0, t=t, noise=noise).loss.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = diffusion.training_loss(model, x0, t=t, noise=noise).loss.item()
        worst = max(worst, abs(amp - ref) / ref)
    assert math.isfinite(worst) and worst < 2e-3
