"""ImageNet-C/P corruptions: contracts, fidelity to the reference implementations, plans, preview.

The reference is the ``imagecorruptions`` package (imagecorruptions-imaug); for frost and the
elastic transform, where that package departs from ImageNet-C's own generation code
(make_imagenet_c.py), the test compares with an independent NumPy/OpenCV/SciPy rendition of the
latter. Outputs are compared on real photos by their mean absolute difference from the clean
image, their structure (SSIM to the clean image) and their share of high-frequency energy,
and, for the deterministic corruptions, pixel by pixel (PSNR).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import io
import math
from pathlib import Path

import cv2
import imagecorruptions
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from imagecorruptions import corruptions as reference_ops
from PIL import Image
from scipy import stats as scipy_stats
from scipy.ndimage import distance_transform_edt, map_coordinates
from skimage.filters import gaussian
from skimage.metrics import structural_similarity

from evaluation.corruptions import (
    COMMON_CORRUPTIONS,
    CORRUPTION_NAMES,
    CPU_CHUNK_ELEMENTS,
    CPU_CONCURRENT_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    NOISE_PERTURBATIONS,
    PERTURBATIONS,
    c_plan,
    c_subset,
    corrupt,
    perturbation_sequence,
)
from evaluation.corruptions.__main__ import main as cli
from evaluation.corruptions._ops import adjust_hsv, correlate, motion_kernel, plasma_fractal
from evaluation.corruptions.blur import chain_sources, shuffle_sources
from evaluation.corruptions.digital import affine_grid
from evaluation.corruptions.jpeg import CHROMA_TABLE, LUMA_TABLE, quantization_table, tensor_round_trip
from evaluation.corruptions.noise import poisson_counts
from evaluation.corruptions.preview import sample_photos
from evaluation.corruptions.spatter import _distance_to_edges, _equalize

DETERMINISTIC = (
    "contrast",
    "brightness",
    "saturate",
    "pixelate",
    "jpeg_compression",
    "defocus_blur",
    "gaussian_blur",
    "zoom_blur",
)
RANDOM = tuple(name for name in CORRUPTION_NAMES if name not in DETERMINISTIC)
NOISY_DRAWS = {"frost": 8, "fog": 8, "spatter": 6, "snow": 4}  # corruptions whose strength varies a lot


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests run many small ops, where a second (often descheduled) OpenMP thread only adds waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- references


def imagenet_c_elastic(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """make_imagenet_c.py's elastic transform (affine warp + smoothed displacement), constants
    in units of 244 px per 224 px of image side; uint8 HxWx3 in, float in [0, 1] out."""
    constants = [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)]
    h, w = image.shape[:2]
    alpha, sigma, jitter = (244 * min(h, w) / 224 * v for v in constants[severity - 1])
    img = image.astype(np.float32) / 255
    centre = np.float32([h, w]) // 2
    square = min(h, w) // 3
    src = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
    img = cv2.warpAffine(img, cv2.getAffineTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx, dy = (
        gaussian(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3) * alpha for _ in range(2)
    )
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    channels = [map_coordinates(img[..., c], [y + dy, x + dx], order=1, mode="reflect") for c in range(3)]
    return np.clip(np.stack(channels, -1), 0, 1)


def imagenet_c_frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """make_imagenet_c.py's frost: one of the first five photos, cropped at native size."""
    weights = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    folder = (
        Path(next(iter(importlib.util.find_spec("imagecorruptions").submodule_search_locations))) / "frost"
    )
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][rng.integers(5)]
    photo = cv2.imread(str(folder / name))[..., ::-1]
    h, w = image.shape[:2]
    top, left = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
    return np.clip(weights[0] * image + weights[1] * photo[top : top + h, left : left + w], 0, 255) / 255


def reference(image: np.ndarray, name: str, severity: int, draw: int) -> np.ndarray:
    """The reference's output as float HxWx3 in [0, 1] (seeded per draw)."""
    if name == "elastic_transform":
        return imagenet_c_elastic(image, severity, np.random.default_rng(draw))
    if name == "frost":
        return imagenet_c_frost(image, severity, np.random.default_rng(draw))
    np.random.seed(draw)
    return imagecorruptions.corrupt(image, severity=severity, corruption_name=name).astype(np.float64) / 255


# --------------------------------------------------------------------------- statistics


