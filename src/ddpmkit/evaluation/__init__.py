"""Evaluation: how good a trained run is.

What lives here: ``quality.py`` (``ddpm eval``: sample per sampler, steps and guidance weight,
score against the data, eval.json/eval.md and figures), ``fid.py`` (``ddpm fid``: any two image
sets or statistics files), ``scores.py`` (the one scoring function both use: FID, KID,
precision/recall), ``nll.py`` (``ddpm nll``: the variational bound in bits/dim) and
``compare.py`` (``ddpm compare``: several runs side by side). Feature extractors and the metric
math are :mod:`ddpmkit.metrics`. This package may import sampling, the run layer, data and
metrics; only the command line imports it.
"""
