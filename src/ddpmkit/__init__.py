"""ddpmkit: denoising diffusion probabilistic models on PyTorch.

Importing the package loads only the light core (schedules, diffusion, samplers); the U-Net,
training, data and CLI modules are imported on use.
"""

from __future__ import annotations

__version__ = "0.1.0"
