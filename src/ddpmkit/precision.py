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
