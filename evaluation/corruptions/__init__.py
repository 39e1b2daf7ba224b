"""ImageNet-C corruptions and ImageNet-P perturbation sequences as batched tensor ops.

``corrupt(images, name, severity)`` applies one of the 19 ImageNet-C corruptions to a float
batch [B, 3, H, W] in [0, 1] on any device, with per-sample randomness from a generator;
``perturbation_sequence`` makes ImageNet-P frame sequences; ``c_plan`` and ``c_subset`` fix
which validation images are scored under which corruption. See docs/corruptions.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from augment.threads import run_on_cpu_threads

from ._inputs import check_images, resolve_scale, working_dtype
from .blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from .digital import contrast, elastic_transform, jpeg_compression, saturate
from .noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from .perturbations import NOISE_PERTURBATIONS, PERTURBATIONS, perturbation_sequence
from .pixelate import pixelate
from .plan import c_plan, c_subset
from .spatter import spatter
from .weather import brightness, fog, frost, snow

Corruption = Callable[[Tensor, int, "torch.Generator | None", float], Tensor]

CORRUPTIONS: dict[str, Corruption] = {
    fn.__name__: fn
    for fn in (
        gaussian_noise,
        shot_noise,
        impulse_noise,
        defocus_blur,
        glass_blur,
        motion_blur,
        zoom_blur,
        snow,
        frost,
        fog,
        brightness,
        contrast,
        elastic_transform,
        pixelate,
        jpeg_compression,
        speckle_noise,
        gaussian_blur,
        spatter,
        saturate,
    )
}
"""All 19 corruptions in ImageNet-C's order: the 15 scored ones, then the 4 held-out extras."""
CORRUPTION_NAMES: tuple[str, ...] = tuple(CORRUPTIONS)
COMMON_CORRUPTIONS: tuple[str, ...] = CORRUPTION_NAMES[:15]
EXTRA_CORRUPTIONS: tuple[str, ...] = CORRUPTION_NAMES[15:]
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CPU_CHUNK_ELEMENTS = 8 * 3 * 224 * 224
"""On the CPU a batch is corrupted in chunks of about this many values (eight 224 px images,
4.8 MB in float32), whose intermediates stay in the last-level cache, each copied into the
output while still cached. On the project's AMD EPYC VM (all 19 at 224 px, 32 images, median of
three passes) this takes 15.0 ms per image with two threads against 15.9 ms in chunks of 13
images (2**21 values, used before), 15.8 ms in chunks of 4 and 18.2 ms for the whole batch; with one
thread 25.4 ms against 26.4 (13 images) and 25.9 (4). Fixed rather than scaled with the thread count,
because the chunks decide the order of the random draws."""
CPU_CONCURRENT_CORRUPTIONS = frozenset(
    {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "spatter", "elastic_transform", "fog"}
)
"""Corruptions whose CPU chunks run concurrently (up to one per torch thread, sharing the
threads), each drawing from a generator of its own: they are bound by torch's CPU generator,
which is sequential, so intra-op threads leave a core waiting while it draws. On the AMD EPYC
VM with two threads (32 images of 224 px, medians of four interleaved passes) this made
gaussian_noise 1.9x, speckle_noise 1.7x, shot_noise 1.6x, impulse_noise 1.5x, spatter 1.3x,
elastic_transform and fog 1.2x as fast; the other corruptions ran 0.7-1.0x as fast that way,
so they keep intra-op threads."""
CPU_CHUNK_IMAGES = {"jpeg_compression": None}
"""Corruptions whose CPU chunks are not ``CPU_CHUNK_ELEMENTS``: images per chunk, None for the
whole batch. JPEG runs image by image anyway (a codec call)."""


@torch.no_grad()
def corrupt(
    images: Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
    *,
    scale: float | None = None,
) -> Tensor:
    """Apply an ImageNet-C corruption to a batch.

    Args:
        images: float [B, 3, H, W] in [0, 1], any device; H and W at least 8.
        name: one of ``CORRUPTION_NAMES``.
        severity: 1 .. 5.
        generator: source of the per-sample randomness (on the images' device); None uses the
            global generator. Deterministic corruptions ignore it. On the CPU the draws are
            made chunk by chunk (see ``CPU_CHUNK_ELEMENTS``; for ``CPU_CONCURRENT_CORRUPTIONS``,
            with several chunks, from a generator per chunk seeded from this one), so they
            differ from a GPU's.
        scale: multiplier for the reference's pixel-sized parameters (blur radii and sigmas,
            glass-shuffle distance, motion streaks, snow flake size, spatter blobs, frost
            texture). None means shorter side / 224, so every image looks like ImageNet-C at
            224 px; ``scale=1`` keeps pixel values, as the ``imagecorruptions`` package does at
            every size. Sizes relative to the image (zoom, pixelate, fog, elastic) ignore it.

    Returns:
        float [B, 3, H, W] in [0, 1], same device and dtype as ``images`` (memory layout not
        guaranteed: JPEG on the CPU returns it channels-last).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: choose one of {', '.join(CORRUPTION_NAMES)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer 1..5, got {severity!r}")
    check_images(images, generator)
    pixel_scale = resolve_scale(images, scale)
    work = images.to(working_dtype(images))
    step = CPU_CHUNK_IMAGES.get(name, max(1, CPU_CHUNK_ELEMENTS // images[0].numel()))
    if images.device.type == "cpu" and step is not None:
        out = torch.empty_like(work)
        _corrupt_cpu_chunks(name, severity, generator, pixel_scale, work.split(step), out.split(step))
    else:
        out = CORRUPTIONS[name](work, severity, generator, pixel_scale)
    return out.to(images.dtype)


def _corrupt_cpu_chunks(
    name: str,
    severity: int,
    generator: torch.Generator | None,
    scale: float,
    chunks: tuple[Tensor, ...],
    targets: tuple[Tensor, ...],
) -> None:
    """Corrupt each chunk into its target (copied while still cached): one after the other with
    the caller's generator, or, for several chunks of a ``CPU_CONCURRENT_CORRUPTIONS`` entry,
    concurrently, each with a generator of its own seeded from the caller's (the same draws for
    any thread count)."""
    fn = CORRUPTIONS[name]
    if name not in CPU_CONCURRENT_CORRUPTIONS or len(chunks) == 1:
        for chunk, target in zip(chunks, targets, strict=True):
            target.copy_(fn(chunk, severity, generator, scale))
        return
    seeds = torch.randint(2**63 - 1, (len(chunks),), generator=generator).tolist()

    def task(chunk: Tensor, target: Tensor, seed: int) -> Callable[[], None]:
        return lambda: target.copy_(fn(chunk, severity, torch.Generator().manual_seed(seed), scale))

    run_on_cpu_threads([task(*args) for args in zip(chunks, targets, seeds, strict=True)])


__all__ = [
    "COMMON_CORRUPTIONS",
    "CORRUPTIONS",
    "CORRUPTION_NAMES",
    "EXTRA_CORRUPTIONS",
    "NOISE_PERTURBATIONS",
    "PERTURBATIONS",
    "SEVERITIES",
    "c_plan",
    "c_subset",
    "corrupt",
    "perturbation_sequence",
]
