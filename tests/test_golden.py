"""Bit-for-bit golden outputs (tests/golden/golden_outputs.py), written on main before the
redesign of issue "One owner per concern": samples of every sampler × variance × prediction,
guided and edited images, losses, gradients and bounds of tiny random-weight U-Nets, and the
files of `ddpm train` / `nll` / `eval` / `export` on a tiny run. A refactor must not change one
bit of them; a deliberate fix regenerates only the entries it changes, in its own commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import golden_outputs  # noqa: E402


@pytest.fixture(scope="module")
def library_outputs() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    try:
        return golden_outputs.library_outputs()
    finally:
        torch.set_num_threads(threads)


def test_library_outputs_equal_the_golden_ones_bit_for_bit(library_outputs) -> None:
    golden = load_file(str(golden_outputs.TENSORS))
    assert sorted(library_outputs) == sorted(golden)
    differ = [
        key
        for key, value in golden.items()
        if value.dtype != library_outputs[key].dtype or not torch.equal(value, library_outputs[key])
    ]
    assert not differ, f"{len(differ)} outputs changed, e.g. {differ[:5]}"


def test_refusals_are_the_golden_ones(library_outputs) -> None:
    """The raw learned variance is refused on a respaced ancestral process, nothing else is."""
    refused = {k for k, v in library_outputs.items() if v.shape == (1,) and v.item() == -1.0}
    assert refused == {f"sample/learned/{p}/ddpm_5" for p in golden_outputs.PREDICTIONS}


@pytest.mark.slow
def test_run_files_equal_the_golden_ones(tmp_path: Path) -> None:
    golden = json.loads(golden_outputs.FILES.read_text(encoding="utf-8"))
    threads = torch.get_num_threads()
    try:
        outputs = golden_outputs.run_outputs(tmp_path)
    finally:
        torch.set_num_threads(threads)
    differ = [k for k in sorted(set(golden) | set(outputs)) if golden.get(k) != outputs.get(k)]
    assert not differ, f"{len(differ)} run outputs changed: {differ}"
