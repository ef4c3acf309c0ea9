"""Mixed precision helpers shared by the network and the diffusion (neither imports the other)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda", …) in this thread."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (TypeError, RuntimeError):  # torch < 2.4 has no per-device query
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        if device_type == "cuda":
            return bool(torch.is_autocast_enabled())
        return False


@contextlib.contextmanager
def autocast_disabled(device: torch.device) -> Iterator[None]:
    """Switch autocast off for ``device``'s type inside the block if it is on (a no-op
    otherwise, so devices without autocast support are fine)."""
    if autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def bf16_autocast_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast pays off: CUDA GPUs with native bf16 (compute capability >= 8),
    CPUs whose oneDNN has bf16 kernels (AVX-512 BF16 or AMX); elsewhere it would emulate bf16
    slowly."""
    if device.type == "cuda":
        # not emulated bf16 (V100, T4 report it as supported by default, and run it slowly)
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def with_autocast(model, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """``model`` called under ``dtype`` autocast on ``device`` (sampling and evaluation with
    ``--amp``). The U-Net's output layer runs in float32 whatever autocast says, so a sampler's
    arithmetic on x_t stays float32; only the network body runs in ``dtype``."""

    def call(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            return model(*args, **kwargs)

    return call
