"""Assemble the comparison report: ``comparison.md``, ``comparison.csv``, ``differences.csv`` and
``img/compare_*.png`` in one output folder."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from evaluation.compare import charts
from evaluation.compare.bootstrap import LEVEL, paired_differences, summarise
from evaluation.compare.sources import Run
from evaluation.compare.table import (
    DDOF,
    CompareError,
    add_diffs,
    baseline_rows,
    experiments_frame,
    markdown_frame,
    markdown_table,
    metric_columns,
    runs_frame,
)
from evaluation.variants import VARIANTS

log = logging.getLogger(__name__)


def baseline_run(runs: Sequence[Run], baseline: str) -> Run:
    """The run named ``baseline``, else the first run of the experiment ``baseline``."""
    for run in runs:
        if baseline in (run.name, run.experiment):
            return run
    names = sorted({*(r.name for r in runs), *(r.experiment for r in runs)})
    raise CompareError(f"--baseline {baseline} is unknown; give one of: {', '.join(names)}")


def warn_thin_comparison(frame: pd.DataFrame) -> None:
    """One warning line for a single run (nothing to compare with) and one for seeds an experiment
    has twice (its mean ± std would count them as separate seeds)."""
    if len(frame) == 1:
        log.warning("only one run (%s): nothing to compare it with, every difference is 0", frame.index[0])
    counts = frame.groupby(["experiment", "seed"], sort=False).size()
    repeated = [f"{experiment} seed {seed} x{n}" for (experiment, seed), n in counts.items() if n > 1]
    if repeated:
        log.warning(
            "same seed twice in one experiment (%s): its mean ± std counts them as separate seeds",
            ", ".join(repeated),
        )


RUN_SETTINGS = {  # columns of the runs table: what a reader needs to weigh the scores
    "model": "model.name",
    "image size": "data.image_size",
    "batch": "data.batch_size",
    "epochs": "trainer.max_epochs",
    "batches per epoch": "trainer.limit_train_batches",
}


def images_scored(run: Run) -> str:
    """One line: how many images each variant's scores rest on (``val/<variant>/n`` of ``run``)."""
    counts = [
        f"{variant} {int(run.metrics[f'val/{variant}/n'])}"
        for variant in VARIANTS
        if math.isfinite(run.metrics.get(f"val/{variant}/n", math.nan))
    ]
    return f"Images scored per variant ({run.name}): {', '.join(counts)}." if counts else ""


def difference_cell(row: pd.Series) -> str:
    """``+1.23 [-0.40, +2.90]`` (one seed: bootstrap interval) or ``+1.23 [+0.10, +2.36] (3 seeds)`` (t-interval
    over seeds), bold when the interval excludes 0; seeds that all give the same difference say so, unbolded."""
    if row["n_seeds"] > 1 and row["std"] < 1e-9:  # a zero-width t-interval says nothing: the seeds tied
        return f"{row['mean']:+.2f} ({int(row['n_seeds'])} seeds, all equal)"
    text = f"{row['mean']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
    if row["n_seeds"] > 1:
        text += f" ({int(row['n_seeds'])} seeds)"
    return f"**{text}**" if row["ci_low"] > 0 or row["ci_high"] < 0 else text


