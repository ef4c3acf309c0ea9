"""Hugging Face data sets: ``hf:NAME[:SPLIT]`` (needs ``pip install 'ddpmkit[hf]'``).

``NAME`` is a Hub data set (``fashion_mnist``, ``nelorth/oxford-flowers``; ``data.hf_config``
picks its configuration) or a local folder: the output of ``save_to_disk``, a folder of
parquet/arrow files, or a folder of images (read by the ``imagefolder`` builder: class
subfolders become a ClassLabel). ``SPLIT`` is anything ``datasets`` accepts
(``test``, ``train[:1000]``); it defaults to ``data.split``, else ``train``.

The image column is ``data.image_column``, else the one ``Image`` feature (or a struct of
``bytes``/``path``); the label column is ``data.label_column`` (a ClassLabel or an integer
column), else the first ``ClassLabel`` feature, else none. The images are read as the encoded
bytes stored in the data set (never decoded by ``datasets``) and go through the same decoding,
mode conversion, resize and crop as folder images (:func:`ddpmkit.data.imaging.decode_image`),
so the same files give the same pixels either way. Unreadable images are skipped with one
:class:`SkippedFilesWarning` that counts them, their labels with them.
"""

from __future__ import annotations

import array
import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddpmkit.data.dataset import (
    DEFAULT_SPLIT,
    HF_PREFIX,
    IMAGE_EXTENSIONS,
    DataConfig,
    ImageDataset,
)
from ddpmkit.data.decoded import DecodedSource, Part, collect
from ddpmkit.data.folder import folder_fingerprint
from ddpmkit.data.imaging import (
    DecodeFailures,
    UnreadableImage,
    decode_chunks,
    decode_file,
    decode_image,
    reason,
    skipped_message,
    warn_skipped,
)
from ddpmkit.errors import DataError

INSTALL_HINT = "pip install 'ddpmkit[hf]' (or: pip install datasets)"
_BATCH = 1024
_TABLE_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".jsonl")


def parse_source(source: str, split: str | None) -> tuple[str, str]:
    """``hf:NAME[:SPLIT]`` → ``(NAME, SPLIT)``; the suffix wins over ``split``, which wins over
    ``train``. A split given twice, differently, is a :class:`DataError`."""
    rest = source[len(HF_PREFIX) :]
    name, sep, suffix = rest.partition(":")
    if sep and not suffix:
        raise DataError(f"data source '{source}' ends in ':': write hf:NAME or hf:NAME:SPLIT")
    if sep and split is not None and suffix != split:
        raise DataError(
            f"data source '{source}' names split '{suffix}' but data.split is '{split}': "
            "give one of them"
        )
    return name, suffix if sep else (split or DEFAULT_SPLIT)


def import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"hf: data sources need the 'datasets' package: {INSTALL_HINT}") from None
    return datasets


def _offline() -> bool:
    flags = (os.environ.get(v, "") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _fill_cache_command(name: str, hf_config: str | None, split: str) -> str:
    args = [repr(name)] + ([repr(hf_config)] if hf_config else []) + [f"split={split!r}"]
    return f'python -c "import datasets; datasets.load_dataset({", ".join(args)})"'


def _hub_error(e: Exception, name: str, cfg: DataConfig, split: str, datasets: Any) -> DataError:
    """One line for a Hub data set that cannot be loaded: unknown, offline, or a bad split."""
    chain = _chain(e)
    text = " ".join(str(e).split())
    if isinstance(e, ValueError) and "split" in text.lower():
        return DataError(f"hf data set '{name}': {text[:200]}")
    connection = any(isinstance(x, (ConnectionError, TimeoutError)) for x in chain)
    missing = getattr(getattr(datasets, "exceptions", None), "DatasetNotFoundError", ())
    not_found = any(isinstance(x, missing) or isinstance(x, FileNotFoundError) for x in chain)
    if _offline() or connection or (not_found and "offline" in text.lower()):
        return DataError(
            f"hf data set '{name}' is not in the local cache and cannot be downloaded here "
            f"({reason(e)}); where a network exists run "
            f"{_fill_cache_command(name, cfg.hf_config, split)} "
            "and copy ~/.cache/huggingface (or $HF_HOME) to this machine, then set "
            "HF_DATASETS_OFFLINE=1"
        )
    if not_found:
        return DataError(
            f"hf data set '{name}' not found on the Hugging Face Hub (check the name; private "
            "or gated data sets need `huggingface-cli login`)"
        )
    return DataError(f"cannot load hf data set '{name}': {reason(e)}")


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _only_images(folder: Path) -> bool:
    """True when ``folder`` holds image files and no table files (→ the imagefolder builder)."""
    has_images = False
    for _dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            ext = os.path.splitext(f)[1].lower()
            if ext in _TABLE_SUFFIXES:
                return False
            has_images = has_images or ext in IMAGE_EXTENSIONS
    return has_images


def open_dataset(name: str, split: str, cfg: DataConfig) -> tuple[Any, str]:
    """The ``datasets.Dataset`` of ``hf:NAME:SPLIT`` (an ``IterableDataset`` that reads as it
    goes when ``data.streaming`` is set) and a word for what it is."""
    datasets = import_datasets()
    local = Path(name).expanduser()
    streaming = cfg.streaming
    try:
        if local.is_dir() and _is_saved_to_disk(local):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(
                        f"hf data set '{name}' has no split '{split}' (splits: {', '.join(loaded)})"
                    )
                loaded = loaded[split]
            return (loaded.to_iterable_dataset() if streaming else loaded), "hf (saved)"
        if local.is_dir():
            if _only_images(local):
                ds = datasets.load_dataset(
                    "imagefolder", data_dir=str(local), split=split, streaming=streaming
                )
                return ds, "hf imagefolder"
            ds = datasets.load_dataset(str(local), cfg.hf_config, split=split, streaming=streaming)
            return ds, "hf (local)"
        if local.exists():
            raise DataError(f"hf data source '{name}' is a file: give a data set folder or name")
        ds = datasets.load_dataset(name, cfg.hf_config, split=split, streaming=streaming)
        return ds, "hf (streamed)" if streaming else "hf"
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"hf data set '{name}': not enough memory") from None
    except Exception as e:  # noqa: BLE001 - datasets, fsspec, pyarrow and the Hub raise many kinds
        if local.is_dir():
            raise DataError(f"cannot load hf data set folder '{name}': {reason(e)}") from None
        raise _hub_error(e, name, cfg, split, datasets) from None


