"""The training images and labels, one micro-batch at a time.

:class:`TrainingBatches` loads the data set (rank 0 first under DDP, so one process decodes into
the cache and the others find it), decides where the images live (``data.hold``), and hands out
micro-batches from the training state's data position, moving it: scaled to [-1, 1], flipped
and with labels dropped as the step's keyed draws say (:mod:`ddpmkit.batch_draws`).
"""

from __future__ import annotations

import dataclasses

import torch

from ddpmkit.batch_draws import BatchDraws
from ddpmkit.config import RunConfig
from ddpmkit.data import from_uint8, load_dataset
from ddpmkit.data.loader import (
    DeviceBatches,
    EpochPlan,
    Position,
    StreamBatches,
    choose_hold,
    default_workers,
)
from ddpmkit.errors import ConfigError, DataError


class TrainingBatches:
    """The data of a run: ``count`` images, ``labels`` and ``class_names`` (conditional runs),
    ``description`` (what was loaded and where it is held), and :meth:`next` micro-batches."""

    def __init__(
        self,
        config: RunConfig,
        device: torch.device,
        *,
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
    ) -> None:
        data, tc = config.data, config.train
        dataset = load_dataset(data, progress=progress and rank == 0, distributed=True)
        images = dataset.images_uint8
        if len(images) == 0:
            raise DataError(f"data source '{data.source}' holds no images")
        self.count = len(images)
        self.plan = EpochPlan(tc.seed, self.count, rank, world)
        self.micro_batch = tc.batch_size // world // tc.grad_accum
        self.random_flip = data.random_flip
        self.channels_last = tc.channels_last
        self.labels, self.class_names = _class_labels(config, dataset)
        if self.labels is not None:
            self.labels = self.labels.to(device)
        hold, why = choose_hold(data.hold, images.numel(), device)
        if hold == "device":
            self.source: DeviceBatches | StreamBatches = DeviceBatches(
                images, device, mapped=dataset.cache_file is not None
            )
            where = f"held on {device} ({why})"
        else:
            workers = data.loader_workers
            if workers < 0:
                workers = default_workers(device, world)
            self.source = StreamBatches(images, dataset.cache_file, device, workers)
            origin = f"the cache {dataset.cache_file.parent}" if dataset.cache_file else "memory"
            helpers = (
                f"{workers} loader worker{'s' if workers != 1 else ''}"
                if workers
                else "the training process"
            )
            where = f"streamed from {origin} by {helpers} ({why})"
        self.description = f"{dataset.describe()}; {where}"

    def start(self, position: Position) -> None:
        """Hand out batches from ``position`` on (the training state's: :meth:`next` moves it)."""
        self.source.start(position, self.plan, self.micro_batch)

    def next(self, draws: BatchDraws) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next micro-batch: images of the epoch's permutation in [-1, 1], flipped where
        ``draws`` say, and for a conditional run their labels, those that ``draws`` drop
        replaced by the null class (Ho & Salimans 2022, Algorithm 1)."""
        index, images = self.source.next()
        batch = from_uint8(images)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.random_flip:
            flip = draws.flip.to(batch.device).view(-1, 1, 1, 1)
            batch = torch.where(flip, batch.flip(-1), batch)
        if self.labels is None:
            return batch, None
        labels = self.labels[index.to(self.labels.device)]
        labels[draws.drop_label.to(labels.device)] = len(self.class_names)  # null class
        return batch, labels

    def close(self) -> None:
        self.source.close()


def _class_labels(config: RunConfig, dataset) -> tuple[torch.Tensor | None, list[str] | None]:
    """The labels a class-conditional run trains on and their names; ``config.model`` gets
    ``num_classes`` from them (the U-Net adds one "null" class for label dropout)."""
    tc, model = config.train, config.model
    if not tc.conditional:
        if model.num_classes:
            raise ConfigError("model.num_classes is set: train it with train.conditional=true")
        return None, None
    labels = dataset.labels
    if labels is None:
        raise DataError(
            f"train.conditional=true needs class labels, and '{config.data.source}' "
            "has none (labelled sources: digits, class subfolders, hf: ClassLabel, npz "
            "labels, CIFAR)"
        )
    names, count = dataset.class_names, dataset.num_classes
    if model.num_classes and model.num_classes != count:
        raise ConfigError(f"model.num_classes={model.num_classes} but the data has {count} classes")
    config.model = dataclasses.replace(model, num_classes=count)
    names = list(names) if names else [str(k) for k in range(count)]
    return labels.to(torch.long), names
