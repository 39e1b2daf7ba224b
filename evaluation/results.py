"""``results.csv`` in the format of timm's results tables, one row per variant.

Columns as timm's ``validate.py`` and ``results/results-*.csv``: ``model, top1, top1_err, top5,
top5_err, param_count`` (millions), ``img_size, crop_pct, interpolation, top1_diff, top5_diff``,
plus ``variant``. Accuracies are percentages written with three decimals; the diffs are signed
strings (``+1.234``) against the base set timm compares with: full val (``imagenet``) for ReaL,
ImageNetV2 and Sketch, and the same 200 classes of val (``val/<variant>/clean_top1``,
``clean_top5``) for A and R where those keys exist; empty otherwise. Variants without an accuracy
(ImageNet-O) have no row; their scores are in ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from train.config import DataConfig
from train.run_dir import write_json
from train.summary import format_table

COLUMNS = (
    "model",
    "top1",
    "top1_err",
    "top5",
    "top5_err",
    "param_count",
    "img_size",
    "crop_pct",
    "interpolation",
    "top1_diff",
    "top5_diff",
    "variant",
)

# variant -> the variant whose ``<prefix>top1`` / ``<prefix>top5`` keys are its base (timm's pairs)
BASES: dict[str, tuple[str, str]] = {
    "imagenet-real": ("imagenet", ""),
    "imagenetv2-matched-frequency": ("imagenet", ""),
    "imagenetv2-threshold0.7": ("imagenet", ""),
    "imagenetv2-top-images": ("imagenet", ""),
    "imagenet-sketch": ("imagenet", ""),
    "imagenet-a": ("imagenet-a", "clean_"),
    "imagenet-r": ("imagenet-r", "clean_"),
}


def signed(difference: float | None) -> str:
    """timm's diff cell: ``+1.234`` / ``-1.234`` (zero is ``+0.000``), empty when unknown."""
    if difference is None or not math.isfinite(difference):
        return ""
    return f"{difference + 0.0:+.3f}"


def results_table(
    results: Mapping[str, float],
    model_name: str,
    param_count: int,
    img_size: int,
    crop_pct: float,
    interpolation: str,
) -> pd.DataFrame:
    """Rows of ``results.csv`` from flat ``{"val/<variant>/<metric>": value}`` scores (percentages)."""
    variants = list(dict.fromkeys(k.split("/")[1] for k in results if k.startswith("val/")))
    rows = []
    for variant in variants:
        top1 = results.get(f"val/{variant}/top1")
        if top1 is None:
            continue
        top5 = results.get(f"val/{variant}/top5", math.nan)
        base, prefix = BASES.get(variant, (None, ""))
        base1 = results.get(f"val/{base}/{prefix}top1")
        base5 = results.get(f"val/{base}/{prefix}top5")
        rows.append(
            {
                "model": model_name,
                "top1": top1,
                "top1_err": 100.0 - top1,
                "top5": top5,
                "top5_err": 100.0 - top5,
                "param_count": f"{param_count / 1e6:,.2f}",
                "img_size": img_size,
                "crop_pct": crop_pct,
                "interpolation": interpolation,
                "top1_diff": signed(None if base1 is None else top1 - base1),
                "top5_diff": signed(None if base5 is None else top5 - base5),
                "variant": variant,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_results_csv(
    results: Mapping[str, float],
    path: Path,
    model_name: str,
    param_count: int,
    img_size: int,
    crop_pct: float,
    interpolation: str,
) -> None:
    """Write :func:`results_table` to ``path`` (atomically) with timm's three-decimal floats.

    Args:
        results: flat scores as in ``metrics.json``.
        path: the CSV file.
        model_name: the ``model`` column, e.g. ``resnet50.sigmoid_baseline``.
        param_count: number of model parameters (written in millions).
        img_size, crop_pct, interpolation: the evaluation transform.
    """
    table = results_table(results, model_name, param_count, img_size, crop_pct, interpolation)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False, float_format="%.3f")
    tmp.replace(path)


def write_scores(
    folder: Path,
    scores: Mapping[str, float],
    experiment: str,
    model_name: str,
    classifier: torch.nn.Module,
    data: DataConfig,
) -> str:
    """Write ``metrics.json`` (scores + experiment), ``results.csv`` and ``results.txt`` (the table,
    also returned) of one model into ``folder``."""
    write_json(folder / "metrics.json", {**scores, "experiment": experiment})
    write_results_csv(
        scores,
        folder / "results.csv",
        model_name=f"{model_name}.{experiment}",
        param_count=sum(p.numel() for p in classifier.parameters()),
        img_size=data.image_size,
        crop_pct=data.crop_pct,
        interpolation=data.interpolation,
    )
    table = format_table(dict(scores))
    (folder / "results.txt").write_text(table + "\n")
    return table
