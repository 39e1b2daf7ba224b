"""The per-variant score table printed and saved at the end of a run."""

from __future__ import annotations

from collections import defaultdict

COLUMNS = (
    "top1",
    "top5",
    "nll",
    "ece",
    "brier",
    "set_f1",
    "map",
    "clean_top1",
    "gap",
    "auroc",
    "aupr",
    "fpr95",
    "mce",
    "rel_mce",
    "fp",
    "t5d",
    "n",
)


def format_table(results: dict[str, float]) -> str:
    """``{"val/<variant>/<metric>": value}`` -> a fixed-width table, one row per variant.

    Shows the headline metrics (``COLUMNS``); qualified ones (per corruption, per OOD score) stay
    in ``metrics.json``.
    """
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in results.items():
        _, variant, metric = key.split("/", 2)
        rows[variant][metric] = value
    metrics = [m for m in COLUMNS if any(m in row for row in rows.values())]
    width = max([len("variant"), *map(len, rows)])
    lines = [f"{'variant':<{width}}  " + "  ".join(f"{m:>10}" for m in metrics)]
    for variant, row in rows.items():
        cells = (f"{row[m]:>10.{0 if m == 'n' else 3}f}" if m in row else f"{'-':>10}" for m in metrics)
        lines.append(f"{variant:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
