"""The FID Inception-v3: TensorFlow's 2015-12-05 Inception graph as used by the reference FID
code (TTUR), rebuilt in plain PyTorch (no torchvision, no torch-fidelity).

The network is the one pytorch-fid (``fid_inception_v3``) and torch-fidelity
(``inception-v3-compat``) build; it differs from torchvision's ImageNet Inception-v3 in four
places, all copies of what the TensorFlow graph does:

* the 3×3 average pools inside the A, C and E blocks do not count the zero padding
  (``count_include_pad=False``, TensorFlow's ``SAME`` average pooling);
* the pooling branch of the last block (``Mixed_7c``) is a 3×3 **max** pool, stride 1;
* every BatchNorm has ε = 0.001; there is no auxiliary classifier; the classifier has 1008
  outputs (the graph's, unused here);
* the input: uint8 levels in [0, 255] are resized to 299×299 with TensorFlow 1.x's bilinear
  ``resize_bilinear(align_corners=False)`` (source coordinate ``i · in/out``, no half-pixel
  offset: :func:`resize_bilinear_tf1`), then mapped to ``(x − 128) / 128``, as the graph's
  ``Sub``/``Mul`` nodes do. Images already 299×299 are not resampled.

The features are the 2048-d output of the final global average pool (the graph's ``pool_3``).

Weights: the standard converted file ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid; the
same tensors as torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``), read by path
and never downloaded. :func:`load_inception_weights` accepts a mapping of names to tensors only
(``torch.load(weights_only=True)``) and checks its key map, shapes and dtypes against the
network before anything is loaded, so a wrong file is one readable error.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpmkit.errors import ConfigError

__all__ = [
    "FID_INPUT_SIZE",
    "FIDInceptionV3",
    "INCEPTION_FEATURE_DIMS",
    "check_inception_state",
    "load_inception_weights",
    "random_inception_state",
    "resize_bilinear_tf1",
]

FID_INPUT_SIZE = 299
INCEPTION_FEATURE_DIMS = 2048
_NUM_CLASSES = 1008
_BN_EPS = 0.001


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of float ``(N, C, H, W)`` to ``(N, C, size, size)`` as TensorFlow 1.x's
    ``resize_bilinear`` with ``align_corners=False``: output pixel i samples the input at
    ``i · in/out`` (no half-pixel centres; coordinates in float32 as TensorFlow computes them),
    interpolating between ``floor`` and ``min(floor + 1, in − 1)``. No antialiasing."""

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / size, dtype=torch.float32)
        src = torch.arange(size, dtype=torch.float32) * scale
        lo = src.floor().long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo.to(x.device), hi.to(x.device), (src - lo.float()).to(x.device, x.dtype)

    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    y_lo, y_hi, dy = axis(x.shape[-2])
    x_lo, x_hi, dx = axis(x.shape[-1])
    rows_lo, rows_hi = x.index_select(2, y_lo), x.index_select(2, y_hi)
    top_l, top_r = rows_lo.index_select(3, x_lo), rows_lo.index_select(3, x_hi)
    bot_l, bot_r = rows_hi.index_select(3, x_lo), rows_hi.index_select(3, x_hi)
    top = top_l + (top_r - top_l) * dx
    bottom = bot_l + (bot_r - bot_l) * dx
    return top + (bottom - top) * dy[:, None]


class _ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (ε = 0.001), ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3×3/1 SAME average pool: the padding is not counted in the mean."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b..5d: 35×35
    def __init__(self, c_in: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 64, 1)
        self.branch5x5_1 = _ConvBN(c_in, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(c_in, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_avg_pool_same(x))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)


class _ReductionB(nn.Module):  # Mixed_6a: 35×35 → 17×17
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):  # Mixed_6b..6e: 17×17 with factorised 7×7 convolutions
    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 192, 1)
        self.branch7x7_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        pool = self.branch_pool(_avg_pool_same(x))
        return torch.cat([self.branch1x1(x), b7, d, pool], 1)


