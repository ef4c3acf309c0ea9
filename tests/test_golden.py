"""Bit-for-bit golden outputs (tests/golden/golden_outputs.py), written on main before the
redesign of issue "One owner per concern": samples of every sampler × variance × prediction,
guided and edited images, losses, gradients and bounds of tiny random-weight U-Nets, and the
files of `ddpm train` / `nll` / `eval` / `export` on a tiny run. A refactor must not change one
bit of them; a deliberate fix regenerates only the entries it changes, in its own commit.

Bit for bit on the host kinds that have their own golden files (golden_outputs.golden_paths: the
reference Xeon, and tests/golden/hosts/<key>/); on another kind of CPU, whose kernels round
differently, the tensors are held to the reference within 1e-4 of each tensor's scale (kernel
rounding moved them by at most 4e-5 on an AMD EPYC) and the run files' digests, which no
tolerance can compare, are skipped with the command that records that host kind."""

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


HOST = golden_outputs.host_key()
HOST_GOLDEN = golden_outputs.golden_paths(HOST)
RECORD = f"no golden files for host kind {HOST}: record them with tests/golden/golden_outputs.py"


def _rounding_apart(golden: torch.Tensor, new: torch.Tensor) -> bool:
    """Whether ``new`` is within 1e-4 of ``golden``'s scale (max |golden|) at every entry."""
    scale = golden.double().abs().max().clamp_min(1e-30)
    return bool(((golden.double() - new.double()).abs() <= 1e-4 * scale).all())


def test_library_outputs_equal_the_golden_ones_bit_for_bit(library_outputs) -> None:
    tensors = HOST_GOLDEN[0] if HOST_GOLDEN else golden_outputs.TENSORS
    golden = load_file(str(tensors))
    assert sorted(library_outputs) == sorted(golden)
    same = torch.equal if HOST_GOLDEN else _rounding_apart
    differ = [
        key
        for key, value in golden.items()
        if value.dtype != library_outputs[key].dtype or not same(value, library_outputs[key])
    ]
    assert not differ, f"{len(differ)} outputs changed ({HOST}), e.g. {differ[:5]}"


def test_rounding_tolerance_tells_a_formula_change_from_kernel_rounding() -> None:
    """The other-host comparison passes a last-bits change and fails a change of the maths."""
    golden = torch.linspace(-1, 1, 101)
    assert _rounding_apart(golden, golden + 3e-5)
    assert _rounding_apart(golden, torch.nextafter(golden, torch.full_like(golden, 2.0)))
    assert not _rounding_apart(golden, golden * (1 - 1e-3))  # e.g. a β off by a thousandth


def test_refusals_are_the_golden_ones(library_outputs) -> None:
    """The raw learned variance is refused on a respaced ancestral process, nothing else is."""
    refused = {k for k, v in library_outputs.items() if v.shape == (1,) and v.item() == -1.0}
    assert refused == {f"sample/learned/{p}/ddpm_5" for p in golden_outputs.PREDICTIONS}


@pytest.mark.slow
def test_run_files_equal_the_golden_ones(tmp_path: Path) -> None:
    if HOST_GOLDEN is None:
        pytest.skip(RECORD)
    golden = json.loads(HOST_GOLDEN[1].read_text(encoding="utf-8"))
    threads = torch.get_num_threads()
    try:
        outputs = golden_outputs.run_outputs(tmp_path)
    finally:
        torch.set_num_threads(threads)
    differ = [k for k in sorted(set(golden) | set(outputs)) if golden.get(k) != outputs.get(k)]
    assert not differ, f"{len(differ)} run outputs changed: {differ}"
