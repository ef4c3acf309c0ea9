"""GroupNorm on channels-last inputs: the closed form, the layout kept, the gradients."""

from __future__ import annotations

import pytest
import torch

from ddpmkit.nn.norm import GroupNorm


def group_norm_reference(x, groups, weight, bias, eps):
    """Wu & He (2018), eq. 1-2 in float64: normalise each group of channels over (C/G, H, W)
    with the biased variance, then scale and shift per channel."""
    n, c, h, w = x.shape
    g = x.double().reshape(n, groups, c // groups * h * w)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    normed = ((g - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    return normed * weight.double()[None, :, None, None] + bias.double()[None, :, None, None]


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_matches_the_closed_form_in_either_layout(channels_last):
    torch.manual_seed(0)
    norm = GroupNorm(4, 16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 16, 6, 5) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = norm(x)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    x64 = x.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    b64 = norm.bias.detach().double().requires_grad_()
    expected = group_norm_reference(x64, 4, w64, b64, 1e-5)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, dtype=torch.float64)
    (out.double() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.bias.grad.double(), b64.grad, rtol=1e-4, atol=1e-4)


def test_bf16_channels_last_gives_the_numbers_of_the_nchw_layout():
    """Under bf16 autocast a channels-last input is normalised to the same values as the NCHW
    one and comes back channels-last, so the memory format changes neither a result nor the
    layout the next convolution sees."""
    torch.manual_seed(1)
    norm = GroupNorm(8, 32)
    x = torch.randn(4, 32, 8, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nchw = norm(x)
        last = norm(x.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nchw, last)
    expected = group_norm_reference(x.float(), 8, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(last.double(), expected, rtol=0.02, atol=0.02)  # bf16 input


def test_a_tensor_contiguous_in_both_layouts_keeps_its_shape_and_values():
    """1×1 maps are contiguous in both layouts: the plain path, the closed form all the same."""
    norm = GroupNorm(2, 8)
    x = torch.randn(5, 8, 1, 1)
    out = norm(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == x.shape
    expected = group_norm_reference(x, 2, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(norm, torch.nn.GroupNorm)
    assert set(norm.state_dict()) == {"weight", "bias"}  # checkpoints and diffusers keys unchanged