def write_report(
    runs: Sequence[Run],
    out: Path,
    baseline: str | None = None,
    rows: str = "auto",
    metrics: Sequence[str] = ("top1",),
    resamples: int = 1000,
    seed: int = 0,
) -> Path:
    """Write the report of ``runs`` into ``out``; returns the Markdown file.

    Args:
        baseline: experiment or run name the diffs are taken against (default: the first run).
        rows: ``run``, ``experiment`` (mean ± std over seeds) or ``auto`` (experiment when one
            has several runs).
        metrics: metric names whose ``val/<variant>/<metric>`` columns are shown.
        resamples, seed: of the paired bootstrap.
    """
    if not runs:
        raise CompareError("no runs to compare; give run directories, a sweep folder or wandb://...")
    columns = metric_columns(runs, list(metrics))
    base_run = baseline_run(runs, baseline or runs[0].name)
    per_run = runs_frame(runs, columns)
    warn_thin_comparison(per_run)
    several = per_run.groupby("experiment").size().max() > 1
    per_experiment = rows == "experiment" or (rows == "auto" and several)
    if per_experiment:
        frame = experiments_frame(per_run, columns)
        reference = base_run.experiment
    else:
        frame, reference = per_run, baseline or base_run.name
    frame = add_diffs(frame, baseline_rows(frame, reference, per_experiment), columns)

    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "comparison.csv")
    differences = paired_differences(runs, base_run, resamples=resamples, seed=seed)
    differences.to_csv(out / "differences.csv", index=False)

    img = out / "img"
    figures: dict[str, Path | None] = {}
    top1 = [k for k in columns if k.endswith("/top1")]
    if top1:
        figures["top-1 per variant"] = charts.grouped_bars(
            frame, top1, "top-1 %", "top-1 per variant (final weights)", img / "compare_top1.png"
        )
    c_keys = charts.corruption_keys(runs[0].metrics)
    if c_keys and all(set(c_keys) <= set(r.metrics) for r in runs):
        c_frame = (
            experiments_frame(runs_frame(runs, c_keys), c_keys)
            if per_experiment
            else runs_frame(runs, c_keys)
        )
        figures["ImageNet-C corruption error per corruption"] = charts.grouped_bars(
            c_frame,
            c_keys,
            "CE % (100 = the normalising model, eval.c_normaliser)",
            "ImageNet-C: CE per corruption",
            img / "compare_imagenet-c_ce.png",
        )
    points = charts.robustness_points(runs)
    if not points.empty:
        figures["effective robustness"] = charts.effective_robustness(
            points, img / "compare_effective_robustness.png"
        )
    figures["ImageNet-O confidence"] = charts.ood_confidence(runs, img / "compare_imagenet-o_confidence.png")
    figures["reliability on val"] = charts.reliability_by_experiment(runs, img / "compare_reliability.png")

    unit = "experiment (mean ± sample std over seeds, ddof=1)" if per_experiment else "run"
    lines = [
        "# Comparison",
        "",
        f"{len(runs)} runs, one row per {unit}. Scores of the final weights on every variant; cells are "
        f"`value (difference to {reference})`, the best of each column in bold (a ranking, not a test: see "
        "the paired differences; direction from "
        "`evaluation/registry.py`).",
        "",
        markdown_table(frame, columns, per_experiment),
        "",
        images_scored(runs[0]),
        "",
    ]
    if not differences.empty:
        summary = summarise(differences)
        summary["cell"] = summary.apply(difference_cell, axis=1)
        pivot = summary.pivot_table(
            index=["comparison", "with"], columns="variant", values="cell", aggfunc="first", sort=False
        )
        pivot = pivot[sorted(pivot.columns, key=list(VARIANTS).index)]
        pivot.index = [f"{c} ({w})" for c, w in pivot.index]
        pivot.index.name = "top-1 difference"
        lines += [
            "## Paired differences",
            "",
            f"Top-1 differences in percentage points over the same images, {LEVEL:.0%} intervals, bold when "
            f"they exclude 0. One seed: paired bootstrap percentile interval over test images ({resamples} "
            f"resamples, seed {seed}; ImageNet-C resampled by clean image, all its corrupted copies together). "
            "It does not cover training-seed variation, which is often as large: read one seed's bold cells "
            f"as hints. Several seeds: Student's t-interval over the seeds' differences (ddof={DDOF}; with "
            "2 seeds it is wide and fragile, 3 or more are better); per-seed bootstrap intervals in "
            "`differences.csv`. No correction for the number of cells: among many, some exclude 0 by chance.",
            "",
            markdown_frame(pivot.fillna("")),
            "",
        ]
    lines += ["## Charts", ""]
    lines += [f"![{title}](img/{path.name})\n" for title, path in figures.items() if path is not None]
    runs_table = pd.DataFrame(
        {
            "experiment": [r.experiment for r in runs],
            "seed": [r.seed for r in runs],
            "group": [r.group or "" for r in runs],
            **{label: [r.settings.get(key, "") for r in runs] for label, key in RUN_SETTINGS.items()},
            "source": [str(r.run_dir) if r.run_dir else "W&B" for r in runs],
        },
        index=pd.Index([r.name for r in runs], name="run"),
    )
    lines += ["## Runs", "", markdown_frame(runs_table), ""]
    report = out / "comparison.md"
    report.write_text("\n".join(lines))
    return report
