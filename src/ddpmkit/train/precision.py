"""The number format of the training step (``train.amp``, ``train.amp_dtype``)."""

from __future__ import annotations

import torch

from ddpmkit.precision import bf16_autocast_supported


def training_precision(
    device: torch.device, amp: bool, amp_dtype: str
) -> tuple[torch.dtype | None, bool, str | None]:
    """``(autocast dtype or None, use a GradScaler, note)`` for ``train.amp``/``amp_dtype``:
    ``auto`` is bfloat16 where the device has it natively (:func:`bf16_autocast_supported`:
    compute capability >= 8, CPUs with AVX-512 BF16/AMX), float16 with a GradScaler on other
    CUDA GPUs (V100, T4: bf16 is only emulated there), else float32 (with a note why)."""
    if not amp:
        return None, False, None
    if amp_dtype == "bf16":
        return torch.bfloat16, False, None
    if amp_dtype == "fp16":
        return torch.float16, True, None
    if bf16_autocast_supported(device):
        return torch.bfloat16, False, None
    if device.type == "cuda":
        return torch.float16, True, None
    return None, False, f"train.amp: {device} has no fast bfloat16 support; training in float32"
