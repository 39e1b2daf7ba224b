"""ImageNet-P perturbation sequences generated from a batch of (clean) images.

``perturbation_sequence(images, name)`` returns frames [B, T, 3, H, W] in [0, 1]: T = 31
(41 for translate), made as ImageNet-P's generation code makes its videos. Noise sequences
(``NOISE_PERTURBATIONS``) are a clean first frame followed by independent noisy copies, and are
scored against the first frame; the others change in small consecutive steps and are scored
frame to frame (with a frame step equal to the difficulty).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from ._inputs import check_images, resolve_scale, working_dtype
from ._ops import adjust_hsv, correlate, gaussian_filter, motion_kernel, randn, resample_kernel
from .noise import poisson_counts
from .spatter import liquid_layer, water
from .weather import snow_blend

FRAMES = 31
TRANSLATE_FRAMES = 41
NOISE_SIGMA = (0.03, 0.05, 0.08)  # gaussian_noise, per difficulty
SHOT_PHOTONS = (300, 120, 60)
SPECKLE_SIGMA = (0.05, 0.10, 0.15)


def _noise(x: Tensor, perturb: Callable[[Tensor], Tensor]) -> Tensor:
    """The clean frame followed by ``FRAMES - 1`` independently perturbed copies."""
    copies = x[:, None].expand(-1, FRAMES - 1, -1, -1, -1)
    return torch.cat([x[:, None], perturb(copies).clamp_(0, 1)], 1)


def _gaussian_noise(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    sigma = NOISE_SIGMA[difficulty - 1]
    return _noise(x, lambda c: c + sigma * randn(c.shape, c, generator))


def _shot_noise(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    photons = SHOT_PHOTONS[difficulty - 1]
    return _noise(x, lambda c: poisson_counts(c, photons, generator) / photons)


def _speckle_noise(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    sigma = SPECKLE_SIGMA[difficulty - 1]
    return _noise(x, lambda c: c + c * sigma * randn(c.shape, c, generator))


def _motion(x: Tensor, radius: int, sigma: float, angle: float, scale: float) -> Tensor:
    """Motion blur of [B, C, H, W] at one angle (degrees) for the whole batch."""
    h, w = x.shape[-2:]
    angles = torch.full((1,), angle, device=x.device, dtype=x.dtype)
    kernel = resample_kernel(motion_kernel(radius, sigma, angles, round(h / scale), round(w / scale)), scale)
    return correlate(x, kernel, "replicate")


def _motion_blur(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Radius 10, sigma 3, the angle turning from -120 to 0 degrees in steps of 4."""
    return torch.stack([_motion(x, 10, 3, (i - 30) * 4, scale).clamp_(0, 1) for i in range(FRAMES)], 1)


def _affine(x: Tensor, matrix: Tensor, padding: str) -> Tensor:
    """Warp [B, C, H, W] by a 3x3 pixel-coordinate matrix (source to target, bilinear)."""
    b, _, h, w = x.shape
    matrix = matrix.to(device=x.device, dtype=x.dtype).expand(b, 3, 3)
    return kornia.geometry.transform.warp_perspective(
        x, matrix, (h, w), padding_mode=padding, align_corners=True
    )


def _about_centre(x: Tensor, linear: Tensor, shift: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """3x3 matrix applying the 2x2 ``linear`` about the image centre, then translating by ``shift``."""
    h, w = x.shape[-2:]
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre + torch.tensor(shift, dtype=torch.float64)
    return matrix


def _zoom_blur(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Frame i averages the image zoomed by 1, 1.004, ..., 1 + 0.004 i (a growing radial blur)."""
    total, frames = torch.zeros_like(x), []
    for i in range(FRAMES):
        total += _affine(
            x, _about_centre(x, (1 + 0.004 * i) * torch.eye(2, dtype=torch.float64)), "reflection"
        )
        frames.append(total / (i + 1))
    return torch.stack(frames, 1).clamp_(0, 1)


def _snow(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """One flake layer (mean 0.05, std 0.3, zoom 3, threshold 0.5) streaked by motion blur of
    radius 14, sigma 4 at an angle turning from -150 to -30 degrees."""
    b, _, h, w = x.shape
    zoom = 3 * scale
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    flakes = 0.05 + 0.3 * randn((b, 1, ch, cw), x, generator)
    flakes = F.interpolate(
        flakes, size=(round(ch * zoom), round(cw * zoom)), mode="bilinear", align_corners=True
    )
    top, left = (flakes.shape[-2] - h) // 2, (flakes.shape[-1] - w) // 2
    flakes = flakes[..., top : top + h, left : left + w]
    flakes = torch.floor(torch.where(flakes < 0.5, 0, flakes).clamp(0, 1) * 255) / 255
    frames = []
    for i in range(FRAMES):
        streaks = torch.round(_motion(flakes, 14, 4, i * 4 - 150, scale) * 255) / 255
        frames.append(snow_blend(x, streaks, 0.85))
    return torch.stack(frames, 1)


def _brightness(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """HSV value shifted from -0.3 to +0.3 in steps of 0.02."""
    return torch.stack([adjust_hsv(x, 2, 1.0, (i - 15) * 0.02) for i in range(FRAMES)], 1)


def _translate(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Horizontal shifts from -20 to +20 px (times ``scale``), 1 px per frame; mirrored border."""
    eye = torch.eye(2, dtype=torch.float64)
    return torch.stack(
        [
            _affine(x, _about_centre(x, eye, ((i - 20) * scale, 0.0)), "reflection")
            for i in range(TRANSLATE_FRAMES)
        ],
        1,
    )


def _rotation(degrees: float) -> Tensor:
    t = math.radians(degrees)
    return torch.tensor([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]], dtype=torch.float64)


def _rotate(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Rotations from -15 to +15 degrees about the centre, 1 degree per frame; mirrored border."""
    return torch.stack(
        [_affine(x, _about_centre(x, _rotation(i - 15)), "reflection") for i in range(FRAMES)], 1
    )


def _shear(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Horizontal shears from -15 to +15 degrees, 1 degree per frame; mirrored border."""
    frames = []
    for i in range(FRAMES):
        linear = torch.tensor([[1.0, -math.tan(math.radians(i - 15))], [0.0, 1.0]], dtype=torch.float64)
        frames.append(_affine(x, _about_centre(x, linear), "reflection"))
    return torch.stack(frames, 1)


def _scale(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Scalings from 0.4 to 1.15 about the centre in steps of 0.025; black outside the image."""
    eye = torch.eye(2, dtype=torch.float64)
    return torch.stack(
        [_affine(x, _about_centre(x, (0.4 + 0.025 * i) * eye), "zeros") for i in range(FRAMES)], 1
    )


def tilt_matrix(height: int, width: int, degrees: float) -> Tensor:
    """ImageNet-P's tilt homography [3, 3]: rotate the image plane by ``degrees`` about both the
    x and y axes and project it back with focal length ``sqrt(H^2 + W^2)``."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    focal = math.hypot(width, height)
    to_plane = torch.tensor(
        [[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1], [0, 0, 1]], dtype=torch.float64
    )
    about_x = torch.tensor([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]], dtype=torch.float64)
    about_y = torch.tensor([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]], dtype=torch.float64)
    push = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, focal], [0, 0, 0, 1]], dtype=torch.float64)
    project = torch.tensor(
        [[focal, 0, width / 2, 0], [0, focal, height / 2, 0], [0, 0, 1, 0]], dtype=torch.float64
    )
    return project @ push @ about_x @ about_y @ to_plane


