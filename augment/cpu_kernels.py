"""Noise2Net's fused CPU kernels (``augment/csrc/noise2net_cpu.c``): built on first use, loaded with ctypes.

The C file is compiled with the system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) for this CPU
(``-march=native`` / ``-mcpu=native``) into ``<cache dir>/kernels/`` (``$SIGROB_CACHE_DIR``, else the user cache
dir), keyed by the source, the compiler, its flags and the CPU (its feature flags; the host name where the OS
does not list them), checked to load, made readable to all and renamed into place, so concurrent processes and
machines sharing a cache each load a library built for their CPU. Building takes well under a second. No
compiler, or a failed build: one warning per process and ``library()`` returns None (Noise2Net then runs its
PyTorch ops).

The wrappers take tensors, check everything the C code assumes (CPU, dtype, contiguity, shapes, H * W a multiple
of 16, widths a multiple of 8) with a one-line ValueError, and release the GIL while the kernel runs (ctypes
does), so Noise2Net's sub-batches run them concurrently on torch's threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import NoReturn

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "noise2net_cpu.c"
PIXEL_MULTIPLE = 16  # the kernels' vector length: H * W must be a multiple of it
WIDTH_MULTIPLE = 8  # a 1x1 conv is computed 8 output channels at a time
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 120
_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "n2n_expand_affine": (_P, _P, _P, _L, _L, _L),
    "n2n_group_pass": (_P, _P, _L, _P, _I, _P, _P, _P, _L, _L, _L, _L, _P, _I, _P, _L, _P, _I, _L, _L, _L),
    "n2n_norm_stats": (_P, _I, _P, _P, _L, _L, _L),
    "n2n_residual": (_P, _P, _P, _L, _L),
}


def find_compiler() -> list[str] | None:
    """``$CC`` (split like a shell: ``ccache gcc`` works) if set, else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])
    found = next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
    return [found] if found else None


def _native_flags() -> tuple[str, ...]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686"):
        return ("-march=native",)
    if machine in ("arm64", "aarch64"):
        return ("-mcpu=native",)
    return ()


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them, else this host's name
    (a build per machine, never one made for another CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), None)
    except OSError:
        flags = None
    return flags or f"{platform.machine()} {platform.processor()} {platform.node()}"


