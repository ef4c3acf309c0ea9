"""Golden outputs of ddpmkit, computed through the public API only.

``python tests/golden/golden_outputs.py`` writes ``tests/golden/golden.safetensors`` (tensors) and
``tests/golden/golden.json`` (run files); ``tests/test_golden.py`` recomputes everything and
compares bit for bit. They were written on main before the "one owner per concern" redesign
(commit 44e16a6), so any move that changes a single bit of a sample, a training run's weights, an
nll.json, an eval.json or an exported diffusers folder fails that test. A deliberate change
(a documented bug fix) regenerates only the affected entries and says so in its commit.

Everything runs on the CPU with one thread, on tiny random-weight U-Nets (8×8 images, T = 50).

Bit-for-bit holds on one kind of CPU only: MKL and oneDNN pick their kernels by vendor and
instruction set, and another kernel rounds differently (an AMD EPYC without AMX differs from the
reference Xeon in the last bits of 102 of the 124 tensors, by at most 4e-5 of their scale). So the
files are kept per host kind (``host_key()``): the reference ones above, written on the Xeon, and
``hosts/<key>/`` for each other kind, written by this script on that host from the same commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TENSORS = HERE / "golden.safetensors"
FILES = HERE / "golden.json"
REFERENCE_HOST = "GenuineIntel-avx2-avx512f-avx512_bf16-amx_tile-torch2.13.0+cpu"
"""The host kind of TENSORS and FILES: the 2-core Xeon (family 6, model 207) of commit 44e16a6."""
HOST_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
"""The CPU flags by which MKL and oneDNN choose their float kernels."""


def host_key() -> str:
    """The CPU vendor, the kernel-choosing flags it has and the torch version, e.g.
    ``AuthenticAMD-avx2-avx512f-avx512_bf16-torch2.13.0+cpu``."""
    vendor, flags = "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "vendor_id":
            vendor = value.strip()
        elif name.strip() == "flags":
            flags = set(value.split())
            break
    present = [flag for flag in HOST_FLAGS if flag in flags]
    return "-".join([vendor, *present, f"torch{torch.__version__}"])


def host_paths(key: str) -> tuple[Path, Path]:
    """Where the (tensors, run files) of host kind ``key`` live, written or not."""
    if key == REFERENCE_HOST:
        return TENSORS, FILES
    folder = HERE / "hosts" / key
    return folder / "golden.safetensors", folder / "golden.json"


def golden_paths(key: str) -> tuple[Path, Path] | None:
    """(tensors, run files) written on host kind ``key``; None when none were."""
    paths = host_paths(key)
    return paths if paths[0].exists() else None


PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
SAMPLER_CASES = (  # (name, sampler, steps, eta)
    ("ddpm_all", "ddpm", None, 0.0),
    ("ddpm_5", "ddpm", 5, 0.0),
    ("ddim_5", "ddim", 5, 0.0),
    ("ddim_5_eta", "ddim", 5, 0.5),
    ("dpmpp_5", "dpm++", 5, 0.0),
    ("heun_4", "heun", 4, 0.0),
)
TINY_UNET = {
    "in_channels": 1,
    "base_channels": 8,
    "channel_mults": (1, 2),
    "blocks_per_resolution": 1,
    "attention": ("none", "full"),
    "mid_attention": "full",
    "attention_heads": 1,
    "norm_groups": 4,
}


def _unet(learned_variance: bool, num_classes: int = 0, seed: int = 0) -> torch.nn.Module:
    from ddpmkit.nn import UNet, UNetConfig

    torch.manual_seed(seed)
    config = UNetConfig(**TINY_UNET, learned_variance=learned_variance, num_classes=num_classes)
    model = UNet(config).eval()
    with torch.no_grad():  # larger weights than the zero-initialised output: a non-trivial net
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _diffusion(prediction: str, variance: str, schedule: str = "linear", loss: str = "l2"):
    from ddpmkit.diffusion import GaussianDiffusion
    from ddpmkit.schedules import make_schedule

    return GaussianDiffusion(make_schedule(schedule, 50), prediction, variance, loss)


def _generator(seed: int, count: int):
    from ddpmkit.seeding import PerSampleGenerator

    return PerSampleGenerator.for_samples(seed, range(count), "cpu")


def sampler_outputs() -> dict[str, torch.Tensor]:
    """Every sampler × variance × prediction, 2 images of 8×8, and the refusals as markers."""
    from ddpmkit.errors import ConfigError
    from ddpmkit.samplers import sample

    out: dict[str, torch.Tensor] = {}
    for variance in VARIANCES:
        model = _unet(variance in ("learned", "learned_range"))
        for prediction in PREDICTIONS:
            diffusion = _diffusion(
                prediction, variance, "cosine" if prediction == "v" else "linear"
            )
            for name, sampler, steps, eta in SAMPLER_CASES:
                key = f"sample/{variance}/{prediction}/{name}"
                try:
                    with torch.no_grad():
                        x = sample(
                            model,
                            diffusion,
                            (2, 1, 8, 8),
                            sampler=sampler,
                            steps=steps,
                            eta=eta,
                            generator=_generator(7, 2),
                        )
                except ConfigError:
                    x = torch.full((1,), -1.0)  # refused (learned variance, respaced ddpm)
                out[key] = x
    # unclipped x̂_0, and x_T given
    model = _unet(False)
    diffusion = _diffusion("eps", "fixed_small")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out["sample/noclip_ddim"] = sample(
            model, diffusion, (2, 1, 8, 8), sampler="ddim", steps=6, clip_x0=False, x_T=x_T
        )
    return out


def conditional_outputs() -> dict[str, torch.Tensor]:
    """Guided class-conditional sampling through ``generate`` (3 classes + null)."""
    from ddpmkit.generate import SampleRequest, generate

    out: dict[str, torch.Tensor] = {}
    model = _unet(False, num_classes=3)
    diffusion = _diffusion("eps", "fixed_small")
    for sampler, steps in (("ddpm", 6), ("dpm++", 5)):
        for weight in (0.0, 2.0):
            request = SampleRequest(
                n=3,
                sampler=sampler,
                steps=steps,
                seed=5,
                batch_size=2,
                labels=[0, 1, 2],
                guidance=weight,
                null_label=3,
            )
            with torch.no_grad():
                result = generate(
                    model, diffusion, (1, 8, 8), request, torch.device("cpu"), progress=False
                )
            out[f"guided/{sampler}/{weight}"] = result.images
    plain = SampleRequest(n=3, sampler="ddim", steps=5, seed=2, batch_size=2, gif_frames=2)
    with torch.no_grad():
        result = generate(_unet(False), diffusion, (1, 8, 8), plain, torch.device("cpu"), False)
    out["generate/ddim"] = result.images
    out["generate/frames"] = (
        torch.stack(result.frames[:-1]) if len(result.frames) > 1 else (torch.zeros(1))
    )
    return out


def editing_outputs() -> dict[str, torch.Tensor]:
    """RePaint, replacement inpainting and SDEdit on 2 images."""
    from ddpmkit.edit import inpaint, region_mask, sdedit

    out: dict[str, torch.Tensor] = {}
    model = _unet(False)
    diffusion = _diffusion("eps", "fixed_small")
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    mask = region_mask("lower", 8)
    with torch.no_grad():
        out["edit/repaint"] = inpaint(
            model,
            diffusion,
            images,
            mask,
            "repaint",
            steps=10,
            jump=3,
            resample=2,
            generator=_generator(1, 2),
        )
        out["edit/repaint_all"] = inpaint(
            model,
            diffusion,
            images,
            mask,
            "repaint",
            steps=None,
            jump=10,
            resample=2,
            generator=_generator(1, 2),
        )
        out["edit/replace_ddpm"] = inpaint(
            model,
            diffusion,
            images,
            mask,
            "replace",
            sampler="ddpm",
            steps=8,
            generator=_generator(1, 2),
        )
        out["edit/replace_dpmpp"] = inpaint(
            model,
            diffusion,
            images,
            mask,
            "replace",
            sampler="dpm++",
            steps=5,
            generator=_generator(1, 2),
        )
        for sampler in ("ddpm", "ddim", "heun"):
            out[f"edit/sdedit/{sampler}"] = sdedit(
                model,
                diffusion,
                images,
                0.5,
                sampler=sampler,
                steps=4,
                generator=_generator(1, 2),
            )
    return out


def loss_and_bound_outputs() -> dict[str, torch.Tensor]:
    """Training losses of every kind at fixed (t, noise), their gradients, and the full bound."""
    out: dict[str, torch.Tensor] = {}
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1  # 8-bit data for the decoder term
    t = torch.tensor([0, 5, 23, 49])
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    for prediction in PREDICTIONS:
        for loss, variance in (
            ("l2", "fixed_small"),
            ("l1", "fixed_large"),
            ("huber", "fixed_small"),
            ("hybrid", "learned_range"),
            ("kl", "learned"),
        ):
            model = _unet(variance in ("learned", "learned_range")).train()
            diffusion = _diffusion(prediction, variance, loss=loss)
            result = diffusion.training_loss(model, x0, t=t, noise=noise)
            result.loss.backward()
            grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            out[f"loss/{prediction}/{loss}"] = result.per_example.detach()
            out[f"grad/{prediction}/{loss}"] = grad
    for variance in VARIANCES:
        model = _unet(variance in ("learned", "learned_range"))
        diffusion = _diffusion("eps", variance)
        terms = diffusion.nll(
            model, x0, generator=torch.Generator().manual_seed(9), per_timestep=True
        )
        out[f"bound/{variance}/total"] = terms.total
        out[f"bound/{variance}/per_timestep"] = terms.per_timestep
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _safetensors_record(path: Path) -> dict[str, object]:
    """The SHA-256 of every tensor's bytes, dtype and shape, and the metadata, of a file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        tensors = {
            key: [str(t.dtype), list(t.shape), hashlib.sha256(t.numpy().tobytes()).hexdigest()]
            for key in sorted(handle.keys())
            for t in [handle.get_tensor(key)]
        }
        return {"tensors": tensors, "metadata": handle.metadata()}


