"""A run SIGKILLed at random moments, some inside checkpoint writes, resumes and finishes with
the weights, EMA, optimizer and generator states of the uninterrupted run, bit for bit."""

from __future__ import annotations

import sys

import pytest

from conftest import tiny_overrides
from killtest import kill_test

pytestmark = pytest.mark.slow  # multi-process, kill or fuzz runs: seconds each

# the n-th file written into a checkpoint directory (6 per checkpoint: 4 safetensors, state.json,
# manifest.json), the n-th update of checkpoints/latest, the n-th pruning of old checkpoints
FORCED = [("file", 1), ("file", 5), ("file", 6), ("file", 9), ("latest", 2), ("prune", 3)]


@pytest.mark.skipif(sys.platform == "win32", reason="fork and SIGKILL")
def test_sigkill_at_random_moments_never_loses_the_run(shapes_npz, tmp_path):
    overrides = tiny_overrides(
        shapes_npz,
        "train.steps=30",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=2",
        "model.dropout=0.1",
        "data.random_flip=true",
    )
    report = kill_test(tmp_path, overrides, kills=20, seed=0, forced=FORCED)
    print(report)
    assert report.mismatches == []
    assert report.kills >= 20 and report.forced == len(FORCED)
    assert report.recovered == report.runs >= 1
