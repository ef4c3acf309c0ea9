"""Where ddpmkit keeps what it can recompute: ``$DDPMKIT_CACHE``, else ``~/.cache/ddpmkit``
(``$XDG_CACHE_HOME/ddpmkit`` where that is set). Decoded data sets live in its ``data/``
folder, reference features in ``reference/``."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DDPMKIT_CACHE"


def cache_home() -> Path:
    """``$DDPMKIT_CACHE``, else ``$XDG_CACHE_HOME/ddpmkit``, else ``~/.cache/ddpmkit``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ddpmkit"
