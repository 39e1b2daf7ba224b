"""``python -m evaluation.compare`` over a real 2 heads x 2 seeds grid of tiny trainings (one Hydra
multirun, W&B offline without key or network): the offline W&B runs hold the final scores, group
and tags; the report's diffs, means and stds equal numpy's on the runs' metrics.json values; the
bootstrap intervals equal a direct numpy computation on the saved logits; a resumed run's offline
W&B folders are merged and keep the sweep's group; W&B runs of one name and duplicate sources stay
apart or count once; folders that are not finished training runs are left out with a warning; bad
input stops with one line."""

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
from omegaconf import OmegaConf
from scipy import stats
from test_train import leet_summary

from evaluation.compare.__main__ import main as compare_main
from evaluation.compare.bootstrap import bootstrap_difference, paired_correct, resample_indices, summarise
from evaluation.compare.report import difference_cell, write_report
from evaluation.compare.sources import Run, SourceError, load_runs, offline_folders
from evaluation.compare.table import ID_COLUMNS, add_diffs, baseline_rows, metric_columns, runs_frame
from evaluation.config import EvaluateConfig

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
    n_val = int(metrics(sweep, "softmax_baseline", 0)["val/imagenet/n"])
    assert f", imagenet {n_val}," in report.split("Images scored per variant", 1)[1].splitlines()[0]
    assert "| model | image size | batch | epochs | batches per epoch |" in report
    for _, row in summarise(differences).iterrows():  # several seeds: Student's t over the seeds' differences
        diffs = differences[
            (differences.comparison == row.comparison) & (differences["with"] == row["with"])
            & (differences.variant == row.variant)
        ]["diff"]  # fmt: skip
        sem = stats.sem(diffs)  # 0 when the seeds agree: scipy then gives nan, the interval is the point
        low, high = (
            stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=sem)
            if sem
            else (diffs.mean(),) * 2
        )
        assert row.n_seeds == len(SEEDS) and (row.ci_low, row.ci_high) == pytest.approx((low, high))


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
    (separately,) = load_runs([str(f) for f in sorted((run_dir / "wandb").glob("offline-run-*"))])
    assert separately.metrics == run.metrics  # its folders named one by one: still one run, merged


def copy_run(run_dir: Path, to: Path, seed: int | None = None) -> Path:
    """The files compare reads of a finished run (config.yaml, metrics.json), optionally as another seed."""
    to.mkdir(parents=True)
    config = OmegaConf.load(run_dir / "config.yaml")
    config.seed = config.seed if seed is None else seed
    OmegaConf.save(config, to / "config.yaml")
    shutil.copy(run_dir / "metrics.json", to / "metrics.json")
    return to


def compare_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning lines of the compare package."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("evaluation.compare")]


def test_same_named_wandb_runs_get_unique_names(sweep: Path, tmp_path: Path):
    runs = load_runs([str(f) for f in sorted(sweep.glob("*/wandb/offline-run-*"))])
    run_ids = {
        f"{e}-{(sweep / f'{e}_seed{s}' / 'wandb_run_id.txt').read_text().strip()}"
        for e in EXPERIMENTS
        for s in SEEDS
    }
    assert {r.name for r in runs} == run_ids  # W&B names runs after their experiment: qualified by run id
    report = write_report(runs, tmp_path / "out", "softmax_baseline", "run", ["top1"], resamples=10)
    table = pd.read_csv(report.parent / "comparison.csv", index_col="run")
    for run in runs:
        own, base = metrics(sweep, run.experiment, run.seed), metrics(sweep, "softmax_baseline", run.seed)
        key = "val/imagenet/top1"
        assert table.loc[run.name, key] == pytest.approx(own[key])
        assert table.loc[run.name, f"{key} diff"] == pytest.approx(own[key] - base[key], abs=1e-9)


