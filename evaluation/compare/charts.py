"""PNG charts of a comparison (also used for a single run's W&B report): grouped bars per variant,
per-corruption CE bars, the effective-robustness scatter, overlaid ImageNet-O confidence
histograms per head, and reliability diagrams per run group."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from evaluation.compare.sources import Run
from evaluation.plots import CONFIDENCE_BINS, reliability_figure
from evaluation.suite import C_NAMES
from evaluation.variants import VARIANTS
from train.heads import create_head

IN_DISTRIBUTION = ("minival", "imagenet", "imagenet-real")  # the x axis of effective robustness
VAL_TOP1 = "val/imagenet/top1"
DPI = 80


def save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as PNG (folders created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def grouped_bars(frame: pd.DataFrame, keys: Sequence[str], ylabel: str, title: str, path: Path) -> Path:
    """One group of bars per key (x axis), one bar per row of ``frame`` (its index is the legend),
    with ``<key> std`` as error bars where the frame has it (the title then says what they are)."""
    labels = [k.split("/")[-2] if k.count("/") >= 2 else k for k in keys]
    width = 0.8 / max(1, len(frame))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(keys) * max(1, len(frame)) ** 0.5 + 2), 4))
    x = np.arange(len(keys))
    with_errors = False
    for i, (name, row) in enumerate(frame.iterrows()):
        errors = [row.get(f"{k} std", np.nan) for k in keys]
        errors = None if np.all(np.isnan(errors)) else np.nan_to_num(errors)
        with_errors |= errors is not None
        ax.bar(
            x + (i - (len(frame) - 1) / 2) * width,
            [row[k] for k in keys],
            width,
            yerr=errors,
            label=str(name),
        )
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    ax.set(
        ylabel=ylabel,
        title=f"{title}\nbars: mean over seeds, error bars: ± sample std" if with_errors else title,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def corruption_keys(metrics: dict[str, float]) -> list[str]:
    """``val/imagenet-c/<corruption>/ce`` keys present, in ImageNet-C's order."""
    return [f"val/imagenet-c/{c}/ce" for c in C_NAMES if f"val/imagenet-c/{c}/ce" in metrics]


def robustness_points(runs: Sequence[Run]) -> pd.DataFrame:
    """Rows (experiment, run, variant, clean top-1, variant top-1) for every shifted variant's top-1; the
    clean top-1 is val's, or for the class subsets (A, R) that of val images of their classes, scored over
    the same classes (``clean_top1``): their chance level differs from val's."""
    rows = []
    for run in runs:
        if VAL_TOP1 not in run.metrics:
            continue
        for key, value in run.metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "top1" and parts[1] not in IN_DISTRIBUTION:
                rows.append(
                    {
                        "experiment": run.experiment,
                        "run": run.name,
                        "variant": parts[1],
                        "val_top1": run.metrics.get(f"val/{parts[1]}/clean_top1", run.metrics[VAL_TOP1]),
                        "top1": value,
                    }
                )
    return pd.DataFrame(rows)


