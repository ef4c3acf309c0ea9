"""The ``ddpm`` command: a thin layer that parses arguments and calls the library.

What lives here: ``parser.py`` (every command, option and help text, and the shared argument
types) and one short handler per command (``train.py``, ``sample.py``, ``evaluate.py``,
``edit.py``, ``interop.py``, ``cache.py``, ``figures.py``), each calling one library entry point
and printing its result; ``main.py`` dispatches and turns user mistakes into one line and exit 2.
It may import everything in ddpmkit; nothing in ddpmkit imports it.
"""

from __future__ import annotations

from ddpmkit.cli.main import main

__all__ = ["main"]
