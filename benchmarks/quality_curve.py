"""Quality against training time: the medians of recipe_screen.py and peer_quality.py results,
drawn per data set (a benchmark's figure; it trains nothing).

    python benchmarks/quality_curve.py --results runs/screen60/results.jsonl \
        --results runs/screen300/results.jsonl --results runs/fm10/results.jsonl \
        --peer runs/peer/results.jsonl --label NAME=TEXT ... \
        --out docs/quality_vs_time.png

Each results line is one run (variant, seed, minutes, Fréchet distance); a point is the median
over seeds of a (data set, recipe, minutes), drawn with the range of its seeds (recipes measured
at the same minutes are drawn a little apart). A recipe is
drawn only when ``--label NAME=TEXT`` names it (the variants of a screen are many); a peer's line
(one with a ``peer`` field) is drawn under the peer's name. Either flag reads both kinds of line,
so one file may hold both (``benchmarks/results/``, where the measured lines are kept). Prints
the table of the points.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend)
import matplotlib.ticker  # noqa: E402

TICKS = (1, 2, 5, 10, 30)  # the budgets the issue asks for


def data_set(record: dict) -> str:
    text = " ".join(record.get("overrides", [])) + " " + str(record.get("data", ""))
    fashion = "fashion" in text or record.get("variant", "").startswith("fm")
    return "Fashion-MNIST" if fashion else "digits"


def records(path: str) -> list[dict]:
    """The scored runs of a results file (blank lines and runs without a distance left out)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    return [r for r in found if isinstance(r.get("fd"), int | float)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", action="append", default=[])
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        help="read like --results (both kinds of line); kept for the commands in BENCHMARKS.md",
    )
    parser.add_argument("--label", action="append", default=[], help="VARIANT=legend text")
    parser.add_argument("--out", default="docs/quality_vs_time.png")
    parser.add_argument(
        "--legend",
        action="append",
        default=[],
        help="legend location of each panel in order: matplotlib's (e.g. 'center right') or "
        "'below' the axes; default 'best'",
    )
    args = parser.parse_args()
    labels = dict(text.split("=", 1) for text in args.label)
    points: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in dict.fromkeys(args.results + args.peer):  # a file named twice is read once
        for record in records(path):
            if "peer" in record:
                key = (data_set(record), record["peer"])
            elif record.get("variant") in labels:
                key = (data_set(record), labels[record["variant"]])
            else:
                continue
            points[key][record["minutes"]].append(record["fd"])
    sets = sorted({d for d, _ in points})
    if not sets:
        raise SystemExit("no results match a --label (or --peer is empty): nothing to draw")
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    print("| data set | recipe | minutes | seeds | FD per seed | median FD |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    if len(args.legend) > len(sets):
        raise SystemExit(f"{len(args.legend)} --legend for {len(sets)} panels ({', '.join(sets)})")
    legends = args.legend + ["best"] * (len(sets) - len(args.legend))
    for ax, name, where in zip(axes[0], sets, legends, strict=True):
        drawn = [(key, by_time) for key, by_time in sorted(points.items()) if key[0] == name]
        for i, ((data, recipe), by_time) in enumerate(drawn):
            minutes = sorted(by_time)
            spread = 1 + 0.03 * (i - (len(drawn) - 1) / 2)  # side by side where times coincide
            medians = [statistics.median(by_time[m]) for m in minutes]
            low = [m - min(by_time[t]) for m, t in zip(medians, minutes, strict=True)]
            high = [max(by_time[t]) - m for m, t in zip(medians, minutes, strict=True)]
            shifted = [m * spread for m in minutes]
            ax.errorbar(shifted, medians, yerr=[low, high], marker="o", capsize=3, label=recipe)
            for t, med in zip(minutes, medians, strict=True):
                fds = ", ".join(f"{v:.3f}" for v in by_time[t])
                print(f"| {data} | {recipe} | {t:g} | {len(by_time[t])} | {fds} | {med:.3f} |")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(0.8, 40)
        ax.set_xticks(TICKS, [f"{t:g}" for t in TICKS])
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("Fréchet distance (data set's CNN features)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        if where == "below":  # under the axes, where it can hide no point
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        else:
            ax.legend(fontsize=8, loc=where)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