def high_frequency_share(image: np.ndarray) -> float:
    """Share of the spectral energy of the (mean-removed) grey image above 1/4 cycle per pixel."""
    grey = image.mean(-1)
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    radius = np.hypot(np.fft.fftfreq(grey.shape[0])[:, None], np.fft.fftfreq(grey.shape[1])[None, :])
    return float(power[radius > 0.25].sum() / power.sum())


def image_stats(out: np.ndarray, clean: np.ndarray) -> tuple[float, float, float]:
    """(mean absolute difference, SSIM, high-frequency share) of float HxWx3 images in [0, 1]."""
    ssim = structural_similarity(out, clean, channel_axis=-1, data_range=1.0)
    return float(np.abs(out - clean).mean()), float(ssim), high_frequency_share(out)


@pytest.fixture(scope="module", params=[224, 64])
def photos(request) -> tuple[int, list[np.ndarray], torch.Tensor]:
    """scikit-image's four colour photos, as uint8 HxWx3 arrays and a float batch."""
    batch = sample_photos(request.param)
    arrays = [(image.permute(1, 2, 0) * 255).round().byte().numpy() for image in batch]
    return request.param, arrays, batch


def ours_as_arrays(batch: torch.Tensor, name: str, severity: int, seed: int) -> list[np.ndarray]:
    """Our output at the reference's pixel scale (scale=1), truncated to 8 bits like the reference's."""
    out = corrupt(batch, name, severity, torch.Generator().manual_seed(seed), scale=1.0)
    return list(np.floor(out.permute(0, 2, 3, 1).double().numpy() * 255) / 255)


# --------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_reference(photos, name):
    size, arrays, batch = photos
    for severity in range(1, 6):
        ours = np.stack(ours_as_arrays(batch, name, severity, 0))
        ref = np.stack([reference(image, name, severity, 0) for image in arrays])
        psnr = 10 * np.log10(1 / max(np.mean((ours - ref) ** 2), 1e-12))
        assert psnr >= 38, f"{name} severity {severity} at {size} px: PSNR {psnr:.1f} dB"


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_match_reference_statistics(photos, name):
    """Mean difference, SSIM and high-frequency share within 15% of the reference's, plus twice
    the spread of the reference's own per-draw means."""
    size, arrays, batch = photos
    draws = NOISY_DRAWS.get(name, 3)
    clean = [image.astype(np.float64) / 255 for image in arrays]
    for severity in range(1, 6):
        ref = np.array(
            [
                [image_stats(reference(a, name, severity, d), c) for a, c in zip(arrays, clean, strict=True)]
                for d in range(draws)
            ]
        )
        ours = np.array(
            [
                [
                    image_stats(o, c)
                    for o, c in zip(ours_as_arrays(batch, name, severity, d), clean, strict=True)
                ]
                for d in range(draws)
            ]
        )
        ref_mean, our_mean = ref.mean((0, 1)), ours.mean((0, 1))
        tolerance = 0.15 * np.abs(ref_mean) + 2 * ref.mean(1).std(0)
        for metric, r, o, t in zip(("MAD", "SSIM", "HF share"), ref_mean, our_mean, tolerance, strict=True):
            assert abs(o - r) <= t, (
                f"{name} severity {severity} at {size} px: {metric} {o:.4f} vs reference {r:.4f}"
            )


