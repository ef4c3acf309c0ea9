"""Exchange with other libraries: diffusers' ``DDPMPipeline`` folders, both ways.

* :func:`~ddpmkit.interop.export.export_diffusers` — a run directory becomes a folder that
  ``diffusers.DDPMPipeline.from_pretrained`` loads (``UNet2DModel`` + ``DDPMScheduler``).
* :func:`~ddpmkit.interop.import_.import_diffusers` — such a folder (e.g. as downloaded from the
  Hugging Face Hub) becomes a run directory for ``ddpm sample|eval|nll`` and ``train --resume``.

Nothing here imports diffusers: the configs are JSON and the weights safetensors, read and
written by ddpmkit itself (no pickle is ever read). It may import the config, the U-Net, the run
directory and the schedules; only the command line imports it.
"""

from __future__ import annotations

from ddpmkit.interop.export import ExportResult, export_diffusers
from ddpmkit.interop.import_ import ImportResult, import_diffusers

__all__ = ["ExportResult", "ImportResult", "export_diffusers", "import_diffusers"]
