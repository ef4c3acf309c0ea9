"""scikit-learn's 1797 handwritten 8×8 digits (bundled in its wheel), with their labels 0..9."""

from __future__ import annotations

import numpy as np
import torch

from ddpmkit.data.dataset import DIGITS, DataConfig, ImageDataset
from ddpmkit.data.imaging import convert_channels, resize_square_float, to_tensor_nchw
from ddpmkit.errors import DataError


def load_digits_dataset(cfg: DataConfig, *, progress: bool) -> ImageDataset:
    """0..16 → round(v·255/16), resized in float to ``image_size`` (bicubic up)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise DataError("the 'digits' source needs scikit-learn (pip install scikit-learn)") from e
    bunch = load_digits()
    arr = np.rint(np.asarray(bunch.images, dtype=np.float64) * 255.0 / 16.0)
    arr = np.clip(arr, 0, 255).astype(np.uint8)[..., None]
    arr = resize_square_float(arr, cfg.image_size, progress=progress, desc="resizing digits")
    arr = convert_channels(arr, cfg.channels)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    names = [str(k) for k in range(10)]
    return ImageDataset(
        to_tensor_nchw(arr), source=DIGITS, labels=labels, class_names=names, kind="scikit-learn"
    )