def test_glass_shuffle_matches_reference_displacements():
    """Our parallel shuffle moves pixels like the reference's sequential one: same distribution of
    vertical and horizontal source offsets, same share of neighbours that stay neighbours."""
    size, margin = 128, 16
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).astype(np.int64)
    generator = torch.Generator().manual_seed(1)
    for max_delta in (1, 2, 4):
        ref = np.stack(
            [
                reference_ops._shuffle_pixels_njit_glass_blur(size, size, grid.copy(), (1.0, max_delta, 2), s)
                - grid
                for s in range(2)
            ]
        )[:, margin:-margin, margin:-margin]
        source = torch.arange(size * size).expand(2, -1)
        for _ in range(2):
            source = source.gather(1, shuffle_sources(2, size, size, max_delta, torch.zeros(1), generator))
        rows, cols = (source // size).view(2, size, size), (source % size).view(2, size, size)
        ours = torch.stack([rows - torch.arange(size)[:, None], cols - torch.arange(size)], -1)
        ours = ours[:, margin:-margin, margin:-margin].numpy()
        for axis in (0, 1):
            low = min(ref[..., axis].min(), ours[..., axis].min())
            ref_hist = np.bincount((ref[..., axis] - low).ravel()) / ref[..., axis].size
            our_hist = np.bincount((ours[..., axis] - low).ravel()) / ours[..., axis].size
            n = max(len(ref_hist), len(our_hist))
            distance = (
                0.5
                * np.abs(
                    np.pad(ref_hist, (0, n - len(ref_hist))) - np.pad(our_hist, (0, n - len(our_hist)))
                ).sum()
            )
            assert distance < 0.03, (
                f"max_delta {max_delta}, axis {axis}: offset distributions differ by {distance:.3f}"
            )
        ref_kept = np.mean(np.all(ref[:, :, 1:] == ref[:, :, :-1], -1))
        our_kept = np.mean(np.all(ours[:, :, 1:] == ours[:, :, :-1], -1))
        assert abs(ref_kept - our_kept) < 0.03, (
            f"max_delta {max_delta}: neighbours kept {our_kept:.3f} vs {ref_kept:.3f}"
        )


def _pooled(
    observed: np.ndarray, expected: np.ndarray, minimum: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent outcomes until each bin expects at least ``minimum`` draws (chi-square's rule)."""
    bins, pending = [], np.zeros(2)
    for pair in zip(observed, expected, strict=True):
        pending += pair
        if pending[1] >= minimum:
            bins.append(pending)
            pending = np.zeros(2)
    bins[-1] = bins[-1] + pending
    return np.array(bins).T


@pytest.mark.parametrize("photons", [3, 60, 300])
def test_shot_noise_counts_follow_scipy_poisson(photons):
    """Poisson counts for 8-bit levels (alias tables) and for values between levels
    (``torch.poisson``) pass a chi-square test against SciPy's pmf of ``x * photons``."""
    levels = torch.tensor([0.0, 1.0, 37.0, 128.0, 255.0])
    generator = torch.Generator().manual_seed(photons)
    for offset in (0.0, 0.3):  # on the 8-bit grid, then off it
        x = ((levels + offset).clamp(max=255) / 255)[:, None].expand(-1, 100_000)
        counts = poisson_counts(x, photons, generator)
        assert counts.shape == x.shape and torch.equal(counts, counts.round())
        for rate, row in zip((x[:, 0].double() * photons).tolist(), counts.long().numpy(), strict=True):
            if rate == 0:
                assert not row.any(), "a zero rate must give zero counts"
                continue
            top = int(row.max()) + 1
            expected = scipy_stats.poisson.pmf(np.arange(top), rate) * len(row)
            expected[-1] += scipy_stats.poisson.sf(top - 1, rate) * len(row)
            observed = np.bincount(row, minlength=top).astype(float)
            obs, exp = _pooled(observed, expected)
            p_value = scipy_stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
            assert p_value > 1e-4, f"photons {photons}, rate {rate:.3f}: chi-square p = {p_value:.2e}"


@pytest.mark.parametrize("size", [32, 100])
def test_motion_blur_kernel_matches_reference(size):
    """Exact match with the reference's shift-and-add motion blur, including its early stop at the border."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (size, size + 7, 3))
    for radius, sigma, angle in ((10, 3, 30.0), (20, 15, -44.0), (15, 8, -100.0)):
        ref = reference_ops._motion_blur(image, radius=radius, sigma=sigma, angle=angle)
        kernel = motion_kernel(radius, sigma, torch.tensor([angle], dtype=torch.float64), size, size + 7)
        ours = correlate(torch.from_numpy(image).permute(2, 0, 1)[None], kernel, "replicate")
        np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), ref, atol=1e-6)


def test_plasma_fractal_matches_reference_distribution():
    np.random.seed(0)
    for decay in (2.0, 1.4):
        ref = np.stack([reference_ops.plasma_fractal(64, decay) for _ in range(1000)])
        ours = plasma_fractal(
            1000, 64, decay, torch.zeros((), dtype=torch.float64), torch.Generator().manual_seed(0)
        )
        assert (
            ours.shape == (1000, 64, 64) and (ours.amin((1, 2)) == 0).all() and (ours.amax((1, 2)) == 1).all()
        )
        ours = ours.numpy()
        assert abs(ours.mean() - ref.mean()) < 0.01
        assert abs(ours.std((1, 2)).mean() - ref.std((1, 2)).mean()) < 0.005
        ref_step = np.abs(np.diff(ref, axis=-1)).mean()
        assert abs(np.abs(np.diff(ours, axis=-1)).mean() - ref_step) < 0.05 * ref_step


@pytest.mark.parametrize("quality", [25, 18, 15, 10, 7])
def test_jpeg_quantization_tables_match_libjpeg(quality):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "JPEG", quality=quality)
    tables = Image.open(buffer).quantization
    assert np.array(quantization_table(LUMA_TABLE, quality)).ravel().tolist() == list(tables[0])
    assert np.array(quantization_table(CHROMA_TABLE, quality)).ravel().tolist() == list(tables[1])


def test_jpeg_tensor_model_matches_reference(photos):
    """The batched tensor codec (used off the CPU) against PIL's quality= round trip, run on the CPU."""
    size, arrays, batch = photos
    for severity, quality in enumerate((25, 18, 15, 10, 7), start=1):
        ours = np.floor(tensor_round_trip(batch, quality).permute(0, 2, 3, 1).double().numpy() * 255) / 255
        ref = np.stack([reference(image, "jpeg_compression", severity, 0) for image in arrays])
        psnr = 10 * np.log10(1 / max(np.mean((ours - ref) ** 2), 1e-12))
        assert psnr >= 38, f"quality {quality} at {size} px: PSNR {psnr:.1f} dB"


@pytest.mark.parametrize("shape", [(224, 224), (61, 45)])
def test_pixelate_matches_pil_box_then_nearest(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for severity, factor in enumerate((0.6, 0.5, 0.4, 0.3, 0.25), start=1):
        small = Image.fromarray(image).resize((int(shape[1] * factor), int(shape[0] * factor)), Image.BOX)
        ref = np.asarray(small.resize(shape[::-1], Image.NEAREST)) / 255
        x = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255
        ours = corrupt(x, "pixelate", severity)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() <= 1.01 / 255  # PIL rounds to 8 bits after each pass


def test_spatter_distance_transform_is_exact_and_capped():
    rng = np.random.default_rng(0)
    edges = rng.random((2, 1, 70, 90)) < 0.004
    edges[1] = False  # no edge at all: everything is at the cap
    ours = _distance_to_edges(torch.from_numpy(edges), 20).numpy()
    ref = np.minimum(
        np.stack([distance_transform_edt(~e) if e.any() else np.full(e.shape, 99.0) for e in edges]), 20
    )
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_spatter_histogram_equalisation_matches_opencv():
    rng = np.random.default_rng(0)
    levels = np.stack([rng.integers(0, 21, (1, 50, 60)), np.full((1, 50, 60), 7)]).astype(np.uint8)
    ours = _equalize(torch.from_numpy(levels).float()).numpy()
    for image, out in zip(levels, ours, strict=True):
        np.testing.assert_array_equal(out[0], cv2.equalizeHist(image[0]))


@pytest.mark.parametrize(
    ("channel", "factor", "shift"),
    [(1, 0.1, 0.0), (1, 2.0, 0.0), (1, 20.0, 0.2), (2, 1.0, 0.5), (2, 1.0, -0.3)],
)
def test_closed_form_hsv_edit_matches_skimage_round_trip(channel, factor, shift):
    from skimage.color import hsv2rgb, rgb2hsv

    rng = np.random.default_rng(channel)
    rgb = rng.integers(0, 256, (2, 30, 40, 3)).astype(np.float64) / 255
    rgb[0, :10, :10] = 0.5  # grey: hue 0, so a saturation shift turns it red
    rgb[0, 10:20, :10] = 0.0  # black
    rgb[0, 20:, :10] = 1.0  # white
    rgb[1, ..., 1] = rgb[1, ..., 0]  # red and green tie for the maximum
    hsv = rgb2hsv(rgb)
    hsv[..., channel] = np.clip(hsv[..., channel] * factor + shift, 0, 1)
    expected = np.clip(hsv2rgb(hsv), 0, 1)
    ours = adjust_hsv(torch.from_numpy(rgb).permute(0, 3, 1, 2).float(), channel, factor, shift)
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), expected, atol=2e-6)


# --------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_corruption_contract(name):
    """Shape, dtype, range and input are preserved, randomness is per sample and replayable."""
    image = sample_photos(48)[:1, :, 3:43]  # 48 x 40: not a multiple of 16
    batch = image.expand(3, -1, -1, -1).clone().double()
    before = batch.clone()
    for severity in range(1, 6):
        out = corrupt(batch, name, severity, torch.Generator().manual_seed(severity))
        assert out.shape == batch.shape and out.dtype == batch.dtype
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out[0], batch[0]), f"{name} severity {severity} left the image unchanged"
        again = corrupt(batch, name, severity, torch.Generator().manual_seed(severity))
        assert torch.equal(out, again)
        if name in RANDOM:
            assert not torch.equal(out[0], out[1]), "identical images got identical random corruptions"
        else:
            assert torch.equal(out[0], out[1])
    assert torch.equal(batch, before)
    half = corrupt(batch.to(torch.bfloat16), name, 3, torch.Generator().manual_seed(0))
    assert half.dtype == torch.bfloat16 and half.shape == batch.shape


@pytest.mark.parametrize("name", sorted(CPU_CONCURRENT_CORRUPTIONS))
def test_concurrent_cpu_chunks_draw_the_same_for_any_thread_count(name):
    """Chunks corrupted on two threads, each with its own generator, give the one-thread output
    exactly; a copy of an image in another chunk gets other draws; the caller keeps its threads
    and gets no autograd graph."""
    photos = sample_photos(224)
    batch = photos[torch.arange(CPU_CHUNK_ELEMENTS // photos[0].numel() + 1) % len(photos)]  # 2 chunks
    outputs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outputs[threads] = corrupt(batch.requires_grad_(), name, 3, torch.Generator().manual_seed(5))
        with concurrent.futures.ThreadPoolExecutor(1) as fresh:  # a thread started after the call
            in_new_thread = fresh.submit(torch.get_num_threads).result()
        assert torch.get_num_threads() == threads and in_new_thread == threads
    torch.set_num_threads(1)
    assert torch.equal(outputs[1], outputs[2])
    assert outputs[2].grad_fn is None and not outputs[2].requires_grad
    assert not torch.equal(outputs[2][0], outputs[2][-1]), "the two chunks drew the same noise"


def test_default_scale_keeps_the_224_px_look():
    """With the default scale, blurring a half-size image matches half-sizing the 224 px result;
    with scale=1 (pixel radii, the package's choice) it does not."""
    photos = sample_photos(224)
    half = F.interpolate(photos, scale_factor=0.5, mode="area")
    for name in ("gaussian_blur", "defocus_blur", "motion_blur"):
        for severity in (1, 3, 5):
            target = F.interpolate(
                corrupt(photos, name, severity, torch.Generator().manual_seed(0)),
                scale_factor=0.5,
                mode="area",
            )
            scaled = corrupt(half, name, severity, torch.Generator().manual_seed(0))
            pixels = corrupt(half, name, severity, torch.Generator().manual_seed(0), scale=1.0)
            psnr_scaled, psnr_pixels = (
                10 * math.log10(1 / F.mse_loss(a, target).item()) for a in (scaled, pixels)
            )
            assert psnr_scaled > 40 and psnr_scaled > psnr_pixels + 10, name
    assert torch.equal(corrupt(photos, "gaussian_blur", 2), corrupt(photos, "gaussian_blur", 2, scale=1.0))


def test_name_lists():
    assert len(CORRUPTION_NAMES) == 19
    assert tuple(imagecorruptions.get_corruption_names("all")) == CORRUPTION_NAMES
    assert tuple(imagecorruptions.get_corruption_names("common")) == COMMON_CORRUPTIONS
    assert tuple(imagecorruptions.get_corruption_names("validation")) == EXTRA_CORRUPTIONS


def test_bad_input_is_refused_with_a_clear_message():
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(image, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(image, "fog", 6)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        corrupt(image[0], "fog", 1)
    with pytest.raises(TypeError, match="float"):
        corrupt((image * 255).byte(), "fog", 1)
    with pytest.raises(ValueError, match="scale"):
        corrupt(image, "fog", 1, scale=0)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation_sequence(image, "rain")
    with pytest.raises(ValueError, match="difficulty"):
        perturbation_sequence(image, "gaussian_noise", difficulty=4)
    for bad in (image * 255, image - 0.5):  # 0-255 floats, a normalised-like tensor: never a silent clamp
        with pytest.raises(ValueError, match=r"images expects pixel values in \[0, 1\], got values in"):
            corrupt(bad, "gaussian_noise", 3)
        with pytest.raises(ValueError, match="divide 0-255 images by 255"):
            perturbation_sequence(bad, "gaussian_noise")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_statistics():
    photos = sample_photos(224)
    for name in CORRUPTION_NAMES:
        generator = torch.Generator(device="cuda").manual_seed(0)
        out = corrupt(photos.cuda(), name, 3, generator)
        assert out.device.type == "cuda" and out.dtype == photos.dtype
        cpu = corrupt(photos, name, 3, torch.Generator().manual_seed(0))
        mad_gpu, mad_cpu = (out.cpu() - photos).abs().mean(), (cpu - photos).abs().mean()
        assert abs(mad_gpu - mad_cpu) <= 0.15 * mad_cpu + 0.01, name
    with pytest.raises(ValueError, match="generator"):
        corrupt(photos.cuda(), "fog", 1, torch.Generator())


# --------------------------------------------------------------------------- ImageNet-P


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_perturbation_sequences(name):
    clean = sample_photos(64)[:2]
    frames = perturbation_sequence(clean, name, torch.Generator().manual_seed(0), scale=1.0)
    length = 41 if name == "translate" else 31
    assert frames.shape == (2, length, 3, 64, 64) and frames.dtype == clean.dtype
    assert frames.min() >= 0 and frames.max() <= 1
    steps = (frames[:, 1:] - frames[:, :-1]).abs().mean((0, 2, 3, 4))
    assert (steps > 0).all(), "every frame must differ from the previous one"
    if name in NOISE_PERTURBATIONS:
        assert torch.equal(frames[:, 0], clean)
        spread = (frames[:, 1:] - clean[:, None]).abs().mean((0, 2, 3, 4))
        assert spread.std() < 0.1 * spread.mean(), "noisy frames must be equally strong"
    else:
        assert steps.max() < 0.1, "consecutive frames must change in small steps"
    again = perturbation_sequence(clean, name, torch.Generator().manual_seed(0), scale=1.0)
    assert torch.equal(frames, again)


@pytest.mark.parametrize(
    ("name", "identity_frame"),
    [("translate", 20), ("rotate", 15), ("shear", 15), ("scale", 24), ("brightness", 15)],
)
def test_geometric_and_brightness_sequences_pass_through_the_clean_image(name, identity_frame):
    clean = sample_photos(64)[:2]
    frames = perturbation_sequence(clean, name)
    torch.testing.assert_close(frames[:, identity_frame], clean, atol=2e-5, rtol=0)


def test_tilt_matches_imagenet_p_homography():
    """ImageNet-P's tilt (its matrix, warped by OpenCV with a mirrored border) at -15, 0 and 15 degrees."""
    clean = sample_photos(96)[:1]
    frames = perturbation_sequence(clean, "tilt")
    image = clean[0].permute(1, 2, 0).numpy()
    w = h = 96
    for i in (0, 15, 30):
        t = np.deg2rad(i - 15)
        c, s = np.cos(t), np.sin(t)
        f = np.sqrt(w**2 + h**2)
        p1 = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]])
        rx = np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]])
        ry = np.array([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]])
        t4 = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]])
        p2 = np.array([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]])
        ref = cv2.warpPerspective(image, p2 @ t4 @ rx @ ry @ p1, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        ours = frames[0, i].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).mean() < 0.003 and np.abs(ours - ref).max() < 0.05, f"frame {i}"


