"""Which classes a trained run is asked for, checked against what it learned.

A class-conditional run (``train.conditional=true``) has K classes and a null class K, which
``train.label_dropout`` trains as the unconditional model. Everything that needs the null class —
unconditional sampling, classifier-free guidance, the bound of ``ddpm nll`` — is refused on a run
trained with ``label_dropout=0``, where that class was never trained. :func:`parse_classes` reads
``--class`` without ambiguity between class names and indices, and :func:`describe` says on every
output which conditioning was used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ddpmkit.errors import ConfigError


@dataclass(frozen=True)
class Conditioning:
    """The classes asked for (None: none, i.e. unconditional) and the guidance weight."""

    classes: tuple[int, ...] | None = None
    guidance: float = 0.0


def parse_classes(spec: str | None, names: Sequence[str], num_classes: int) -> list[int] | None:
    """``--class`` as class indices: ``all``, or comma-separated class names or indices.

    A token that is both a class's name and the index of another class (folders named "1",
    "2", "10" sort as strings, so "1" names class 0 and indexes class 1) is refused: write
    ``name:1`` or ``index:1``."""
    if spec is None:
        return None
    if spec.strip() == "all":
        return list(range(num_classes))
    classes = []
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        classes.append(_one_class(item, list(names), num_classes))
    if not classes:
        raise ConfigError("--class is empty")
    return classes


def _one_class(item: str, names: list[str], num_classes: int) -> int:
    kind, _, value = item.partition(":")
    if kind == "name" and value:
        if value not in names:
            raise ConfigError(f"no class named '{value}': the classes are {_listing(names)}")
        return names.index(value)
    if kind == "index" and value:
        if not value.isdigit() or int(value) >= num_classes:
            raise ConfigError(f"index:{value} is not a class index: give 0..{num_classes - 1}")
        return int(value)
    by_name = names.index(item) if item in names else None
    by_index = int(item) if item.isdigit() and int(item) < num_classes else None
    if by_name is not None and by_index is not None and by_name != by_index:
        raise ConfigError(
            f"ambiguous class '{item}': it names class {by_name} and is the index of class "
            f"{by_index} ('{names[by_index]}'): write name:{item} or index:{item}"
        )
    if by_name is None and by_index is None:
        raise ConfigError(f"unknown class '{item}': give 0..{num_classes - 1}, a class name or all")
    return by_name if by_name is not None else by_index


def _listing(names: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", … ({len(names)} in all)" if len(names) > most else "")


NOT_CONDITIONAL = (
    "this run is not class-conditional (train it with train.conditional=true): drop --class"
)


def read_conditioning(
    classes: str | None,
    guidance: float,
    num_classes: int,
    names: Sequence[str] | None,
    label_dropout: float,
    what: str = "sampling",
) -> Conditioning:
    """``--class``/``--guidance`` read against a run of ``num_classes`` classes named ``names``
    (:func:`parse_classes`) and checked (:func:`check`)."""
    if classes is not None and not num_classes:
        raise ConfigError(NOT_CONDITIONAL)
    chosen = parse_classes(classes, names, num_classes)
    conditioning = Conditioning(None if chosen is None else tuple(chosen), guidance)
    check(conditioning, num_classes, label_dropout, what)
    return conditioning


def check(
    conditioning: Conditioning, num_classes: int, label_dropout: float, what: str = "sampling"
) -> None:
    """Refuse a conditioning the run cannot give: classes on an unconditional run, guidance
    without classes, and anything that needs the null class of a run trained without label
    dropout (the unconditional model: no classes, or a guidance weight)."""
    if conditioning.classes is not None and not num_classes:
        raise ConfigError(NOT_CONDITIONAL)
    if conditioning.guidance and conditioning.classes is None:
        raise ConfigError("--guidance needs --class (and a class-conditional run)")
    needs_null = conditioning.classes is None or conditioning.guidance != 0
    if num_classes and needs_null and label_dropout == 0:
        reason = "guidance" if conditioning.classes is not None else f"{what} without --class"
        raise ConfigError(
            f"{reason} needs the unconditional model (the null class), which this run never "
            "trained (train.label_dropout=0): give --class K without --guidance, or retrain "
            "with train.label_dropout > 0"
        )


def describe(conditioning: Conditioning, num_classes: int, names: Sequence[str] = ()) -> str:
    """One line saying what the samples are conditioned on."""
    if not num_classes:
        return "unconditional"
    if conditioning.classes is None:
        return f"unconditional (the null class of a model of {num_classes} classes)"
    shown = sorted(set(conditioning.classes))
    labels = [
        f"{k} ({names[k]})" if k < len(names) and names[k] != str(k) else str(k) for k in shown
    ]
    which = "every class" if len(shown) == num_classes > 3 else "class " + ", ".join(labels)
    return f"{which}, guidance {conditioning.guidance:g}"
