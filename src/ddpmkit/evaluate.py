"""Compatibility: ``ddpmkit.evaluate`` is :mod:`ddpmkit.evaluation.quality` (the same module object,
so patching one patches the other)."""

import sys

from ddpmkit.evaluation import quality as _module

sys.modules[__name__] = _module
