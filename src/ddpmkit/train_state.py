"""Former home of TrainState; it lives in :mod:`ddpmkit.train.state` now (names re-exported)."""

from ddpmkit.train.state import (  # noqa: F401
    TrainState,
    load_module_weights,
    optimizer_from_tensors,
    optimizer_to_tensors,
)
