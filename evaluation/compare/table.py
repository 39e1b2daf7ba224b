"""The comparison table: one row per run (or per experiment, mean ± std over seeds), one column per
variant metric, and each cell's difference to a baseline; written as Markdown and CSV.

Standard deviations over seeds are sample standard deviations (``ddof=1``; empty for one seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from evaluation.compare.sources import Run
from evaluation.registry import metric_spec
from evaluation.variants import VARIANTS

DEFAULT_METRICS = ("top1", "auroc", "mce", "fp")
DDOF = 1
ID_COLUMNS = ("experiment", "head", "augment", "model", "seed", "group")


class CompareError(ValueError):
    """The requested comparison cannot be made (the message says why and what to change)."""


def metric_columns(runs: Sequence[Run], metrics: Sequence[str]) -> list[str]:
    """Keys ``val/<variant>/<metric>`` with ``<metric>`` in ``metrics`` that every run has, ordered
    by variant (as in :data:`evaluation.variants.VARIANTS`), then by ``metrics``, then by key.

    ``<metric>`` may be qualified (``max_logit/auroc``); a name logged only qualified (``ce``, one per
    corruption) picks every key ending in ``/<name>``.
    """
    common = set.intersection(*(set(run.metrics) for run in runs))
    names = {key: key.split("/", 2)[2] for key in common if key.startswith("val/") and key.count("/") >= 2}
    logged = set(names.values())
    rank: dict[str, int] = {}
    for key, name in names.items():
        for i, metric in enumerate(metrics):
            if name == metric or (metric not in logged and name.endswith(f"/{metric}")):
                rank[key] = i
                break
    if not rank:
        raise CompareError(
            f"no metric among {', '.join(metrics)} is common to all {len(runs)} runs; "
            "compare runs scored on the same variants or choose --metrics"
        )
    order = {name: i for i, name in enumerate(VARIANTS)}
    return sorted(rank, key=lambda k: (order.get(k.split("/")[1], len(order)), rank[k], k))


def runs_frame(runs: Sequence[Run], columns: Sequence[str]) -> pd.DataFrame:
    """One row per run (index: run name): identity columns, then the metric columns."""
    rows = [
        {**{c: getattr(run, c) for c in ID_COLUMNS}, **{k: run.metrics[k] for k in columns}} for run in runs
    ]
    return pd.DataFrame(rows, index=pd.Index([r.name for r in runs], name="run"))


def experiments_frame(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per experiment: mean and ``<key> std`` (ddof=1) over its runs, ``n_seeds``, ``seeds``."""
    grouped = frame.groupby("experiment", sort=False)
    out = grouped[["head", "augment", "model"]].first()
    out["n_seeds"] = grouped.size()
    out["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(v) for v in sorted(s)))
    for key in columns:
        out[key] = grouped[key].mean()
        out[f"{key} std"] = grouped[key].std(ddof=DDOF)
    return out


def baseline_rows(frame: pd.DataFrame, baseline: str, per_experiment: bool) -> pd.DataFrame:
    """For every row of ``frame``, the row it is compared with (same order as ``frame``).

    ``baseline`` names a row (a run, or an experiment in an experiment table). In a run table it may
    also name an experiment: each run is then compared with that experiment's run of the same seed
    (with its only run when it has one).
    """
    if baseline in frame.index:
        return frame.loc[[baseline] * len(frame)]
    base = pd.DataFrame() if per_experiment else frame[frame["experiment"] == baseline]
    if base.empty:
        names = sorted({*map(str, frame.index), *map(str, frame["experiment"] if not per_experiment else [])})
        raise CompareError(f"--baseline {baseline} is unknown; give one of: {', '.join(names)}")
    if len(base) == 1:
        return frame.loc[[base.index[0]] * len(frame)]
    by_seed = {seed: name for name, seed in base["seed"].items()}
    missing = sorted(set(frame["seed"]) - set(by_seed))
    if missing:
        raise CompareError(
            f"--baseline {baseline} has no run with seed {missing[0]}; give one run's name instead"
        )
    return frame.loc[[by_seed[s] for s in frame["seed"]]]


def add_diffs(frame: pd.DataFrame, base: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` with ``<key> diff`` = row value - its baseline row's value, for every metric column."""
    out = frame.copy()
    for key in columns:
        out[f"{key} diff"] = frame[key].to_numpy() - base[key].to_numpy()
    return out


def decimals(key: str) -> int:
    """Two decimals for percentages, three for fractions and other units."""
    return 2 if metric_spec(key).unit == "%" else 3


def best_rows(frame: pd.DataFrame, key: str) -> set:
    """Index labels holding the best value of ``key`` (registry direction), for bold cells."""
    mode = metric_spec(key).mode
    values = frame[key]
    if mode is None or values.isna().all() or len(frame) < 2:
        return set()
    target = values.max() if mode == "max" else values.min()
    return set(values.index[np.isclose(values, target)])


def cell(value: float, std: float | None, diff: float, places: int, bold: bool) -> str:
    """``65.10 ± 0.50 (+1.23)``; the ± part only with a finite std."""
    text = f"{value:.{places}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std:.{places}f}"
    text = f"**{text}**" if bold else text
    return f"{text} ({diff + 0.0:+.{places}f})"


def markdown_table(frame: pd.DataFrame, columns: Sequence[str], per_experiment: bool) -> str:
    """The Markdown table: identity columns, then ``value [± std] (diff)`` per metric; the best
    value of each metric in bold (direction from :mod:`evaluation.registry`)."""
    ids = ["head", "augment", "n_seeds"] if per_experiment else ["head", "augment", "seed"]
    header = ["experiment" if per_experiment else "run", *ids, *(k.removeprefix("val/") for k in columns)]
    best = {key: best_rows(frame, key) for key in columns}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in frame.iterrows():
        cells = [str(name), *(str(row[c]) for c in ids)]
        for key in columns:
            std = row[f"{key} std"] if per_experiment else None
            cells.append(cell(row[key], std, row[f"{key} diff"], decimals(key), name in best[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_frame(frame: pd.DataFrame, float_places: int = 2) -> str:
    """Any small frame as a Markdown table (index as the first column)."""
    header = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in frame.iterrows():
        values = [f"{v:.{float_places}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(name), *values]) + " |")
    return "\n".join(lines)
