"""The README.md model card of an exported pipeline, with the Hugging Face Hub's YAML front matter.

The front matter names the library and task (``library_name: diffusers``, ``pipeline_tag:
unconditional-image-generation``), tags, the data set when it is a known one, and a
``model-index`` with the FID/KID/precision/recall of ``eval.json`` and the bits/dim of
``nll.json`` that belong to the exported checkpoint. Strings are written as JSON strings, which
YAML reads as double-quoted scalars, so nothing a run holds can break the YAML.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ddpmkit import __version__
from ddpmkit.config import RunConfig

# data sources whose name says which Hub data set they are (matched on the lower-cased stem)
KNOWN_DATASETS = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
}


def dataset_id(source: str) -> str | None:
    """The Hub data set id of a data source (``data/cifar10/train`` → ``cifar10``), if known."""
    parts = [p.lower() for p in Path(source).parts]
    for part in reversed(parts):
        stem = Path(part).stem
        if stem in KNOWN_DATASETS:
            return KNOWN_DATASETS[stem]
    return None


def _q(text: Any) -> str:
    return json.dumps(str(text), ensure_ascii=False)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def collect_metrics(
    eval_json: Any, nll_json: Any, step: int, weights: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """(model-index metrics of checkpoint ``step`` with ``weights``, notes on results left out)."""
    metrics: list[dict[str, Any]] = []
    notes: list[str] = []
    if isinstance(eval_json, dict) and isinstance(eval_json.get("results"), list):
        same = eval_json.get("step") == step and eval_json.get("weights", "ema") == weights
        if not same:
            notes.append(
                f"eval.json scores step {eval_json.get('step')} ({eval_json.get('weights')} "
                "weights), not the exported checkpoint: left out"
            )
        else:
            features = str(eval_json.get("features", "?"))
            for row in eval_json["results"]:
                if not isinstance(row, dict):
                    continue
                setting = (
                    f"{row.get('sampler')}, {row.get('steps')} steps, n={row.get('n')}, "
                    f"{features} features"
                )
                for key, kind, label in (
                    ("fid", "fid", "FID"),
                    ("kid_mean", "kid", "KID"),
                    ("precision", "precision", "precision"),
                    ("recall", "recall", "recall"),
                ):
                    value = _number(row.get(key))
                    if value is not None:
                        metrics.append(
                            {"type": kind, "value": value, "name": f"{label} ({setting})"}
                        )
    if isinstance(nll_json, dict):
        value = _number(nll_json.get("bits_per_dim"))
        nll_step = nll_json.get("step")
        if value is not None and nll_step in (step, None):
            ci = _number(nll_json.get("ci95"))
            extra = f" ± {ci:.4f}" if ci is not None else ""
            metrics.append(
                {
                    "type": "bits_per_dim",
                    "value": value,
                    "name": f"NLL bound in bits/dim (n={nll_json.get('n')}{extra})",
                }
            )
        elif value is not None:
            notes.append(f"nll.json scores step {nll_step}, not the exported checkpoint: left out")
    return metrics, notes


def model_card(
    name: str,
    config: RunConfig,
    step: int,
    weights: str,
    eval_json: Any = None,
    nll_json: Any = None,
    parameters: int | None = None,
) -> tuple[str, list[str]]:
    """(README.md text, notes) for the pipeline exported from checkpoint ``step``."""
    d, m = config.diffusion, config.model
    dataset = dataset_id(config.data.source)
    metrics, notes = collect_metrics(eval_json, nll_json, step, weights)
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: unconditional-image-generation",
        "tags:",
        "- diffusers",
        "- ddpm",
        "- ddpmkit",
        "- unconditional-image-generation",
        "- pytorch",
    ]
    if dataset:
        lines += ["datasets:", f"- {_q(dataset)}"]
    if metrics:
        lines += [
            "model-index:",
            f"- name: {_q(name)}",
            "  results:",
            "  - task:",
            "      type: unconditional-image-generation",
            "      name: Unconditional image generation",
            "    dataset:",
            f"      type: {_q(dataset or config.data.source)}",
            f"      name: {_q(dataset or config.data.source)}",
            "    metrics:",
        ]
        for metric in metrics:
            lines += [
                f"    - type: {metric['type']}",
                f"      value: {metric['value']!r}",
                f"      name: {_q(metric['name'])}",
            ]
    lines.append("---")
    size = config.data.image_size
    body = [
        "",
        f"# {name}",
        "",
        f"An unconditional DDPM ({size}x{size}, {config.data.channels} channel(s)) trained with "
        f"ddpmkit {__version__} and exported as a diffusers "
        "`DDPMPipeline` (`UNet2DModel` + `DDPMScheduler`).",
        "",
        "```python",
        "from diffusers import DDPMPipeline",
        "",
        'pipeline = DDPMPipeline.from_pretrained("PATH_OR_REPO_ID")',
        # DDPMPipeline's default 1000 steps fail on a process of fewer steps
        f"image = pipeline(batch_size=1, num_inference_steps={d.num_steps}).images[0]",
        "```",
        "",
        "| | |",
        "| --- | --- |",
        f"| checkpoint | step {step}, {weights} weights |",
        f"| data | `{config.data.source}`" + (f" ({dataset})" if dataset else "") + " |",
        f"| U-Net | channels {'/'.join(map(str, m.level_channels))}, "
        f"{m.blocks_per_resolution} blocks per level, attention {'/'.join(m.attention)} + mid "
        f"{m.mid_attention}, time conditioning {m.time_conditioning}"
        + (f", {parameters / 1e6:.2f}M parameters" if parameters else "")
        + " |",
        f"| diffusion | {d.schedule} schedule, T = {d.num_steps}, predicts {d.prediction}, "
        f"variance {d.variance}, loss {d.loss} |",
    ]
    if metrics:
        body += ["", "| metric | value |", "| --- | ---: |"]
        body += [f"| {mm['name']} | {mm['value']:.4g} |" for mm in metrics]
    if notes:
        body += [""] + [f"Note: {n}." for n in notes]
    body += [
        "",
        "`ddpm import` turns this folder back into a ddpmkit run directory; `ddpmkit.json` "
        "holds the run's full config for that.",
        "",
    ]
    return "\n".join(lines + body), notes


_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        try:
            return json.loads(text)
        except ValueError:
            return text.strip('"')
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    return text


def read_front_matter(text: str) -> dict[str, Any]:
    """The top-level scalars and lists of scalars of a model card's YAML front matter (a small
    subset of YAML, enough for ``datasets``, ``tags``, ``license``; nested maps are skipped)."""
    match = _FRONT.match(text)
    if not match:
        return {}
    result: dict[str, Any] = {}
    key = None
    for line in match.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace() and ":" in line and not line.startswith("-"):
            key, _, rest = line.partition(":")
            key = key.strip()
            rest = rest.strip()
            if rest.startswith("[") and rest.endswith("]"):
                result[key] = [_scalar(v) for v in rest[1:-1].split(",") if v.strip()]
            elif rest:
                result[key] = _scalar(rest)
            else:
                result[key] = []
        elif line.startswith("- ") and key is not None and isinstance(result.get(key), list):
            item = line[2:]
            if ":" not in item or item.strip().startswith('"'):
                result[key].append(_scalar(item))
        else:  # indented: part of a nested structure
            continue
    return result
