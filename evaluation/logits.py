"""Per-variant logits files (``logits/<variant>.npz``) for analyses outside this package.

Every file holds

- ``logits``: [N, K] float32, the model's raw scores over all K classes (before any restriction);
- ``target``: [N] int64, the label in the variant's own class space (the model class for most
  variants, the position in ``class_indices`` for subset variants), -1 where there is none;
- ``index``: [N] int64, the image's row in its folder (files in natural order; unreadable ones are
  left out);

plus, by kind: ``real_labels`` [N, 9] int64, -1 padded (ReaL); ``class_indices`` [S] int64, the
model class of each of the variant's classes (A, R, O); ``in_distribution`` [N] bool (O: its own
images, False, after the val images of its classes, True); ``corruption`` [N] int64 indexing
``corruption_names``, and ``severity`` [N] int64 in 1..5 (C). Variants generated on the fly
from val (``imagenet-c-gen``, ``imagenet-p``) keep no logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from evaluation.scoring import SourceOutput
from evaluation.suite import C_NAMES, VAL, EvalSource, EvalSuite
from evaluation.variants import Variant


def source_images(source: EvalSource) -> torch.Tensor:
    """[N] int64: which clean image each ImageNet-C file was made from (its ``<wnid>/<file>``, the same under
    every corruption and severity), numbered in order of appearance."""
    ids: dict[str, int] = {}
    names = [f"{s.path.parent.name}/{s.path.name}" for s in source.dataset.samples]
    return torch.tensor([ids.setdefault(name, len(ids)) for name in names], dtype=torch.long)


def variant_arrays(
    variant: Variant, source: EvalSource, outputs: Mapping[str, SourceOutput], suite: EvalSuite
) -> dict[str, np.ndarray]:
    """The arrays of one variant's logits file (see the module docstring)."""
    out = outputs[source.key]
    logits, target, index = out.logits, out.target, out.index
    extra: dict[str, torch.Tensor] = {}
    if variant.kind == "real":
        extra["real_labels"] = source.extras["real_labels"][index]
    elif variant.kind == "corruption":
        extra["corruption"] = source.extras["corruption"][index]
        extra["severity"] = source.extras["severity"][index]
        extra["source_image"] = source_images(source)[index]
    elif variant.kind in ("subset", "ood"):
        indices = suite.subsets[variant.name]
        extra["class_indices"] = indices
        if variant.kind == "ood":
            val = outputs[VAL]
            keep = torch.isin(val.target, indices)
            position = torch.full((logits.shape[1],), -1, dtype=torch.long)
            position[indices] = torch.arange(len(indices))
            logits = torch.cat([val.logits[keep], logits])
            target = torch.cat([position[val.target[keep]], torch.full_like(target, -1)])
            index = torch.cat([val.index[keep], index])
            extra["in_distribution"] = torch.arange(len(target)) < int(keep.sum())
    arrays = {
        "logits": logits.float().numpy(),
        "target": target.long().numpy(),
        "index": index.long().numpy(),
        **{name: value.numpy() for name, value in extra.items()},
    }
    if variant.kind == "corruption":
        arrays["corruption_names"] = np.array(C_NAMES)
    return arrays


def save_logits(suite: EvalSuite, outputs: Mapping[str, SourceOutput], folder: Path) -> list[Path]:
    """Write ``<folder>/<variant>.npz`` for every variant with outputs; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in suite.sources:
        if source.key not in outputs or len(outputs[source.key].index) == 0:
            continue
        for variant in (v for v in source.variants if v.kind != "generated"):
            path = folder / f"{variant.name}.npz"
            tmp = folder / f".{variant.name}.npz.tmp"
            with tmp.open("wb") as handle:
                np.savez(handle, **variant_arrays(variant, source, outputs, suite))
            tmp.replace(path)
            written.append(path)
    return written
