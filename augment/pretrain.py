"""Built-in pretraining of the DeepAugment networks on the run's own training images (no download needed).

EDSR learns x4 super-resolution (MSE on antialiased-bicubic-downscaled crops; Adam at a constant learning rate
after 20 warm-up steps, an exponential moving average of its weights is the result) until its held-out PSNR beats
bicubic upsampling by TARGET_GAIN_DB (checked every CHECK_EVERY_S seconds), for at most 60 % of the time budget.
The CAE learns reconstruction (MSE through the stochastic binarisation, straight-through gradient; Adam with
cosine decay over wall time) in the other 40 %. Both start from working codecs so that short CPU budgets still
give faithful networks: EDSR from the least-squares linear x4 upsampler of the data (:func:`init_edsr_upsampler`),
the CAE from a blurry thermometer-code codec (:func:`init_cae_codec`); training adds detail. Quality is measured on
held-out images: EDSR PSNR against bicubic upsampling of the same input, and CAE reconstruction PSNR; both go to
``report.json`` next to the checkpoints.

Checkpoints are plain state dicts with the public names (``edsr_baseline_x4.pt``, ``model_final.state``),
cached under ``cache_dir/<hash>/`` keyed by the image set (relative paths and sizes) and the settings, written
atomically under a file lock so several processes can call :func:`ensure_pretrained` at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from augment.base import check_precision, network_dtype
from augment.images import list_images, load_images, write_atomic
from augment.networks import CAE, EDSR
from augment.networks.cae import MIN_SIZE as MIN_CAE_SIZE
from augment.networks.edsr import DIV2K_RGB_MEAN, RGB_RANGE, downscale

log = logging.getLogger(__name__)

CACHE_SUBDIR = "augment"  # pretrained networks live in <cache dir>/augment/<key>/ (training, CLI, benchmarks)
PRETRAIN_VERSION = 3  # bump when the training procedure changes: it is part of the cache key
EDSR_FILE, CAE_FILE, REPORT_FILE = "edsr_baseline_x4.pt", "model_final.state", "report.json"
TARGET_GAIN_DB = 1.0  # EDSR should beat bicubic upsampling by at least this much on held-out images
EDSR_SHARE = 0.6  # of the time budget at most; the CAE gets the rest (it starts closer to its goal)
EDSR_BATCH, CAE_BATCH = 16, 8  # crops per step
EDSR_EMA_DECAY = (
    0.99  # weight average that stands in for a learning-rate decay, so training can stop any time
)
CHECK_EVERY_S = 20.0  # seconds between held-out checks of the EDSR target
WARMUP_STEPS = 20  # keeps Adam's first steps from wrecking the fitted upsampler
LINEAR_FIT_IMAGES = 512  # images for the least-squares linear upsampler the EDSR starts from


def psnr(a: Tensor, b: Tensor) -> float:
    """Mean per-image PSNR (dB) of [N, 3, H, W] images in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (-10 * mse.log10()).mean().item()


