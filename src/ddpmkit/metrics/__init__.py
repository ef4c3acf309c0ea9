"""Sample-quality metrics: feature extractors (:mod:`ddpmkit.metrics.extractors`: the digits and
Fashion-MNIST CNNs, Inception-v3), FID, KID, precision/recall, class accuracy, the reference
feature cache.

It may import torch, numpy, the data package (reference images), errors and sharding; never the
diffusion, the samplers or a run. Importing this package imports nothing heavy; each metric
module is imported on use.
"""
