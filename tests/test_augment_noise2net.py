"""Noise2Net: per-sample random Res2Net blocks against an independent per-image reference, eps, randomness."""

from __future__ import annotations

import warnings

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


@pytest.fixture
def kernels():
    """The CPU kernels, or a counted skip naming why they cannot be built on this machine."""
    lib = cpu_kernels.library()
    if lib is None:  # ask again, uncached: a failed build warns with its reason
        cpu_kernels.library.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lib = cpu_kernels.library()
        if lib is None:
            pytest.skip(f"no CPU kernels here: {caught[-1].message}")
    return lib


@pytest.mark.parametrize(
    ("size", "width", "kinds"),
    [
        ((16, 12), 16, None),  # mixed variants in a conv: gathered, convolved in PyTorch, written back
        ((48, 40), 16, [(1, 1), (3, 2), (1, 1)]),  # lone 1x1 convs inside the kernel; 7.5 tiles of 256 pixels
        ((48, 40), 16, [(3, 1), (1, 1), (3, 3)]),  # lone 3x3 convs
        ((8, 18), 8, [(3, 2)]),  # two groups (scale 2), width 8
        ((32, 24), 24, [(1, 1), (3, 1), (3, 3), (1, 1)]),  # scale 5, width 24 (three 8-channel blocks)
    ],
)
def test_fused_cpu_step_matches_reference_bottle2neck_per_sample(kernels, size, width, kinds):
    """The C kernels' step, through each path of the kernel, against z + eps * the reference's Bottle2neck,
    sample by sample."""
    z = torch.randn(4, 3, *size)
    scale = len(kinds) + 1 if kinds else 4
    params = Noise2Net(seed=8, hidden_planes=width, scale=scale).sample_block(4, z)
    if kinds is None:
        assert max(len(variants) for variants in params.convs) > 1
    else:
        params = lone_variants(params, kinds)
    eps = torch.rand(4, 1, 1, 1) + 0.1
    out = fused_res2net_step(z.clone(), eps, params, torch.float32)
    with torch.no_grad():
        for s in range(4):
            expected = z[s] + eps[s] * reference_block(z, params, s)
            torch.testing.assert_close(out[s], expected, atol=1e-4, rtol=1e-4)


def test_fused_cpu_step_with_bf16_convs_matches_pytorch_ops(kernels):
    """bf16 conv inputs written by the kernel and bf16 conv outputs read back by it (the 224 px path, where
    every conv has one variant), against PyTorch's ops with the same bf16 convs, on any CPU."""
    z = torch.randn(2, 3, 48, 40)
    params = lone_variants(Noise2Net(seed=2).sample_block(2, z), [(3, 1), (3, 2), (3, 3)])
    eps = torch.full((2, 1, 1, 1), 0.75)
    fused = fused_res2net_step(z.clone(), eps, params, torch.bfloat16)
    ops = torch.addcmul(z, eps, res2net_block(z, params, conv_dtype=torch.bfloat16))
    fp32 = torch.addcmul(z, eps, res2net_block(z, params, conv_dtype=torch.float32))
    diff = (fused - ops).abs()
    assert (
        diff.mean() < 2e-4 and diff.max() < 0.05
    )  # a few bf16 roundings land the other side; measured 2e-5, 0.02
    assert (ops - fp32).abs().mean() > 10 * diff.mean()  # much closer to the same bf16 convs than to fp32


def test_fused_cpu_matches_pytorch_ops_and_falls_back_where_it_cannot_run(kernels, tmp_path, monkeypatch):
    x = torch.rand(6, 3, 32, 32)
    for precision, atol in (("fp32", 1e-5), ("bf16", 3 / 255)):  # bf16: measured at most ~1.8 grey levels
        fused = Noise2Net(p=1.0, seed=5, precision=precision)(x)
        ops = Noise2Net(p=1.0, seed=5, precision=precision, fused_cpu=False)(x)
        torch.testing.assert_close(fused, ops, atol=atol, rtol=0)
        assert (fused - ops).abs().mean() < 0.15 / 255
    one_per_pass = {"p": 1.0, "seed": 6, "precision": "fp32", "cpu_pass_pixels": 64 * 64}  # every conv lone
    x64 = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(
        Noise2Net(**one_per_pass)(x64), Noise2Net(**one_per_pass, fused_cpu=False)(x64), atol=1e-5, rtol=0
    )
    nan = x.clone()
    # a NaN pixel spreads over its image through the norms in both: the kernels' ReLU keeps NaN
    nan[0, 1, 10, 10] = float("nan")
    fused, ops = (Noise2Net(p=1.0, seed=5, precision="fp32", fused_cpu=f)(nan) for f in (True, False))
    assert fused[0].isnan().all() and ops[0].isnan().all()
    torch.testing.assert_close(fused[1:], ops[1:], atol=1e-5, rtol=0)
    odd = torch.rand(3, 3, 10, 9)  # H * W = 90: not a multiple of 16, PyTorch ops
    assert torch.equal(Noise2Net(seed=1)(odd), Noise2Net(seed=1, fused_cpu=False)(odd))
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("SIGROB_CACHE_DIR", str(tmp_path))  # a machine without a compiler or a built library
    cpu_kernels.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build its CPU kernels .*pass fused_cpu=False"):
            without = Noise2Net(p=1.0, seed=5)(x)
        assert torch.equal(without, Noise2Net(p=1.0, seed=5, fused_cpu=False)(x))
    finally:
        cpu_kernels.library.cache_clear()
    with pytest.raises(ValueError, match="fused_cpu must be true or false, got 'no'"):
        Noise2Net(fused_cpu="no")


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
