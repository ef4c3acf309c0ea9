"""Compatibility: ``ddpmkit.nll`` is :mod:`ddpmkit.evaluation.nll` (the same module object,
so patching one patches the other)."""

import sys

from ddpmkit.evaluation import nll as _module

sys.modules[__name__] = _module
