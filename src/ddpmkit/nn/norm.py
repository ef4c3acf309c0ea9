"""GroupNorm (Wu & He 2018) that stays fast on channels-last activations.

PyTorch's CPU GroupNorm has a separate kernel for channels-last (NHWC) inputs; in bfloat16 it is
7 times slower than the NCHW kernel forward and 5 times backward (digits U-Net, batch 64: 36 ms more
per training step, more than the convolutions gain from the layout; BENCHMARKS.md, "Why
channels-last bf16 training was slower"). :class:`GroupNorm` normalises a channels-last input
in the NCHW layout and hands the result back channels-last: the two copies cost less than the
slow kernel (with it the channels-last bf16 step is as fast as the NCHW one, instead of 17 %
slower). Its parameters and state-dict keys are ``nn.GroupNorm``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that runs the NCHW kernel on channels-last 4-d CPU inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.ndim == 4
            and x.device.type == "cpu"
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            out = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return out.contiguous(memory_format=torch.channels_last)
        return super().forward(x)
