"""The framework's training step vs a plain PyTorch loop, same timm model, batch and optimiser.

Both run on the same in-memory tensors: the framework through ``lightning.Trainer.fit`` with the
program's ``ClassifierModule`` (head loss, normalisation on the device, LR schedule, logging,
callbacks), the plain loop as normalise -> forward -> cross-entropy -> backward -> step. Prints
the median step time of each and their ratio as the last line (target <= 1.05).

    python -m benchmarks.train_step [--model resnet18] [--size 64] [--batch 64] [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, TensorDataset

from train.config import MixupConfig, ModelConfig, OptimConfig
from train.heads import SoftmaxHead
from train.module import ClassifierModule


class StepTimer(L.Callback):
    """Wall time of each training step (batch start to batch end, device synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.sync()
        self.times.append(time.perf_counter() - self.start)


def data(args: argparse.Namespace) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    target = torch.randint(0, args.classes, (args.batch,), generator=g)
    index, bad = torch.arange(args.batch), torch.full((args.batch,), -1)
    return TensorDataset(images, target, index, bad)


def framework_steps(args: argparse.Namespace, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    module = ClassifierModule(
        ModelConfig(name=args.model, channels_last=device.type == "cuda"),
        SoftmaxHead(),
        OptimConfig(name="sgd", lr=0.01),
        MixupConfig(),
        num_classes=args.classes,
    )
    timer = StepTimer(device)
    loader = DataLoader(data(args), batch_size=args.batch)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.times[args.warmup :]


def plain_steps(args: argparse.Namespace, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    import timm

    model = timm.create_model(args.model, num_classes=args.classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.01, weight_decay=1e-4, momentum=0.9)
    images, target, _, _ = (t.to(device) for t in data(args).tensors)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model((images - mean) / std), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[args.warmup :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    framework, plain = [], []
    for _ in range(2):  # interleave to share the machine's state fairly
        plain += plain_steps(args, device)
        framework += framework_steps(args, device)
    f, p = statistics.median(framework), statistics.median(plain)
    print(
        f"setup: {args.model} {args.size}px batch {args.batch} on {device} ({torch.get_num_threads()} threads)"
    )
    print(f"plain PyTorch step:  median {p * 1000:.1f} ms over {len(plain)} steps")
    print(f"framework step:      median {f * 1000:.1f} ms over {len(framework)} steps")
    print(f"ratio framework/plain: {f / p:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
