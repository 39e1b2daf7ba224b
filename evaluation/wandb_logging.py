"""What a training run puts into W&B beyond Lightning's per-epoch logging.

- Summary policy: every ``val/<variant>/<metric>`` summary holds the final evaluation of the final
  weights (never a test set's best epoch); ``minival`` metrics also keep their best
  (``define_metric(summary="last,max"|"last,min")``, direction from :mod:`evaluation.registry`), so
  the summary shows ``{"last": ..., "max": ...}`` for them.
- At the end: a ``final/variants`` table (one row per variant, one column per metric), the
  effective-robustness scatter and the per-corruption CE bars, saved as PNG under ``plots/`` too.

With several runs of a group, W&B's own scatter panel of ``val/imagenet/top1`` against a shifted
variant's top-1 gives one point per run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from lightning.pytorch.loggers import Logger, WandbLogger

from evaluation.compare import charts
from evaluation.compare.sources import Run
from evaluation.registry import METRICS
from evaluation.variants import MINIVAL


def declare_metrics(logger: Logger | None) -> None:
    """Keep the last and the best value of every directed ``minival`` metric in the W&B summary."""
    if not isinstance(logger, WandbLogger):
        return
    for name, spec in METRICS.items():
        if spec.mode is not None:
            logger.experiment.define_metric(f"val/{MINIVAL}/{name}", summary=f"last,{spec.mode}")


def variant_rows(results: Mapping[str, float]) -> tuple[list[str], list[list[object]]]:
    """``(columns, rows)`` of the variant x metric table from ``{"val/<variant>/<metric>": v}``
    (headline metrics only; qualified keys such as ``val/imagenet-c/fog/ce`` stay in the summary)."""
    table: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        parts = key.split("/")
        if len(parts) == 3:
            table.setdefault(parts[1], {})[parts[2]] = value
    metrics = [m for m in METRICS if any(m in row for row in table.values())]
    rows = [[variant, *(row.get(m, math.nan) for m in metrics)] for variant, row in table.items()]
    return ["variant", *metrics], rows


def run_charts(run: Run, folder: Path) -> dict[str, Path]:
    """Effective robustness and per-corruption CE bars of one run, as PNGs in ``folder``."""
    written: dict[str, Path] = {}
    points = charts.robustness_points([run])
    if not points.empty:
        written["effective_robustness"] = charts.effective_robustness(
            points, folder / "effective_robustness.png"
        )
    c_keys = charts.corruption_keys(run.metrics)
    if c_keys:
        frame = pd.DataFrame([run.metrics], index=[run.experiment])
        written["imagenet-c_ce"] = charts.grouped_bars(
            frame,
            c_keys,
            "CE %",
            f"ImageNet-C CE per corruption, {run.experiment}",
            folder / "imagenet-c_ce.png",
        )
    return written


def log_final(logger: Logger | None, run: Run, folder: Path) -> None:
    """Final-evaluation report of one run: charts in ``folder`` and, with W&B, the summary of the
    final scores, the variant x metric table and the charts."""
    written = run_charts(run, folder)
    if not isinstance(logger, WandbLogger):
        return
    final = {
        k: v for k, v in run.metrics.items() if math.isfinite(v) and not k.startswith(f"val/{MINIVAL}/")
    }  # minival's summary keeps last and best (declare_metrics)
    logger.experiment.summary.update(final)
    columns, rows = variant_rows(run.metrics)
    logger.log_table(key="final/variants", columns=columns, data=rows)
    for name, path in written.items():
        logger.log_image(key=f"plots/{name}", images=[str(path)])