def test_translate_shifts_by_whole_pixels():
    clean = sample_photos(64)[:1]
    frames = perturbation_sequence(clean, "translate", scale=1.0)
    for shift in (-20, -3, 5, 20):
        torch.testing.assert_close(
            frames[0, 20 + shift][..., 20:44], clean[0][..., 20 - shift : 44 - shift], atol=2e-5, rtol=0
        )


def test_perturbation_strengths_match_imagenet_p():
    clean = sample_photos(224)[:2]
    generator = torch.Generator().manual_seed(0)
    noise = perturbation_sequence(clean, "gaussian_noise", generator)[:, 1:] - clean[:, None]
    interior = (clean[:, None] > 0.2) & (clean[:, None] < 0.8)  # away from clipping
    assert abs(noise[interior.expand_as(noise)].std().item() - 0.03) < 0.002
    blur = perturbation_sequence(clean, "gaussian_blur")
    for i in (0, 30):
        ref = gaussian(
            clean[0].permute(1, 2, 0).numpy(), sigma=0.25 + 0.035 * i, truncate=6.0, channel_axis=-1
        )
        np.testing.assert_allclose(blur[0, i].permute(1, 2, 0).numpy(), ref, atol=1e-5)
    motion = perturbation_sequence(clean, "motion_blur")
    for i in (0, 17):
        ref = reference_ops._motion_blur(clean[1].permute(1, 2, 0).double().numpy(), 10, 3, (i - 30) * 4)
        np.testing.assert_allclose(motion[1, i].permute(1, 2, 0).numpy(), np.clip(ref, 0, 1), atol=1e-5)
    drops = perturbation_sequence(clean, "spatter", generator)
    wet = (drops - clean[:, None]).abs().sum(2)  # [B, T, H, W]
    for first, later in zip(wet[:, 0], wet[:, 10], strict=True):  # the liquid drips 1.5 px per frame
        shift = max(range(40), key=lambda s: (first[: 224 - s] * later[s:]).sum().item())
        assert 10 <= shift <= 20, f"spatter drops ran {shift} px in 10 frames"