def build(compiler: list[str], cache_dir: Path, arch_flags: tuple[str, ...] | None = None) -> Path:
    """Compile the kernels with ``compiler`` (a command and its arguments) into ``cache_dir``, or find that build
    there; return its path. ``arch_flags``: the target CPU (default: this one, ``-march=native``; the vector
    length follows it: 16 floats with AVX-512, 8 with AVX, else 4). Raises RuntimeError with the compiler's
    first error line when the build fails."""
    flags = (*FLAGS, *(_native_flags() if arch_flags is None else arch_flags))
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), *compiler, *flags, _cpu_identity()]).encode()
    ).hexdigest()
    target = cache_dir / f"noise2net_cpu-{key[:16]}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    try:
        command = [*compiler, *flags, "-o", tmp, str(SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode:
            errors = [
                line for line in done.stderr.splitlines() if "error" in line
            ] or done.stderr.splitlines()
            raise RuntimeError(errors[0] if errors else f"{compiler[0]} exited with status {done.returncode}")
        load(Path(tmp))  # a compiler that wrote nothing or something else is caught before the rename
        os.chmod(tmp, 0o755)  # mkstemp made it private: others sharing the cache load it too
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same file
    except (OSError, subprocess.TimeoutExpired) as err:  # compiler missing or hanging, unloadable output
        raise RuntimeError(f"{shlex.join(compiler)}: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(path: Path) -> ctypes.CDLL:
    """Load a built library and declare its functions' argument types."""
    lib = ctypes.CDLL(str(path))
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = ctypes.c_int if name == "n2n_group_pass" else None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels for this CPU, built on first use; None (with one warning) where they cannot be built."""
    from train.data.benchmark import default_cache_dir

    compiler = find_compiler()
    try:
        if compiler is None:
            raise RuntimeError("no C compiler found (cc, gcc or clang on PATH, or $CC)")
        return load(build(compiler, default_cache_dir() / "kernels"))
    except (RuntimeError, OSError) as err:
        warnings.warn(
            f"Noise2Net: could not build its CPU kernels ({err}); using PyTorch ops, up to ~1.9x slower on a CPU. "
            "Set CC to a C compiler, or pass fused_cpu=False (augment.fused_cpu=false) to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def supported(x: Tensor, width: int) -> bool:
    """Whether the kernels handle Noise2Net on ``x`` [m, 3, H, W] with ``width`` channels per group."""
    hw = x.shape[-2] * x.shape[-1]
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and hw % PIXEL_MULTIPLE == 0
        and width % WIDTH_MULTIPLE == 0
    )


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _refuse(message: str) -> NoReturn:
    raise ValueError(f"cpu_kernels: {message}")


def _check(
    x: Tensor, name: str, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...] = (torch.float32,)
) -> None:
    """x is a contiguous CPU tensor of ``shape`` in one of ``dtypes``."""
    if not (x.device.type == "cpu" and x.dtype in dtypes and x.is_contiguous() and x.shape == shape):
        _refuse(
            f"{name} must be a contiguous CPU tensor of shape {list(shape)} in {dtypes}, got {x.dtype} "
            f"{list(x.shape)} on {x.device}{'' if x.is_contiguous() else ', not contiguous'}"
        )


def _check_images(z: Tensor, name: str = "z") -> tuple[int, int, int]:
    """z [m, 3, H, W] float, contiguous, H * W a multiple of PIXEL_MULTIPLE; returns (m, H, W)."""
    if z.dim() != 4:
        _refuse(f"{name} must be [m, 3, H, W], got {list(z.shape)}")
    m, _, h, w = z.shape
    _check(z, name, (m, 3, h, w))
    if h * w % PIXEL_MULTIPLE != 0:
        _refuse(f"{name}: H * W must be a multiple of {PIXEL_MULTIPLE}, got {h * w}")
    return m, h, w


def expand_affine(z: Tensor, weight: Tensor) -> Tensor:
    """The expansion 1x1 conv weight [m, P, 3] with the instance norm of its output on z [m, 3, H, W] folded in:
    affine [m, P, 4] (weights | bias) such that relu(affine . [z; 1]) is the normalised, rectified expansion."""
    m, h, w = _check_images(z)
    weight = weight.contiguous()
    _check(weight, "weight", (m, weight.shape[1] if weight.dim() == 3 else -1, 3))
    affine = z.new_empty(m, weight.shape[1], 4)
    library().n2n_expand_affine(_ptr(z), _ptr(weight), _ptr(affine), m, weight.shape[1], h * w)
    return affine


def norm_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Instance-norm statistics of x [m, C, H, W] (float or bf16, H * W a multiple of 16; eps 1e-5, biased
    variance) as (scale, shift) [m, C] float: the normalised x is x * scale + shift."""
    if x.dim() != 4:
        _refuse(f"x must be [m, C, H, W], got {list(x.shape)}")
    m, c, h, w = x.shape
    _check(x, "x", (m, c, h, w), (torch.float32, torch.bfloat16))
    if h * w % PIXEL_MULTIPLE != 0:
        _refuse(f"x: H * W must be a multiple of {PIXEL_MULTIPLE}, got {h * w}")
    scale, shift = x.new_empty(m, c, dtype=torch.float32), x.new_empty(m, c, dtype=torch.float32)
    library().n2n_norm_stats(_ptr(x), int(x.dtype == torch.bfloat16), _ptr(scale), _ptr(shift), m, c, h * w)
    return scale, shift


def group_pass(
    z: Tensor,
    affine: Tensor,
    project: Tensor,
    y: Tensor,
    prev: tuple[Tensor, Tensor, Tensor] | None = None,
    prev_col: int = -1,
    own_col: int = -1,
    y_init: bool = False,
    w1x1: Tensor | None = None,
    out: Tensor | None = None,
) -> None:
    """One Res2Net group's pass over the pixels of z [m, 3, H, W] (see noise2net_cpu.c, ``n2n_group_pass``).

    affine: this group's rows of :func:`expand_affine`'s output, [m, width, 4] (a view). prev: the previous
    group's conv output [m, width, H, W] (float or bf16) and its :func:`norm_stats`; its activation goes into
    y [m, 3, H, W] through columns ``prev_col ..`` of project [m, 3, P] (``y = ...`` when ``y_init``).
    own_col >= 0 (the last group): this group's activation goes into y through columns ``own_col ..``;
    otherwise it is written to ``out`` [m, width, H, W] (float or bf16), through the 1x1 conv ``w1x1``
    [m, width, width] if given.
    """
    m, h, w = _check_images(z)
    _check(y, "y", (m, 3, h, w))
    width = affine.shape[1]
    if width % WIDTH_MULTIPLE != 0:
        _refuse(f"the group width must be a multiple of {WIDTH_MULTIPLE}, got {width}")
    if not (
        affine.dtype == torch.float32 and affine.shape == (m, width, 4) and affine.stride()[1:] == (4, 1)
    ):
        _refuse(f"affine must be rows of expand_affine's output, [{m}, {width}, 4], got {list(affine.shape)}")
    planes = project.shape[-1]
    if not (
        project.dtype == torch.float32 and project.shape == (m, 3, planes) and project[0].is_contiguous()
    ):
        _refuse(f"project must be [{m}, 3, P] float with contiguous rows, got {list(project.shape)}")
    for col, used in ((prev_col, prev is not None), (own_col, own_col >= 0)):
        if not (not used or 0 <= col <= planes - width):
            _refuse(f"columns {col} .. {col + width - 1} outside 0 .. {planes - 1}")
    if not (own_col >= 0 or out is not None):
        _refuse("group_pass needs out (the conv input) unless own_col >= 0")
    x_prev, scale, shift = prev if prev is not None else (None, None, None)
    if prev is not None:
        _check(x_prev, "prev", (m, width, h, w), (torch.float32, torch.bfloat16))
        _check(scale, "prev scale", (m, width))
        _check(shift, "prev shift", (m, width))
    if out is not None:
        _check(out, "out", (m, width, h, w), (torch.float32, torch.bfloat16))
    if w1x1 is not None:
        if w1x1.numel() != m * width * width:
            _refuse(f"w1x1 must hold [{m}, {width}, {width}], got {list(w1x1.shape)}")
        w1x1 = w1x1.float().reshape(m, width, width).contiguous()
    failed = library().n2n_group_pass(
        _ptr(z),
        _ptr(affine),
        affine.stride(0),
        _ptr(x_prev),
        int(x_prev is not None and x_prev.dtype == torch.bfloat16),
        _ptr(scale),
        _ptr(shift),
        _ptr(project),
        project.stride(0),
        planes,
        prev_col,
        own_col,
        _ptr(y),
        int(y_init),
        _ptr(w1x1),
        width * width,
        _ptr(out),
        int(out is not None and out.dtype == torch.bfloat16),
        m,
        width,
        h * w,
    )
    if failed:
        raise MemoryError(f"group_pass: no memory for the 1x1 conv's tile buffer ({width} channels)")


def residual_(z: Tensor, y: Tensor, eps: Tensor) -> Tensor:
    """z += eps * instance_norm(y) in place: z, y [m, 3, H, W] float, eps [m] float. Returns z."""
    m, h, w = _check_images(z)
    _check(y, "y", (m, 3, h, w))
    eps = eps.reshape(-1).float().contiguous()
    if eps.numel() != m:
        _refuse(f"eps must hold one value per image ({m}), got {eps.numel()}")
    library().n2n_residual(_ptr(z), _ptr(y), _ptr(eps), m, h * w)
    return z
