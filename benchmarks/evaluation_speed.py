"""Cost of scoring every variant against a bare forward pass over the same images.

    python -m benchmarks.evaluation_speed [--root <data root>] [--scale 0.2] [--model resnet18] [--image-size 64]
                                    [--batch 128] [--workers 2] [--device cpu] [--repeats 2] [--variants ...]

Both sides use the same model, the same evaluation loaders (one per source folder, same batch size,
same workers) and so the same images. The evaluation side is the real path of ``python -m
evaluation``: ``Trainer.validate`` with the ``VariantEvaluator`` callback (collect logits, gather,
score every variant with the head's probabilities). The bare side only runs ``eval_forward`` over
the loaders. The two run back to back ``--repeats`` times after one warm-up round; the ratio is the
median over rounds of (evaluation / bare), robust to other load on the machine. A forward hook counts the images the evaluation path sends through the model, which must
equal the sum of the source sizes: the val folder, read by ``imagenet``, ``imagenet-real`` and the
in-distribution half of ``imagenet-o``, is one source and one pass. ``imagenet-c-gen`` and
``imagenet-p`` (corrupted copies of val made on the fly) are left out by default: they forward other
images than the bare pass. Prints the sources, then the timings, then the ratio (evaluation / bare)
as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from evaluation.callback import VariantEvaluator
from evaluation.config import compose_config
from evaluation.metrics import ALEXNET
from evaluation.program import build_data
from evaluation.suite import VAL
from evaluation.variants import C_VARIANTS, VARIANTS
from train.config import MixupConfig, OptimConfig
from train.data.benchmark import default_cache_dir, ensure_benchmark
from train.heads import create_head
from train.module import ClassifierModule
from train.validate import resolve_precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_pass(module: ClassifierModule, loaders: list, device: torch.device, bf16: bool) -> int:
    """Forward every batch of every loader; returns the number of images."""
    seen = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for loader in loaders:
            for batch in loader:
                module.eval_forward(batch[0].to(device, non_blocking=True))
                seen += len(batch[0])
    sync(device)
    return seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="data root; default: the embedded benchmark at --scale in the cache")
    parser.add_argument("--scale", type=float, default=0.2, help="embedded benchmark size (1.0 = full)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--head", default="softmax", choices=("softmax", "sigmoid"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128, help="evaluation batch size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    on_disk = [name for name, v in VARIANTS.items() if v.kind != "generated"]
    parser.add_argument(
        "--variants", nargs="+", default=on_disk, help="default: every variant read from disk"
    )
    args = parser.parse_args(argv)

    root = args.root or ensure_benchmark(root=default_cache_dir(), seed=0, scale=args.scale)
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    cfg = compose_config(
        [
            f"data.root={root}",
            f"data.image_size={args.image_size}",
            f"data.eval_batch_size={args.batch}",
            f"data.num_workers={args.workers}",
            f"model.name={args.model}",
            f"head={args.head}",
            f"eval.variants=[{','.join(args.variants)}]",
            f"trainer.accelerator={accelerator}",
        ]
    )
    conf = OmegaConf.to_object(cfg)
    data, suite = build_data(conf)
    module = ClassifierModule(
        conf.model, create_head(**vars(conf.head)), OptimConfig(), MixupConfig(), data.num_classes
    )
    device = torch.device(args.device)
    module.eval()
    precision = resolve_precision({"accelerator": accelerator}, torch.cuda.is_available())

    forwarded = []  # batch sizes seen by the model on the evaluation path
    module.classifier.register_forward_hook(lambda layer, inputs, output: forwarded.append(len(output)))
    workdir = tempfile.TemporaryDirectory()  # history.csv of the evaluator
    evaluator = VariantEvaluator(suite, Path(workdir.name), dict.fromkeys(C_VARIANTS, ALEXNET))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        callbacks=[evaluator],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    loaders = [data.eval_loader(source.dataset) for source in suite.sources]

    bare_times, eval_times = [], []
    for attempt in range(args.repeats + 1):
        module.to(device)  # Trainer.validate hands the model back on the CPU
        start = time.perf_counter()
        images = bare_pass(module, loaders, device, precision == "bf16-mixed")
        bare = time.perf_counter() - start
        forwarded.clear()
        start = time.perf_counter()
        trainer.validate(module, datamodule=data, verbose=False)
        sync(device)
        real = time.perf_counter() - start
        if attempt:  # the first round warms caches and kernels
            bare_times.append(bare)
            eval_times.append(real)

    sizes = {source.key: len(source.dataset) for source in suite.sources}
    for source in suite.sources:
        readers = [v.name for v in source.variants]
        if source.key == VAL and "imagenet-o" in [v.name for s in suite.sources for v in s.variants]:
            readers.append("imagenet-o (in-distribution half)")
        print(
            f"source {source.key}: {sizes[source.key]} images -> {', '.join(readers) or '(reference only)'}"
        )
    files = [sample.path for source in suite.sources for sample in source.dataset.samples]
    assert len(files) == len(set(files)), "an image folder is read by two sources"
    assert images == sum(forwarded) == sum(sizes.values()), (images, sum(forwarded), sum(sizes.values()))
    scored = len(evaluator.results)
    print(
        f"model {args.model} {args.image_size}px, batch {args.batch}, workers {args.workers}, device {device}"
    )
    print(f"images per pass: {images} (each source once), metrics scored: {scored}")
    ratios = sorted(e / b for e, b in zip(eval_times, bare_times, strict=True))
    print(f"bare forward: best {min(bare_times):.3f} s ({images / min(bare_times):.1f} images/s)")
    print(f"evaluation:   best {min(eval_times):.3f} s ({images / min(eval_times):.1f} images/s)")
    print(f"per-round ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"ratio evaluation / bare forward: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
