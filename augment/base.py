"""Shared pieces of the batch augmentations: input checks and replayable randomness.

Every augmentation draws from two ``torch.Generator`` objects seeded from its ``seed``:

* a host (CPU) generator for the small structural draws -- which sample gets which perturbation, which layer,
  which channels. They are needed on the host to build the computation, so drawing them there avoids
  device-to-host synchronisation;
* a device generator, on the module's device, for tensors whose size scales with images or weights (masks,
  noise, random kernels).

``get_rng_state()`` returns both states in one uint8 tensor; ``set_rng_state()`` restores them, so a resumed run
replays the same augmentations. The device generator follows the module: after ``.to(device)`` it is re-created
on the new device from ``seed`` (so set the state after moving the module).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_HOST_STATE_BYTES = torch.Generator().get_state().numel()
_DEVICE_SEED_OFFSET = 0x9E3779B97F4A7C15  # keeps the two streams apart when both live on the CPU


RANGE_TOLERANCE = 1e-3
"""How far outside [0, 1] input pixels may lie (rounding in earlier steps) before they are rejected."""


def check_images(x: Tensor, name: str, multiple: int = 1) -> None:
    """Raise a one-line ValueError unless ``x`` is a float [B, 3, H, W] batch in [0, 1] (within
    :data:`RANGE_TOLERANCE`) with H, W divisible by ``multiple``. The range check reads the batch's min and max
    (one device synchronisation)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} expects a float image batch [B, 3, H, W] in [0, 1], got {shape}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} expects float images in [0, 1], got {x.dtype}: convert with x.float() / 255"
        )
    if x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(
            f"{name} needs H and W divisible by {multiple}, got {tuple(x.shape[-2:])}; "
            f"use a training resolution that is a multiple of {multiple}"
        )
    check_pixel_range(x, name)


def check_pixel_range(x: Tensor, name: str) -> None:
    """Raise a one-line ValueError unless the float batch ``x`` lies in [0, 1] within :data:`RANGE_TOLERANCE`
    (reads its min and max: one device synchronisation)."""
    if x.numel():
        low, high = torch.stack(torch.aminmax(x.detach())).tolist()  # one transfer
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"{name} expects pixel values in [0, 1], got values in [{low:.4g}, {high:.4g}]: divide 0-255 "
                "images by 255 (and normalise afterwards)"
            )


def outside_autocast(x: Tensor) -> torch.autocast:
    """A context in which an outer ``torch.autocast`` does not recast the ops on ``x``'s device (the
    augmentations choose their own precision)."""
    return torch.autocast(x.device.type, enabled=False)


PRECISIONS = ("auto", "fp32", "bf16")


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 convolutions outrun fp32 on ``device``: a CUDA GPU with bf16 support, or a CPU with AMX tiles
    or AVX512-BF16 (oneDNN's bf16 kernels; measured 1.5-2x over fp32 on both kinds, see docs/deepaugment.md).
    Elsewhere (AVX2 laptops, most ARM CPUs) CPU bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch exposes these checks only privately; without them, assume neither
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)
    return False


def check_precision(precision: str) -> str:
    """Return ``precision`` or raise a one-line ValueError unless it is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def network_dtype(device: torch.device, precision: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype to run an image-to-image network in, for weights of ``dtype`` on ``device``: bf16 when
    ``precision`` is "bf16", or "auto" with float32 weights where :func:`has_fast_bf16`; ``dtype`` otherwise."""
    if precision == "bf16" or (precision == "auto" and dtype == torch.float32 and has_fast_bf16(device)):
        return torch.bfloat16
    return dtype


def check_probability(value: float, name: str) -> float:
    """Return ``value`` as a float, or raise a one-line ValueError unless it lies in [0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return number


def check_positive(value: int, name: str) -> int:
    """``value`` as an int >= 1, else a ValueError naming ``name``."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return number


class RandomAugmentation(nn.Module):
    """Base class holding the host and device generators of an augmentation (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        self._host_gen = torch.Generator().manual_seed(seed)
        self._device_gen = self._new_device_generator(torch.device("cpu"))

    def _new_device_generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device).manual_seed((self.seed + _DEVICE_SEED_OFFSET) % 2**63)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """(host generator, device generator), the latter re-created if the module moved to another device."""
        if self._device_gen.device != self.device:
            self._device_gen = self._new_device_generator(self.device)
        return self._host_gen, self._device_gen

    def reseed(self, seed: int) -> None:
        """Restart both generators from ``seed`` (e.g. ``seed + rank`` so DDP ranks draw differently)."""
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self._host_gen = torch.Generator().manual_seed(seed)
        self._device_gen = self._new_device_generator(self.device)

    def get_rng_state(self) -> Tensor:
        """Both generator states as one uint8 CPU tensor (save it in checkpoints)."""
        host, device = self.generators()
        return torch.cat([host.get_state(), device.get_state()])

    def set_rng_state(self, state: Tensor) -> None:
        """Restore a state from :meth:`get_rng_state` taken on a module on the same device type."""
        host, device = self.generators()
        expected = _HOST_STATE_BYTES + device.get_state().numel()
        if state.dtype != torch.uint8 or state.numel() != expected:
            raise ValueError(
                f"{type(self).__name__}.set_rng_state got {state.numel()} {state.dtype} values, expected {expected} "
                f"uint8 for a module on {self.device.type}; restore the state after moving the module to the device "
                "it was saved on"
            )
        state = state.cpu()
        host.set_state(state[:_HOST_STATE_BYTES].clone())
        device.set_state(state[_HOST_STATE_BYTES:].clone())


def draw_ints(gen: torch.Generator, low: int, high: int, n: int) -> list[int]:
    """``n`` integers uniform in [low, high) from the host generator."""
    return torch.randint(low, high, (n,), generator=gen).tolist()


def draw_int(gen: torch.Generator, low: int, high: int) -> int:
    """One integer uniform in [low, high) from the host generator."""
    return draw_ints(gen, low, high, 1)[0]


def draw_choice(gen: torch.Generator, options: Sequence[int], n: int) -> list[int]:
    """``n`` draws with replacement from ``options`` (host generator)."""
    return [options[i] for i in draw_ints(gen, 0, len(options), n)]


def draw_float(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """One float uniform in [low, high) from the host generator."""
    return low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64).item()


def check_options(options: Sequence[int], valid: Sequence[int], name: str) -> tuple[int, ...]:
    """Return ``options`` as a tuple of ints, or raise a one-line ValueError naming the invalid ones."""
    options = tuple(int(o) for o in options)
    bad = [o for o in options if o not in valid]
    if bad:
        raise ValueError(f"{name} has unknown options {bad}; valid options are {list(valid)}")
    return options
