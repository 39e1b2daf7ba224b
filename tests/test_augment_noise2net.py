"""Noise2Net: per-sample random Res2Net blocks against an independent per-image reference, eps, randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_augment_networks import one_thread  # noqa: F401  (autouse fixture)
from torch import nn

from augment import Noise2Net, cpu_kernels
from augment.noise2net import IMAGENET_STD, ConvGroup, fused_res2net_step, res2net_block


def reference_block(z: torch.Tensor, params, s: int) -> torch.Tensor:
    """Sample ``s`` through the reference's Bottle2neck (convs + BatchNorm2d in train mode, batch of one)."""
    planes = params.expand.shape[1]
    width = planes // (len(params.convs) + 1)
    conv1 = nn.Conv2d(3, planes, 1, bias=False)
    conv1.weight.data = params.expand[s].view(planes, 3, 1, 1)
    out = torch.relu(nn.BatchNorm2d(planes).train()(conv1(z[s : s + 1])))
    spx = torch.split(out, width, 1)
    outs, sp = [], None
    for i, groups in enumerate(params.convs):
        sp = spx[i] if sp is None else sp + spx[i]
        (group,) = [g for g in groups if s in g.rows.tolist()]
        k = group.weight.shape[-1]
        conv = nn.Conv2d(width, width, k, padding=(k - 1) // 2 * group.dilation, dilation=group.dilation)
        conv.weight.data = group.weight[group.rows.tolist().index(s)]
        sp = torch.relu(nn.BatchNorm2d(width).train()(conv(sp)))  # the conv bias is removed by the norm
        outs.append(sp)
    conv3 = nn.Conv2d(planes, 3, 1, bias=False)
    conv3.weight.data = params.project[s].view(3, planes, 1, 1)
    return nn.BatchNorm2d(3).train()(conv3(torch.cat([*outs, spx[-1]], 1)))[0]


def test_block_matches_reference_bottle2neck_per_sample():
    aug = Noise2Net(seed=3)
    z = torch.randn(12, 3, 10, 9)
    params = aug.sample_block(12, z)
    out = res2net_block(z, params)
    assert out.shape == z.shape
    kinds = {(g.weight.shape[-1], g.dilation) for conv in params.convs for g in conv}
    assert len(kinds) >= 3  # kernel size / dilation really vary between samples
    with torch.no_grad():
        for s in range(12):
            torch.testing.assert_close(out[s], reference_block(z, params, s), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(12, 10), (16, 12)])  # PyTorch ops (H * W = 120); C kernels (192)