class _ReductionD(nn.Module):  # Mixed_7a: 17×17 → 8×8
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(c_in, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool): 8×8
    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(c_in, 320, 1)
        self.branch3x3_1 = _ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        # the 2015 graph's last block max-pools here (a quirk of that graph, kept for FID)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3. ``forward`` takes uint8 (or float in [0, 255]) RGB ``(N, 3, H, W)``
    of any size and returns the ``(N, 2048)`` pool features in float32.

    Its ``state_dict`` keys are those of the standard weights file (``Conv2d_1a_3x3.conv.weight``,
    ``Mixed_5b.branch_pool.bn.running_var``, ..., ``fc.weight``); BatchNorm's
    ``num_batches_tracked`` counters, which the file lacks, are not required.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(INCEPTION_FEATURE_DIMS, _NUM_CLASSES)  # in the file; unused

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[0, 255] ``(N, 3, H, W)`` → float32 ``(N, 3, 299, 299)`` in [−1, 1) as the graph sees
        it: TensorFlow 1.x bilinear resize, then ``(x − 128) / 128``."""
        x = resize_bilinear_tf1(images.to(torch.float32), FID_INPUT_SIZE)
        return (x - 128.0) / 128.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features of an already preprocessed ``(N, 3, 299, 299)`` batch."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.preprocess(images)).to(torch.float32)


# --------------------------------------------------------------------------------------------
# weights


def _expected_tensors() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        model = FIDInceptionV3()
    return {
        k: (tuple(v.shape), v.dtype)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def check_inception_state(state: Mapping[str, torch.Tensor], where: str, hint: str) -> None:
    """Raise a one-line :class:`ConfigError` unless ``state`` has exactly the FID Inception's
    keys (``num_batches_tracked`` optional), each with the expected shape and a float dtype."""
    expected = _expected_tensors()
    names = [k for k in state if not k.endswith("num_batches_tracked")]
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} of its {len(expected)} tensors missing ({_examples(missing)})"
            )
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors ({_examples(unexpected)})")
        raise ConfigError(
            f"{where} does not hold the FID Inception-v3 weights: {'; '.join(parts)}; {hint}"
        )
    for name, (shape, _) in expected.items():
        t = state[name]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise ConfigError(
                f"{where} does not hold the FID Inception-v3 weights: '{name}' is "
                f"{t.dtype} {tuple(t.shape)}, expected a float tensor of shape {shape}; {hint}"
            )


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_inception_weights(path: Path, data: bytes, hint: str) -> dict[str, torch.Tensor]:
    """The named tensors of a weights file given as ``data`` (read from ``path``), loaded with
    the tensors-only unpickler and checked with :func:`check_inception_state`."""
    where = f"inception weights '{path}'"
    try:
        with warnings.catch_warnings():  # e.g. "unsupported pickle protocol": refused anyway
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors alike mean "refused"
        raise ConfigError(
            f"refusing {where}: it is corrupt or holds objects other than tensors "
            f"({_reason(e)}); {hint}"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(
            f"{where} is not a state dict of named tensors (got {type(state).__name__}); {hint}"
        )
    check_inception_state(state, where, hint)
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def build_inception(state: Mapping[str, torch.Tensor]) -> FIDInceptionV3:
    """A :class:`FIDInceptionV3` in eval mode holding ``state`` (already checked)."""
    model = FIDInceptionV3()
    # strict=False only for the num_batches_tracked counters; every other key was checked
    result = model.load_state_dict(dict(state), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    return model.eval().requires_grad_(False)


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the standard file's key layout (for tests and smoke checks): He-scaled
    convolutions and BatchNorm statistics that keep activations of order one."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, (shape, _) in _expected_tensors().items():
        if name.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif name.endswith("bn.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("bn.bias") or name.endswith("running_mean"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=gen)
        else:  # fc
            t = torch.randn(shape, generator=gen) * 0.02
        state[name] = t.contiguous()
    return state
