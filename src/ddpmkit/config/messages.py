"""How a config error shows the value it refuses: one line, control characters escaped, long
values cut, and the one wording of "not one of the choices" that every config section uses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ddpmkit.errors import ConfigError

SHOW_CHARS = 60
"""The longest value a message quotes in full."""


def _cut(text: str) -> str:
    """``text`` if it fits :data:`SHOW_CHARS`, else its start and "..." in that many."""
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 3] + "..."


def show(value: Any) -> str:
    """``repr(value)`` shortened for a one-line message."""
    return _cut(repr(value))


def clean(text: Any) -> str:
    """``text`` for a message in quotes: control characters escaped, at most 60 characters."""
    return _cut(repr(str(text))[1:-1])


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """One line naming ``key``, the value given and every choice, unless ``value`` is one."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {key} '{clean(value)}': choose one of " + ", ".join(choices))
