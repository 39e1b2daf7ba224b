"""evaluation.metrics and evaluation.registry against independent computations (timm, sklearn, numpy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import rankdata
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from timm.data import RealLabelsImagenet
from timm.utils import accuracy as timm_accuracy

from evaluation import metrics as M
from evaluation.registry import METRICS, is_better, metric_spec


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tied_logits(n: int, k: int, seed: int) -> torch.Tensor:
    """Logits with many ties: integers 0..3."""
    return torch.randint(0, 4, (n, k), generator=_generator(seed)).float()


def _probs(head: str, n: int, k: int, seed: int) -> torch.Tensor:
    logits = 3 * torch.randn(n, k, generator=_generator(seed))
    return logits.softmax(1) if head == "softmax" else (logits - 2).sigmoid()


def _label_sets(n: int, k: int, seed: int) -> list[list[int]]:
    """Random label sets of 0..3 classes; about a quarter are empty."""
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(k, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(n)]


def _padded(sets: list[list[int]], width: int = 9) -> torch.Tensor:
    return torch.tensor([s + [-1] * (width - len(s)) for s in sets], dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# top-k and ReaL


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_matches_timm_with_ties(seed):
    logits = _tied_logits(300, 10, seed)
    target = torch.randint(0, 10, (300,), generator=_generator(seed + 10))
    correct = M.topk_correct(logits, target, ks=(1, 5))
    expected = timm_accuracy(logits, target, topk=(1, 5))
    # timm sums in float32; one image is 1/3 %
    assert M.accuracy(correct[1]) == pytest.approx(expected[0].item(), rel=1e-6)
    assert M.accuracy(correct[5]) == pytest.approx(expected[1].item(), rel=1e-6)


def test_topk_unlabelled_rows_are_never_correct_and_can_be_masked():
    logits = torch.randn(50, 7, generator=_generator(2))
    target = torch.randint(0, 7, (50,), generator=_generator(3))
    target[::4] = -1
    correct = M.topk_correct(logits, target, ks=(1, 7))
    assert not correct[7][target < 0].any()
    assert correct[7][target >= 0].all()
    keep = target >= 0
    expected = timm_accuracy(logits[keep], target[keep], topk=(1,))[0].item()
    assert M.accuracy(correct[1], keep) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_real_topk_matches_timm_real_labels(tmp_path, seed):
    n, k = 240, 12
    sets = _label_sets(n, k, seed)
    path = tmp_path / "real.json"
    path.write_text(json.dumps(sets))
    files = [f"some/dir/ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(n)]
    logits = _tied_logits(n, k, seed + 20)
    reference = RealLabelsImagenet(files, real_json=str(path), topk=(1, 5))
    for batch in logits.split(64):
        reference.add_result(batch)

    correct, scored = M.real_topk_correct(logits, _padded(sets), ks=(1, 5))
    assert scored.tolist() == [bool(s) for s in sets]
    for kk in (1, 5):
        assert M.accuracy(correct[kk], scored) == pytest.approx(reference.get_accuracy(kk), abs=1e-9)


def test_real_multi_hot():
    sets = _label_sets(40, 6, 4)
    hot = M.real_multi_hot(_padded(sets), 6)
    expected = [[c in s for c in range(6)] for s in sets]
    assert hot.tolist() == expected


# ----------------------------------------------------------------------------------------------
# label sets and mAP


def _multi_label_problem(head: str, seed: int, n: int = 200, k: int = 8):
    probs = _probs(head, n, k, seed)
    hot = M.real_multi_hot(_padded(_label_sets(n, k, seed + 1)), k)
    return probs, hot


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.9])
def test_label_set_scores_match_sklearn_samples_average(head, threshold):
    probs, hot = _multi_label_problem(head, 5)
    keep = hot.any(1).numpy()
    pred = (probs.numpy() >= threshold)[keep]
    p, r, f, _ = precision_recall_fscore_support(hot.numpy()[keep], pred, average="samples", zero_division=0)
    scores = M.label_set_scores(probs, hot, threshold)
    assert scores["set_precision"] == pytest.approx(p, abs=1e-12)
    assert scores["set_recall"] == pytest.approx(r, abs=1e-12)
    assert scores["set_f1"] == pytest.approx(f, abs=1e-12)


def test_label_set_scores_empty_prediction_scores_zero():
    probs = torch.tensor([[0.2, 0.1], [0.9, 0.1]])
    hot = torch.tensor([[True, False], [True, True]])
    # image 0 predicts nothing: 0 / 0 / 0; image 1 predicts {0}: P 1, R 1/2, F1 2/3
    scores = M.label_set_scores(probs, hot, 0.5)
    assert scores == pytest.approx({"set_precision": 0.5, "set_recall": 0.25, "set_f1": 1 / 3})


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_choose_threshold_maximises_sklearn_f1(head):
    probs, hot = _multi_label_problem(head, 6)
    keep = hot.any(1).numpy()
    grid = np.arange(1, 100) / 100
    f1 = [
        f1_score(hot.numpy()[keep], (probs.numpy() >= t)[keep], average="samples", zero_division=0)
        for t in grid
    ]
    assert M.choose_threshold(probs, hot) == pytest.approx(grid[int(np.argmax(f1))])
    custom = torch.tensor([0.1, 0.5, 0.7])
    best = max(custom.tolist(), key=lambda t: M.label_set_scores(probs, hot, t)["set_f1"])
    assert M.choose_threshold(probs, hot, custom) == pytest.approx(best)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_map_matches_sklearn_with_ties(head):
    probs, hot = _multi_label_problem(head, 7, n=150, k=11)
    probs = (probs * 20).round() / 20  # many tied scores
    hot[:, 3] = False  # a class without positives is left out
    keep = hot.any(1).numpy()
    y, s = hot.numpy()[keep], probs.numpy()[keep]
    expected = np.mean([average_precision_score(y[:, c], s[:, c]) for c in range(11) if y[:, c].any()])
    assert M.mean_average_precision(probs, hot) == pytest.approx(expected, abs=1e-12)
    assert M.mean_average_precision(probs, hot, chunk=3) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# calibration and selective prediction


def _calibration_problem(head: str, seed: int, n: int = 537, k: int = 10):
    probs = _probs(head, n, k, seed)
    target = torch.randint(0, k, (n,), generator=_generator(seed + 1))
    confidence, pred = probs.max(1)
    return probs, target, confidence, pred == target


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_nll_and_brier_match_numpy_loops(head):
    probs, target, _, _ = _calibration_problem(head, 8)
    p, y = probs.double().numpy(), target.numpy()
    nll = np.mean([-math.log(max(p[i, y[i]], 1e-12)) for i in range(len(y))])
    brier = np.mean([sum((p[i, c] - (c == y[i])) ** 2 for c in range(p.shape[1])) for i in range(len(y))])
    assert M.nll(probs, target) == pytest.approx(nll, rel=1e-12)
    assert M.brier_score(probs, target) == pytest.approx(brier, rel=1e-12)


def test_nll_clamps_zero_probability():
    probs = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert M.nll(probs, torch.tensor([0, 0])) == pytest.approx((-math.log(1e-12) - math.log(0.5)) / 2)


def _ece_loop(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    edges = np.arange(n_bins + 1) / n_bins
    total = 0.0
    for i in range(n_bins):
        inside = (conf > edges[i]) & (conf <= edges[i + 1])
        if i == 0:
            inside |= conf == 0
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


def _rms_loop(conf: np.ndarray, correct: np.ndarray, beta: int = 100) -> float:
    """The ImageNet-A reference ``calib_err`` (p='2'), with every bin used and a stable sort."""
    order = np.argsort(conf, kind="stable")
    conf, correct = conf[order], correct[order]
    bins = [[i * beta, (i + 1) * beta] for i in range(max(len(conf) // beta, 1))]
    bins[-1][1] = len(conf)
    total = 0.0
    for lo, hi in bins:
        total += (hi - lo) / len(conf) * (conf[lo:hi].mean() - correct[lo:hi].mean()) ** 2
    return math.sqrt(total)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_ece_rms_aurra_match_numpy_loops(head):
    _, _, confidence, correct = _calibration_problem(head, 9)
    conf, ok = confidence.double().numpy(), correct.numpy().astype(float)
    assert M.expected_calibration_error(confidence, correct) == pytest.approx(_ece_loop(conf, ok), abs=1e-12)
    assert M.rms_calibration_error(confidence, correct) == pytest.approx(_rms_loop(conf, ok), abs=1e-12)
    order = np.argsort(-conf, kind="stable")
    curve = [ok[order[:k]].mean() for k in range(1, len(ok) + 1)]
    assert M.aurra(confidence, correct) == pytest.approx(100 * np.mean(curve), abs=1e-9)


def test_ece_bin_edges_and_small_rms():
    # 0, 0.05 and 1/15 share the first bin (their gaps cancel partly), 1 falls in the last,
    # 2/15 + tiny opens the third
    confidence = torch.tensor([0.0, 0.05, 1 / 15, 2 / 15 + 1e-9, 1.0, 1.0, 0.5], dtype=torch.float64)
    correct = torch.tensor([False, False, True, True, True, False, True])
    conf, ok = confidence.numpy(), correct.numpy().astype(float)
    assert M.expected_calibration_error(confidence, correct) == pytest.approx(_ece_loop(conf, ok), abs=1e-15)
    # fewer than bin_size images form one bin: |mean conf - accuracy|
    assert M.rms_calibration_error(confidence, correct) == pytest.approx(abs(conf.mean() - ok.mean()))


def test_rms_uses_the_most_confident_bin():
    # 200 images: the least confident bin is perfectly calibrated, the most confident one is not
    confidence = torch.cat([torch.full((100,), 0.5), torch.full((100,), 0.9)])
    correct = torch.cat([torch.arange(100) % 2 == 0, torch.zeros(100, dtype=torch.bool)])
    assert M.rms_calibration_error(confidence, correct) == pytest.approx(math.sqrt(0.5 * 0.9**2))


# ----------------------------------------------------------------------------------------------
# out-of-distribution detection


def _ood_problem(seed: int, ties: bool):
    g = _generator(seed)
    in_scores, out_scores = torch.randn(400, generator=g), torch.randn(150, generator=g) + 0.8
    if ties:
        in_scores, out_scores = in_scores.round(), out_scores.round()
    return in_scores, out_scores


def _fpr_from_roc_curve(in_scores: np.ndarray, out_scores: np.ndarray, level: float = 0.95) -> float:
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    fpr, tpr, _ = roc_curve(labels, np.r_[in_scores, out_scores], drop_intermediate=False)
    fpr, tpr = fpr[1:], tpr[1:]  # drop sklearn's (0, 0) start point
    full = int(np.argmax(tpr == 1))
    candidates = np.abs(tpr[: full + 1] - level)
    pick = full - int(np.argmin(candidates[::-1]))  # the reference prefers the lowest threshold
    return float(fpr[pick])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_ood_metrics_match_sklearn(seed, ties):
    in_scores, out_scores = _ood_problem(seed, ties)
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores.numpy(), out_scores.numpy()]
    assert M.auroc(in_scores, out_scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.aupr(in_scores, out_scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    expected = _fpr_from_roc_curve(in_scores.numpy(), out_scores.numpy())
    assert M.fpr_at_tpr(in_scores, out_scores) == pytest.approx(expected, abs=1e-12)


def test_fpr_at_tpr_hand_example():
    # 20 anomalies at 1..20, in-distribution images at 0.5, 1.5, 2.5 and 30. Recall 19/20 holds at
    # thresholds 2 and 1.5; like the reference, the lower one counts: 3 of 4 in-distribution above.
    out_scores = torch.arange(1, 21).double()
    in_scores = torch.tensor([0.5, 1.5, 2.5, 30.0])
    assert M.fpr_at_tpr(in_scores, out_scores) == pytest.approx(3 / 4)
    assert M.fpr_at_tpr(in_scores, out_scores, tpr=0.9) == pytest.approx(2 / 4)  # threshold 2.5
    assert M.fpr_at_tpr(in_scores, out_scores, tpr=0.5) == pytest.approx(1 / 4)  # threshold 11
    assert M.fpr_at_tpr(in_scores, out_scores, tpr=1.0) == pytest.approx(3 / 4)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_ood_scores(head):
    logits = 4 * torch.randn(30, 9, generator=_generator(11))
    probs = logits.softmax(1) if head == "softmax" else logits.sigmoid()
    scores = M.ood_scores(logits, probs)
    x = logits.double().numpy()
    np.testing.assert_allclose(scores["msp"].numpy(), -probs.double().numpy().max(1))
    np.testing.assert_allclose(scores["max_logit"].numpy(), -x.max(1))
    np.testing.assert_allclose(scores["energy"].numpy(), -logsumexp(x, axis=1), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# ImageNet-C


def _c_errors(seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    names = M.IMAGENET_C_CORRUPTIONS + M.IMAGENET_C_EXTRA
    return {c: sorted(rng.uniform(0.3, 0.9, 5).tolist()) for c in names}


def test_mce_and_relative_mce_by_hand():
    errors, clean = _c_errors(12), 0.25
    alex = M.ALEXNET_C_ERROR
    ce = {c: 100 * sum(e) / (5 * alex[c]) for c, e in errors.items()}
    rel = {c: 100 * sum(x - clean for x in e) / sum(alex[c] - 0.4345 for _ in e) for c, e in errors.items()}
    assert M.ce_per_corruption(errors) == pytest.approx(ce)
    assert M.mce(M.ce_per_corruption(errors)) == pytest.approx(
        np.mean([ce[c] for c in M.IMAGENET_C_CORRUPTIONS])
    )
    got_rel = M.relative_ce_per_corruption(errors, clean)
    assert got_rel == pytest.approx(rel)
    assert M.mce(got_rel) == pytest.approx(np.mean([rel[c] for c in M.IMAGENET_C_CORRUPTIONS]))
    families = M.family_means(ce)
    assert families["blur"] == pytest.approx(
        np.mean([ce[c] for c in ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur")])
    )
    assert set(families) == {"noise", "blur", "weather", "digital"}


def test_ce_matches_published_alexnet_and_other_normalisers():
    # a model exactly as bad as AlexNet scores CE 100 everywhere
    as_alexnet = {c: [e] * 5 for c, e in M.ALEXNET_C_ERROR.items()}
    assert M.mce(M.ce_per_corruption(as_alexnet)) == pytest.approx(100.0)
    errors = _c_errors(13)
    raw = M.ce_per_corruption(errors, reference=None)
    assert raw["fog"] == pytest.approx(100 * np.mean(errors["fog"]))
    run = M.CorruptionReference({c: [x / 2 for x in e] for c, e in errors.items()}, clean_error=0.1)
    assert M.ce_per_corruption(errors, run)["snow"] == pytest.approx(200.0)
    rel = M.relative_ce_per_corruption(errors, 0.2, run)["snow"]
    assert rel == pytest.approx(
        100 * sum(x - 0.2 for x in errors["snow"]) / sum(x / 2 - 0.1 for x in errors["snow"])
    )


def test_mce_needs_every_corruption_or_an_explicit_subset():
    ce = M.ce_per_corruption({"fog": [0.5] * 5, "snow": [0.6] * 5})
    with pytest.raises(ValueError, match="corruptions="):
        M.mce(ce)
    assert M.mce(ce, ["fog", "snow"]) == pytest.approx((ce["fog"] + ce["snow"]) / 2)
    with pytest.raises(ValueError, match="severities"):
        M.ce_per_corruption({"fog": [0.5] * 3}, M.CorruptionReference({"fog": [0.5] * 5}))


# ----------------------------------------------------------------------------------------------
# ImageNet-P


def _pairs(num_frames: int, noise: bool, step: int) -> list[tuple[int, int]]:
    if noise:
        return [(0, t) for t in range(1, num_frames)]
    return [(t - step, t) for t in range(step, num_frames)]


def _reference_t5d(logits: np.ndarray, noise: bool, step: int) -> float:
    """Loops as in the ImageNet-P reference: ordinal ranks of every class, then the top-5 distance."""
    cum = np.cumsum([0] + [1] * 5 + [0] * (logits.shape[-1] - 5))
    per_video = []
    for video in logits:
        ranks = [rankdata(-frame, method="ordinal") for frame in video]
        distances = []
        for a, b in _pairs(len(video), noise, step):
            sigma = ranks[b][np.argsort(ranks[a])]
            distances.append(np.abs(cum[:5] - cum[sigma - 1][:5]).sum())
        per_video.append(np.mean(distances))
    return float(np.mean(per_video))


def test_flip_probability_hand_example():
    preds = torch.tensor([[1, 1, 2, 1], [3, 3, 3, 3]])
    assert M.flip_probability(preds, noise=True) == pytest.approx((1 / 3 + 0) / 2)
    assert M.flip_probability(preds, noise=False) == pytest.approx((2 / 3 + 0) / 2)
    assert M.flip_probability(preds, noise=False, step=2) == pytest.approx((1 / 2 + 0) / 2)
    with pytest.raises(ValueError, match="noise"):
        M.flip_probability(preds, noise=True, step=2)


def test_top5_distance_hand_example():
    # class 4 leaves the top 5 (distance 1), classes 0 and 1 swap (1 + 1): d = 3
    rankings = torch.tensor([[[0, 1, 2, 3, 4], [1, 0, 2, 3, 9]]])
    assert M.top5_distance(rankings, noise=False) == pytest.approx(3.0)
    # a reversed top 5: |0-4| + |1-3| + 0 + |3-1| + |4-0| = 12
    assert M.top5_distance(torch.tensor([[[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]]]), noise=True) == pytest.approx(
        12.0
    )


@pytest.mark.parametrize(("noise", "step"), [(True, 1), (False, 1), (False, 3)])
def test_imagenet_p_metrics_match_reference_loops(noise, step):
    logits = torch.randint(0, 6, (4, 9, 12), generator=_generator(14)).double()  # ties on purpose
    rankings = M.topk_ranking(logits)
    expected = _reference_t5d(logits.numpy(), noise, step)
    assert M.top5_distance(rankings, noise, step) == pytest.approx(expected, abs=1e-12)
    preds = logits.argmax(-1).numpy()
    flips = np.mean(
        [np.mean([preds[v, a] != preds[v, b] for a, b in _pairs(9, noise, step)]) for v in range(4)]
    )
    assert M.flip_probability(rankings[..., 0], noise, step) == pytest.approx(flips, abs=1e-12)
    assert M.flip_probability(logits.argmax(-1), noise, step) == pytest.approx(flips, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# bad input, devices, registry


def test_bad_inputs_raise_clear_errors():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="not logits"):
        M.nll(logits, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        M.topk_correct(logits, torch.zeros(4, dtype=torch.int32), ks=(1,))
    with pytest.raises(ValueError, match="ks"):
        M.topk_correct(logits, torch.zeros(4, dtype=torch.int64), ks=(1, 5))
    with pytest.raises(ValueError, match="target values"):
        M.brier_score(logits.softmax(1), torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="scored"):
        M.accuracy(torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="multi_hot"):
        M.label_set_scores(logits.softmax(1), torch.ones(4, 3), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_on_cuda_match_cpu():
    probs, target, confidence, correct = _calibration_problem("sigmoid", 15)
    hot = M.real_multi_hot(_padded(_label_sets(len(probs), probs.shape[1], 16)), probs.shape[1])
    in_scores, out_scores = _ood_problem(17, ties=True)
    calls = [
        lambda d: M.accuracy(M.topk_correct(probs.to(d), target.to(d))[5]),
        lambda d: M.nll(probs.to(d), target.to(d)),
        lambda d: M.brier_score(probs.to(d), target.to(d)),
        lambda d: M.expected_calibration_error(confidence.to(d), correct.to(d)),
        lambda d: M.rms_calibration_error(confidence.to(d), correct.to(d)),
        lambda d: M.aurra(confidence.to(d), correct.to(d)),
        lambda d: M.label_set_scores(probs.to(d), hot.to(d), 0.3)["set_f1"],
        lambda d: M.choose_threshold(probs.to(d), hot.to(d)),
        lambda d: M.mean_average_precision(probs.to(d), hot.to(d)),
        lambda d: M.auroc(in_scores.to(d), out_scores.to(d)),
        lambda d: M.aupr(in_scores.to(d), out_scores.to(d)),
        lambda d: M.fpr_at_tpr(in_scores.to(d), out_scores.to(d)),
        lambda d: M.top5_distance(
            M.topk_ranking(probs.view(-1, 1, probs.shape[1]).to(d)).view(-1, 3, 5), False
        ),
    ]
    for call in calls:
        assert call("cuda") == pytest.approx(call("cpu"), abs=1e-9)


def test_registry():
    assert all(spec.mode in ("max", "min", None) for spec in METRICS.values())
    assert all(spec.unit in ("%", "fraction", "nats", "score", "count", "ranks") for spec in METRICS.values())
    assert metric_spec("val/imagenet_a/top1").unit == "%"
    assert metric_spec("val/imagenet_c/fog/ce").mode == "min"
    assert is_better("val/imagenet/top1", 76.0, 75.0)
    assert not is_better("val/imagenet/top1", 75.0, 75.0)
    assert is_better("val/imagenet_c/mce", 60.0, 70.0)
    assert is_better("ece", 0.01, float("nan"))
    assert not is_better("ece", float("nan"), 0.01)
    with pytest.raises(ValueError, match="direction"):
        is_better("val/imagenet/n", 1, 2)
    with pytest.raises(KeyError, match="METRICS"):
        metric_spec("val/imagenet/bogus")
