"""Crash-safe writes of single files: temporary name, fsync, atomic rename, usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import temp_files
from ddpmkit import fileio
from ddpmkit.fileio import atomic_save_tensors, atomic_write_bytes, atomic_write_text

pytestmark = pytest.mark.usefixtures("one_thread")


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------- atomic writes
def test_atomic_write_leaves_only_the_file(tmp_path):
    path = tmp_path / "sub" / "config.json"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    atomic_save_tensors(tmp_path / "w.safetensors", {"a": torch.arange(3.0)}, {"step": "1"})
    assert path.read_text(encoding="utf-8") == "second\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "sub", "w.safetensors"]


def test_written_files_get_the_usual_permissions(tmp_path):
    """A temporary file is private (0600); the renamed result must not stay so."""
    expected = 0o666 & ~current_umask()
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_save_tensors(tmp_path / "b.safetensors", {"a": torch.zeros(1)}, {})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == expected
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == expected


@pytest.mark.parametrize("exception", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_tensor_write_keeps_the_previous_file(tmp_path, monkeypatch, exception):
    path = tmp_path / "model.safetensors"
    old = {"w": torch.arange(6.0).view(2, 3)}
    atomic_save_tensors(path, old, {"step": "1"})
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])  # half of the new file is on disk
        raise exception

    monkeypatch.setattr(fileio, "save_file", half_then_fail)
    with pytest.raises(type(exception)):
        atomic_save_tensors(path, {"w": torch.ones(2, 3)}, {"step": "2"})
    assert path.read_bytes() == before
    assert torch.equal(load_file(str(path))["w"], old["w"])
    assert temp_files(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_interrupted_text_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_text(path, '{"step": 1}\n')

    def fail(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(fileio.os, "fsync", fail)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_bytes(path, b'{"step": 2}\n')
    assert path.read_text(encoding="utf-8") == '{"step": 1}\n'
    assert temp_files(tmp_path) == []
