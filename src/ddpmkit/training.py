"""Former home of the training loop; it lives in :mod:`ddpmkit.train` now (names re-exported)."""

from ddpmkit.data.loader import epoch_share  # noqa: F401
from ddpmkit.train import (  # noqa: F401
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
    TrainState,
    ema_decay,
    learning_rate,
    prepare_run,
    training_precision,
    update_ema,
)
from ddpmkit.train.log import TIMESTEP_BUCKETS  # noqa: F401