def test_cpu_sub_batches_give_the_one_pass_result_on_any_thread_count(size):
    x = torch.rand(7, 3, *size)
    one_pass = Noise2Net(p=1.0, seed=2)(x)
    hw = size[0] * size[1]
    for threads in (1, 2):  # with two, the sub-batches run concurrently, one per thread
        torch.set_num_threads(threads)
        for pixels in (1, 3 * hw, 6 * hw):  # 1, 3 and 6 images per pass (the last pass shorter)
            out = Noise2Net(p=1.0, seed=2, cpu_pass_pixels=pixels)(x)
            torch.testing.assert_close(out, one_pass, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cpu_pass_pixels"):
        Noise2Net(cpu_pass_pixels=0)


def lone_variants(params, kinds: list[tuple[int, int]], seed: int = 0):
    """``params`` with hierarchical conv i of every sample of kernel size / dilation ``kinds[i]`` (one variant)."""
    m, width = params.expand.shape[0], params.expand.shape[1] // (len(kinds) + 1)
    gen = torch.Generator().manual_seed(seed)
    convs = []
    for k, dilation in kinds:
        bound = (width * k * k) ** -0.5
        weight = (2 * torch.rand(m, width, width, k, k, generator=gen) - 1) * bound
        convs.append([ConvGroup(torch.arange(m), weight, dilation)])
    return params._replace(convs=convs)


@pytest.mark.parametrize("kinds", [None, [(1, 1), (3, 2), (1, 1)], [(3, 1), (1, 1), (3, 3)]])
def test_fused_cpu_step_matches_reference_bottle2neck_per_sample(kinds):
    """The C kernels' step (mixed variants per conv, or one lone 1x1 / 3x3 variant, each path of the kernel)
    against z + eps * the reference's Bottle2neck, sample by sample."""
    z = torch.randn(5, 3, 16, 12)  # H * W = 192, a multiple of cpu_kernels.PIXEL_MULTIPLE
    params = Noise2Net(seed=8).sample_block(5, z)
    if kinds is None:
        assert max(len(variants) for variants in params.convs) > 1
    else:
        params = lone_variants(params, kinds)
    eps = torch.rand(5, 1, 1, 1) + 0.1
    out = fused_res2net_step(z.clone(), eps, params, torch.float32)
    with torch.no_grad():
        for s in range(5):
            expected = z[s] + eps[s] * reference_block(z, params, s)
            torch.testing.assert_close(out[s], expected, atol=1e-4, rtol=1e-4)


def test_fused_cpu_bf16_rounding_and_statistics_match_torch():
    """The kernels' first group pass is relu(instance_norm(weight @ z)) computed in float64; their bf16 stores round
    like torch (to nearest even); their norm statistics are numpy's."""
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
    x = torch.randn(3, 16, 8, 8) * 3 + 1
    for dtype in (torch.float32, torch.bfloat16):
        scale, shift = cpu_kernels.norm_stats(x.to(dtype))
        values = x.to(dtype).double().flatten(2).numpy()
        rstd = 1 / np.sqrt(values.var(-1) + 1e-5)  # biased variance, like BatchNorm in train mode
        torch.testing.assert_close(scale, torch.from_numpy(rstd).float(), rtol=1e-5, atol=0)
        torch.testing.assert_close(
            shift, torch.from_numpy(-values.mean(-1) * rstd).float(), rtol=1e-5, atol=1e-6
        )


def test_fused_cpu_matches_pytorch_ops_and_falls_back_where_it_cannot_run(tmp_path, monkeypatch):
    x = torch.rand(6, 3, 32, 32)
    for precision, atol in (("fp32", 1e-5), ("bf16", 8 / 255)):  # bf16: stores rounded at other float errors
        fused = Noise2Net(p=1.0, seed=5, precision=precision)(x)
        ops = Noise2Net(p=1.0, seed=5, precision=precision, fused_cpu=False)(x)
        torch.testing.assert_close(fused, ops, atol=atol, rtol=0)
        assert (fused - ops).abs().mean() < 0.2 / 255
    odd = torch.rand(3, 3, 10, 9)  # H * W = 90: not a multiple of 16, PyTorch ops
    assert torch.equal(Noise2Net(seed=1)(odd), Noise2Net(seed=1, fused_cpu=False)(odd))
    with pytest.raises(RuntimeError, match="no-such-cc"):
        cpu_kernels.build("no-such-cc", tmp_path)
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("SIGROB_CACHE_DIR", str(tmp_path))  # a machine without a compiler or a built library
    cpu_kernels.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build its CPU kernels .*Set CC"):
            without = Noise2Net(p=1.0, seed=5)(x)
        assert torch.equal(without, Noise2Net(p=1.0, seed=5, fused_cpu=False)(x))
    finally:
        cpu_kernels.library.cache_clear()


def test_bf16_convs_stay_within_a_grey_level_of_fp32():
    x = torch.rand(6, 3, 40, 40)
    fp32 = Noise2Net(p=1.0, seed=4, precision="fp32")(x)
    bf16 = Noise2Net(p=1.0, seed=4, precision="bf16")(x)
    diff = (bf16 - fp32).abs()
    assert diff.max() > 0  # the 3x3 convs really ran in bf16
    assert diff.mean() < 0.5 / 255 and diff.max() < 8 / 255  # measured: mean 0.18, max 2.1-2.6 grey levels
    assert (fp32 - x).abs().mean() > 0.1  # against a change of ~48 grey levels
    with pytest.raises(ValueError, match="precision"):
        Noise2Net(precision="fp16")


def test_weights_are_fresh_default_init_per_sample_and_step():
    aug = Noise2Net(seed=0)
    like = torch.zeros(1)
    a, b = aug.sample_block(64, like), aug.sample_block(64, like)
    assert not torch.equal(a.expand, b.expand) and not torch.equal(a.expand[0], a.expand[1])
    bound = 3**-0.5  # kaiming_uniform(a=sqrt(5)) of a 1x1 conv with 3 inputs: U(-1/sqrt(3), 1/sqrt(3))
    assert a.expand.abs().max() <= bound and a.expand.abs().max() > 0.95 * bound
    assert a.project.abs().max() <= 64**-0.5
    for conv in a.convs:
        assert sorted(torch.cat([g.rows for g in conv]).tolist()) == list(range(64))
        for g in conv:
            assert g.weight.abs().max() <= (16 * g.weight.shape[-1] ** 2) ** -0.5
    k1 = sum(len(g.rows) for conv in a.convs for g in conv if g.weight.shape[-1] == 1)
    assert 0.35 < k1 / (64 * 3) < 0.65  # K = 1 with probability 1/2


def test_eps_in_range_and_rescaled_by_imagenet_std():
    aug = Noise2Net(p=1.0, max_eps=0.1, num_blocks=1, seed=1)
    x = 0.5 + 0.05 * torch.rand(16, 3, 24, 24)
    out = aug(x)
    assert out.min() > 0 and out.max() < 1  # no clamping for this input
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    delta = (out - x) / std  # eps * block(z): block output has zero mean, unit variance per channel
    eps = delta.flatten(2).std(-1, unbiased=False)
    assert torch.allclose(eps, eps[:, :1].expand_as(eps), atol=1e-4)  # one eps per image
    assert eps.min() >= 0.05 - 1e-4 and eps.max() <= 0.1 + 1e-4 and eps.std() > 0.005
    torch.testing.assert_close(delta.flatten(2).mean(-1), torch.zeros(16, 3), atol=1e-5, rtol=0)


def test_fraction_shape_dtype_range_and_no_grad():
    aug = Noise2Net(p=0.5, seed=0)
    x = torch.rand(64, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    out = aug(x)
    assert out.shape == x.shape and out.dtype == torch.float64 and not out.requires_grad
    assert out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(1)
    assert 16 <= changed.sum() <= 48
    assert torch.equal(out[~changed], x.detach()[~changed])
    assert Noise2Net(p=0.0)(x).equal(x.detach())


def test_same_seed_same_output_and_rng_state_replays():
    x = torch.rand(8, 3, 16, 16)
    a, b = Noise2Net(seed=5), Noise2Net(seed=5)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(Noise2Net(seed=6)(x), Noise2Net(seed=5)(x))
    state = a.get_rng_state()
    first = a(x)
    assert not torch.equal(a(x), first)
    a.set_rng_state(state)
    assert torch.equal(a(x), first)
    with pytest.raises(ValueError, match="set_rng_state"):
        a.set_rng_state(state[:10])


def test_bad_input_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        Noise2Net()(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="probability"):
        Noise2Net(p=1.5)
    for eps in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="max_eps must be a finite number >= 0"):
            Noise2Net(max_eps=eps)
    with pytest.raises(ValueError, match=r"values in \[-0.5, 0.5\]"):
        Noise2Net()(torch.linspace(-0.5, 0.5, 2 * 3 * 8 * 8).view(2, 3, 8, 8))
    slightly = torch.rand(4, 3, 8, 8) * (1 + 5e-4)  # rounding of earlier steps: accepted, then clamped
    torch.testing.assert_close(Noise2Net(p=0.0)(slightly), slightly.clamp(0, 1), atol=0, rtol=0)


def test_inference_mode_and_an_outer_autocast_change_nothing():
    """Under inference mode the concurrent sub-batches (worker threads) run in it too; an outer autocast does
    not recast the float32 parts."""
    x = torch.rand(8, 3, 16, 16)
    plain = Noise2Net(p=1.0, seed=7, cpu_pass_pixels=2 * 256, precision="fp32")(x)
    torch.set_num_threads(2)
    with torch.inference_mode():
        inference = Noise2Net(p=1.0, seed=7, cpu_pass_pixels=2 * 256, precision="fp32")(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = Noise2Net(p=1.0, seed=7, cpu_pass_pixels=2 * 256, precision="fp32")(x)
    torch.testing.assert_close(inference, plain, atol=0, rtol=0)
    torch.testing.assert_close(autocast, plain, atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_device_and_dtype():
    aug = Noise2Net(p=1.0, seed=0).cuda()
    x = torch.rand(4, 3, 32, 32, device="cuda", dtype=torch.float16)
    out = aug(x)
    assert out.device == x.device and out.dtype == x.dtype and aug.generators()[1].device.type == "cuda"
    state = aug.get_rng_state()
    aug.set_rng_state(state)
    assert torch.equal(aug(x), out)
