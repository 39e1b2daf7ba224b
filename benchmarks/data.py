"""Training-loader throughput at 224 px: torchvision/PIL vs shards vs DALI (CPU, and GPU when present).

The embedded benchmark is 64 px, so the script first writes a temporary JPEG folder of benchmark
training images upscaled to ImageNet-like sizes (shorter side 320-500 px, random aspect 3:4-4:3,
JPEG quality 90), and WebDataset shards of it. Every path runs the same train transforms
(RandomResizedCrop 224, scale 0.08-1, flip; [0,1] floats) on the same files with the same number
of workers/threads, one full epoch per round from a fresh loader (start-up included), rounds interleaved; the figures are medians over
rounds and the ratios are per-round ratios to the torchvision path (printed last).

On a CUDA machine it also times a ResNet-50 bf16 training step (channels-last, SGD) on random
224 px batches, i.e. the images/s the GPU consumes, to check "DALI feeds >= what the GPU eats".

    python -m benchmarks.data [--images 512] [--workers 2] [--batch 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from train.config import DataConfig
from train.data.benchmark import default_cache_dir, ensure_benchmark
from train.data.datamodule import ImageNetDataModule
from train.data.folder import Sample, scan_folder
from train.data.shards import ShardSets, ShardStream
from train.data.transforms import train_transform
from train.shards import write_shards


def upscaled_folder(out: Path, n: int, seed: int = 0) -> Path:
    """``n`` benchmark train images (all classes), upscaled to ImageNet-like sizes, as ``out/train``."""
    bench = ensure_benchmark(root=default_cache_dir(), seed=0)
    classes = (bench / "classes.txt").read_text().split()
    samples = scan_folder(bench / "train", classes)
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(samples), n, replace=False):
        short, aspect = rng.integers(320, 501), rng.uniform(3 / 4, 4 / 3)
        size = (int(short * max(aspect, 1)), int(short / min(aspect, 1)))
        target = out / "train" / samples[i].path.parent.name / samples[i].path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(samples[i].path) as image:
            image.convert("RGB").resize(size, Image.BICUBIC).save(target, quality=90)
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    return out


def images_per_s(make: Callable[[], Iterable]) -> float:
    """Images per second of a fresh loader from ``make()`` over one epoch, its start-up included
    (worker forks, DALI pipeline build); the loader is freed afterwards, so no pipeline keeps
    prefetching while another one is timed."""
    start, count = time.perf_counter(), 0
    loader = make()
    for batch in loader:
        count += batch[0].shape[0]
    seconds = time.perf_counter() - start
    del loader, batch
    gc.collect()
    return count / seconds


def gpu_consumption(batch: int, steps: int = 30) -> float:
    """Images/s of a ResNet-50 bf16 training step on the GPU (median over ``steps``)."""
    import timm

    device = torch.device("cuda")
    model = timm.create_model("resnet50", num_classes=1000).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    images = torch.rand(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device=device)
    times = []
    for step in range(steps + 5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 5:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = DALI threads")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.images < args.batch:
        parser.error(f"--images {args.images} < --batch {args.batch}: the loaders drop a partial batch")
    with tempfile.TemporaryDirectory() as tmp:
        root = upscaled_folder(Path(tmp) / "jpeg", args.images)
        cfg = DataConfig(
            name="imagenet",
            root=str(root),
            classes=str(root / "classes.txt"),
            image_size=224,
            num_workers=args.workers,
            batch_size=args.batch,
            minival_fraction=0.0,
        )
        write_shards(root, Path(tmp) / "shards", ["train"], progress=False)
        sizes = [Image.open(p).size for p in sorted(root.glob("train/*/*"))]
        print(
            f"temporary JPEG folder: {len(sizes)} benchmark train images upscaled to "
            f"{min(min(s) for s in sizes)}-{max(min(s) for s in sizes)} px shorter side "
            f"(mean {np.mean([s[0] * s[1] for s in sizes]) / 1e3:.0f} kpixel), quality 90; "
            f"transforms: RandomResizedCrop 224 (scale 0.08-1) + flip -> [0,1]; batch {args.batch}"
        )
        data = ImageNetDataModule(cfg, cache_dir=default_cache_dir())
        samples: list[Sample] = data.train_samples
        data.setup("fit")
        paths: dict[str, Callable[[], Iterable]] = {
            f"torchvision/PIL ({args.workers} workers)": lambda: data.train_dataloader(),
            f"shards, WebDataset ({args.workers} workers)": lambda: data.loader(
                ShardStream(
                    ShardSets(Path(tmp) / "shards").scan(Path(tmp) / "shards" / "train", data.classes),
                    train_transform(cfg),
                    args.batch,
                ),
                args.batch,
                None,
                drop_last=True,
            ),
        }
        skipped = []
        try:
            from train.data.dali import DaliTrainLoader

            paths[f"DALI CPU ({args.workers} threads)"] = lambda: DaliTrainLoader(samples, cfg, args.batch)
            if torch.cuda.is_available():
                paths[f"DALI GPU, mixed decode ({args.workers} threads)"] = lambda: DaliTrainLoader(
                    samples, cfg, args.batch, device_id=0
                )
            else:
                skipped.append("DALI GPU: skipped, no CUDA device on this machine")
        except ImportError as err:
            skipped.append(f"DALI: skipped, not installed ({err}); pip install nvidia-dali-cuda130")

        for batches in paths.values():  # warm-up pass (worker start, DALI pipeline fill, page cache)
            images_per_s(batches)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, batches in paths.items():
                rates[name].append(images_per_s(batches))

    consumption = gpu_consumption(args.batch) if torch.cuda.is_available() else None
    baseline = rates[next(iter(paths))]
    print(
        f"images/s, median of {args.rounds} interleaved epochs of {len(sizes)} images; ratio to torchvision:"
    )
    for line in skipped:
        print(f"  {line}")
    if consumption is None:
        print("  ResNet-50 bf16 training step consumption: needs CUDA (not measured on this machine)")
    else:
        print(f"  ResNet-50 bf16 training step consumes {consumption:8.1f} images/s (batch {args.batch})")
    for name, values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, baseline, strict=True))
        feeds = f", {statistics.median(values) / consumption:.2f}x GPU consumption" if consumption else ""
        print(f"  {name:42s} {statistics.median(values):8.1f} images/s   ratio {ratio:5.2f}{feeds}")


if __name__ == "__main__":
    main()