def _without(record: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


CLASSIC_RECIPE = (
    "diffusion.schedule=linear",
    "diffusion.prediction=eps",
    "diffusion.loss_weight=none",
    "train.ema_decay=0.995",
    "train.cpu_fused_adam=false",
)
"""The default recipe's values when the golden runs were written (commit 44e16a6), where the
default has since moved (issue 16's faster recipe): spelled out, the runs still guard every line
of the code they pass through; the new defaults are tested in test_config.py."""


def run_outputs(work: Path) -> dict[str, object]:
    """``ddpm train`` (plain and conditional), ``ddpm nll``, ``ddpm eval`` and ``ddpm export`` on
    a tiny run: weight digests, the loss per step, nll.json and eval.json numbers, and the digest
    of every exported file."""
    sys.path.insert(0, str(HERE.parent))
    from conftest import shapes_array, tiny_overrides
    from ddpmkit.cli import main

    torch.set_num_threads(1)  # CPU kernels sum in a thread-count-dependent order
    npz = work / "shapes.npz"
    labels = np.arange(256) % 4
    np.savez(npz, arr_0=shapes_array(), labels=labels)
    results: dict[str, object] = {}
    for name, extra in (
        ("plain", ("train.steps=6", "train.checkpoint_every=3")),
        ("conditional", ("train.steps=5", "train.conditional=true", "train.label_dropout=0.25")),
        (
            "hybrid",
            (
                "train.steps=4",
                "diffusion.variance=learned_range",
                "diffusion.loss=hybrid",
                "train.timestep_sampler=loss_second_moment",
                "diffusion.prediction=v",
            ),
        ),
    ):
        run = work / name
        assert (
            main(
                [
                    "train",
                    "--out",
                    str(run),
                    "--no-progress",
                    *tiny_overrides(npz, *CLASSIC_RECIPE, *extra),
                ]
            )
            == 0
        )
        latest = (run / "checkpoints" / "latest").read_text().strip()
        checkpoint = run / "checkpoints" / latest
        for file in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
            results[f"{name}/{file}"] = _safetensors_record(checkpoint / file)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        results[f"{name}/losses"] = [m["loss"] for m in metrics]
        results[f"{name}/grad_norms"] = [m["grad_norm"] for m in metrics]
    run = work / "plain"
    nll = work / "nll.json"
    assert (
        main(["nll", str(run), "--n", "6", "--batch", "4", "--out", str(nll), "--no-progress"]) == 0
    )
    report = json.loads(nll.read_text())
    results["nll"] = _without(report, ("source",))
    eval_json = work / "eval.json"
    assert (
        main(
            [
                "eval",
                str(run),
                "--features",
                "digits",
                "--n",
                "16",
                "--batch",
                "8",
                "--sampler",
                "ddim,dpm++",
                "--steps",
                "4",
                "--cache-dir",
                str(work / "cache"),
                "--out",
                str(eval_json),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(eval_json.read_text())
    results["eval/results"] = [
        _without(row, ("seconds", "feature_seconds")) for row in report["results"]
    ]
    results["eval/reference_halves_fid"] = report.get("reference_halves_fid")
    export = work / "export"
    assert main(["export", str(run), "--format", "diffusers", "--out", str(export)]) == 0
    for file in sorted(export.rglob("*")):
        if file.name == "ddpmkit.json":
            saved = json.loads(file.read_text(encoding="utf-8"))
            saved["config"]["data"].pop("source")
            results["export/ddpmkit.json"] = saved
        elif file.is_file() and file.name != "README.md":
            results[f"export/{file.relative_to(export).as_posix()}"] = _digest(file)
    return results


def library_outputs() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    out: dict[str, torch.Tensor] = {}
    for part in (sampler_outputs, conditional_outputs, editing_outputs, loss_and_bound_outputs):
        out.update(part())
    return {k: v.detach().contiguous() for k, v in out.items()}


def main() -> None:
    import tempfile

    torch.set_num_threads(1)

    from safetensors.torch import save_file

    key = host_key()
    tensors, files_path = host_paths(key)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    save_file(library_outputs(), str(tensors))
    with tempfile.TemporaryDirectory() as work:
        files = run_outputs(Path(work))
    files_path.write_text(json.dumps(files, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {tensors} and {files_path} (host kind {key})")


if __name__ == "__main__":
    main()
