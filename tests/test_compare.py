"""``python -m evaluation.compare`` over a real 2 heads x 2 seeds grid of tiny trainings (one Hydra
multirun, W&B offline without key or network): the offline W&B runs hold the final scores, group
and tags; the report's diffs, means and stds equal numpy's on the runs' metrics.json values; the
bootstrap intervals equal a direct numpy computation on the saved logits; a resumed run's offline
W&B folders are merged and keep the sweep's group; bad input stops with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, cli_env, run_train
from test_train import leet_summary

from evaluation.compare.bootstrap import bootstrap_difference, paired_correct, resample_indices
from evaluation.compare.sources import load_runs, offline_folders

EXPERIMENTS = ("softmax_baseline", "sigmoid_baseline")
SEEDS = (0, 1)
CLEAN = (
    "minival",
    "imagenet",
    "imagenetv2-matched-frequency",
    "imagenetv2-threshold0.7",
    "imagenetv2-top-images",
)


def run_compare(args: list[str], cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    """``python -m evaluation.compare <args>`` as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "evaluation.compare", *args],
        cwd=cwd,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, bench_root: Path, cache_dir: Path) -> Path:
    """``python -m train -m experiment=softmax_baseline,sigmoid_baseline seed=0,1`` (tiny, clean variants)."""
    tmp = tmp_path_factory.mktemp("compare")
    folder = tmp / "grid_heads"
    run_train(
        [
            "-m",
            f"experiment={','.join(EXPERIMENTS)}",
            f"seed={','.join(map(str, SEEDS))}",
            *TINY,
            f"data.root={bench_root}",
            "eval=clean",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={folder}",
            "hydra.sweep.subdir=${experiment}_seed${seed}",
        ],
        tmp,
        cache_dir,
    )
    return folder


def metrics(sweep: Path, experiment: str, seed: int) -> dict:
    return json.loads((sweep / f"{experiment}_seed{seed}" / "metrics.json").read_text())


def test_offline_wandb_run_holds_final_scores_group_and_tags(sweep: Path, cache_dir: Path):
    run_dir = sweep / "sigmoid_baseline_seed1"
    scores = metrics(sweep, "sigmoid_baseline", 1)
    record = leet_summary(run_dir, cache_dir)
    summary = record["summary"]
    scored = [v for v in CLEAN if f"val/{v}/top1" in scores]
    assert len(scored) == len(CLEAN)
    for variant in scored[1:]:  # the final weights' value, as in metrics.json
        assert summary[f"val/{variant}/top1"] == pytest.approx(scores[f"val/{variant}/top1"])
    minival = summary["val/minival/top1"]  # minival keeps last and best (define_metric, registry: max)
    assert minival["last"] == pytest.approx(scores["val/minival/top1"]) and minival["max"] >= minival["last"]
    assert summary["val/minival/nll"]["min"] <= summary["val/minival/nll"]["last"]  # registry: min
    assert {"head:sigmoid", "augment:none", "seed:1", "model:test_resnet", "sigmoid_baseline"} <= set(
        record["tags"]
    )
    assert record["config"]["head"] == "sigmoid" and record["config"]["augment"] == "none"
    assert record["run_id"] == (run_dir / "wandb_run_id.txt").read_text().strip()
    assert summary["final/variants"]["nrows"] == len(scored) + 1  # + imagenet-real (no top1 column needed)

    # the compare command's offline W&B reader: group (= sweep folder) from the run record, same scores
    (run,) = load_runs([str(run_dir / "wandb")])
    assert run.group == sweep.name and run.experiment == "sigmoid_baseline" and run.seed == 1
    assert run.metrics["val/imagenet/top1"] == pytest.approx(scores["val/imagenet/top1"])
    assert run.metrics["val/minival/top1"] == pytest.approx(scores["val/minival/top1"])
    assert len(offline_folders(run_dir / "wandb")) == 1


