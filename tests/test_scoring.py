"""Variant scoring against independent computations (numpy, sklearn) for both heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from evaluation.metrics import ALEXNET_C_ERROR, ALEXNET_CLEAN_ERROR, IMAGENET_C_CORRUPTIONS
from evaluation.scoring import SourceOutput, corruption_scores, score_suite
from evaluation.suite import C_NAMES, VAL, EvalSource, EvalSuite
from evaluation.variants import MINIVAL, VARIANTS
from train.data.folder import ImageFolderDataset
from train.heads import SigmoidHead, SoftmaxHead
from train.program import corruption_references

K = 12
SUBSET = torch.tensor([1, 4, 7, 9])
gen = torch.Generator().manual_seed(3)


def source(key: str, names: list[str], n: int, **extras: torch.Tensor) -> EvalSource:
    dataset = ImageFolderDataset([], transform=None)
    dataset.samples = [None] * n
    return EvalSource(key, dataset, [VARIANTS[v] for v in names], dict(extras))


def output(n: int, classes: int = K, target_range: int = K) -> SourceOutput:
    return SourceOutput(
        torch.randn(n, classes, generator=gen) * 2,
        torch.randint(0, target_range, (n,), generator=gen),
        torch.arange(n),
    )


def np_probs(head, logits: np.ndarray) -> np.ndarray:
    if isinstance(head, SigmoidHead):
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_ece(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if m.any():
            total += m.sum() / len(conf) * abs(correct[m].mean() - conf[m].mean())
    return total


@pytest.mark.parametrize("head", [SoftmaxHead(), SigmoidHead()])
def test_subset_variants_restrict_logits_and_use_the_heads_probabilities(head):
    val, a, r = output(90), output(40, target_range=len(SUBSET)), output(30, target_range=len(SUBSET))
    suite = EvalSuite(
        [source(VAL, ["imagenet"], 90), source("a", ["imagenet-a"], 40), source("r", ["imagenet-r"], 30)],
        {"imagenet-a": SUBSET, "imagenet-r": SUBSET},
    )
    scores = score_suite(suite, {VAL: val, "a": a, "r": r}, head.probs)
    restricted = a.logits[:, SUBSET].double().numpy()
    probs = np_probs(head, restricted)
    correct = restricted.argmax(1) == a.target.numpy()
    assert scores["val/imagenet-a/top1"] == pytest.approx(100 * correct.mean())
    assert scores["val/imagenet-a/ece"] == pytest.approx(
        np_ece(probs.max(1), correct), abs=1e-6
    )  # float32 probs
    # NLL and Brier score a distribution over the classes: a sigmoid head's sigmoids normalised by their sum
    distribution = probs / probs.sum(1, keepdims=True)
    one_hot = np.eye(len(SUBSET))[a.target.numpy()]
    assert scores["val/imagenet-a/nll"] == pytest.approx(
        -np.log(distribution[np.arange(40), a.target.numpy()]).mean(), rel=1e-5
    )
    assert scores["val/imagenet-a/brier"] == pytest.approx(
        ((distribution - one_hot) ** 2).sum(1).mean(), rel=1e-5
    )
    # ImageNet-200: val images of R's classes, restricted to them; gap = clean - R
    keep = np.isin(val.target.numpy(), SUBSET.numpy())
    position = {c: i for i, c in enumerate(SUBSET.tolist())}
    clean = val.logits.numpy()[keep][:, SUBSET.numpy()].argmax(1) == np.array(
        [position[t] for t in val.target.numpy()[keep]]
    )
    assert scores["val/imagenet-r/clean_top1"] == pytest.approx(100 * clean.mean())
    assert scores["val/imagenet-r/gap"] == pytest.approx(
        scores["val/imagenet-r/clean_top1"] - scores["val/imagenet-r/top1"]
    )
    assert scores["val/imagenet/n"] == 90 and scores["val/imagenet-a/n"] == 40


@pytest.mark.parametrize("head", [SoftmaxHead(), SigmoidHead()])
def test_ood_against_val_images_of_the_same_classes(head):
    val, o = output(120), output(50, target_range=len(SUBSET))
    suite = EvalSuite(
        [source(VAL, ["imagenet"], 120), source("o", ["imagenet-o"], 50)], {"imagenet-o": SUBSET}
    )
    scores = score_suite(suite, {VAL: val, "o": o}, head.probs)
    keep = np.isin(val.target.numpy(), SUBSET.numpy())
    in_logits, out_logits = val.logits.double().numpy()[keep][:, SUBSET], o.logits.double().numpy()[:, SUBSET]
    labels = np.r_[np.zeros(len(in_logits)), np.ones(len(out_logits))]
    msp = -np.r_[np_probs(head, in_logits).max(1), np_probs(head, out_logits).max(1)]
    energy = -np.log(np.exp(np.r_[in_logits, out_logits]).sum(1))
    assert scores["val/imagenet-o/auroc"] == pytest.approx(roc_auc_score(labels, msp))
    assert scores["val/imagenet-o/aupr"] == pytest.approx(average_precision_score(labels, msp))
    assert scores["val/imagenet-o/energy/auroc"] == pytest.approx(roc_auc_score(labels, energy))
    assert scores["val/imagenet-o/n_in"] == keep.sum() and scores["val/imagenet-o/n"] == 50


def test_corruption_errors_mce_and_relative_mce_by_hand():
    per_cell = 6
    cells = [(c, s) for c in range(15) for s in range(1, 6)]
    corruption = torch.tensor([c for c, _ in cells for _ in range(per_cell)])
    severity = torch.tensor([s for _, s in cells for _ in range(per_cell)])
    c_out, val = output(len(corruption)), output(100)
    suite = EvalSuite(
        [
            source(VAL, ["imagenet"], 100),
            source("c", ["imagenet-c"], len(corruption), corruption=corruption, severity=severity),
        ],
        {},
    )
    scores = score_suite(suite, {VAL: val, "c": c_out}, SoftmaxHead().probs)
    wrong = (c_out.logits.argmax(1) != c_out.target).numpy()
    clean_err = (val.logits.argmax(1) != val.target).double().mean().item()
    ces, rels = [], []
    for c, name in enumerate(C_NAMES[:15]):
        errs = [wrong[(corruption.numpy() == c) & (severity.numpy() == s)].mean() for s in range(1, 6)]
        assert scores[f"val/imagenet-c/{name}/s3/err"] == pytest.approx(100 * errs[2])
        ces.append(100 * np.mean(errs) / ALEXNET_C_ERROR[name])
        rels.append(100 * (np.mean(errs) - clean_err) / (ALEXNET_C_ERROR[name] - ALEXNET_CLEAN_ERROR))
    assert list(C_NAMES[:15]) == list(IMAGENET_C_CORRUPTIONS)
    assert scores["val/imagenet-c/mce"] == pytest.approx(np.mean(ces))
    assert scores["val/imagenet-c/rel_mce"] == pytest.approx(np.mean(rels))
    assert scores["val/imagenet-c/noise/ce"] == pytest.approx(np.mean(ces[:3]))
    raw = score_suite(suite, {VAL: val, "c": c_out}, SoftmaxHead().probs, reference=None)
    assert raw["val/imagenet-c/mce"] == pytest.approx(100 * wrong.mean())  # equal cells: mean of means

    # fog without severity 5: its errors stay, its CE (a five-severity mean over AlexNet's) and the mCE go
    keep = ~((corruption == C_NAMES.index("fog")) & (severity == 5))
    partial = EvalSuite(
        [
            source(VAL, ["imagenet"], 100),
            source(
                "c", ["imagenet-c"], int(keep.sum()), corruption=corruption[keep], severity=severity[keep]
            ),
        ],
        {},
    )
    kept = SourceOutput(c_out.logits[keep], c_out.target[keep], torch.arange(int(keep.sum())))
    scores = score_suite(partial, {VAL: val, "c": kept}, SoftmaxHead().probs)
    assert scores["val/imagenet-c/fog/s4/err"] == pytest.approx(
        100 * errs_of(wrong, corruption, severity, C_NAMES.index("fog"), 4)
    )
    assert "val/imagenet-c/fog/ce" not in scores and "val/imagenet-c/fog/rel_ce" not in scores
    assert "val/imagenet-c/mce" not in scores and "val/imagenet-c/rel_mce" not in scores
    assert scores["val/imagenet-c/snow/ce"] == pytest.approx(ces[C_NAMES.index("snow")])


def errs_of(wrong: np.ndarray, corruption: torch.Tensor, severity: torch.Tensor, c: int, s: int) -> float:
    return wrong[(corruption.numpy() == c) & (severity.numpy() == s)].mean()


@pytest.mark.parametrize("head", [SoftmaxHead(), SigmoidHead()])
def test_real_label_sets_use_a_threshold_chosen_on_minival(head):
    val, minival = output(60), output(40)
    real = torch.full((60, 9), -1, dtype=torch.long)
    real[:, 0] = val.target
    real[::3, 1] = (val.target[::3] + 1) % K
    real[::10] = -1  # unlabelled images leave the scores
    suite = EvalSuite(
        [source(MINIVAL, [MINIVAL], 40), source(VAL, ["imagenet-real"], 60, real_labels=real)], {}
    )
    scores = score_suite(suite, {MINIVAL: minival, VAL: val}, head.probs)
    threshold = scores["val/imagenet-real/threshold"]
    mini_probs = np_probs(head, minival.logits.double().numpy())
    one_hot = np.eye(K, dtype=bool)[minival.target.numpy()]

    def f1_at(t: float) -> float:
        return precision_recall_fscore_support(one_hot, mini_probs >= t, average="samples", zero_division=0)[
            2
        ]

    grid = np.round(np.arange(1, 100) / 100, 2)
    assert f1_at(threshold) == pytest.approx(max(f1_at(t) for t in grid))
    labelled = (real >= 0).any(1).numpy()
    multi_hot = np.zeros((60, K), bool)
    for i, row in enumerate(real.tolist()):
        multi_hot[i, [c for c in row if c >= 0]] = True
    probs = np_probs(head, val.logits.double().numpy())
    p, r, f, _ = precision_recall_fscore_support(
        multi_hot[labelled], probs[labelled] >= threshold, average="samples", zero_division=0
    )
    assert (
        scores["val/imagenet-real/set_precision"],
        scores["val/imagenet-real/set_recall"],
        scores["val/imagenet-real/set_f1"],
    ) == pytest.approx((p, r, f))
    top1 = val.logits.numpy().argmax(1)
    assert scores["val/imagenet-real/top1"] == pytest.approx(
        100 * np.mean([multi_hot[i, top1[i]] for i in np.where(labelled)[0]])
    )
    assert scores["val/imagenet-real/n"] == labelled.sum()


def test_a_reference_run_normalises_each_c_variant_by_its_own_errors(tmp_path):
    """eval.c_normaliser=run:<dir>: disk C by the run's disk C, generated C by its generated C."""
    metrics = {"val/imagenet/top1": 60.0}
    for name in IMAGENET_C_CORRUPTIONS:
        for s in range(1, 6):
            metrics[f"val/imagenet-c-gen/{name}/s{s}/err"] = 80.0
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    references = corruption_references(f"run:{tmp_path}")
    assert references["imagenet-c"].errors == {}  # that run scored no disk C: CE is not reported there
    n = 15 * 5 * 10
    wrong = torch.arange(n) % 10 < 8  # 80% wrong in every cell, like the reference
    corruption = torch.arange(n) // 50
    severity = (torch.arange(n) // 10) % 5 + 1
    scores = corruption_scores(wrong, corruption, severity, 0.4, references["imagenet-c-gen"])
    assert scores["mce"] == pytest.approx(100.0) and scores["rel_mce"] == pytest.approx(100.0)
    assert "mce" not in corruption_scores(wrong, corruption, severity, 0.4, references["imagenet-c"])
    (tmp_path / "metrics.json").write_text(json.dumps({"val/imagenet/top1": 60.0}))
    with pytest.raises(ValueError, match="that run scored no ImageNet-C errors"):
        corruption_references(f"run:{tmp_path}")