def fit_linear_upsampler(images: Tensor, ridge: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Least-squares linear x4 upsampler with 3x3 low-resolution support, in EDSR's mean-shifted [0, 255] space.

    Args:
        images: uint8 [N, 3, S, S] high-resolution images (S divisible by 4).

    Returns:
        (weight [4, 4, 3, 3, 3, 3], bias [4, 4, 3]): for output phase (a, b) -- row 4y + a, column 4x + b -- and
        output colour c, the 3x3 kernel over the 3 input colours of the low-resolution image, and the offset.
    """
    mean = RGB_RANGE * torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1)
    hr = images.float() - mean
    lr = downscale(images.float() / 255) * RGB_RANGE - mean
    n, _, h, w = lr.shape
    x = F.unfold(lr, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    y = hr.view(n, 3, h, 4, w, 4).permute(0, 2, 4, 3, 5, 1).reshape(-1, 48).double()
    solution = torch.linalg.solve(x.T @ x + ridge * torch.eye(28, dtype=x.dtype), x.T @ y).float()
    return solution[:27].T.reshape(4, 4, 3, 3, 3, 3), solution[27].view(4, 4, 3)


def init_edsr_upsampler(net: EDSR, weight: Tensor, bias: Tensor, block_scale: float = 0.1) -> EDSR:
    """Make ``net`` start as the linear upsampler from :func:`fit_linear_upsampler` plus a small residual body.

    The head copies the mean-shifted RGB to features 0-2. The first x2 tail stage computes, for each of its 4
    sub-pixel phases (i1, j1), the 12 outputs (phase (i2, j2), colour c) of the 4 x4 pixels it covers; the
    second stage routes them to their sub-pixels and the last conv reads features 0-2. The last conv of every
    residual block and the final body conv are scaled by ``block_scale``.
    """
    stage1, stage2, last = net.tail[0][0], net.tail[0][2], net.tail[1]
    with torch.no_grad():
        for block in net.body[:-1]:
            block.body[2].weight.mul_(block_scale)
            block.body[2].bias.zero_()
        net.body[-1].weight.mul_(block_scale)
        net.body[-1].bias.zero_()
        head = net.head[0]
        head.weight[:3], head.bias[:3] = 0.0, 0.0
        for conv in (stage1, stage2, last):
            conv.weight.zero_()
            conv.bias.zero_()
        for c in range(3):
            head.weight[c, c, 1, 1] = last.weight[c, c, 1, 1] = 1.0
            for i1, j1, i2, j2 in itertools.product(range(2), repeat=4):
                feature = 3 * (2 * i2 + j2) + c
                stage1.weight[4 * feature + 2 * i1 + j1, :3] = weight[2 * i1 + i2, 2 * j1 + j2, c]
                stage1.bias[4 * feature + 2 * i1 + j1] = bias[2 * i1 + i2, 2 * j1 + j2, c]
                stage2.weight[4 * c + 2 * i2 + j2, feature, 1, 1] = 1.0
    return net


def init_cae_codec(net: CAE, levels: int = 10, sharpness: float = 40.0, block_scale: float = 0.1) -> CAE:
    """Make ``net`` start as a working (blurry) codec, so short pretraining budgets still give faithful output.

    Encoder: features 0-2 carry the mean colour of each 4x4 cell (2x2 averages in both strided convs) and the
    code thermometer-encodes it: bit (c, t) = tanh(sharpness * (colour_c - (t + 0.5) / levels)), 3 * levels of
    the 32 code channels. Decoder: the first conv turns the bits of colour c into the pre-activation that the
    final tanh maps to the quantised colour, carried as LeakyReLU-safe positive / negative parts (features 2c,
    2c + 1); transposed convs upsample by nearest neighbour and the remaining convs pass features through their
    centre taps. Residual blocks keep their random first conv; their last conv is scaled by ``block_scale``.
    Cells on the outer ring, which the decoder's unpadded convs drop, come out mid-grey.
    """
    grey = torch.tensor(0.45)
    level = (torch.arange(levels + 1) / levels).clamp(max=0.98)
    pre = torch.atanh(level) - torch.atanh(grey)  # pre-activation of the final tanh for n bits set
    step = (pre[1:] - pre[:-1]) / 2  # bit b in {-1, 1} adds step * (b + 1)
    leak = 1 + 0.01  # LeakyReLU(s) - LeakyReLU(-s) = 1.01 s
    with torch.no_grad():
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        blocks = [net.e_block_1, net.e_block_2, net.e_block_3, net.d_block_1, net.d_block_2, net.d_block_3]
        for conv in convs:
            if not any(conv is block[1] or conv is block[4] for block in blocks):
                conv.weight.zero_()
                conv.bias.zero_()
        for block in blocks:
            block[4].weight.mul_(block_scale)
            block[4].bias.zero_()
        for c in range(3):
            net.e_conv_1[1].weight[c, c, 1:3, 1:3] = net.e_conv_2[1].weight[c, c, 1:3, 1:3] = 0.25
            for t in range(levels):
                bit = c * levels + t
                net.e_conv_3[0].weight[bit, c, 2, 2] = sharpness
                net.e_conv_3[0].bias[bit] = -sharpness * (t + 0.5) / levels
                net.d_up_conv_1[0].weight[2 * c, bit, 1, 1] = step[t]
                net.d_up_conv_1[0].weight[2 * c + 1, bit, 1, 1] = -step[t]
            net.d_up_conv_1[0].bias[2 * c] = pre[0] + step.sum()
            net.d_up_conv_1[0].bias[2 * c + 1] = -(pre[0] + step.sum())
            for sign in (0, 1):
                f = 2 * c + sign
                net.d_up_conv_1[3].weight[f, f] = net.d_up_conv_2[3].weight[f, f] = 1.0
                net.d_up_conv_2[0].weight[f, f, 1, 1] = net.d_up_conv_3[0].weight[f, f, 1, 1] = 1.0
                net.d_up_conv_3[3].weight[c, f, 1, 1] = (1 - 2 * sign) / leak
            net.d_up_conv_3[3].bias[c] = torch.atanh(grey)
    return net


def _crops(images: Tensor, batch: int, patch: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Endless random channels-last batches of ``patch`` crops (multiple-of-4 offsets, random h-flips) from uint8
    images, as float in [0, 1]."""
    n, _, h, w = images.shape
    while True:
        idx = torch.randint(0, n, (batch,), generator=gen)
        top = torch.randint(0, (h - patch) // 4 + 1, (1,), generator=gen).item() * 4
        left = torch.randint(0, (w - patch) // 4 + 1, (1,), generator=gen).item() * 4
        x = images[idx, :, top : top + patch, left : left + patch].float() / 255
        flip = torch.rand(batch, generator=gen) < 0.5
        yield torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).contiguous(memory_format=torch.channels_last)


def _ema(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Moving-average update with decay min(decay, n / (n + 1)) after n updates: a plain mean over the first steps."""

    def update(average: Tensor, current: Tensor, n: Tensor) -> Tensor:
        return average + (current - average) * (1 - (n / (n + 1)).clamp(max=decay))

    return update


def _fit(
    net: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor], Tensor],
    batches: Iterator[Tensor],
    seconds: float,
    lr: float,
    device: torch.device,
    bar: tqdm,
    bar_offset: float,
    ema_decay: float | None = None,
    done: Callable[[nn.Module], bool] | None = None,
    check_every_s: float = CHECK_EVERY_S,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, int, float]:
    """Adam with WARMUP_STEPS of linear warm-up for at most ``seconds`` of wall time (checks included).

    Without ``ema_decay`` the learning rate then decays by a cosine over ``seconds`` and ``net`` is the result;
    with it the rate stays constant and an exponential moving average of the weights is the result. ``done``
    (on the result, every ``check_every_s`` seconds) ends training early. ``bar`` counts seconds; this phase moves
    it from ``bar_offset``. With ``dtype`` bfloat16 the forward and backward passes run under bf16 autocast (weights,
    gradients, Adam state and the average stay float32). Returns (result in eval mode, steps, seconds spent).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    average = None if ema_decay is None else AveragedModel(net, avg_fn=_ema(ema_decay))
    result = net if average is None else average.module
    start, steps, next_check = time.perf_counter(), 0, check_every_s
    net.train()
    while (elapsed := time.perf_counter() - start) < seconds:
        decay = 1.0 if average is not None else 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (steps + 1) / WARMUP_STEPS) * decay
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = loss_fn(net, next(batches).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average is not None:
            average.update_parameters(net)
        steps += 1
        bar.set_postfix_str(f"{type(net).__name__} loss {loss.item():.4f}", refresh=False)
        bar.update(min(bar_offset + min(time.perf_counter() - start, seconds), bar.total) - bar.n)
        if done is not None and time.perf_counter() - start >= next_check:
            next_check += check_every_s
            if done(result.eval()):
                break
            result.train()
    return result.eval(), steps, time.perf_counter() - start


def _edsr_loss(net: nn.Module, hr: Tensor) -> Tensor:
    return (net(downscale(hr)) - hr).pow(2).mean()


def _cae_loss(net: nn.Module, x: Tensor) -> Tensor:
    return (net(x) - x).pow(2).mean()


@torch.no_grad()
def edsr_gain(edsr: EDSR, holdout: Tensor) -> dict[str, float]:
    """Held-out PSNR of EDSR x4 and of bicubic upsampling of the same downscaled input, and their gap (dB)."""
    device = next(edsr.parameters()).device
    hr = holdout.to(device).float() / 255
    lr = downscale(hr)
    bicubic = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    edsr_psnr, bicubic_psnr = psnr(edsr(lr).clamp(0, 1), hr), psnr(bicubic, hr)
    return {"edsr_psnr": edsr_psnr, "bicubic_psnr": bicubic_psnr, "edsr_gain_db": edsr_psnr - bicubic_psnr}


@torch.no_grad()
def evaluate(edsr: EDSR, cae: CAE, holdout: Tensor, seed: int = 0) -> dict[str, float]:
    """Held-out PSNRs: EDSR x4 vs bicubic upsampling of the same downscaled input (:func:`edsr_gain`), CAE."""
    device = next(cae.parameters()).device
    hr = holdout.to(device).float() / 255
    noise = torch.rand(
        (hr.shape[0], 32, hr.shape[-2] // 4, hr.shape[-1] // 4),
        generator=torch.Generator().manual_seed(seed),
    ).to(device)
    return {**edsr_gain(edsr, holdout), "cae_psnr": psnr(cae(hr, noise=noise).clamp(0, 1), hr)}


def pretrain(
    images: Tensor,
    budget_s: float,
    patch_size: int = 32,
    cae_patch_size: int = 32,
    holdout: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    target_gain_db: float = TARGET_GAIN_DB,
    check_every_s: float = CHECK_EVERY_S,
    precision: str = "auto",
) -> tuple[EDSR, CAE, dict[str, float | str]]:
    """Train EDSR and CAE on uint8 images [N, 3, S, S] within ``budget_s`` seconds; returns nets and report.

    EDSR trains on ``patch_size`` crops until its held-out gain over bicubic reaches ``target_gain_db`` (checked
    every ``check_every_s`` seconds) or EDSR_SHARE of the budget is spent; the CAE (about 3x the FLOPs per
    pixel) trains on ``cae_patch_size`` crops for the rest of the budget. The last ``holdout`` images (at most
    N // 4) are held out for the checks and the report. The global RNG states are restored afterwards, so a
    run that pretrains on a cold cache draws the same model init and data order as one with a warm cache.
    ``precision`` ("auto", "fp32", "bf16") is the arithmetic of the training steps: "auto" trains under bf16
    autocast where bf16 convolutions are fast (:func:`augment.base.has_fast_bf16`), fp32 elsewhere. Networks
    and crops are channels-last while training; the held-out checks run in fp32.
    """
    device = torch.device(device)
    dtype = network_dtype(device, check_precision(precision), torch.float32)
    with torch.random.fork_rng(
        devices=[device] if device.type == "cuda" else []
    ):  # leave the run's RNG alone
        n, _, size, _ = images.shape
        n_hold = min(holdout, n // 4)
        if n_hold < 1:
            raise ValueError(f"pretraining needs at least 4 images, got {n}")
        train, hold = images[: n - n_hold], images[n - n_hold :]
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        edsr = init_edsr_upsampler(EDSR(), *fit_linear_upsampler(train[:LINEAR_FIT_IMAGES]))
        edsr = edsr.to(device, memory_format=torch.channels_last)
        cae = init_cae_codec(CAE()).to(device, memory_format=torch.channels_last)
        report: dict[str, float | str] = {"images": n - n_hold, "holdout_images": n_hold, "image_size": size}
        report["precision"] = "bf16" if dtype == torch.bfloat16 else "fp32"
        report["edsr_initial_gain_db"] = edsr_gain(edsr, hold)["edsr_gain_db"]
        edsr_crops = _crops(train, EDSR_BATCH, min(patch_size, size) // 4 * 4, gen)
        cae_crops = _crops(train, CAE_BATCH, max(MIN_CAE_SIZE, min(cae_patch_size, size) // 4 * 4), gen)
        bar_format = (
            "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
        )
        with tqdm(
            total=budget_s,
            desc="pretrain DeepAugment nets",
            bar_format=bar_format,
            disable=not progress,
            mininterval=0.1 if sys.stderr.isatty() else 10.0,  # a log file gets a line per 10 s, not per step
        ) as bar:
            edsr_s, cae_s = EDSR_SHARE * budget_s, (1 - EDSR_SHARE) * budget_s

            def reached(net: nn.Module) -> bool:
                return edsr_gain(net, hold)["edsr_gain_db"] >= target_gain_db

            edsr, report["edsr_steps"], report["edsr_seconds"] = _fit(
                edsr,
                _edsr_loss,
                edsr_crops,
                edsr_s,
                1e-3,
                device,
                bar,
                0.0,
                EDSR_EMA_DECAY,
                reached,
                check_every_s,
                dtype,
            )
            bar.total = report["edsr_seconds"] + cae_s  # an early stop shortens the whole run
            bar.refresh()
            cae, report["cae_steps"], report["cae_seconds"] = _fit(
                cae, _cae_loss, cae_crops, cae_s, 1e-3, device, bar, report["edsr_seconds"], dtype=dtype
            )
        report.update(evaluate(edsr, cae, hold, seed))
        contiguous = torch.contiguous_format
        return edsr.to("cpu", memory_format=contiguous), cae.to("cpu", memory_format=contiguous), report


def _cache_key(files: list[Path], root: Path, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for f in files:
        digest.update(f"{f.relative_to(root).as_posix()}\0{f.stat().st_size}\n".encode())
    return digest.hexdigest()[:20]


def ensure_pretrained(
    image_root: Path | str,
    cache_dir: Path | str,
    image_size: int = 64,
    budget_s: float = 450.0,
    max_images: int = 2048,
    patch_size: int = 32,
    cae_patch_size: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "auto",
) -> dict[str, Path]:
    """Return {'edsr': path, 'cae': path} of checkpoints trained on ``image_root/<wnid>/*``, training if needed.

    Args:
        image_root: ImageNet-layout folder of training images (JPEG/PNG).
        cache_dir: where checkpoints are cached, keyed by a hash of the image set and these settings.
        image_size: images are loaded as centre crops of this side (the training resolution).
        budget_s: wall-clock seconds of training for both networks together (EDSR stops early at its target).
        max_images: at most this many images (evenly spaced over the sorted list) are used.
        patch_size, cae_patch_size: side of the random training crops of EDSR / the CAE.
        seed: seed of the sampling and initialisation.
        device: where to train (default: CUDA if available, else CPU).
        progress: show a tqdm progress bar.
        precision: arithmetic of the training steps, see :func:`pretrain` (not part of the cache key: like the
            device, it changes how the networks are reached, not what was asked for).
    """
    image_root, cache_dir = Path(image_root).expanduser(), Path(cache_dir).expanduser()
    if image_size < 16 or image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 and >= 16, got {image_size}")
    if budget_s <= 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s}")
    check_precision(precision)
    files = list_images(image_root)
    if len(files) > max_images:
        files = [files[i * len(files) // max_images] for i in range(max_images)]
    settings = {
        "version": PRETRAIN_VERSION,
        "image_size": image_size,
        "budget_s": budget_s,
        "patch_size": patch_size,
        "cae_patch_size": cae_patch_size,
        "seed": seed,
        "target_gain_db": TARGET_GAIN_DB,
    }
    entry = cache_dir / _cache_key(files, image_root, settings)
    paths = {"edsr": entry / EDSR_FILE, "cae": entry / CAE_FILE}
    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry / ".lock")):
        if (entry / REPORT_FILE).is_file():  # written last
            return paths
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        images = load_images([files[i] for i in order], image_size)
        edsr, cae, report = pretrain(
            images,
            budget_s,
            patch_size,
            cae_patch_size,
            seed=seed,
            device=device,
            progress=progress,
            precision=precision,
        )
        report.update(settings, device=str(device), image_root=str(image_root))
        write_atomic(lambda tmp: torch.save(edsr.state_dict(), tmp), paths["edsr"])
        write_atomic(lambda tmp: torch.save(cae.state_dict(), tmp), paths["cae"])
        write_atomic(lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)), entry / REPORT_FILE)
        if report["edsr_gain_db"] < TARGET_GAIN_DB:
            log.warning(
                "pretrained EDSR beats bicubic by %.2f dB (< %.1f dB target) after %.0f s; raise budget_s",
                report["edsr_gain_db"],
                TARGET_GAIN_DB,
                report["edsr_seconds"],
            )
        log.info("DeepAugment pretraining: %s", report)
    return paths


def read_report(paths: dict[str, Path]) -> dict:
    """The ``report.json`` written next to checkpoints returned by :func:`ensure_pretrained`."""
    return json.loads((paths["edsr"].parent / REPORT_FILE).read_text())
