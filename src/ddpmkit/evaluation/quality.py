"""Sample quality of a trained run: FID, KID and precision/recall for each sampler and step count.

One evaluation draws ``n`` samples per (sampler, steps) with the run's EMA weights (or reads them
from an ``arr_0`` npz), embeds them with a feature extractor (``digits`` CNN or Inception-v3) and
compares them with the run's data, whose features are cached (:mod:`ddpmkit.metrics.reference`).
Results are merged into ``RUN_DIR/eval.json`` so that several calls build one quality-vs-NFE table.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpmkit.config.data import FASHION_MNIST, is_fashion_mnist
from ddpmkit.config.messages import check_choice
from ddpmkit.data import DataConfig, load_dataset, to_uint8
from ddpmkit.diffusion import spaced_timesteps
from ddpmkit.errors import ConfigError, DataError, RunDirError
from ddpmkit.evaluation.scores import score_sets
from ddpmkit.generate import SampleRequest, generate
from ddpmkit.metrics.classifier import (
    Classifier,
    class_shares,
    load_classifier,
    predicted_classes,
    share_correct,
)
from ddpmkit.metrics.extractors import EXTRACTORS, FeatureExtractor, extract_features
from ddpmkit.metrics.frechet import GaussianStats, frechet_distance
from ddpmkit.metrics.reference import reference_features
from ddpmkit.run.loaded import LoadedRun
from ddpmkit.rundir import RunDir
from ddpmkit.sampling import get_sampler


@dataclass
class EvalRequest:
    """What to evaluate. ``samplers`` × ``steps`` are all evaluated (``None`` steps: each
    sampler's default); ``samples`` replaces sampling by an npz of uint8 NHWC images."""

    n: int = 10_000
    samplers: Sequence[str] = ("dpm++",)
    steps: Sequence[int | None] = (None,)
    seed: int = 0
    batch_size: int = 500
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    k: int = 3  # neighbours for precision/recall
    samples: Path | None = None
    guidance: Sequence[float] = (0.0,)  # class-conditional runs: one row per weight
    classifier: str | None = None  # digits, fashion-mnist or a .pt2: the samples' classes
    amp: bool = False  # sample with the network under bfloat16 autocast


@dataclass
class EvalRow:
    sampler: str
    steps: int
    nfe: int
    n: int
    fid: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float
    seconds: float  # sampling wall time (0 for an npz)
    feature_seconds: float
    guidance: float = 0.0
    accuracy: float | None = None  # class accuracy of the samples (conditional runs)
    class_shares: list[float] | None = None  # share of the samples in each class (a classifier)


@dataclass
class EvalReport:
    features: str
    extractor_fingerprint: str
    reference: dict[str, Any]
    step: int | None
    weights: str
    reference_halves_fid: float  # FID of two random halves of the reference set: the scale of noise
    results: list[EvalRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "results": [asdict(r) for r in self.results]}


@dataclass
class Reference:
    """Features of the data set the samples are compared with."""

    features: np.ndarray
    stats: GaussianStats
    source: str
    cached: bool


def reference_for(
    data: DataConfig,
    extractor: FeatureExtractor,
    cache_dir: Path | None = None,
    progress: bool = True,
    distributed: bool = False,
) -> Reference | None:
    """The data set's features (from the cache when they are there). ``distributed``: every
    process calls this and embeds its share when they must be computed; process 0 gets the
    reference, the others ``None``."""
    dataset = load_dataset(data, progress=progress, distributed=distributed)
    features, cached = reference_features(
        dataset.images_uint8,
        extractor,
        cache_dir=cache_dir,
        progress=progress,
        distributed=distributed,
    )
    if distributed and torch.distributed.get_rank() != 0:
        return None
    return Reference(features, GaussianStats.of(features), data.source, cached)


def halves_fid(features: np.ndarray, draws: int = 5, seed: int = 0) -> float:
    """Mean FID between two random halves of ``features`` over ``draws`` splits: what two samples
    of the data itself score at half the reference size, for scale (FID shrinks as n grows)."""
    rng = np.random.default_rng(seed)
    half = len(features) // 2
    values = []
    for _ in range(draws):
        order = rng.permutation(len(features))
        a, b = features[order[:half]], features[order[half : 2 * half]]
        values.append(frechet_distance(GaussianStats.of(a), GaussianStats.of(b)))
    return float(np.mean(values))


def score(
    fake: np.ndarray, reference: Reference, request: EvalRequest
) -> tuple[float, float, float, float, float]:
    """FID, KID mean and std, precision, recall of ``fake`` features against the reference
    (:func:`~ddpmkit.evaluation.scores.score_sets`; precision and recall are NaN for k or fewer
    samples)."""
    scores = score_sets(
        reference.stats,
        GaussianStats.of(fake),
        reference.features,
        fake,
        kid_subsets=request.kid_subsets,
        kid_subset_size=request.kid_subset_size,
        seed=request.seed,
        k=request.k,
    )
    pr = scores.precision_recall
    nan = float("nan")
    return (
        scores.fid,
        scores.kid.mean,
        scores.kid.std,
        pr.precision if pr else nan,
        pr.recall if pr else nan,
    )


def read_samples(path: Path, data: DataConfig) -> torch.Tensor:
    """uint8 NCHW images of an ``arr_0`` npz (or an image folder), read like a data source and
    brought to the run's channels and size."""
    if not path.exists():
        raise DataError(f"samples file {path} does not exist")
    config = DataConfig(source=str(path), image_size=data.image_size, channels=data.channels)
    return load_dataset(config, progress=False).images_uint8


def plan(request: EvalRequest, num_steps: int) -> list[tuple[str, int]]:
    """The (sampler, steps) pairs to run, each checked before any work starts."""
    if request.n < 2:
        raise ConfigError(f"--n must be >= 2, got {request.n}")
    if request.batch_size < 1:
        raise ConfigError(f"--batch must be >= 1, got {request.batch_size}")
    pairs = []
    for sampler in request.samplers:
        spec = get_sampler(sampler)
        for steps in request.steps:
            count = spec.steps_for(num_steps) if steps is None else steps
            spaced_timesteps(num_steps, count)  # raises for a count outside [1, T]
            if (sampler, count) not in pairs:
                pairs.append((sampler, count))
    return pairs


def evaluate(
    run: LoadedRun,
    request: EvalRequest,
    extractor: FeatureExtractor,
    reference: Reference,
    weights: str = "ema",
    progress: bool = True,
    distributed: bool = False,
) -> EvalReport:
    """Score each (sampler, steps) of ``request`` (or the npz of ``request.samples``).
    ``distributed``: every process of the process group calls this with the same request; the
    samples are split between them (:func:`generate`) and process 0 scores them (the others
    return a report without rows and may pass ``reference=None``)."""
    if distributed and torch.distributed.get_rank() != 0:
        _share_only(run, request, extractor)
        return EvalReport(extractor.name, extractor.fingerprint, {}, run.step, weights, 0.0)
    report = EvalReport(
        features=extractor.name,
        extractor_fingerprint=extractor.fingerprint,
        reference={"source": reference.source, "n": len(reference.features)},
        step=run.step,
        weights=weights,
        reference_halves_fid=halves_fid(reference.features)
        if len(reference.features) >= 8
        else float("nan"),
    )
    classifier = None
    if request.classifier:
        classifier = load_classifier(request.classifier, run.device)
    if request.samples is not None:
        images = read_samples(Path(request.samples), run.config.data)
        row = _row("npz", 0, images, 0.0, extractor, reference, request, progress, distributed)
        if classifier is not None:
            _judge_classes(row, classifier, images, None, request.batch_size)
        report.results.append(row)
        return report
    data = run.config.data
    shape = (data.channels, data.image_size, data.image_size)
    classes = run.config.model.num_classes
    if classes == 0 and any(request.guidance):
        raise ConfigError("--guidance needs a class-conditional run (train.conditional=true)")
    for weight in request.guidance if classes else ():  # rows sample every class
        run.conditioning("all", weight, "evaluation")  # guidance needs a trained null class
    for sampler, steps, weight, sample_request in _sample_requests(run, request):
        if progress:
            nfe = get_sampler(sampler).calls(steps)
            tqdm.write(f"{sampler}, {steps} steps ({nfe} NFE), guidance {weight:g}")
        started = time.perf_counter()
        result = generate(
            run.model, run.diffusion, shape, sample_request, run.device, progress, distributed
        )
        seconds = time.perf_counter() - started
        images = to_uint8(result.images)
        row = _row(
            sampler, steps, images, seconds, extractor, reference, request, progress, distributed
        )
        row.guidance = weight
        if classifier is not None:
            labels = result.labels if classes else None
            _judge_classes(row, classifier, images, labels, request.batch_size)
        report.results.append(row)
    return report


def _judge_classes(
    row: EvalRow,
    classifier: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    batch_size: int,
) -> None:
    """The row's class shares (which classes the classifier sees in the samples) and, for
    samples drawn for given ``labels``, its class accuracy."""
    predicted, num_classes = predicted_classes(classifier, images, batch_size)
    row.class_shares = [round(v, 6) for v in class_shares(predicted, num_classes)]
    if labels is not None:
        row.accuracy = share_correct(predicted, labels)


def _sample_requests(run: LoadedRun, request: EvalRequest) -> list[tuple]:
    """(sampler, steps, guidance, SampleRequest) of every row, in order."""
    classes = run.config.model.num_classes
    labels = [k % classes for k in range(request.n)] if classes else None
    return [
        (
            sampler,
            steps,
            weight,
            SampleRequest(
                n=request.n,
                sampler=sampler,
                steps=steps,
                seed=request.seed,
                batch_size=request.batch_size,
                labels=labels,
                guidance=weight,
                null_label=classes if classes else None,
                amp=request.amp,
            ),
        )
        for sampler, steps in plan(request, run.diffusion.num_steps)
        for weight in request.guidance
    ]


def _share_only(run: LoadedRun, request: EvalRequest, extractor: FeatureExtractor) -> None:
    """A non-zero process's part of a distributed evaluation, in process 0's order: its block
    of every row's samples, then its share of their features."""
    if request.samples is not None:
        images = read_samples(Path(request.samples), run.config.data)
        _features(images, extractor, request, False, True)
        return
    data = run.config.data
    shape = (data.channels, data.image_size, data.image_size)
    for _, _, _, sample_request in _sample_requests(run, request):
        result = generate(run.model, run.diffusion, shape, sample_request, run.device, False, True)
        _features(to_uint8(result.images), extractor, request, False, True)


def _features(
    images: torch.Tensor,
    extractor: FeatureExtractor,
    request: EvalRequest,
    progress: bool,
    distributed: bool,
) -> np.ndarray:
    if len(images) < max(2, request.k + 1):
        raise ConfigError(f"need at least {max(2, request.k + 1)} samples, got {len(images)}")
    return extract_features(
        extractor,
        images,
        batch_size=request.batch_size,
        progress=progress,
        desc="features",
        distributed=distributed,
    )


def _row(
    sampler: str,
    steps: int,
    images: torch.Tensor,
    seconds: float,
    extractor: FeatureExtractor,
    reference: Reference,
    request: EvalRequest,
    progress: bool,
    distributed: bool = False,
) -> EvalRow:
    started = time.perf_counter()
    fake = _features(images, extractor, request, progress, distributed)
    fid, kid_mean, kid_std, precision, recall = score(fake, reference, request)
    nfe = get_sampler(sampler).calls(steps) if sampler != "npz" else 0
    return EvalRow(
        sampler,
        steps,
        nfe,
        len(images),
        fid,
        kid_mean,
        kid_std,
        precision,
        recall,
        round(seconds, 3),
        round(time.perf_counter() - started, 3),
    )


def merge_into(path: Path, report: EvalReport) -> dict[str, Any]:
    """``report`` merged with the rows of an existing eval.json of the same weights, step,
    extractor and reference: a (sampler, steps, n) evaluated again replaces its old row."""
    merged = report.to_dict()
    try:
        old = RunDir(path.parent).read_json(path.name)
    except RunDirError as err:
        warnings.warn(f"{err}: it is replaced by this evaluation", stacklevel=2)
        return merged
    if not isinstance(old, dict):
        return merged
    same = all(
        old.get(key) == merged[key]
        for key in ("features", "extractor_fingerprint", "reference", "step", "weights")
    )
    if not same or not isinstance(old.get("results"), list):
        return merged

    def key(r: dict[str, Any]) -> tuple:
        return r.get("sampler"), r.get("steps"), r.get("n"), r.get("guidance", 0.0)

    new_keys = {key(r) for r in merged["results"]}
    kept = [r for r in old["results"] if isinstance(r, dict) and key(r) not in new_keys]
    merged["results"] = sorted(
        kept + merged["results"],
        key=lambda r: (r["sampler"], r["nfe"], r.get("guidance", 0.0)),
    )
    return merged


def write_eval_json(path: Path, report: EvalReport) -> dict[str, Any]:
    """``report`` merged into the eval.json at ``path`` (a row evaluated again replaces its
    own), written atomically; returns the merged results."""
    from ddpmkit.fileio import atomic_write_text

    merged = merge_into(path, report)
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return merged


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One line per (sampler, steps, guidance): NFE, FID, KID ×10³, precision, recall, class
    accuracy (conditional runs), the classes the samples cover (a classifier judged them: how
    many classes got any sample, and the smallest share), seconds."""
    guided = any(r.get("guidance") or r.get("accuracy") is not None for r in results)
    covered = any(r.get("class_shares") for r in results)
    extra_head, extra_rule = (" guidance | accuracy |", " ---: | ---: |") if guided else ("", "")
    if covered:
        extra_head, extra_rule = extra_head + " classes (smallest share) |", extra_rule + " ---: |"
    lines = [
        "| sampler | steps | NFE | n |"
        + extra_head
        + " FID | KID ×10³ | precision | recall | sampling s |",
        "| --- | ---: | ---: | ---: |" + extra_rule + " ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        extra = ""
        if guided:
            accuracy = r.get("accuracy")
            shown = "–" if accuracy is None else f"{accuracy:.3f}"
            extra = f" {r.get('guidance', 0.0):g} | {shown} |"
        if covered:
            extra += f" {coverage(r.get('class_shares'))} |"
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['n']} |{extra} {r['fid']:.3f} | "
            f"{1e3 * r['kid_mean']:.3f} ± {1e3 * r['kid_std']:.3f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def coverage(shares: list[float] | None) -> str:
    """``present/K (smallest %)`` of a row's class shares, ``–`` without them."""
    if not shares:
        return "–"
    present = sum(share > 0 for share in shares)
    return f"{present}/{len(shares)} ({100 * min(shares):.1f} %)"


def default_features(data: DataConfig) -> str:
    """``digits`` for the built-in digits, ``fashion-mnist`` for the built-in Fashion-MNIST,
    ``inception`` for everything else."""
    if data.source == "digits":
        return "digits"
    return "fashion-mnist" if is_fashion_mnist(data.source) else "inception"


def default_reference(data: DataConfig) -> DataConfig:
    """The images a run's samples are judged against: its training data, except Fashion-MNIST,
    whose 10,000 test images were never trained on."""
    if is_fashion_mnist(data.source):
        return dataclasses.replace(data, source=FASHION_MNIST, split="test", random_flip=False)
    return data


def reference_data(run_data: DataConfig, data: str | None = None) -> DataConfig:
    """The images ``ddpm eval`` judges a run against: ``data`` (``--data``) as given, with its
    own split (a ``:SPLIT`` suffix, else the source's default), at the run's size and channels;
    without it the run's :func:`default_reference`."""
    if data is None:
        return default_reference(run_data)
    return run_data.read_as_written(data)


def default_classifier(data: DataConfig) -> str | None:
    """The judge of every row's classes (shares; accuracy of conditional samples): the shipped
    classifier of a built-in data set."""
    return default_features(data) if default_features(data) != "inception" else None


def check_features(name: str) -> None:
    check_choice("features", name, EXTRACTORS)


@dataclass
class EvalOutcome:
    """What :func:`run_eval` did, for the command line to show (process 0; the other processes
    of a torchrun job get ``None``)."""

    header: str  # features and reference
    table: str  # the merged eval.json as markdown
    written: list[Path]
    notes: list[str]  # why a figure was not drawn


def run_eval(
    run_dir: str | Path,
    *,
    n: int | None = None,
    preset: str | None = None,
    samplers: Sequence[str] = ("dpm++",),
    steps: Sequence[int | None] = (None,),
    guidance: Sequence[float] = (0.0,),
    features: str | None = None,
    feature_weights: str | None = None,
    samples: str | Path | None = None,
    data: str | None = None,
    batch_size: int = 500,
    seed: int = 0,
    amp: bool = False,
    classifier: str | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    weights: str = "ema",
    device: str = "auto",
    step: int | None = None,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> EvalOutcome | None:
    """``ddpm eval``: score each (sampler, steps, guidance) of a run (or the npz ``samples``)
    against its data (or ``data``), merge the rows into ``out`` (default ``RUN_DIR/eval.json``)
    and write eval.md, quality_vs_nfe.png (several rows) and guidance_tradeoff.png (several
    weights). ``preset="paper"``: Inception features and 50,000 samples by default, with a
    warning for anything fewer, given to ``warn`` (default :func:`warnings.warn`) before the
    work starts. Under ``torchrun`` the processes share the work (see
    :func:`evaluate`) and process 0 writes."""
    from ddpmkit.metrics.extractors import load_extractor
    from ddpmkit.metrics.presets import PAPER_SAMPLES, paper_warning, preset_features
    from ddpmkit.run.loaded import load_run
    from ddpmkit.sharding import torchrun_processes

    chosen = preset_features(preset, features)
    request = EvalRequest(
        n=n if n is not None else PAPER_SAMPLES if preset == "paper" else 10_000,
        samplers=list(samplers),
        steps=list(steps),
        seed=seed,
        batch_size=batch_size,
        samples=Path(samples) if samples else None,
        guidance=list(guidance),
        amp=amp,
    )
    with torchrun_processes(device) as (distributed, rank, device):
        run = load_run(run_dir, weights=weights, device=device, step=step)
        request.classifier = classifier or default_classifier(run.config.data)
        if request.samples is None:
            plan(request, run.diffusion.num_steps)  # a bad sampler or step count fails first
        judged_against = reference_data(run.config.data, data)
        name = chosen or default_features(judged_against)
        check_features(name)
        extractor = load_extractor(name, weights=feature_weights, device=run.device)
        shown = progress and rank == 0
        cache = Path(cache_dir) if cache_dir else None
        reference = reference_for(judged_against, extractor, cache, shown, distributed)
        if rank != 0:  # this process's share of samples and features; process 0 scores
            evaluate(run, request, extractor, None, weights, False, distributed)
            return None
        warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
        counts = [("the reference set", len(reference.features))]
        if request.samples is None:
            counts.append(("--n", request.n))
        for what, count in counts if preset == "paper" else []:
            if message := paper_warning(what, count):
                warn(message)
        report = evaluate(run, request, extractor, reference, weights, shown, distributed)
    if preset == "paper" and request.samples is not None:
        if message := paper_warning(str(request.samples), report.results[0].n):
            warn(message)
    return _write_eval(run_dir, out, name, reference, report)


def _write_eval(run_dir, out, name, reference, report) -> EvalOutcome:
    """eval.json (merged), eval.md and the figures that several rows or weights call for."""
    from ddpmkit.fileio import atomic_write_text
    from ddpmkit.rundir import GUIDANCE_PLOT, QUALITY_PLOT

    path = Path(out) if out else RunDir(run_dir).eval_path
    merged = write_eval_json(path, report)
    table = markdown_table(merged["results"])
    atomic_write_text(path.with_suffix(".md"), table)
    written, notes = [path, path.with_suffix(".md")], []
    unguided = [r for r in merged["results"] if not r.get("guidance")]
    weights = {r.get("guidance", 0.0) for r in merged["results"] if r.get("accuracy") is not None}
    try:
        if len(unguided) > 1:
            from ddpmkit.plots import plot_quality_vs_nfe

            written.append(plot_quality_vs_nfe(unguided, path.parent / QUALITY_PLOT))
        if len(weights) > 1:
            from ddpmkit.plots import plot_guidance_tradeoff

            written.append(plot_guidance_tradeoff(merged["results"], path.parent / GUIDANCE_PLOT))
    except ConfigError as err:  # matplotlib is an optional extra
        notes.append(f"no plot: {err}")
    header = (
        f"{name} features, reference {reference.source} (n={len(reference.features)}; two "
        f"random halves of it score FID {merged['reference_halves_fid']:.3f})"
    )
    return EvalOutcome(header, table, written, notes)
