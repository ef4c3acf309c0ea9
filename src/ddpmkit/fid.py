"""Compatibility: ``ddpmkit.fid`` is :mod:`ddpmkit.evaluation.fid` (the same module object,
so patching one patches the other)."""

import sys

from ddpmkit.evaluation import fid as _module

sys.modules[__name__] = _module
