"""Class accuracy of generated samples: a shipped CNN, or a user's exported model.

``digits``: the classifier whose penultimate layer is the digits feature extractor (100% on a
held-out fifth of the digits); ``fashion-mnist``: the Fashion-MNIST one (its test accuracy is in
its weights' metadata). A path: a program saved with ``torch.export.save`` (``.pt2``;
or an older TorchScript file) that maps a float batch ``(N, C, H, W)`` in [−1, 1] at the run's
image size to logits ``(N, K)`` over the run's K classes. Neither format runs Python code from
the file on load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ddpmkit.data import from_uint8
from ddpmkit.errors import ConfigError

Classifier = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> logits (N, K)


def load_classifier(spec: str, device: torch.device | str = "cpu") -> Classifier:
    """``digits``, ``fashion-mnist`` or the path of an exported classifier (module docstring)."""
    if spec in ("digits", "fashion-mnist"):
        from ddpmkit.metrics.extractors import load_extractor

        return load_extractor(spec, device=device).logits
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"classifier '{spec}' not found: give digits, fashion-mnist or a .pt2 file"
        )
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location=device).eval()
    except Exception as err:  # noqa: BLE001 - both loaders raise many kinds for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"'{spec}' is not an exported classifier (.pt2): {first}") from None

    # an exported program keeps the device it was exported on: feed it there
    tensors = [*module.parameters(), *module.buffers()]
    where = tensors[0].device if tensors else torch.device(device)

    def classify(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(from_uint8(images).to(where)).float().cpu()

    return classify


def predicted_classes(
    classifier: Classifier, images: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, int]:
    """(the class ``classifier`` assigns to each uint8 image, the number of classes K)."""
    predicted, classes = [], 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        logits = classifier(batch)
        if logits.ndim != 2 or len(logits) != len(batch):
            raise ConfigError(f"the classifier returned shape {tuple(logits.shape)}, not (N, K)")
        predicted.append(logits.argmax(1))
        classes = logits.shape[1]
    return torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long), classes


def class_accuracy(
    classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Share of ``images`` (uint8) that ``classifier`` assigns to their ``labels``."""
    predicted, _ = predicted_classes(classifier, images, batch_size)
    return share_correct(predicted, labels)


def share_correct(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the ``predicted`` classes (of :func:`predicted_classes`) equal to ``labels``."""
    return int((predicted == labels.to(predicted.device)).sum()) / len(predicted)


def class_shares(predicted: torch.Tensor, num_classes: int) -> list[float]:
    """Share of the ``predicted`` classes (of :func:`predicted_classes`) that falls in each of the
    ``num_classes`` classes: which classes an unconditional model covers, and how evenly (a
    dropped class shows as 0)."""
    counts = torch.bincount(predicted.cpu(), minlength=num_classes)
    return [int(c) / max(len(predicted), 1) for c in counts]