# --------------------------------------------------------------------------- evaluation plan


def test_c_plan_is_stratified_and_seeded():
    corruption, severity = c_plan(1000, seed=3)
    assert corruption.shape == severity.shape == (1000,) and corruption.dtype == torch.int64
    assert corruption.min() == 0 and corruption.max() == 14 and severity.min() == 1 and severity.max() == 5
    counts = torch.bincount(corruption * 5 + severity - 1, minlength=75)
    assert counts.min() == 1000 // 75 and counts.max() == 1000 // 75 + 1
    again = c_plan(1000, seed=3)
    assert torch.equal(corruption, again[0]) and torch.equal(severity, again[1])
    other = c_plan(1000, seed=4)
    assert not torch.equal(corruption, other[0])
    small, _ = c_plan(40, seed=0)
    assert len(set((small).tolist())) > 1 and c_plan(0, 0)[0].numel() == 0


def test_c_subset_is_a_seeded_sorted_sample():
    subset = c_subset(500, 100, seed=1)
    assert subset.shape == (100,) and torch.equal(subset, subset.unique())
    assert subset.min() >= 0 and subset.max() < 500
    assert torch.equal(subset, c_subset(500, 100, seed=1)) and not torch.equal(
        subset, c_subset(500, 100, seed=2)
    )
    assert torch.equal(c_subset(50, 100, seed=0), torch.arange(50))


