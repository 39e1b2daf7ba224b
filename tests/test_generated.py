"""The on-the-fly ImageNet-C collector batches its forward passes without changing what it records."""

from __future__ import annotations

import torch

from evaluation.corruptions import COMMON_CORRUPTIONS, corrupt
from evaluation.generated import GeneratedCorruptions, image_generator
from evaluation.suite import C_NAMES


def mean_colour_logits(images: torch.Tensor) -> torch.Tensor:
    """Per-image logits that do not depend on the batch: the mean of each colour channel."""
    return images.mean((2, 3))


def expected_records(collector: GeneratedCorruptions, images, target, index, final: bool):
    """Per (corruption, severity) group, scored on its own: the collector's plan written out."""
    wrong, corruption, severity = [], [], []
    if final:
        keep = torch.isin(index, collector.grid)
        groups = (
            [(keep, c, s) for c in range(len(COMMON_CORRUPTIONS)) for s in range(1, 6)] if keep.any() else []
        )
    else:
        planned_c, planned_s = collector.plan[0][index], collector.plan[1][index]
        pairs = [(c, s) for c in range(len(COMMON_CORRUPTIONS)) for s in range(1, 6)]
        groups = [((planned_c == c) & (planned_s == s), c, s) for c, s in pairs]
    for mask, c, s in groups:
        rows = mask.nonzero().squeeze(1)
        if not len(rows):
            continue
        generator = image_generator(images.device, collector.seed, int(index[rows[0]]), c * 8 + s)
        logits = mean_colour_logits(corrupt(images[rows], COMMON_CORRUPTIONS[c], s, generator))
        wrong.append(logits.argmax(1) != target[rows])
        corruption += [C_NAMES.index(COMMON_CORRUPTIONS[c])] * len(rows)
        severity += [s] * len(rows)
    return torch.cat(wrong), torch.tensor(corruption), torch.tensor(severity)


def test_batched_c_scoring_records_what_scoring_each_group_alone_records():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 32, 32, generator=generator)
    target = torch.randint(0, 3, (24,), generator=generator)
    index = torch.arange(100, 124)
    for final in (False, True):
        collector = GeneratedCorruptions(num_val=150, grid_images=30)
        collector.reset()
        calls = []

        def forward(x, calls=calls):
            calls.append(len(x))
            return mean_colour_logits(x)

        collector.collect_c(forward, images, target, index, final)
        got = [torch.cat(collector.records[k]) for k in ("c_wrong", "c_corruption", "c_severity")]
        want = expected_records(collector, images, target, index, final)
        assert len(got[0]) == sum(calls) == len(want[0]) > len(images) // 2
        for recorded, expected in zip(got, want, strict=True):  # same images, in the same order
            assert torch.equal(recorded, expected)
        # passes of about a batch each, not one per (corruption, severity) group
        assert (
            len(calls)
            <= sum(calls) // len(images) + 1
            < len(set(zip(want[1].tolist(), want[2].tolist(), strict=True)))
        )