def test_evaluation_output_folder_is_left_out(sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    run_dir = copy_run(sweep / "softmax_baseline_seed0", tmp_path / "run")
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    conf = OmegaConf.structured(EvaluateConfig(checkpoint=str(run_dir / "checkpoints" / "last.ckpt")))
    OmegaConf.save(conf, evaluation / "config.yaml")  # as `python -m evaluation` writes it
    shutil.copy(run_dir / "metrics.json", evaluation / "metrics.json")
    (run,) = load_runs([str(evaluation), str(run_dir)])
    assert run.run_dir == run_dir.resolve() and run.experiment == "softmax_baseline"
    (warning,) = compare_warnings(caplog)
    assert str(evaluation) in warning and "python -m evaluation" in warning
    with pytest.raises(SourceError, match="python -m evaluation` output folder"):
        load_runs([str(evaluation)])


def test_duplicate_sources_count_once_and_repeated_seeds_warn(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    run_dir = copy_run(sweep / "softmax_baseline_seed0", tmp_path / "soft")
    rerun = copy_run(sweep / "softmax_baseline_seed1", tmp_path / "soft_rerun", seed=0)
    monkeypatch.chdir(tmp_path)
    (run,) = load_runs(["soft", "soft", str(run_dir), "./soft/"])
    assert run.name == "soft" and run.run_dir == run_dir.resolve()
    report = write_report(load_runs(["soft", "soft_rerun"]), tmp_path / "out", resamples=10)
    (warning,) = compare_warnings(caplog)
    assert "softmax_baseline seed 0 x2" in warning
    table = pd.read_csv(report.parent / "comparison.csv", index_col="experiment")
    assert table.loc["softmax_baseline", "n_seeds"] == 2 and rerun.name in report.read_text()


def test_qualified_and_corruption_metric_names():
    def run(name: str, experiment: str, base: float) -> Run:
        keys = ("imagenet-o/auroc", "imagenet-o/max_logit/auroc", "imagenet-c/snow/ce", "imagenet-c/fog/ce")
        scores = {f"val/{k}": base + i for i, k in enumerate(keys)} | {"val/imagenet/top1": base}
        return Run(name, experiment, "softmax", "none", "test_resnet", 0, scores)

    runs = [run("a", "softmax_baseline", 0.0), run("b", "sigmoid_baseline", 10.0)]
    assert metric_columns(runs, ["max_logit/auroc"]) == ["val/imagenet-o/max_logit/auroc"]
    assert metric_columns(runs, ["auroc"]) == ["val/imagenet-o/auroc"]  # not its qualified kin
    assert metric_columns(runs, ["ce", "top1"]) == [
        "val/imagenet/top1",
        "val/imagenet-c/fog/ce",
        "val/imagenet-c/snow/ce",
    ]
    frame = runs_frame(runs, metric_columns(runs, ["max_logit/auroc", "ce"]))
    diffs = add_diffs(frame, baseline_rows(frame, "a", False), list(frame.columns[len(ID_COLUMNS) :]))
    assert list(diffs["val/imagenet-c/fog/ce diff"]) == [0.0, 10.0]
    assert list(diffs["val/imagenet-o/max_logit/auroc"]) == [1.0, 11.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resamples", "0"], "--resamples 0: give 1 or more"),
        (["--resamples", "-5"], "--resamples -5: give 1 or more"),
        (["--out", "afile"], "--out afile is a file; give a folder"),
    ],
)
def test_bad_options_stop_with_one_line(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    assert compare_main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_crashed_job_in_sweep_folder_is_left_out(
    sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    folder = tmp_path / "sweep"
    for experiment in EXPERIMENTS:
        copy_run(sweep / f"{experiment}_seed0", folder / experiment)
    crashed = folder / "crashed"
    crashed.mkdir()
    shutil.copy(sweep / "softmax_baseline_seed1" / "config.yaml", crashed / "config.yaml")
    runs = load_runs([str(folder)])
    assert sorted(r.name for r in runs) == sorted(EXPERIMENTS)
    (warning,) = compare_warnings(caplog)
    assert str(crashed) in warning and "not a finished" in warning and "left out" in warning
    with pytest.raises(SourceError, match="crashed is not a finished"):
        load_runs([str(crashed)])


def test_single_run_warns_nothing_to_compare(sweep: Path, tmp_path: Path, cache_dir: Path):
    only = copy_run(sweep / "sigmoid_baseline_seed1", tmp_path / "only")
    proc = run_compare([str(only), "--out", str(tmp_path / "out"), "--resamples", "10"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: only one run (only): nothing to compare it with, every difference is 0"
    ]
    assert "1 runs" in (tmp_path / "out" / "comparison.md").read_text()


def test_one_experiment_name_over_two_heads_is_split(
    sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """`python -m train -m head=softmax,sigmoid` names both runs after one experiment: not two seeds of it."""
    softmax = copy_run(sweep / "softmax_baseline_seed0", tmp_path / "a")
    sigmoid = copy_run(sweep / "sigmoid_baseline_seed0", tmp_path / "b")
    config = OmegaConf.load(sigmoid / "config.yaml")
    config.experiment = "softmax_baseline"  # as the swept head override leaves it
    OmegaConf.save(config, sigmoid / "config.yaml")
    runs = load_runs([str(softmax), str(sigmoid)])
    assert [r.experiment for r in runs] == [
        "softmax_baseline[head=softmax]",
        "softmax_baseline[head=sigmoid]",
    ]
    (warning,) = compare_warnings(caplog)
    assert warning.startswith("experiment softmax_baseline holds runs that trained differently (head")
    report = write_report(runs, tmp_path / "out", resamples=10)
    assert "softmax_baseline[head=sigmoid]" in report.read_text()


def test_imagenet_c_copies_of_one_image_are_resampled_together(tmp_path: Path):
    """75 corrupted copies of a clean image are not 75 independent draws: the bootstrap resamples clean images
    (the saved source_image ids), each with all its copies."""
    rng = np.random.default_rng(1)
    n_clean, copies = 12, 75
    unit = np.repeat(np.arange(n_clean), copies)
    ref = rng.uniform(size=unit.size) < 0.5
    other = ref | np.repeat(rng.uniform(size=n_clean) < 0.3, copies)  # gains come by clean image
    for name, correct in (("ref", ref), ("other", other)):
        logits = np.where(correct[:, None], np.eye(2)[[0]], np.eye(2)[[1]]).astype(np.float32)
        extra = {"corruption": unit % 15, "severity": unit % 5 + 1, "source_image": unit}
        np.savez(tmp_path / f"{name}.npz", logits=logits, target=np.zeros(unit.size, np.int64),
                 index=np.arange(unit.size), **extra)  # fmt: skip
    pair = paired_correct(tmp_path / "ref.npz", tmp_path / "other.npz")
    diff, low, high = bootstrap_difference(*pair, resamples=500, seed=3)
    idx = resample_indices(n_clean, 500, 3)  # by hand: draw clean images, pool all their copies
    draws = []
    for row in idx:
        rows = np.concatenate([np.flatnonzero(unit == u) for u in row])
        draws.append(100 * (other[rows].mean() - ref[rows].mean()))
    assert diff == pytest.approx(100 * (other.mean() - ref.mean()))
    assert (low, high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    naive = bootstrap_difference(ref, other, resamples=500, seed=3)  # every file its own draw
    assert high - low > 2 * (naive[2] - naive[1])


def test_runs_of_one_experiment_trained_at_other_settings_are_not_averaged_as_seeds(
    sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A softmax_baseline run at another image size is not a third seed of softmax_baseline."""
    same = [copy_run(sweep / f"softmax_baseline_seed{s}", tmp_path / f"s{s}") for s in SEEDS]
    other = copy_run(sweep / "softmax_baseline_seed0", tmp_path / "big", seed=5)
    config = OmegaConf.load(other / "config.yaml")
    config.data.image_size = 48
    OmegaConf.save(config, other / "config.yaml")
    for i, run_dir in enumerate(same):  # how the augmentation ran, not what was trained
        config = OmegaConf.load(run_dir / "config.yaml")
        config.augment.fused_cpu = i == 0
        OmegaConf.save(config, run_dir / "config.yaml")
    runs = load_runs([str(p) for p in same])
    assert {r.experiment for r in runs} == {"softmax_baseline"}  # seeds and fused_cpu alone do not split
    assert not compare_warnings(caplog)
    runs = load_runs([*map(str, same), str(other)])
    assert [r.experiment for r in runs] == [
        "softmax_baseline[data.image_size=32]", "softmax_baseline[data.image_size=32]", "softmax_baseline[data.image_size=48]"
    ]  # fmt: skip
    (warning,) = compare_warnings(caplog)
    assert "trained differently (data.image_size)" in warning


def test_difference_cells_bold_only_intervals_that_exclude_zero():
    def cell(mean, low, high, n, std=1.0):
        return difference_cell(
            pd.Series({"mean": mean, "ci_low": low, "ci_high": high, "n_seeds": n, "std": std})
        )

    assert cell(-2.0, -3.0, -1.0, 1) == "**-2.00 [-3.00, -1.00]**"
    assert cell(-2.0, -3.0, +1.0, 3) == "-2.00 [-3.00, +1.00] (3 seeds)"
    assert (
        cell(-3.5, -3.5, -3.5, 2, std=0.0) == "-3.50 (2 seeds, all equal)"
    )  # a zero-width interval proves nothing
