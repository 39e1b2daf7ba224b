"""Paired bootstrap confidence intervals of top-1 differences over images.

Two runs that differ in one factor (the head, or the augmentation) and agree on the others (model,
seed, and the other factor) are paired image by image through the saved logits
(``logits/<variant>.npz``, matched on ``index`` with equal targets). The same resample of images
(with replacement, ``resamples`` times, fixed seed) is applied to both runs' per-image correctness;
the interval is the percentile interval of the resampled differences. ImageNet-C's files are 75
corrupted copies of each clean image: they are resampled by clean image (``source_image``), all
copies together, since copies of one image are not independent draws. The interval covers the
sampling of test images, not the training seed: with several seeds, the differences are summarised
over seeds (:func:`summarise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from evaluation.compare.sources import Run
from evaluation.compare.table import DDOF, CompareError

FACTORS = ("head", "augment")
RESAMPLES = 1000
LEVEL = 0.95


def image_correct(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(index [N], target [N], correct [N] bool, unit [N])`` of the top-1 prediction in a logits file, as
    the variant scores it (subset variants over their classes, ReaL against its label sets, images
    without a label left out); ``unit`` is what the bootstrap resamples: the clean source image of an
    ImageNet-C file, else the image itself. ``None`` for variants without an accuracy (ImageNet-O)."""
    with np.load(path) as data:
        if "in_distribution" in data:
            return None
        logits, target, index = data["logits"], data["target"], data["index"]
        unit = data.get("source_image", index)
        if "class_indices" in data:
            logits = logits[:, data["class_indices"]]
        pred = logits.argmax(1)
        if "real_labels" in data:
            labels = data["real_labels"]
            keep = (labels >= 0).any(1)
            correct = (labels == pred[:, None]).any(1)
        else:
            keep = target >= 0
            correct = pred == target
    return index[keep], target[keep], correct[keep], unit[keep]


def paired_correct(a: Path, b: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-image correctness of two runs on the images both scored (matched on ``index``), and the
    bootstrap unit of each image."""
    first, second = image_correct(a), image_correct(b)
    if first is None or second is None:
        return None
    common, ia, ib = np.intersect1d(first[0], second[0], return_indices=True)
    if len(common) == 0:
        raise CompareError(f"{a} and {b} share no image; compare runs scored on the same data")
    if not np.array_equal(first[1][ia], second[1][ib]):
        raise CompareError(
            f"{a} and {b} give the same images different labels; compare runs on the same data"
        )
    return first[2][ia], second[2][ib], first[3][ia]


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` image indices drawn with replacement (numpy's default generator)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_difference(
    reference: np.ndarray,
    other: np.ndarray,
    unit: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """Top-1 of ``other`` minus top-1 of ``reference`` (percentage points) on the same images
    (``[N]`` bool each), and its paired bootstrap percentile interval ``(diff, low, high)``, resampling
    the ``unit``s (``[N]`` ids; default: each image its own) with all their images."""
    units, unit_of = np.unique(np.arange(len(reference)) if unit is None else unit, return_inverse=True)
    gain = np.bincount(unit_of, other.astype(float) - reference.astype(float), minlength=len(units))
    count = np.bincount(unit_of, minlength=len(units))
    idx = resample_indices(len(units), resamples, seed)
    diffs = 100.0 * gain[idx].sum(1) / count[idx].sum(1)
    tail = 100.0 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100.0 - tail])
    return 100.0 * (other.mean() - reference.mean()), float(low), float(high)


def partner(run: Run, runs: Sequence[Run], factor: str, value: str) -> Run | None:
    """The run equal to ``run`` in everything but ``factor``, which is ``value``."""
    keys = [k for k in (*FACTORS, "model", "seed") if k != factor]
    for other in runs:
        if getattr(other, factor) == value and all(getattr(other, k) == getattr(run, k) for k in keys):
            return other
    return None


DIFFERENCE_COLUMNS = (
    "comparison", "with", "seed", "variant", "diff", "ci_low", "ci_high", "n_images", "n_units", "run", "reference_run"
)  # fmt: skip


def paired_differences(
    runs: Sequence[Run], baseline: Run, resamples: int = RESAMPLES, seed: int = 0
) -> pd.DataFrame:
    """One row per (factor, compared run, variant with logits in both runs): the top-1 difference
    against the run with the baseline's value of that factor, and its bootstrap interval."""
    rows = []
    for factor in FACTORS:
        reference_value = getattr(baseline, factor)
        other_factor = next(f for f in FACTORS if f != factor)
        for run in runs:
            if getattr(run, factor) == reference_value:
                continue
            ref = partner(run, runs, factor, reference_value)
            if ref is None or run.run_dir is None or ref.run_dir is None:
                continue
            for file in sorted((run.run_dir / "logits").glob("*.npz")):
                variant = file.stem
                ref_file = ref.logits_file(variant)
                pair = paired_correct(ref_file, file) if ref_file is not None else None
                if pair is None:
                    continue
                diff, low, high = bootstrap_difference(*pair, resamples=resamples, seed=seed)
                units = len(np.unique(pair[2]))
                rows.append(
                    {
                        "comparison": f"{factor}: {getattr(run, factor)} - {reference_value}",
                        "with": f"{other_factor}={getattr(run, other_factor)}",
                        "seed": run.seed,
                        "variant": variant,
                        "diff": diff,
                        "ci_low": low,
                        "ci_high": high,
                        "n_images": len(pair[0]),
                        "n_units": units,
                        "run": run.name,
                        "reference_run": ref.name,
                    }
                )
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)  # the header also when no pair has logits


def t_half_width(std: np.ndarray | pd.Series, n: np.ndarray | pd.Series | int, level: float = LEVEL):
    """Half-width of Student's t interval of a mean over ``n`` seeds with sample std ``std`` (ddof=1):
    t(level, n - 1) * std / sqrt(n), elementwise (one seed: NaN, as its std is)."""
    return stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * std / np.sqrt(n)


def summarise(differences: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Per (comparison, with, variant): mean and std (ddof=1) of the difference over seeds, the number of
    seeds, and an interval: with one seed the bootstrap one (test images), with several Student's t over
    the seeds, mean ± t(level, n - 1) * std / sqrt(n) (training seeds: what a new seed would give)."""
    grouped = differences.groupby(["comparison", "with", "variant"], sort=False)
    out = grouped["diff"].agg(["mean", "count"]).rename(columns={"count": "n_seeds"})
    out["std"] = grouped["diff"].std(ddof=DDOF)
    first = grouped[["ci_low", "ci_high"]].first()
    single = out["n_seeds"] == 1
    half = t_half_width(out["std"], out["n_seeds"], level)
    out["ci_low"] = first["ci_low"].where(single, out["mean"] - half)
    out["ci_high"] = first["ci_high"].where(single, out["mean"] + half)
    return out.reset_index()
