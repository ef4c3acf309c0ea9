"""Per-sample random streams: the noise of sample i depends only on (seed, i).

Sample ``i`` of a request with seed ``s`` draws all its noise (x_T and every ancestral or DDIM
η > 0 step) from its own :class:`torch.Generator`, seeded with :func:`sample_seed`: the first
64-bit word of ``numpy.random.SeedSequence(entropy=s, spawn_key=(i,)).generate_state`` with its
top bit dropped (a 63-bit int, so it fits an int64). That SeedSequence is the ``i``-th child of
``SeedSequence(s).spawn(...)``; its hash gives unrelated streams for neighbouring seeds and
indices, so seeds 0 and 1 share no sample, and a sample's noise does not depend on the batch it
is drawn in nor on how many samples were asked for.

A CUDA generator (Philox) uses all 64 bits of a seed. torch's CPU generator (Mersenne Twister)
keeps only the low 32 bits, so on the CPU two (seed, i) pairs share a stream with probability
2⁻³² per pair. The streams differ between devices: the same (seed, i) gives the same noise on
the same device type and torch version.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from ddpmkit.errors import ConfigError


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample ``index`` of a request with seed ``seed`` (both >= 0)."""
    if seed < 0 or index < 0:
        raise ConfigError(f"the seed and the sample index must be >= 0, got {seed} and {index}")
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(index,))
    return int(sequence.generate_state(1, np.uint64)[0]) >> 1


class PerSampleGenerator:
    """One :class:`torch.Generator` per sample of a batch, all on ``device``; row j of every
    noise tensor comes from generator j, so a sample's noise ignores the rest of the batch."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        if len(seeds) == 0:
            raise ConfigError("a per-sample generator needs at least one seed")
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    @classmethod
    def for_samples(
        cls, seed: int, indices: Iterable[int], device: torch.device | str = "cpu"
    ) -> PerSampleGenerator:
        """Generators for samples ``indices`` (e.g. ``range(start, start + count)``) of ``seed``."""
        return cls([sample_seed(seed, i) for i in indices], device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise of ``shape`` = (B, ...) on ``self.device``, B = len(self)."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self.generators):
            raise ConfigError(
                f"noise of shape {shape} asked of a generator for {len(self.generators)} samples"
            )
        noise = torch.empty(shape, device=self.device, dtype=dtype)
        for row, generator in zip(noise, self.generators, strict=True):
            row.normal_(generator=generator)
        return noise


NoiseGenerator = torch.Generator | PerSampleGenerator  # what the samplers draw noise from


def per_sample_batches(
    start: int, stop: int, batch_size: int, seed: int, device: torch.device | str = "cpu"
) -> Iterator[tuple[range, PerSampleGenerator]]:
    """Images ``start`` … ``stop − 1`` in batches of ``batch_size``: each batch's indices and the
    generator whose row j is seeded from (``seed``, index j). What sampling, editing and the
    bound iterate over, so that an image's noise never depends on the batching."""
    if batch_size < 1:
        raise ConfigError("the batch size must be >= 1")
    for first in range(start, stop, batch_size):
        indices = range(first, min(first + batch_size, stop))
        yield indices, PerSampleGenerator.for_samples(seed, indices, device)