def _tilt(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Perspective tilts from -15 to +15 degrees, 1 degree per frame; mirrored border."""
    h, w = x.shape[-2:]
    return torch.stack([_affine(x, tilt_matrix(h, w, i - 15), "reflection") for i in range(FRAMES)], 1)


def _gaussian_blur(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Gaussian blur with sigma 0.25 .. 1.3 px (times ``scale``), truncated at 6 sigma."""
    return torch.stack(
        [gaussian_filter(x, (0.25 + 0.035 * i) * scale, truncate=6.0).clamp_(0, 1) for i in range(FRAMES)], 1
    )


def _drip(liquid: Tensor) -> Tensor:
    """Move the liquid layer [B, 1, H, W] down: ``np.convolve(column, [.05, .1, .15, .7], "same")``."""
    h = liquid.shape[-2]
    p = F.pad(liquid, (0, 0, 2, 1))
    return (
        0.05 * p[..., 3 : 3 + h, :]
        + 0.1 * p[..., 2 : 2 + h, :]
        + 0.15 * p[..., 1 : 1 + h, :]
        + 0.7 * p[..., :h, :]
    )


def _spatter(x: Tensor, generator: torch.Generator | None, scale: float, difficulty: int) -> Tensor:
    """Water drops (mean 0.65, std 0.27, blob sigma 3.7 px, threshold 0.69) running down 2 px a frame."""
    liquid = liquid_layer(x, 0.65, 0.27, 3.7 * scale, 0.69, generator)
    frames = []
    for _ in range(FRAMES):
        frames.append(water(x, liquid, 0.6))
        liquid = _drip(liquid)
    return torch.stack(frames, 1)


_SEQUENCES: dict[str, Callable[[Tensor, torch.Generator | None, float, int], Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "brightness": _brightness,
    "translate": _translate,
    "rotate": _rotate,
    "tilt": _tilt,
    "scale": _scale,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "spatter": _spatter,
    "shear": _shear,
}
PERTURBATIONS: tuple[str, ...] = tuple(_SEQUENCES)
"""ImageNet-P's 10 test perturbations, then its 4 validation ones."""
NOISE_PERTURBATIONS: frozenset[str] = frozenset({"gaussian_noise", "shot_noise", "speckle_noise"})
"""Perturbations whose frames are compared with the first frame rather than the previous one."""


@torch.no_grad()
def perturbation_sequence(
    images: Tensor,
    name: str,
    generator: torch.Generator | None = None,
    *,
    difficulty: int = 1,
    scale: float | None = None,
) -> Tensor:
    """Make ImageNet-P frame sequences from a batch.

    Args:
        images: float [B, 3, H, W] in [0, 1], any device.
        name: one of ``PERTURBATIONS``.
        generator: source of the per-sample randomness (on the images' device).
        difficulty: 1 .. 3; sets the noise strength of the noise perturbations. The other
            sequences do not depend on it (their difficulty is the frame step used in scoring).
        scale: multiplier for pixel-sized parameters (shifts, blur radii); None means shorter
            side / 224, as in ``corrupt``.

    Returns:
        frames [B, T, 3, H, W] in [0, 1], same device and dtype as ``images``; T = 41 for
        translate, 31 otherwise.
    """
    if name not in _SEQUENCES:
        raise ValueError(f"unknown perturbation {name!r}: choose one of {', '.join(PERTURBATIONS)}")
    if difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
    check_images(images, generator)
    frames = _SEQUENCES[name](
        images.to(working_dtype(images)), generator, resolve_scale(images, scale), difficulty
    )
    return frames.to(images.dtype)
