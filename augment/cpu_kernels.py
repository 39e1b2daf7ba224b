"""Noise2Net's fused CPU kernels (``augment/csrc/noise2net_cpu.c``): built on first use, loaded with ctypes.

The C file is compiled with the system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) for this CPU
(``-march=native`` / ``-mcpu=native``) into ``<cache dir>/kernels/`` (``$SIGROB_CACHE_DIR``, else the user cache
dir), keyed by the source, the compiler, its flags and the CPU, and written atomically, so concurrent processes
and machines sharing a home directory each load a library built for them. Building takes well under a second. No
compiler, or a failed build: one warning and ``library()`` returns None (Noise2Net then runs its PyTorch ops).

The wrappers take tensors, check what the C code assumes (CPU, dtype, contiguous rows) and release the GIL
while the kernel runs (ctypes does), so Noise2Net's sub-batches run them concurrently on torch's threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "noise2net_cpu.c"
PIXEL_MULTIPLE = 16  # the kernels' vector length: H * W must be a multiple of it
TILE = 256  # pixels per tile of the 1x1 conv (noise2net_cpu.c)
WIDTH_MULTIPLE = 8  # a 1x1 conv is computed 8 output channels at a time
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "n2n_expand_affine": (_P, _P, _P, _L, _L, _L),
    "n2n_group_pass": (_P, _P, _L, _P, _I, _P, _P, _P, _L, _L, _L, _L, _P, _I, _P, _L, _P, _I, _L, _L, _L),
    "n2n_norm_stats": (_P, _I, _P, _P, _L, _L, _L),
    "n2n_residual": (_P, _P, _P, _L, _L),
}


def find_compiler() -> str | None:
    """``$CC`` if set, else the first of cc, gcc, clang on PATH."""
    return os.environ.get("CC") or next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)


def _native_flags() -> tuple[str, ...]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686"):
        return ("-march=native",)
    if machine in ("arm64", "aarch64"):
        return ("-mcpu=native",)
    return ()


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def build(compiler: str, cache_dir: Path) -> Path:
    """Compile the kernels with ``compiler`` into ``cache_dir`` (no-op when that build exists); return its path.

    Raises RuntimeError with the compiler's first error line when the build fails."""
    flags = (*FLAGS, *_native_flags())
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), compiler, *flags, _cpu_identity()]).encode()
    ).hexdigest()
    target = cache_dir / f"noise2net_cpu-{key[:16]}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if done.returncode:
            errors = [
                line for line in done.stderr.splitlines() if "error" in line
            ] or done.stderr.splitlines()
            raise RuntimeError(errors[0] if errors else f"exit status {done.returncode}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same file
    except OSError as err:  # compiler not executable
        raise RuntimeError(str(err)) from err
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
            f"Noise2Net: could not build its CPU kernels ({err}); using PyTorch ops, ~1.5-2x slower on a CPU. "
            "Set CC to a C compiler, or pass cpu_kernels=False to silence this.",
            RuntimeWarning,
            stacklevel=3,
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


def _check(x: Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,), whole: bool = True) -> None:
    """x on the CPU in one of ``dtypes``, contiguous (``whole``) or with each x[i] contiguous."""
    if (
        x.device.type != "cpu"
        or x.dtype not in dtypes
        or not (x.is_contiguous() if whole else x[0].is_contiguous())
    ):
        raise ValueError(
            f"kernel input must be a contiguous CPU tensor of {dtypes}, got {x.dtype} {x.stride()}"
        )


def expand_affine(z: Tensor, weight: Tensor) -> Tensor:
    """The expansion 1x1 conv weight [m, P, 3] with the instance norm of its output on z [m, 3, H, W] folded in:
    affine [m, P, 4] (weights | bias) such that relu(affine . [z; 1]) is the normalised, rectified expansion."""
    lib = library()
    m, planes = weight.shape[:2]
    z, weight = z.contiguous(), weight.contiguous()
    _check(z)
    _check(weight)
    affine = z.new_empty(m, planes, 4)
    lib.n2n_expand_affine(_ptr(z), _ptr(weight), _ptr(affine), m, planes, z.shape[-2] * z.shape[-1])
    return affine


def norm_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Instance-norm statistics of x [m, C, H, W] (float or bf16; eps 1e-5, biased variance) as (scale, shift)
    [m, C] float: the normalised x is x * scale + shift."""
    x = x.contiguous()
    _check(x, (torch.float32, torch.bfloat16))
    m, c = x.shape[:2]
    scale, shift = x.new_empty(m, c, dtype=torch.float32), x.new_empty(m, c, dtype=torch.float32)
    hw = x.shape[-2] * x.shape[-1]
    library().n2n_norm_stats(_ptr(x), int(x.dtype == torch.bfloat16), _ptr(scale), _ptr(shift), m, c, hw)
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
    m, width = affine.shape[:2]
    hw = z.shape[-2] * z.shape[-1]
    if affine.stride(1) != 4 or affine.stride(2) != 1:
        raise ValueError("affine must be a row view of expand_affine's output")
    if own_col < 0 and out is None:
        raise ValueError("group_pass needs out (the conv input) unless own_col >= 0")
    for t in (z, y):
        _check(t)
    _check(project, whole=False)
    if w1x1 is not None:
        w1x1 = w1x1.reshape(m, width, width).contiguous()
    x_prev, scale, shift = prev if prev is not None else (None, None, None)
    for t in (x_prev, out):
        if t is not None:
            _check(t, (torch.float32, torch.bfloat16))
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
        project.shape[-1],
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
        hw,
    )
    if failed:
        raise MemoryError(f"group_pass: no memory for a {width} x {TILE} tile buffer")


def residual_(z: Tensor, y: Tensor, eps: Tensor) -> Tensor:
    """z += eps * instance_norm(y) in place: z, y [m, 3, H, W] float, eps [m] float. Returns z."""
    for t in (z, y):
        _check(t)
    eps = eps.reshape(-1).float().contiguous()
    library().n2n_residual(_ptr(z), _ptr(y), _ptr(eps), z.shape[0], z.shape[-2] * z.shape[-1])
    return z