def effective_robustness(points: pd.DataFrame, path: Path) -> Path:
    """Each shifted variant's top-1 against val top-1: one point per run and variant (colour:
    variant, marker: experiment) and the line y = x of no drop."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = dict(zip(points["experiment"].unique(), "osD^vP*X", strict=False))
    palette = plt.cm.tab20.colors  # one colour per variant, the same in every chart
    colours = {
        v: palette[list(VARIANTS).index(v) % len(palette)]
        for v in sorted(points["variant"].unique(), key=list(VARIANTS).index)
    }
    for (experiment, variant), part in points.groupby(["experiment", "variant"], sort=False):
        ax.scatter(
            part["val_top1"], part["top1"], marker=markers[experiment], color=colours[variant], s=40, alpha=0.75,
            edgecolors="black", linewidths=0.4,
        )  # fmt: skip
    low = max(0.0, min(points["top1"].min(), points["val_top1"].min()) - 5)
    high = max(points["top1"].max(), points["val_top1"].max()) + 5
    ax.plot([low, high], [low, high], "--", color="grey", lw=1)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=v) for v, c in colours.items()]
    handles += [plt.Line2D([], [], ls="", marker=m, color="black", label=e) for e, m in markers.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set(
        xlabel="clean top-1 % (val; for A and R: val images of their classes)",
        ylabel="shifted variant top-1 %",
        title="effective robustness (dashed: no drop)",
    )
    ax.grid(alpha=0.3)
    return save(fig, path)


def confidences(run: Run, variant: str) -> dict[str, np.ndarray]:
    """The head's max probability per image of a run's logits file: ``{"all": [N]}``, or for
    ImageNet-O ``{"in": [N_in], "out": [N_out]}`` over O's classes."""
    with np.load(run.logits_file(variant)) as data:
        logits = torch.from_numpy(data["logits"])
        if "class_indices" in data:
            logits = logits[:, torch.from_numpy(data["class_indices"])]
        confidence = create_head(run.head).confidence(logits).numpy()
        if "in_distribution" in data:
            inside = data["in_distribution"]
            return {"in": confidence[inside], "out": confidence[~inside]}
        return {"all": confidence}


def ood_confidence(runs: Sequence[Run], path: Path) -> Path | None:
    """Overlaid histograms of the max probability on ImageNet-O images (solid) and on the val images
    of its classes (dashed), one colour per head, one panel per augmentation; seeds pooled."""
    runs = [r for r in runs if r.logits_file("imagenet-o") is not None]
    if not runs:
        return None
    augments = list(dict.fromkeys(r.augment for r in runs))
    fig, axes = plt.subplots(1, len(augments), figsize=(4.5 * len(augments), 3.6), squeeze=False)
    bins = CONFIDENCE_BINS
    for ax, augment in zip(axes.flat, augments, strict=True):
        for colour, head in zip(
            ("tab:blue", "tab:orange", "tab:green"), sorted({r.head for r in runs}), strict=False
        ):
            parts = [confidences(r, "imagenet-o") for r in runs if r.head == head and r.augment == augment]
            if not parts:
                continue
            for side, style in (("out", "-"), ("in", "--")):
                values = np.concatenate([p[side] for p in parts])
                label = f"{head}: {'ImageNet-O' if side == 'out' else 'val'} (n={len(values)})"
                ax.hist(
                    values.clip(bins[0], 1),
                    bins=bins,
                    density=True,
                    histtype="step",
                    ls=style,
                    lw=1.6,
                    color=colour,
                    label=label,
                )
        ax.set_xscale("log")  # a sigmoid head's maxima sit far below a softmax head's
        ax.set(
            xlabel="max probability of the head (log scale)",
            ylabel="density",
            title=f"ImageNet-O, augment={augment} (seeds pooled)",
        )
        ax.legend(fontsize=7)
    return save(fig, path)


def reliability_by_experiment(runs: Sequence[Run], path: Path, variant: str = "imagenet") -> Path | None:
    """One reliability diagram per experiment on ``variant`` (its runs' images pooled)."""
    panels = {}
    for experiment in dict.fromkeys(r.experiment for r in runs):
        parts = [r for r in runs if r.experiment == experiment and r.logits_file(variant) is not None]
        if not parts:
            continue
        confidence, correct = [], []
        for run in parts:
            with np.load(run.logits_file(variant)) as data:
                logits, target = torch.from_numpy(data["logits"]), torch.from_numpy(data["target"])
            confidence.append(create_head(run.head).confidence(logits))
            correct.append(logits.argmax(1) == target)
        panels[experiment] = (torch.cat(confidence), torch.cat(correct))
    if not panels:
        return None
    fig = reliability_figure(panels, f"reliability on {variant} (seeds pooled; numbers: images per bin)")
    return save(fig, path)
