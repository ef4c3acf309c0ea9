"""Property-based fuzzing of a run directory's own files (needs ``hypothesis``): the manifest,
state.json, the ``latest`` pointer, config.json, metrics.jsonl and trackers.json of a saved run,
mutated like the readers' inputs in test_fuzz.py. Property: loading the run for sampling,
resuming its state and summarising it either works — possibly falling back to the older
checkpoint, with a warning — or raises a DdpmkitError; nothing else. 150 examples, about 12 s.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import TINY
from ddpmkit.compare import summarize_run
from ddpmkit.config import resolve_config
from ddpmkit.errors import DdpmkitError
from ddpmkit.generate import load_run
from ddpmkit.rundir import RunDir
from test_fuzz import _mutated, _settings
from test_rundir import make_state, save

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

TARGETS = [
    "checkpoints/step_0000002/manifest.json",
    "checkpoints/step_0000002/state.json",
    "checkpoints/latest",
    "config.json",
    "metrics.jsonl",
    "trackers.json",
]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    config = resolve_config(overrides=TINY)
    run = RunDir(tmp_path_factory.mktemp("fuzz") / "run")
    run.write_config(config)
    for steps in (1, 2):
        save(run, make_state(config, steps=steps))
        run.append_metrics({"step": steps, "loss": 1.0 / steps})
    run.write_json("trackers.json", {"wandb": "abc123"})
    return run.path


def _seeds(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in TARGETS}


@_settings(150)
@given(data=st.data())
def test_a_mutated_run_directory_loads_or_fails_with_one_clear_error(saved_run, tmp_path, data):
    target = data.draw(st.sampled_from(TARGETS))
    seeds = _seeds(saved_run)
    payload = data.draw(_mutated([seeds[target]]))
    copy = tmp_path / f"run{abs(hash(payload)) % 10**8}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(saved_run, copy)
    (copy / target).write_bytes(payload)
    config = resolve_config(overrides=TINY)
    for attempt in (
        lambda: load_run(copy, device="cpu"),
        lambda: make_state(config, steps=0).load_state_dict(RunDir(copy).load_checkpoint()),
        lambda: summarize_run(copy),
        lambda: RunDir(copy).read_metrics(),
        lambda: RunDir(copy).read_json("trackers.json"),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the fallback's warning
                result = attempt()
        except DdpmkitError as err:
            assert "\n" not in str(err).strip()
            continue
        if hasattr(result, "model"):  # a loaded run: finite weights of a known step
            assert result.step in (1, 2)
            assert all(torch.isfinite(p).all() for p in result.model.parameters())
    shutil.rmtree(copy, ignore_errors=True)
