"""The Fashion-MNIST classifier whose penultimate layer is the ``fashion-mnist`` feature space.

The network is :class:`~ddpmkit.metrics.digits_cnn.DigitsCNN` (three convolutions with
GroupNorm and ReLU, a 128-d feature layer, 10 logits) at 28×28, the data set's own size:
28 → 14 → 7, average-pooled to 4×4 rather than to one value per channel, because where a
garment's parts are (a collar, a sleeve, a heel) is what tells shirts from pullovers and
coats: with global pooling the same network stopped at 88.7 % test accuracy (12 epochs).
Trained by ``tools/train_fashion_classifier.py`` on the 60,000
training images of Fashion-MNIST (Xiao et al. 2017) and measured on its 10,000 test images;
the weights ship in ``weights/fashion_cnn.safetensors`` with the test accuracy and the
real-vs-real floors in their metadata. Preprocessing is the digits one at 28×28
(:func:`~ddpmkit.metrics.digits_cnn.preprocess` with ``size=28``): luma, the data loader's
upscaling or an antialiased bilinear downscaling, ``x / 127.5 - 1``.
"""

from __future__ import annotations

import torch

from ddpmkit.metrics.digits_cnn import DigitsCNN, preprocess

INPUT_SIZE = 28
WIDTHS = (32, 64, 128)
POOL = 4
PREPROCESS_VERSION = (
    "fashion-pre-v2: luma601 float, up: loader bicubic float clip round, down: bilinear "
    "antialias; to 28x28, x/127.5-1"
)


def fashion_cnn() -> DigitsCNN:
    """The untrained network of the ``fashion-mnist`` extractor."""
    return DigitsCNN(widths=WIDTHS, pool=POOL)


def fashion_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, C, S, S)`` → float32 ``(N, 1, 28, 28)`` in [-1, 1]."""
    return preprocess(images, INPUT_SIZE)
