"""Training: the loop of Algorithm 1 (Ho et al. 2020) and what it is made of.

- :mod:`.loop` — :class:`Trainer`; its ``train()`` reads top to bottom in one screen.
- :mod:`.state` — :class:`TrainState`, everything a step changes, and its checkpoint form.
- :mod:`.batches` — the data set and its micro-batches (flips, dropped labels, data position).
- :mod:`.setup` — the checkpoint to resume, a fresh state, the DDP/compiled model.
- :mod:`.processes` — rank, device and the collective decisions under torchrun.
- :mod:`.lr`, :mod:`.ema`, :mod:`.precision` — learning rate, weight averaging, number format.
- :mod:`.log` — progress bar, metrics.jsonl and tracker.
- :mod:`.prepare` — the config and run directory of ``ddpm train``.

It may import the config, data, network, diffusion, sampling (for the training grid), run
directory and trackers; nothing imports it except the command line.
"""

from ddpmkit.train.ema import ema_decay, update_ema
from ddpmkit.train.loop import Trainer, TrainingDiverged, TrainingInterrupted, TrainResult
from ddpmkit.train.lr import learning_rate
from ddpmkit.train.precision import training_precision
from ddpmkit.train.prepare import prepare_run
from ddpmkit.train.state import TrainState

__all__ = [
    "TrainResult",
    "TrainState",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "ema_decay",
    "learning_rate",
    "prepare_run",
    "training_precision",
    "update_ema",
]
