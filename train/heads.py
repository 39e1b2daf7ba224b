"""Classification heads: the loss a model trains with and the probabilities it is scored with.

A head is one small object shared by training and evaluation. Evaluation asks the head for
``probs`` and ``confidence``, so every metric treats softmax and sigmoid models alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy
from torch import Tensor, nn


class SoftmaxHead(nn.Module):
    """Cross-entropy over K classes; probabilities sum to one.

    Args:
        smoothing: label smoothing for integer targets (dense targets, e.g. from mixup, are
            assumed to be smoothed already).
    """

    name = "softmax"

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"head.smoothing={smoothing} is out of range; use a value in [0, 1)")
        self.smoothing = smoothing

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss. logits [B,K]; target [B] int64 class indices or [B,K] dense probabilities."""
        logits = logits.float()  # like the sigmoid head: float32 under autocast too (CPU autocast keeps bf16)
        if target.ndim == 1:
            return F.cross_entropy(logits, target, label_smoothing=self.smoothing)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()

    def probs(self, logits: Tensor) -> Tensor:
        """[B,K] logits -> [B,K] probabilities in [0,1] summing to 1 over K."""
        return logits.float().softmax(dim=-1)

    def confidence(self, logits: Tensor) -> Tensor:
        """[B,K] logits -> [B] max probability."""
        return self.probs(logits).amax(dim=-1)

    def init_bias(self, classifier: nn.Linear | None) -> None:
        """Softmax is invariant to a shared bias: nothing to initialise."""


class SigmoidHead(nn.Module):
    """Binary cross-entropy over all K classes (one independent sigmoid per class).

    BCE in every configuration: integer targets become one-hot (smoothed) targets, dense targets
    are used as given (timm's ``BinaryCrossEntropy`` does both); there is no fallback to CE.

    Args:
        smoothing: label smoothing for integer targets: off-class value smoothing/K.
        target_threshold: binarise targets ``target > threshold`` (e.g. 0.2 with mixup).
        reduction: ``"mean"`` over all B*K elements, or ``"sum"`` over classes then mean over the
            batch (K times larger; scale the learning rate accordingly).
        bias_init: ``"prior"`` sets the classifier bias to -log(K-1), so every probability starts at
            1/K and the initial loss is about (ln K + 1)/K per element instead of ln 2;
            ``"zero"`` leaves the model's own initialisation.
    """

    name = "sigmoid"

    def __init__(
        self,
        smoothing: float = 0.0,
        target_threshold: float | None = None,
        reduction: str = "mean",
        bias_init: str = "prior",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"head.reduction={reduction!r} is unknown; use 'mean' or 'sum'")
        if bias_init not in ("prior", "zero"):
            raise ValueError(f"head.bias_init={bias_init!r} is unknown; use 'prior' or 'zero'")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"head.smoothing={smoothing} is out of range; use a value in [0, 1)")
        self.smoothing = smoothing
        self.bias_init = bias_init
        self.criterion = BinaryCrossEntropy(
            smoothing=smoothing, target_threshold=target_threshold, sum_classes=reduction == "sum"
        )

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean loss. logits [B,K]; target [B] int64 class indices or [B,K] dense targets in [0,1]."""
        return self.criterion(logits.float(), target)

    def probs(self, logits: Tensor) -> Tensor:
        """[B,K] logits -> [B,K] independent probabilities in [0,1] (not normalised over K)."""
        return logits.float().sigmoid()

    def confidence(self, logits: Tensor) -> Tensor:
        """[B,K] logits -> [B] max sigmoid probability."""
        return self.probs(logits).amax(dim=-1)

    @torch.no_grad()
    def init_bias(self, classifier: nn.Linear | None) -> None:
        """Set the classifier bias to the class prior, -log(K-1), when ``bias_init="prior"``."""
        if self.bias_init != "prior":
            return
        if classifier is None or classifier.bias is None:
            raise ValueError(
                "head.bias_init=prior needs a classifier layer with a bias; set head.bias_init=zero for this model"
            )
        num_classes = classifier.bias.numel()
        classifier.bias.fill_(-math.log(max(num_classes - 1, 1)))


def create_head(name: str, **kwargs: object) -> SoftmaxHead | SigmoidHead:
    """Build a head by name (``"softmax"`` or ``"sigmoid"``); sigmoid-only options are refused for softmax."""
    if name == "sigmoid":
        return SigmoidHead(**kwargs)
    if name == "softmax":
        only_sigmoid = {
            k: v
            for k, v in kwargs.items()
            if k != "smoothing"
            and v != {"target_threshold": None, "reduction": "mean", "bias_init": "prior"}[k]
        }
        if only_sigmoid:
            keys = ", ".join(f"head.{k}" for k in only_sigmoid)
            raise ValueError(f"{keys} only apply to head=sigmoid; remove them or choose head=sigmoid")
        return SoftmaxHead(smoothing=kwargs.get("smoothing", 0.0))
    raise ValueError(f"head.name={name!r} is unknown; use 'softmax' or 'sigmoid'")