def _columns(ds: Any, cfg: DataConfig, name: str, datasets: Any) -> tuple[str, str | None]:
    features = ds.features
    listing = ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())

    def is_image(f: Any) -> bool:
        return isinstance(f, datasets.Image) or (isinstance(f, dict) and "bytes" in f)

    if cfg.image_column is not None:
        image = cfg.image_column
        if image not in features:
            raise DataError(f"hf data set '{name}' has no column '{image}'; columns: {listing}")
        if not is_image(features[image]):
            raise DataError(
                f"hf data set '{name}': column '{image}' is not an Image feature; columns: "
                f"{listing}"
            )
    else:
        images = [k for k, f in features.items() if is_image(f)]
        if not images:
            raise DataError(f"hf data set '{name}' has no Image column; columns: {listing}")
        if len(images) > 1:
            raise DataError(
                f"hf data set '{name}' has several image columns ({', '.join(images)}): set "
                "data.image_column"
            )
        image = images[0]
    if cfg.label_column is not None:
        label = cfg.label_column
        if label not in features:
            raise DataError(f"hf data set '{name}' has no column '{label}'; columns: {listing}")
        f = features[label]
        if not isinstance(f, datasets.ClassLabel) and not (
            isinstance(f, datasets.Value) and f.dtype.startswith(("int", "uint"))
        ):
            raise DataError(
                f"hf data set '{name}': label column '{label}' must be a ClassLabel or an "
                f"integer column, got {f}"
            )
        return image, label
    labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    return image, labels[0] if labels else None


def _open_cell(cell: Any, size: int, channels: int) -> np.ndarray:
    if not isinstance(cell, dict):
        raise UnreadableImage("no image")
    data, path = cell.get("bytes"), cell.get("path")
    if data:
        return decode_image(io.BytesIO(data), size, channels)
    if path:
        return decode_file(Path(path), size, channels)
    raise UnreadableImage("no image data")


@contextlib.contextmanager
def _progress_bars(datasets: Any, show: bool) -> Iterator[None]:
    """``datasets``' own progress bars on or off for the duration (``progress=False``)."""
    was = datasets.is_progress_bar_enabled()
    if was and not show:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was and not show:
            datasets.enable_progress_bars()


def _fingerprint(name: str, split: str, cfg: DataConfig, ds: Any) -> dict[str, Any]:
    """A local data set: every file's path, size and time; a Hub data set: the fingerprint
    ``datasets`` gives it (a stream has none: its name, configuration and split)."""
    local = Path(name).expanduser()
    where = {"hf": name, "config": cfg.hf_config, "split": split, "streaming": cfg.streaming}
    if local.is_dir():
        files = [(p.relative_to(local).as_posix(), p) for p in sorted(local.rglob("*"))]
        return {**where, "folder": str(local.resolve()), **folder_fingerprint(files)}
    return {**where, "fingerprint": getattr(ds, "_fingerprint", None)}


