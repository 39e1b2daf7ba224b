"""Noise2Net's CPU kernels one by one: against float64 / numpy / torch formulas, their input checks, and the build."""

from __future__ import annotations

import platform
import shutil
import stat

import numpy as np
import pytest
import torch
from test_augment_networks import one_thread  # noqa: F401  (autouse fixture)
from test_augment_noise2net import kernels  # noqa: F401  (fixture)

from augment import Noise2Net, cpu_kernels

pytestmark = pytest.mark.usefixtures("kernels")


def test_first_group_pass_is_the_normalised_expansion_and_bf16_stores_round_like_torch():
    """relu(instance_norm(weight @ z)) computed in float64; bf16 stores round to nearest even like torch's cast,
    on exact ties too."""
    z = torch.randn(2, 3, 16, 16)
    weight = torch.rand(2, 32, 3) - 0.5
    affine = cpu_kernels.expand_affine(z, weight)
    rows, project, y = affine[:, :16], torch.rand(2, 3, 32), torch.empty_like(z)
    as_float, as_bf16 = torch.empty(2, 16, 16, 16), torch.empty(2, 16, 16, 16, dtype=torch.bfloat16)
    cpu_kernels.group_pass(z, rows, project, y, out=as_float)
    cpu_kernels.group_pass(z, rows, project, y, out=as_bf16)
    expanded = torch.einsum("mpc,mchw->mphw", weight[:, :16].double(), z.double())
    mean, var = expanded.mean((2, 3), keepdim=True), expanded.var((2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(
        as_float, torch.relu((expanded - mean) / (var + 1e-5).sqrt()).float(), atol=1e-5, rtol=0
    )
    assert torch.equal(as_bf16, as_float.to(torch.bfloat16))
    assert (as_float != as_bf16.float()).float().mean() > 0.3  # the stores really rounded
    # exact ties (halfway between two bf16 values) passed through: zero expansion + relu(prev * 1 + 0)
    steps = torch.arange(2 * 16 * 256, dtype=torch.float64).view(2, 16, 16, 16)
    ties = ((1 + (steps % 256) * 2**-8) * 2 ** (steps % 7 - 3)).float()  # odd steps: halfway between two bf16
    assert (ties.view(torch.int32) & 0xFFFF).eq(0x8000).float().mean() == 0.5
    ones, zeros = torch.ones(2, 16), torch.zeros(2, 16)
    cpu_kernels.group_pass(z, torch.zeros(2, 16, 4), project, y, (ties, ones, zeros), 0, out=as_bf16)
    assert torch.equal(as_bf16, ties.to(torch.bfloat16))


def test_norm_statistics_match_numpy():
    x = torch.randn(3, 16, 8, 8) * 3 + 1
    for dtype in (torch.float32, torch.bfloat16):
        scale, shift = cpu_kernels.norm_stats(x.to(dtype))
        values = x.to(dtype).double().flatten(2).numpy()
        rstd = 1 / np.sqrt(values.var(-1) + 1e-5)  # biased variance, like BatchNorm in train mode
        torch.testing.assert_close(scale, torch.from_numpy(rstd).float(), rtol=1e-5, atol=0)
        torch.testing.assert_close(
            shift, torch.from_numpy(-values.mean(-1) * rstd).float(), rtol=1e-5, atol=1e-6
        )


def test_folded_norm_stays_accurate_on_large_dark_images():
    """The image mean is summed in float per tile and in double across tiles: at 512 px a dark, low-contrast
    image (the worst case for a float running sum) stays as close to float64 as PyTorch's float32 ops."""
    z = -2 + 0.02 * torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    weight = torch.rand(1, 64, 3, generator=torch.Generator().manual_seed(1)) - 0.5
    affine = cpu_kernels.expand_affine(z, weight).double()
    expanded = torch.einsum("mpc,mchw->mphw", weight.double(), z.double())
    mean, var = expanded.mean((2, 3)), expanded.var((2, 3), unbiased=False)
    exact = torch.cat([weight.double(), -mean[..., None]], 2) / (var[..., None] + 1e-5).sqrt()
    ours = torch.einsum("mpc,mchw->mphw", affine[..., :3], z.double()) + affine[..., 3, None, None]
    assert (
        ours - torch.einsum("mpc,mchw->mphw", exact[..., :3], z.double()) - exact[..., 3, None, None]
    ).abs().max() < 2e-4


def test_bad_shapes_are_refused_before_the_kernel_runs():
    z, y = torch.randn(2, 3, 8, 8), torch.empty(2, 3, 8, 8)
    affine = cpu_kernels.expand_affine(z, torch.rand(2, 32, 3))
    with pytest.raises(ValueError, match="H \\* W must be a multiple of 16, got 9"):
        cpu_kernels.norm_stats(torch.randn(1, 1, 3, 3))
    with pytest.raises(ValueError, match="group width must be a multiple of 8, got 4"):
        cpu_kernels.group_pass(z, affine[:, :4], torch.rand(2, 3, 32), y, w1x1=torch.rand(2, 4, 4), out=z)
    with pytest.raises(ValueError, match="eps must hold one value per image \\(2\\), got 1"):
        cpu_kernels.residual_(z, y, torch.ones(1))
    with pytest.raises(ValueError, match="columns 24 .. 39 outside 0 .. 31"):
        cpu_kernels.group_pass(z, affine[:, 16:], torch.rand(2, 3, 32), y, own_col=24)
    with pytest.raises(ValueError, match="out must be a contiguous CPU tensor of shape \\[2, 16, 8, 8\\]"):
        cpu_kernels.group_pass(z, affine[:, :16], torch.rand(2, 3, 32), y, out=torch.empty(2, 16, 8, 4))
    with pytest.raises(ValueError, match="needs out"):
        cpu_kernels.group_pass(z, affine[:, :16], torch.rand(2, 3, 32), y)


def test_build_takes_compiler_arguments_refuses_bad_output_and_is_readable_by_all(tmp_path):
    compiler = cpu_kernels.find_compiler()
    built = cpu_kernels.build([*compiler, "-std=gnu11"], tmp_path / "a")  # $CC="gcc -std=gnu11" is split
    assert stat.S_IMODE(built.stat().st_mode) == 0o755
    written = built.stat().st_mtime_ns
    assert cpu_kernels.build([*compiler, "-std=gnu11"], tmp_path / "a") == built  # cached: not rebuilt
    assert built.stat().st_mtime_ns == written and len(list((tmp_path / "a").iterdir())) == 1
    with pytest.raises(RuntimeError, match="no-such-cc"):
        cpu_kernels.build(["no-such-cc"], tmp_path / "b")
    with pytest.raises(RuntimeError, match="true"):  # exits 0 without writing a library: not cached
        cpu_kernels.build([shutil.which("true")], tmp_path / "c")
    assert not list((tmp_path / "c").iterdir())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 targets")
@pytest.mark.parametrize("target", ["-march=x86-64", "-march=x86-64-v3"])  # SSE2 (4 floats), AVX2 (8 floats)
def test_builds_for_older_cpus_give_the_same_result(target, tmp_path, monkeypatch):
    """The vector length follows the target (16 floats with AVX-512, 8 with AVX2, 4 with SSE2): builds for
    older x86 CPUs, run here, agree with the PyTorch ops like this CPU's build does."""
    lib = cpu_kernels.load(cpu_kernels.build(cpu_kernels.find_compiler(), tmp_path, (target,)))
    monkeypatch.setattr(cpu_kernels, "library", lambda: lib)
    x = torch.rand(3, 3, 48, 48)
    for pass_pixels in (48 * 48, 3 * 48 * 48):  # one image per pass (lone variants), all in one pass
        kwargs = {"p": 1.0, "seed": 4, "precision": "fp32", "cpu_pass_pixels": pass_pixels}
        fused, ops = Noise2Net(**kwargs)(x), Noise2Net(**kwargs, fused_cpu=False)(x)
        torch.testing.assert_close(fused, ops, atol=1e-5, rtol=0)