# --------------------------------------------------------------------------- preview


def test_preview_cli_writes_a_grid(tmp_path, capsys):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "grid.png"
    cli(["preview", "--out", str(out), "--image", str(path), "--size", "40", "--reference"])
    grid = Image.open(out)
    assert grid.size == (150 + 6 * 40, 20 + 2 * 19 * 40)
    assert "wrote" in capsys.readouterr().out


def test_affine_grid_matches_torch():
    """The elastic transform's broadcast affine grid equals ``F.affine_grid`` (align_corners=True)
    on a non-square image, to float32 rounding."""
    theta = torch.eye(2, 3) + 0.2 * torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = F.affine_grid(theta, [4, 3, 20, 33], align_corners=True)
    assert torch.allclose(affine_grid(theta, 20, 33), expected, atol=1e-6, rtol=0)


def test_glass_chain_sources_equal_the_sequential_sweep():
    """``chain_sources`` gives exactly the sources of the reference's sequential sweep (pixels
    visited bottom-right to top-left, each copying its partner's current value), with partners
    in the unvisited border and long chains included."""
    size, max_delta = 12, 3
    generator = torch.Generator().manual_seed(0)
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[max_delta + 1 : size - max_delta + 1, max_delta + 1 : size - max_delta + 1] = True
    steps = torch.randint(-max_delta, max_delta, (4, size, size, 2), generator=generator)
    steps[1, ..., 0] = 0  # one image of same-row steps: chains along the rows
    offset = (steps[..., 0] * size + steps[..., 1]) * inside
    offset = offset.reshape(4, -1)
    for image, flat in zip(chain_sources(offset), offset, strict=True):
        value = list(range(size * size))
        for p in reversed(range(size * size)):
            value[p] = value[p + int(flat[p])]
        assert image.tolist() == value
