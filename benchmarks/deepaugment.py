"""DeepAugment / Noise2Net speed, cost relative to a ResNet-50 step, and memory. Prints its ratios last.

    python benchmarks/deepaugment.py                       # CPU, small batch: a few minutes
    python benchmarks/deepaugment.py --device cuda --batch 64 --repeats 5

1. Batched per-sample DeepAugment vs the reference procedure (one image per forward pass, network re-drawn
   with probability 0.05 per image), same device and networks, 224 px output: images/s and ratio.
2. Time of the augment step relative to a ResNet-50 training step (timm resnet50, or ``--model``, random init,
   forward + backward + SGD) on the same batch, next to the FLOP floor counted with torch.utils.flop_counter.
   The per-batch cost of the reference mix (1/3 clean, 1/3 EDSR, 1/3 CAE) and of Noise2Net on half the batch is
   p_edsr * t_edsr + p_cae * t_cae (and 0.5 * t_noise2net), each t timed with the whole batch on that path, so
   small CPU batches add no routing noise. Noise2Net's FLOPs are the expectation over its kernel draws (half of
   its hierarchical convs are 1x1): 1.72 GFLOP at 224 px; with every conv at 3x3 it would be 2.96.
   All timed functions run interleaved, one after the other in every round, so load changes on a shared machine
   hit both sides of a ratio alike. Cost ratios are medians of per-round ratios; the batched / reference speed
   ratio is one of total times over all rounds, since per-image activation draws make single rounds vary.
3. Peak extra memory of the augment step for a batch of 64 at 224 px with the default mix (CUDA
   max_memory_allocated, or peak RSS above the pre-step RSS on CPU, sampled every 2 ms), in a fresh process.
Speed does not depend on the weights, so the networks are randomly initialised.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import timm
import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from augment import CAE, EDSR, DeepAugment, Noise2Net, perturb_cae, perturb_edsr
from augment.base import PRECISIONS, network_dtype
from augment.grouped import cast_for_network
from augment.networks.edsr import downscale
from augment.noise2net import ConvGroup, res2net_block

REDRAW_P = 0.05


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def timed_rounds(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, list[float]]:
    """Seconds of every ``fn`` in each of ``repeats`` rounds (one warm-up run each first).

    The functions run interleaved, one after the other in every round, so a change of the machine's load hits all
    of them alike; the order rotates by one each round, so no function always runs right after the same other
    one (on a CPU the function after the model's training step starts with cold caches and fresh pages).
    """
    for fn in fns.values():
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den]."""
    return median([a / b for a, b in zip(times[num], times[den], strict=True)])


def total_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """sum(times[num]) / sum(times[den]): for the speed comparison, where per-image activation draws (a skipped
    body, an extra GELU) make one 4-image round vary by +-15% on either side, so each side needs many images."""
    return sum(times[num]) / sum(times[den])


def weight_files(root: Path) -> dict[str, str]:
    torch.save(EDSR().state_dict(), root / "edsr.pt")
    torch.save(CAE().state_dict(), root / "cae.state")
    return {"edsr_weights": str(root / "edsr.pt"), "cae_weights": str(root / "cae.state")}


def reference_procedure(aug: DeepAugment, kind: str, images: torch.Tensor) -> Callable[[], None]:
    """One image per forward pass; the perturbed network is re-drawn with probability 0.05 per image. The passes
    run in the dtype and layout the batched module uses (its ``precision``), so only the procedure differs."""
    host, dev = aug.generators()
    net = aug.edsr if kind == "edsr" else aug.cae
    base = dict(net.named_parameters())
    dtype = network_dtype(images.device, aug.precision, images.dtype)

    def draw() -> dict[str, torch.Tensor]:
        if kind == "edsr":
            return perturb_edsr.perturb_weights(base, aug.edsr_weight_options, host, dev)
        return perturb_cae.perturb_weights(base, aug.cae_weight_options, host, dev)

    weights = draw()

    @torch.no_grad()
    def run() -> None:
        nonlocal weights
        for x in images:
            if torch.rand((), generator=host) < REDRAW_P:
                weights = draw()
            x = x[None]
            if kind == "edsr":
                x = downscale(x)
                params, hooks = perturb_edsr.sample_activations(
                    1, 64, x.shape[-2:], 17, aug.edsr_pre_options, aug.edsr_body_options, host, dev, x.dtype
                )
            else:
                params, hooks = perturb_cae.sample_latent(
                    1, (x.shape[-2] // 4, x.shape[-1] // 4), aug.cae_latent_options, host, dev, x.dtype
                )
            # cast weights are kept: later images of the same network cast nothing
            x, weights, params = cast_for_network(dtype, x, weights, params)
            # plain=True: a plain CPU pass skips unused options, as the batched module's passes do
            functional_call(net, weights, (x,), hooks(params, plain=True)).float().clamp(0, 1)

    return run


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step(batch: torch.Tensor, model_name: str = "resnet50") -> Callable[[], None]:
    """One SGD training step of timm ``model_name`` (random init, 1000 classes, channels-last) on ``batch``, in
    the trainer's default precision for the device: bf16 autocast on CUDA, fp32 elsewhere."""
    model = timm.create_model(model_name, num_classes=1000).to(
        batch.device, memory_format=torch.channels_last
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    target = torch.randint(0, 1000, (batch.shape[0],), device=batch.device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    cuda = batch.device.type == "cuda"

    def step() -> None:
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(batch), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def noise2net_gflop(size: int) -> float:
    """Expected GFLOP per image of Noise2Net at ``size`` px over its kernel draws.

    Each hierarchical conv has K = 1 or K = 3 with probability 1/2 (the dilation does not change its FLOPs), so the
    expectation is the mean of a block with every K = 1 and one with every K = 3, times the number of blocks.
    """
    aug = Noise2Net(p=1.0)
    z = torch.rand(1, 3, size, size)
    width, rows = aug.hidden_planes, torch.zeros(1, dtype=torch.long)
    per_k = []
    for k in (1, 3):
        params = aug.sample_block(1, z)
        params = params._replace(
            convs=[[ConvGroup(rows, torch.rand(1, width, width, k, k), 1)]] * len(params.convs)
        )
        per_k.append(flops(lambda params=params: res2net_block(z, params)))
    return aug.num_blocks * sum(per_k) / 2 / 1e9


def flop_floor(size: int, cae_size: int | None, model_name: str = "resnet50") -> dict[str, float]:
    """GFLOP per image: EDSR from size/4, CAE at cae_size (or size), Noise2Net, the model's train step."""
    with torch.no_grad():
        edsr = flops(lambda: EDSR()(torch.rand(1, 3, size // 4, size // 4))) / 1e9
        side = cae_size or size
        cae = flops(lambda: CAE()(torch.rand(1, 3, side, side))) / 1e9
    n2n = noise2net_gflop(size)
    step = flops(train_step(torch.rand(1, 3, size, size), model_name)) / 1e9
    return {"edsr": edsr, "cae": cae, "noise2net": n2n, "model_step": step}


def _memory_child(device: str, weights: dict[str, str], batch: int, size: int, queue: mp.Queue) -> None:
    dev = torch.device(device)
    aug = DeepAugment(**weights).to(dev)
    x = torch.rand(batch, 3, size, size, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        aug(x)
        torch.cuda.synchronize(dev)
        queue.put((torch.cuda.max_memory_allocated(dev) - base) / 2**20)
        return
    gc.collect()
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    base = process.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    aug(x)
    done.set()
    sampler.join()
    queue.put((peak[0] - base) / 2**20)


def peak_memory_mib(device: str, weights: dict[str, str], batch: int, size: int) -> float:
    """Peak extra memory (MiB) of one DeepAugment step, measured in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(device, weights, batch, size, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="images per batch for the speed runs")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--images-per-network", type=int, default=16)
    parser.add_argument("--cae-size", type=int, default=None)
    parser.add_argument("--memory-batch", type=int, default=64, help="0 skips the memory measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default="resnet50", help="timm model whose training step is the yardstick")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="precision of the DeepAugment networks and Noise2Net's 3x3 convs",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    weights = weight_files(Path(tempfile.mkdtemp()))
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    ipn, cae_size = args.images_per_network, args.cae_size
    net_dtype = network_dtype(device, args.precision, torch.float32)
    step_dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(
        f"device={device} batch={args.batch} size={args.size} images_per_network={ipn} cae_size={cae_size} "
        f"precision={args.precision} (networks and Noise2Net's 3x3 convs in {net_dtype}; "
        f"{args.model} step in {step_dtype})"
    )

    fns = {}
    for kind, probs in (("edsr", (1.0, 0.0)), ("cae", (0.0, 1.0))):
        aug = DeepAugment(
            **weights,
            p_edsr=probs[0],
            p_cae=probs[1],
            images_per_network=ipn,
            cae_size=cae_size,
            precision=args.precision,
        )
        aug = aug.to(device)
        fns[kind] = lambda aug=aug: aug(x)
        fns[f"{kind}_reference"] = reference_procedure(aug, kind, x)
    noise2net = Noise2Net(p=1.0, precision=args.precision).to(device)
    fns["noise2net"] = lambda: noise2net(x)
    cpu = device.type == "cpu"
    if cpu:  # the same draws without the fused C kernels (augment/cpu_kernels.py): PyTorch ops only
        noise2net_ops = Noise2Net(p=1.0, precision=args.precision, fused_cpu=False)
        fns["noise2net_pytorch"] = lambda: noise2net_ops(x)
    fns["model_step"] = train_step(x, args.model)
    times = timed_rounds(fns, device, args.repeats)
    full = {name: median(t) for name, t in times.items()}
    for kind in ("edsr", "cae"):
        print(
            f"{kind}: batched {args.batch * args.repeats / sum(times[kind]):.2f} img/s, "
            f"reference procedure {args.batch * args.repeats / sum(times[kind + '_reference']):.2f} img/s (all rounds)"
        )
    # Cost per batch of the reference mix (1/3 EDSR, 1/3 CAE) and of Noise2Net on half the batch, per round.
    times["mix"] = [(e + c) / 3 for e, c in zip(times["edsr"], times["cae"], strict=True)]
    for key in ("noise2net", "noise2net_pytorch")[: 1 + cpu]:
        times[key + "_half"] = [0.5 * t for t in times[key]]
    t_step = full["model_step"]
    step_name = f"{args.model} step"
    gflop = flop_floor(args.size, cae_size, args.model)
    floor_mix = (gflop["edsr"] + gflop["cae"]) / 3 / gflop["model_step"]
    floor_n2n = 0.5 * gflop["noise2net"] / gflop["model_step"]
    print("GFLOP per image: " + ", ".join(f"{k} {v:.2f}" for k, v in gflop.items()))
    print(
        f"seconds per batch: EDSR {full['edsr']:.3f}, CAE {full['cae']:.3f}, Noise2Net {full['noise2net']:.3f} "
        f"(whole batch on each); {step_name} {t_step:.3f} (medians of {args.repeats} rounds)"
    )
    for side in (args.size, args.size // 2):
        g = gflop if side == (cae_size or args.size) else flop_floor(args.size, side, args.model)
        for p in (1 / 3, 1 / 6):
            floor = p * (g["edsr"] + g["cae"]) / g["model_step"]
            print(f"knob: cae_size={side} p_edsr=p_cae={p:.3f} -> FLOP floor {floor:.3f} of a {step_name}")
    if args.memory_batch:
        memory = peak_memory_mib(args.device, weights, args.memory_batch, args.size)
        kind = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS growth"
        print(
            f"memory: DeepAugment step, batch {args.memory_batch} at {args.size} px: {memory:.0f} MiB ({kind})"
        )

    print(
        f"--- ratios over {args.repeats} interleaved rounds (speed: total times; cost: median per-round ratio) ---"
    )
    for kind in ("edsr", "cae"):
        print(f"{kind}: batched / reference procedure = {total_ratio(times, kind + '_reference', kind):.2f}x")
    costs = [("DeepAugment mix", "mix", floor_mix), ("Noise2Net on half", "noise2net_half", floor_n2n)]
    if cpu:
        costs.append(("Noise2Net on half, PyTorch ops only", "noise2net_pytorch_half", floor_n2n))
        speedup = total_ratio(times, "noise2net_pytorch", "noise2net")
        print(f"noise2net: C kernels / PyTorch ops = {speedup:.2f}x")
    for name, key, floor in costs:
        cost = ratio(times, key, "model_step")
        print(f"{name} / {step_name} = {cost:.3f} (FLOP floor {floor:.3f}: {cost / floor:.2f}x floor)")


if __name__ == "__main__":
    main()