def test_report_diffs_and_seed_statistics_equal_numpy(sweep: Path, tmp_path: Path, cache_dir: Path):
    out = tmp_path / "per_run"
    proc = run_compare(
        [str(sweep), "--baseline", "softmax_baseline", "--rows", "run", "--out", str(out)],
        tmp_path,
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out / "comparison.csv", index_col="run")
    keys = [c for c in table.columns if c.startswith("val/") and not c.endswith((" diff", " std"))]
    assert "val/imagenet/top1" in keys and "val/minival/top1" in keys
    for experiment in EXPERIMENTS:
        for seed in SEEDS:
            row, own, base = (
                table.loc[f"{experiment}_seed{seed}"],
                metrics(sweep, experiment, seed),
                metrics(sweep, "softmax_baseline", seed),
            )
            for key in keys:
                assert row[key] == pytest.approx(own[key])
                assert row[f"{key} diff"] == pytest.approx(own[key] - base[key], abs=1e-9)
                if experiment == "softmax_baseline":
                    assert row[f"{key} diff"] == 0.0
    assert "| softmax_baseline_seed1 | softmax | none | 1 | " in (out / "comparison.md").read_text()

    out = tmp_path / "per_experiment"
    proc = run_compare([str(sweep), "--baseline", "softmax_baseline", "--out", str(out)], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out / "comparison.csv", index_col="experiment")
    assert list(table["n_seeds"]) == [2, 2]
    for key in keys:
        values = {e: np.array([metrics(sweep, e, s)[key] for s in SEEDS]) for e in EXPERIMENTS}
        for experiment in EXPERIMENTS:
            assert table.loc[experiment, key] == pytest.approx(np.mean(values[experiment]))
            assert table.loc[experiment, f"{key} std"] == pytest.approx(
                np.std(values[experiment], ddof=1), abs=1e-9
            )
            diff = np.mean(values[experiment]) - np.mean(values["softmax_baseline"])
            assert table.loc[experiment, f"{key} diff"] == pytest.approx(diff, abs=1e-9)
    report = (out / "comparison.md").read_text()
    assert "± " in report and "## Paired differences" in report
    for chart in ("compare_top1.png", "compare_reliability.png", "compare_effective_robustness.png"):
        assert (out / "img" / chart).stat().st_size > 10_000 and f"img/{chart}" in report


def correct_by_index(path: Path) -> dict[int, bool]:
    """Per-image top-1 correctness of a logits file, computed here with numpy."""
    data = np.load(path)
    return dict(
        zip(data["index"].tolist(), (data["logits"].argmax(1) == data["target"]).tolist(), strict=True)
    )


def test_bootstrap_intervals_equal_numpy_on_saved_logits(sweep: Path, tmp_path: Path, cache_dir: Path):
    out = tmp_path / "report"
    proc = run_compare([str(sweep), "--baseline", "softmax_baseline", "--out", str(out)], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    differences = pd.read_csv(out / "differences.csv")
    heads = differences[differences.comparison == "head: sigmoid - softmax"]
    assert set(heads.seed) == set(SEEDS) and set(CLEAN) <= set(heads.variant)
    for _, row in heads[heads.variant.isin(CLEAN)].iterrows():
        ref = sweep / f"softmax_baseline_seed{row.seed}" / "logits" / f"{row.variant}.npz"
        other = sweep / f"sigmoid_baseline_seed{row.seed}" / "logits" / f"{row.variant}.npz"
        a, b = correct_by_index(ref), correct_by_index(other)
        order = sorted(a)
        ca, cb = np.array([a[i] for i in order]), np.array([b[i] for i in order])
        # the point estimate is the difference of the runs' own (torch-scored) top-1
        expected = (
            metrics(sweep, "sigmoid_baseline", row.seed)[f"val/{row.variant}/top1"]
            - metrics(sweep, "softmax_baseline", row.seed)[f"val/{row.variant}/top1"]
        )
        assert row["diff"] == pytest.approx(expected, abs=1e-6) and row.n_images == len(order)
        idx = resample_indices(len(order), 1000, 0)
        low, high = np.percentile(100 * (cb[idx].mean(1) - ca[idx].mean(1)), [2.5, 97.5])
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high))
    same = paired_correct(ref, ref)
    assert bootstrap_difference(*same) == (0.0, 0.0, 0.0)  # identical runs: exactly [0, 0]
    report = (out / "comparison.md").read_text()
    assert "head: sigmoid - softmax (augment=none)" in report and "(2 seeds)" in report


def test_bad_input_stops_with_one_line(sweep: Path, tmp_path: Path, cache_dir: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        (str(empty),): "is not a run directory",
        (str(sweep), "--baseline", "nosuch"): "--baseline nosuch is unknown",
        (str(sweep), "--metrics", "nosuch"): "no metric among nosuch",
        (str(sweep / "softmax_baseline_seed0" / "metrics.json"),): "is not a folder",
    }
    for args, message in cases.items():
        proc = run_compare([*args, "--out", str(tmp_path / "out")], tmp_path, cache_dir)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1


def test_resumed_offline_run_folders_are_merged(sweep: Path, tmp_path: Path, cache_dir: Path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(sweep / "softmax_baseline_seed0", run_dir)
    run_train([f"resume={run_dir}", "trainer.max_epochs=2"], tmp_path, cache_dir)
    by_id = offline_folders(run_dir / "wandb")
    assert len(by_id) == 1 and len(next(iter(by_id.values()))) == 2  # one id, two offline-run folders
    (run,) = load_runs([str(run_dir / "wandb")])
    scores = json.loads((run_dir / "metrics.json").read_text())  # the resumed run's final scores
    for key in ("val/imagenet/top1", "val/minival/top1", "val/imagenetv2-top-images/top1"):
        assert run.metrics[key] == pytest.approx(scores[key])
    assert run.experiment == "softmax_baseline" and run.seed == 0
    assert run.group == "grid_heads"  # the resumed sweep job stays in its sweep's W&B group