def _rows(ds: Any, image_col: str, label_col: str | None, streaming: bool, datasets: Any):
    """``(image cells, labels or None)`` per batch of rows; the image cells are the stored
    ``{"bytes", "path"}`` structs, never decoded by ``datasets``."""
    columns = [image_col] + ([label_col] if label_col else [])
    if streaming:
        table = ds.select_columns(columns).cast_column(image_col, datasets.Image(decode=False))
        for batch in table.iter(batch_size=_BATCH):
            yield batch[image_col], batch[label_col] if label_col else None
        return
    table = ds.select_columns(columns).with_format("arrow")
    for batch in table.iter(batch_size=_BATCH):
        labels = None
        if label_col:
            column = batch.column(label_col)
            labels = [None] * len(column) if column.null_count else column.to_numpy()
        yield batch.column(image_col).to_pylist(), labels


def open_hf(cfg: DataConfig, *, progress: bool) -> DecodedSource:
    """The images (and labels) of ``hf:NAME[:SPLIT]``, decoded part by part; with
    ``data.streaming`` the rows are read from the Hub (or the local files) as they are decoded,
    and nothing but the current part is held."""
    name, split = parse_source(cfg.source, cfg.split)
    datasets = import_datasets()
    with _progress_bars(datasets, progress):
        ds, kind = open_dataset(name, split, cfg)
    if ds.features is None:
        raise DataError(
            f"hf data set '{name}' does not declare its features when streamed: set "
            "data.streaming=false"
        )
    image_col, label_col = _columns(ds, cfg, name, datasets)
    if cfg.streaming:
        info = getattr(ds, "info", None)
        splits = getattr(info, "splits", None) or {}
        total = getattr(splits.get(split), "num_examples", None) if split in splits else None
    else:
        total = len(ds)
        if total == 0:
            raise DataError(f"hf data set '{name}' split '{split}' holds no rows")
    size, ch = cfg.image_size, cfg.channels
    failures = DecodeFailures()
    row_labels = array.array("q")  # the label of every row read so far, 8 bytes each
    rows_seen = [0]

    def cells() -> Iterator[list[Any]]:
        for images, labels in _rows(ds, image_col, label_col, cfg.streaming, datasets):
            if labels is not None:
                if any(v is None for v in labels):
                    raise DataError(f"hf data set '{name}': '{label_col}' has missing labels")
                try:
                    row_labels.extend(int(v) for v in labels)
                except (TypeError, ValueError, OverflowError):
                    raise DataError(
                        f"hf data set '{name}': '{label_col}' holds labels that are not integers"
                    ) from None
            rows_seen[0] += len(images)
            yield images

    def parts() -> Iterator[Part]:
        decoded = decode_chunks(
            cells(),
            None if cfg.streaming else total,
            lambda cell: _open_cell(cell, size, ch),
            size=size,
            channels=ch,
            desc=f"loading {name}",
            progress=progress,
            failures=failures,
        )
        try:
            for images, kept in decoded:
                labels = None
                if label_col is not None:
                    labels = np.frombuffer(row_labels, dtype=np.int64)[kept].copy()
                yield images, labels
        except DataError:
            raise
        except MemoryError:
            raise DataError(f"hf data set '{name}': not enough memory") from None
        except Exception as e:  # noqa: BLE001 - pyarrow and the Hub raise many kinds
            raise DataError(f"cannot read hf data set '{name}': {reason(e)}") from None

    def finish() -> str | None:
        seen = rows_seen[0]
        if seen == 0:
            raise DataError(f"hf data set '{name}' split '{split}' holds no rows")
        if len(failures) == seen:
            details = skipped_message(failures, lambda i: f"row {i}")
            raise DataError(
                f"none of the {seen} images of hf data set '{name}' could be read: {details}"
            )
        return warn_skipped(
            failures, seen, "image", f"in hf data set '{name}'", lambda i: f"row {i}"
        )

    local = Path(name).expanduser()
    names = None
    if label_col is not None:
        feature = ds.features[label_col]
        if isinstance(feature, datasets.ClassLabel):
            names = [str(s) for s in feature.names]
    return DecodedSource(
        source=f"{HF_PREFIX}{name}:{split}",
        location=HF_PREFIX + (str(local.resolve()) if local.is_dir() else name),
        kind=kind,
        channels=ch,
        image_size=size,
        parts=parts(),
        total=total,
        class_names=names,
        fingerprint=_fingerprint(name, split, cfg, ds),
        settings={
            "image_size": size,
            "channels": ch,
            "split": split,
            "hf_config": cfg.hf_config,
            "image_column": image_col,
            "label_column": label_col,
        },
        labelled=label_col is not None,
        finish=finish,
    )


def load_hf(cfg: DataConfig, *, progress: bool) -> ImageDataset:
    """``hf:NAME[:SPLIT]`` decoded into memory."""
    return collect(open_hf(cfg, progress=progress))
