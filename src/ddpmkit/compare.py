"""Compatibility: ``ddpmkit.compare`` is :mod:`ddpmkit.evaluation.compare` (the same module object,
so patching one patches the other)."""

import sys

from ddpmkit.evaluation import compare as _module

sys.modules[__name__] = _module
