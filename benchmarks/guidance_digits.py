"""Guidance trade-off and inpainting on the digits (a benchmark, not a test).

1. A class-conditional digits run (``ddpm train --out RUN train.conditional=true``): per guidance
   weight, ``--n`` samples (equal numbers per class, DPM-Solver++ with ``--steps``) judged by
   the shipped digits CNN — class accuracy — and compared with all 1797 digits by FID, KID,
   precision and recall on its features.
2. Inpainting the lower half of ``--inpaint`` real digits with the same run (unconditionally,
   through the null class): how often the digits CNN gives the completed digit its original
   label, for RePaint and for replacement.

    python benchmarks/guidance_digits.py RUN [--weights 0,0.5,1,2,4] [--n 1000] [--inpaint 500]
"""

from __future__ import annotations

import argparse
import time

import torch

from ddpmkit.data import DataConfig, from_uint8, load_dataset, to_uint8
from ddpmkit.edit import inpaint, region_mask
from ddpmkit.evaluate import EvalRequest, reference_for, score
from ddpmkit.generate import SampleRequest, generate, load_run
from ddpmkit.metrics.extractors import extract_features, load_extractor
from ddpmkit.seeding import PerSampleGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--weights", default="0,0.5,1,2,4")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--inpaint", type=int, default=500)
    parser.add_argument("--inpaint-steps", type=int, default=100)
    parser.add_argument("--jump", type=int, default=10)
    parser.add_argument("--resample", type=int, default=10)
    args = parser.parse_args()
    run = load_run(args.run_dir, device="cpu")
    classes = run.config.model.num_classes
    data = run.config.data
    extractor = load_extractor("digits")
    reference = reference_for(data, extractor, progress=False)
    request = EvalRequest(n=args.n)
    shape = (data.channels, data.image_size, data.image_size)
    labels = [k % classes for k in range(args.n)]
    print(f"run {args.run_dir} at step {run.step}; {args.n} samples, dpm++ {args.steps} steps")
    print("| guidance w | accuracy | FID | KID ×10³ | precision | recall | sampling s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for weight in (float(w) for w in args.weights.split(",")):
        sample_request = SampleRequest(
            n=args.n,
            sampler="dpm++",
            steps=args.steps,
            labels=labels,
            guidance=weight,
            null_label=classes,
        )
        started = time.perf_counter()
        result = generate(run.model, run.diffusion, shape, sample_request, run.device, False)
        seconds = time.perf_counter() - started
        images = to_uint8(result.images)
        predicted = extractor.logits(images).argmax(1)
        accuracy = (predicted == result.labels).double().mean().item()
        fake = extract_features(extractor, images, progress=False)
        fid, kid, _, precision, recall = score(fake, reference, request)
        print(
            f"| {weight:g} | {accuracy:.3f} | {fid:.3f} | {1000 * kid:.2f} | {precision:.3f} | "
            f"{recall:.3f} | {seconds:.0f} |"
        )

    digits = load_dataset(DataConfig(source="digits", image_size=data.image_size), progress=False)
    chosen = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))[: args.inpaint]
    originals = digits.images_uint8[chosen]
    truth = digits.labels[chosen]
    mask = region_mask("lower", data.image_size)
    print()
    print(
        f"inpainting the lower half of {args.inpaint} digits, ancestral, {args.inpaint_steps} "
        f"steps (RePaint: jump {args.jump} x resample {args.resample})"
    )
    print("| method | label kept | seconds |")
    print("| --- | --- | --- |")
    for method, extra in (
        ("replace", {}),
        ("repaint", {"jump": args.jump, "resample": args.resample}),
    ):
        started = time.perf_counter()
        generator = PerSampleGenerator.for_samples(0, range(args.inpaint))
        filled = inpaint(
            run.model,
            run.diffusion,
            from_uint8(originals),
            mask,
            method=method,
            steps=args.inpaint_steps,
            generator=generator,
            **extra,
        )
        seconds = time.perf_counter() - started
        kept = (extractor.logits(to_uint8(filled)).argmax(1) == truth).double().mean().item()
        print(f"| {method} | {kept:.3f} | {seconds:.0f} |")
    masked = to_uint8(from_uint8(originals) * mask)
    blank = (extractor.logits(masked).argmax(1) == truth).double().mean().item()
    original = (extractor.logits(originals).argmax(1) == truth).double().mean().item()
    print(f"| (the upper half alone, lower half black) | {blank:.3f} | – |")
    print(f"| (the original digits) | {original:.3f} | – |")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
