"""Heads: each loss equals an independent formula; the sigmoid head is BCE in every configuration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from train.heads import SigmoidHead, SoftmaxHead, create_head


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def np_bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise -[y log s(x) + (1-y) log(1-s(x))] in float64."""
    p = 1 / (1 + np.exp(-x))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 7, generator=g) * 3, torch.randint(0, 7, (8,), generator=g)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_loss_matches_numpy(batch, smoothing):
    logits, target = batch
    k = logits.shape[1]
    y = np.full((8, k), smoothing / k)
    y[np.arange(8), target.numpy()] += 1 - smoothing
    expected = -(y * np_log_softmax(logits.double().numpy())).sum(1).mean()
    got = SoftmaxHead(smoothing).loss(logits, target).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_softmax_dense_targets_are_soft_cross_entropy(batch):
    logits, _ = batch
    soft = torch.softmax(torch.randn(8, 7), dim=1)
    expected = -(soft.double().numpy() * np_log_softmax(logits.double().numpy())).sum(1).mean()
    assert SoftmaxHead().loss(logits, soft).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "smoothing,threshold,reduction", [(0.0, None, "mean"), (0.1, None, "sum"), (0.0, 0.2, "mean")]
)
def test_sigmoid_loss_is_bce_in_every_configuration(batch, smoothing, threshold, reduction):
    logits, target = batch
    k = logits.shape[1]
    y = np.full((8, k), smoothing / k)
    y[np.arange(8), target.numpy()] = 1 - smoothing + smoothing / k
    if threshold is not None:
        y = (y > threshold).astype(np.float64)
    elementwise = np_bce(logits.double().numpy(), y)
    expected = elementwise.mean() if reduction == "mean" else elementwise.sum(1).mean()
    head = SigmoidHead(smoothing=smoothing, target_threshold=threshold, reduction=reduction)
    got = head.loss(logits, target).item()
    assert got == pytest.approx(expected, rel=1e-5)
    ce = SoftmaxHead(smoothing).loss(logits, target).item()
    assert got != pytest.approx(ce, rel=1e-3)  # never silently cross-entropy


def test_sigmoid_dense_targets_used_as_given(batch):
    logits, _ = batch
    soft = torch.rand(8, 7)
    expected = np_bce(logits.double().numpy(), soft.double().numpy()).mean()
    assert SigmoidHead(smoothing=0.1).loss(logits, soft).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("k", [20, 1000])
def test_prior_bias_gives_closed_form_initial_loss(k):
    layer = nn.Linear(64, k)
    nn.init.normal_(layer.weight, std=1e-6)
    head = SigmoidHead()
    head.init_bias(layer)
    assert torch.allclose(layer.bias, torch.full((k,), -math.log(k - 1)))
    logits = layer(torch.randn(32, 64))
    assert torch.allclose(head.probs(logits), torch.full_like(logits, 1 / k), atol=1e-5)
    target = torch.randint(0, k, (32,))
    # per element: [ln K + (K-1) * -ln(1 - 1/K)] / K, about (ln K + 1)/K
    closed = (math.log(k) - (k - 1) * math.log(1 - 1 / k)) / k
    assert head.loss(logits, target).item() == pytest.approx(closed, rel=1e-3)
    if k == 1000:
        assert head.loss(logits, target).item() == pytest.approx(0.0079, abs=2e-4)
    zero = SigmoidHead(bias_init="zero")
    nn.init.zeros_(layer.bias)
    zero.init_bias(layer)
    assert zero.loss(layer(torch.randn(32, 64)), target).item() == pytest.approx(math.log(2), rel=1e-3)


def test_probabilities_and_confidence(batch):
    logits, _ = batch
    soft, sig = SoftmaxHead(), SigmoidHead()
    assert torch.allclose(soft.probs(logits).sum(1), torch.ones(8))
    assert torch.allclose(sig.probs(logits), 1 / (1 + torch.exp(-logits)))
    assert torch.equal(sig.confidence(logits), sig.probs(logits).amax(1))
    assert torch.equal(soft.probs(logits).argmax(1), sig.probs(logits).argmax(1))


def test_create_head_rejects_sigmoid_options_for_softmax():
    with pytest.raises(ValueError, match=r"head.target_threshold only apply to head=sigmoid"):
        create_head("softmax", smoothing=0.0, target_threshold=0.2, reduction="mean", bias_init="prior")
    with pytest.raises(ValueError, match="head.name='tanh' is unknown"):
        create_head("tanh")
    with pytest.raises(ValueError, match="head.reduction"):
        create_head("sigmoid", reduction="median")
    assert isinstance(create_head("sigmoid", smoothing=0.1), SigmoidHead)
