"""The per-variant score table printed and saved at the end of a run."""

from __future__ import annotations

from collections import defaultdict


def format_table(results: dict[str, float]) -> str:
    """``{"val/<variant>/<metric>": value}`` -> a fixed-width table, one row per variant."""
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in results.items():
        _, variant, metric = key.split("/", 2)
        rows[variant][metric] = value
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    width = max([len("variant"), *map(len, rows)])
    lines = [f"{'variant':<{width}}  " + "  ".join(f"{m:>9}" for m in metrics)]
    for variant, row in rows.items():
        cells = (f"{row[m]:>9.{0 if m == 'n' else 3}f}" if m in row else f"{'-':>9}" for m in metrics)
        lines.append(f"{variant:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
