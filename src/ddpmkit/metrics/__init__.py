"""Sample-quality metrics: feature extractors (:mod:`ddpmkit.metrics.extractors`), FID, KID,
precision/recall.

Importing this package imports nothing heavy; each metric module is imported on use.
"""
