"""The small digit classifier whose penultimate layer is the ``digits`` feature space.

Trained by ``tools/train_digits_classifier.py`` on scikit-learn's digits upscaled to 16×16 (see
:mod:`ddpmkit.data`); the weights ship in ``weights/digits_cnn.safetensors``. Network::

    16×16×1 ─ conv3×3 32 ─ GN ─ ReLU                      16×16
            ─ conv3×3/2 64 ─ GN ─ ReLU                    8×8
            ─ conv3×3/2 128 ─ GN ─ ReLU                   4×4
            ─ global average pool ─ linear 128 ─ ReLU     features (128)
            ─ linear 10                                   logits

Preprocessing (:func:`preprocess`), the same for training and for feature extraction:

1. RGB → gray with the ITU-R 601-2 luma weights Pillow uses (19595, 38470, 7471) / 65536, kept
   in float (not rounded to 8 bits), so an RGB image whose three channels are equal gives exactly
   its gray level;
2. resize to 16×16, skipped when the input is already 16×16. Upscaling (e.g. the digits'
   own 8×8) follows the data loader's rule (:func:`ddpmkit.data.imaging.resize_square_levels`:
   Pillow's bicubic in float, clipped to [0, 255], rounded once), so images at a data set's
   native size are seen exactly as ``ddpm train`` presents that data set at 16×16: the 8×8
   digits give the features of the 16×16 digits, and a run trained at 8×8 is scored like the
   16×16 runs. Downscaling is ``torch.nn.functional.interpolate(mode="bilinear",
   antialias=True, align_corners=False)`` (the triangle kernel widened by the scale factor,
   like Pillow's bilinear). Version 1 upscaled with plain bilinear interpolation; the two
   versions agree on every image already at the input size, which is all the classifiers were
   trained on;
3. scale the levels 0..255 to [-1, 1]: ``x / 127.5 - 1`` (as :func:`ddpmkit.data.from_uint8`).

Any change to these steps must bump :data:`PREPROCESS_VERSION`, which enters the extractor's
fingerprint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpmkit.data.imaging import resize_square_levels

__all__ = [
    "FEATURE_DIM",
    "HELD_OUT_FRACTION",
    "INPUT_SIZE",
    "NUM_CLASSES",
    "PREPROCESS_VERSION",
    "DigitsCNN",
    "held_out_split",
    "preprocess",
]

INPUT_SIZE = 16
FEATURE_DIM = 128
NUM_CLASSES = 10
HELD_OUT_FRACTION = 0.2
PREPROCESS_VERSION = (
    "digits-pre-v2: luma601 float, up: loader bicubic float clip round, down: bilinear "
    "antialias; to 16x16, x/127.5-1"
)

_LUMA = (19595.0, 38470.0, 7471.0)  # ITU-R 601-2 × 65536, as Pillow's convert("L")


class DigitsCNN(nn.Module):
    """Three conv layers (GroupNorm, ReLU), global average pool, a 128-d feature layer, 10 logits.

    :meth:`features` returns the penultimate layer (after its ReLU); :meth:`forward` the logits.
    Inputs are float ``(N, 1, 16, 16)`` in [-1, 1], as made by :func:`preprocess`.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (32, 64, 128),
        feature_dim: int = FEATURE_DIM,
        num_classes: int = NUM_CLASSES,
        groups: int = 8,
        pool: int = 1,
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.GroupNorm(groups, c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GroupNorm(groups, c2),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.GroupNorm(groups, c3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.feature = nn.Linear(c3 * pool * pool, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.feature.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)``, after the ReLU."""
        return F.relu(self.feature(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def preprocess(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 ``(N, C, S, S)``, C ∈ {1, 3} → float32 ``(N, 1, size, size)`` in [-1, 1].

    The steps are listed in the module docstring (``size`` 16 for digits; the Fashion-MNIST
    classifier uses 28). The input is assumed valid (checked by the extractor); it stays on its
    device.
    """
    x = images.to(torch.float32)
    if x.shape[1] == 3:
        w = torch.tensor(_LUMA, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        # the weighted sum of integers is exact in float32 (< 2**24), so gray-as-RGB is exact
        x = (x * w).sum(dim=1, keepdim=True) / 65536.0
    if x.shape[-1] < size:
        levels = x.permute(0, 2, 3, 1).cpu().numpy()
        up = resize_square_levels(levels, size)  # the data loader's upscaling
        x = torch.from_numpy(up).permute(0, 3, 1, 2).to(x.device)
    elif x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    # the standard layout, always: an (N, 1, H, W) view of NHWC data also passes as channels-last,
    # which sends the convolutions down another path (features equal only to ~1e-6)
    return (x / 127.5 - 1.0).clone(memory_format=torch.contiguous_format)


def held_out_split(
    labels: np.ndarray | torch.Tensor, seed: int, fraction: float = HELD_OUT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, held-out) index arrays, sorted; the split of the training script.

    ``sklearn.model_selection.train_test_split(arange(N), test_size=fraction, stratify=labels,
    random_state=seed)``: the same labels, seed and fraction always give the same split.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels)
    train, held = train_test_split(
        np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed
    )
    return np.sort(train), np.sort(held)
