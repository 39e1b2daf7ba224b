"""The on-the-fly ImageNet-C collector batches its forward passes without changing what it records,
and runs them in the precision of the validation steps."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.functional import to_tensor

from evaluation.callback import VariantEvaluator
from evaluation.corruptions import COMMON_CORRUPTIONS, corrupt
from evaluation.generated import GeneratedCorruptions, image_generator
from evaluation.suite import C_NAMES, VAL, EvalSource, EvalSuite, build_suite
from evaluation.variants import C_VARIANTS, get_variant
from train.data.folder import DataLayoutError, ImageFolderDataset, scan_folder
from train.heads import SoftmaxHead


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


class MeanColourClassifier(L.LightningModule):
    """Logits from a linear map of the mean colour; keeps the dtype of every evaluation forward."""

    num_classes = 20

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, self.num_classes)
        self.head = SoftmaxHead()
        self.output_dtypes: list[torch.dtype] = []

    def eval_forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.linear(images.mean((2, 3)))
        self.output_dtypes.append(logits.dtype)
        return logits

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.eval_forward(batch[0])


@pytest.mark.parametrize(("precision", "dtype"), [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_generated_forwards_run_in_the_precision_of_the_validation_steps(
    tmp_path: Path, bench_root: Path, precision: str, dtype: torch.dtype
):
    """Generated C and P are scored in the callback, outside ``validation_step``: under bf16-mixed
    they must still run under the trainer's autocast, like the clean images they are compared with."""
    classes = (bench_root / "classes.txt").read_text().split()
    samples = scan_folder(bench_root / "val", classes)[:12]
    dataset = ImageFolderDataset(samples, lambda image: to_tensor(image.resize((16, 16))))
    variants = [get_variant("imagenet"), get_variant("imagenet-c-gen"), get_variant("imagenet-p")]
    suite = EvalSuite([EvalSource(VAL, dataset, variants)], {})
    generated = GeneratedCorruptions(len(dataset), grid_images=2, p_images=1)
    evaluator = VariantEvaluator(suite, tmp_path, dict.fromkeys(C_VARIANTS), generated)
    model = MeanColourClassifier()
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        callbacks=[evaluator],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(model, DataLoader(dataset, batch_size=6), verbose=False)
    clean_passes = 2  # 12 images in batches of 6
    assert len(model.output_dtypes) > clean_passes + len(COMMON_CORRUPTIONS)  # C grid and P passes ran
    assert set(model.output_dtypes) == {dtype}
    assert evaluator.results["val/imagenet-c-gen/n"] == 2 * 75 and evaluator.results["val/imagenet-p/n"] == 1


def test_eval_paths_and_strict_errors_name_their_keys(bench_root: Path, tmp_path: Path):
    classes = sorted(p.name for p in (bench_root / "train").iterdir())
    with pytest.raises(ValueError, match="eval.paths has unknown variant 'bogus'"):
        build_suite(
            ["imagenet"], bench_root, classes, lambda x: x, "benchmark", paths={"bogus": str(tmp_path)}
        )
    missing = {"imagenet-sketch": str(tmp_path / "nowhere")}
    with pytest.raises(
        DataLayoutError, match="eval.strict=true: point eval.paths.imagenet-sketch=<folder> at it"
    ):
        build_suite(
            ["imagenet-sketch"], bench_root, classes, lambda x: x, "benchmark", paths=missing, strict=True
        )
    suite = build_suite(
        ["imagenet", "imagenet-sketch"], bench_root, classes, lambda x: x, "benchmark", paths=missing
    )
    assert [v.name for source in suite.sources for v in source.variants] == ["imagenet"]  # skipped, warned
