"""DeepAugment: grouped per-sample application, replayable randomness, the batch contract, identity when off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_augment_networks import one_thread  # noqa: F401  (autouse fixture)
from torch.func import functional_call
from torch.utils._pytree import tree_map

from augment import CAE, EDSR, DeepAugment, perturb_cae, perturb_edsr
from augment.grouped import group_layout, grouped_forward, stack_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Randomly initialised networks in the public checkpoint format (the mechanics do not need training)."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(EDSR().state_dict(), root / "edsr.pt")
    torch.save(CAE().state_dict(), root / "cae.state")
    return {"edsr_weights": str(root / "edsr.pt"), "cae_weights": str(root / "cae.state")}


def gens(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


@pytest.mark.parametrize("kind", ["edsr", "cae"])
def test_group_output_equals_ungrouped_forward_of_its_network(kind):
    torch.manual_seed(0)
    net = EDSR(n_feats=16) if kind == "edsr" else CAE()
    host, dev = gens(1)
    base = dict(net.named_parameters())
    groups, n = 3, 2
    size = 6 if kind == "edsr" else 16
    x = torch.rand(groups * n, 3, size, size)
    if kind == "edsr":
        variants = [
            perturb_edsr.perturb_weights(base, perturb_edsr.WEIGHT_OPTIONS, host, dev) for _ in range(groups)
        ]
        params, hooks = perturb_edsr.sample_activations(
            groups * n,
            16,
            (size, size),
            17,
            perturb_edsr.PRE_OPTIONS,
            perturb_edsr.BODY_OPTIONS,
            host,
            dev,
            x.dtype,
        )
    else:
        variants = [
            perturb_cae.perturb_weights(base, perturb_cae.WEIGHT_OPTIONS, host, dev) for _ in range(groups)
        ]
        params, hooks = perturb_cae.sample_latent(
            groups * n, (4, 4), perturb_cae.LATENT_OPTIONS, host, dev, x.dtype
        )
    stacked, in_dims = stack_weights(base, variants)
    assert any(d == 0 for d in in_dims.values()) and any(d is None for d in in_dims.values())
    grouped_params = tree_map(lambda t: t.unflatten(0, (groups, n)), params)
    with torch.no_grad():
        out = grouped_forward(net, stacked, in_dims, x.unflatten(0, (groups, n)), grouped_params, hooks)
        for g in range(groups):
            sl = tree_map(lambda t, g=g: t[g * n : (g + 1) * n], params)
            ref = functional_call(net, variants[g], (x[g * n : (g + 1) * n],), hooks(sl))
            torch.testing.assert_close(out[g], ref, atol=1e-5, rtol=1e-5)
        other = functional_call(net, variants[1], (x[:n],), hooks(tree_map(lambda t: t[:n], params)))
        assert (out[0] - other).abs().max() > 1e-3  # the groups' networks really differ


@pytest.mark.parametrize("max_images", [1, 3, 4])
def test_passes_of_at_most_max_images_equal_each_groups_own_forward(max_images):
    torch.manual_seed(0)
    net = EDSR(n_feats=16)
    host, dev = gens(2)
    base = dict(net.named_parameters())
    groups, n = 3, 2
    x = torch.rand(groups * n, 3, 6, 6)
    variants = [
        perturb_edsr.perturb_weights(base, perturb_edsr.WEIGHT_OPTIONS, host, dev) for _ in range(groups)
    ]
    params, hooks = perturb_edsr.sample_activations(
        groups * n, 16, (6, 6), 17, perturb_edsr.PRE_OPTIONS, perturb_edsr.BODY_OPTIONS, host, dev, x.dtype
    )
    stacked, in_dims = stack_weights(base, variants)
    grouped_params = tree_map(lambda t: t.unflatten(0, (groups, n)), params)
    with torch.no_grad():
        out = grouped_forward(
            net, stacked, in_dims, x.unflatten(0, (groups, n)), grouped_params, hooks, max_images
        )
        for g in range(groups):
            sl = tree_map(lambda t, g=g: t[g * n : (g + 1) * n], params)
            ref = functional_call(net, variants[g], (x[g * n : (g + 1) * n],), hooks(sl))
            torch.testing.assert_close(out[g], ref, atol=1e-5, rtol=1e-5)


def test_plain_cpu_hooks_leave_out_only_unused_work():
    torch.manual_seed(0)
    net = EDSR(n_feats=16).eval()
    host, dev = gens(3)
    x = torch.rand(40, 3, 6, 6)
    params, hooks = perturb_edsr.sample_activations(
        40, 16, (6, 6), 17, perturb_edsr.PRE_OPTIONS, perturb_edsr.BODY_OPTIONS, host, dev, x.dtype
    )
    whole_skips = 0
    with torch.no_grad():
        for i in range(40):
            one = tree_map(lambda t, i=i: t[i : i + 1], params)
            plain = hooks(one, plain=True)
            whole_skips += sum(flag is True for flag in (plain["skip"] or {}).values())
            torch.testing.assert_close(net(x[i : i + 1], **plain), net(x[i : i + 1], **hooks(one)))
    assert whole_skips > 0  # some one-image slices skip a body module without running it


def test_cpu_sub_batches_give_the_same_augmentation(weights):
    x = torch.rand(6, 3, 16, 16)
    one_pass = DeepAugment(**weights, seed=4, images_per_network=4, precision="fp32")(x)
    torch.testing.assert_close(
        DeepAugment(**weights, seed=4, images_per_network=4, cpu_pass_pixels=16 * 16, precision="fp32")(x),
        one_pass,
        atol=1e-5,
        rtol=0,
    )
    with pytest.raises(ValueError, match="cpu_pass_pixels"):
        DeepAugment(**weights, cpu_pass_pixels=0)


def test_bf16_networks_stay_close_to_fp32(weights):
    x = torch.rand(12, 3, 32, 32)
    fp32 = DeepAugment(**weights, seed=5, images_per_network=4, precision="fp32")(x)
    bf16 = DeepAugment(**weights, seed=5, images_per_network=4, precision="bf16")(x)
    assert bf16.dtype == torch.float32 and bf16.shape == x.shape
    changed = ~(fp32 == x).flatten(1).all(1)  # the same images take a network path in both
    assert changed.equal(~(bf16 == x).flatten(1).all(1)) and changed.any()
    diff = (bf16 - fp32)[changed].abs()
    assert 0 < diff.mean() < 0.01  # bf16 really ran, and only rounding separates it from fp32
    with pytest.raises(ValueError, match="precision"):
        DeepAugment(**weights, precision="fp16")


def test_group_layout():
    assert group_layout(1, 16) == (1, 1)
    assert group_layout(16, 16) == (1, 16)
    assert group_layout(21, 16) == (2, 11)
    assert group_layout(85, 16) == (6, 15)
    for m in range(1, 60):
        g, n = group_layout(m, 8)
        assert g * n >= m and n <= 8 and (g - 1) * n < m


def test_copies_in_different_groups_differ_and_in_one_group_agree(weights):
    aug = DeepAugment(
        **weights,
        p_edsr=1.0,
        p_cae=0.0,
        images_per_network=2,
        edsr_pre_options=(),
        edsr_body_options=(),
        seed=2,
    )
    x = torch.rand(1, 3, 12, 12).expand(4, -1, -1, -1).contiguous()
    out = aug(x)
    torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[2], out[3], atol=1e-6, rtol=0)
    assert (out[0] - out[2]).abs().max() > 1e-3
    per_sample = DeepAugment(
        **weights, p_edsr=1.0, p_cae=0.0, images_per_network=2, edsr_weight_options=(), seed=2
    )
    out = per_sample(x)  # activation perturbations are per image even within a group
    assert (out[0] - out[1]).abs().max() > 1e-3 or (out[2] - out[3]).abs().max() > 1e-3


def test_routes_fraction_shape_dtype_range_and_no_grad(weights):
    aug = DeepAugment(**weights, images_per_network=8, seed=0)
    x = torch.rand(30, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    out = aug(x)
    assert out.shape == x.shape and out.dtype == torch.float64 and out.device == x.device
    assert not out.requires_grad and all(not p.requires_grad for p in aug.parameters())
    assert out.min() >= 0 and out.max() <= 1
    clean = (out == x).flatten(1).all(1)
    assert 4 <= clean.sum() <= 17  # 1/3 of 30 stay clean
    assert DeepAugment(**weights, p_edsr=0.0, p_cae=0.0)(x).equal(x.detach())
    x32 = torch.rand(3, 3, 12, 20)
    assert aug(x32).shape == x32.shape  # non-square


def test_same_seed_same_output_and_rng_state_replays(weights):
    x = torch.rand(12, 3, 16, 16)
    a, b = (
        DeepAugment(**weights, seed=7, images_per_network=4),
        DeepAugment(**weights, seed=7, images_per_network=4),
    )
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(DeepAugment(**weights, seed=8, images_per_network=2)(x), first)
    state = a.get_rng_state()
    second = a(x)
    assert not torch.equal(second, first)
    a.set_rng_state(state)
    assert torch.equal(a(x), second)


def test_cae_size_runs_the_cae_at_a_lower_resolution(weights):
    aug = DeepAugment(
        **weights, p_edsr=0.0, p_cae=1.0, cae_size=12, cae_latent_options=(), cae_weight_options=()
    )
    x = torch.rand(2, 3, 24, 36)
    out = aug(x)
    assert out.shape == x.shape
    # detail finer than the 12 px CAE resolution is gone: the output is smooth at pixel scale
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < (x[..., 1:] - x[..., :-1]).abs().mean()


@pytest.mark.parametrize("edsr_size", [10, 36])
def test_edsr_size_sets_edsrs_input_side_and_resizes_its_output_back(weights, edsr_size):
    """With perturbations off, the EDSR path equals a plain forward of the network on the image
    resized to short side ``edsr_size``, its x4 output resized to the input's size."""
    off = {"edsr_weight_options": (), "edsr_pre_options": (), "edsr_body_options": ()}
    aug = DeepAugment(**weights, p_edsr=1.0, p_cae=0.0, edsr_size=edsr_size, precision="fp32", **off)
    x = torch.rand(2, 3, 24, 36)
    net = EDSR()
    net.load_state_dict(torch.load(weights["edsr_weights"], weights_only=True))
    small = torch.nn.functional.interpolate(
        x, size=(edsr_size, edsr_size * 3 // 2), mode="bicubic", antialias=True, align_corners=False
    ).clamp(0, 1)
    with torch.no_grad():
        big = net(small)
    assert big.shape[-2:] == (4 * edsr_size, 6 * edsr_size)
    expected = torch.nn.functional.interpolate(
        big, size=(24, 36), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)
    out = aug(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_clear_errors(weights, tmp_path: Path):
    with pytest.raises(ValueError, match="edsr_weights"):
        DeepAugment(cae_weights=weights["cae_weights"])
    with pytest.raises(FileNotFoundError, match="pretrain"):
        DeepAugment(edsr_weights=str(tmp_path / "missing.pt"), p_cae=0.0)
    with pytest.raises(ValueError, match="divisible by 4"):
        DeepAugment(**weights)(torch.rand(2, 3, 18, 16))
    with pytest.raises(ValueError, match="edsr_weight_options"):
        DeepAugment(**weights, edsr_weight_options=(17,))
    with pytest.raises(ValueError, match="edsr_size"):
        DeepAugment(**weights, edsr_size=0)
    with pytest.raises(ValueError, match="at least 12 px"):
        DeepAugment(**weights, p_edsr=0.0, p_cae=1.0)(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="p_edsr \\+ p_cae"):
        DeepAugment(**weights, p_edsr=0.7, p_cae=0.7)
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a public-format EDSR checkpoint"):
        DeepAugment(edsr_weights=str(tmp_path / "bad.pt"), p_cae=0.0)
    with pytest.raises(ValueError, match="not a public-format EDSR checkpoint.*swapped"):
        DeepAugment(edsr_weights=weights["cae_weights"], cae_weights=weights["edsr_weights"])
    (tmp_path / "text.pt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ValueError, match="cae_weights=.*not a readable torch checkpoint"):
        DeepAugment(cae_weights=str(tmp_path / "text.pt"), p_edsr=0.0)
    state = torch.load(weights["edsr_weights"], weights_only=True)
    state["head.0.weight"] = state["head.0.weight"][:8]  # 8 of its 64 output channels
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(
        ValueError, match=r"edsr_weights=.*cut.pt has EDSR keys of the wrong shape \(.*head.0.weight"
    ):
        DeepAugment(edsr_weights=str(tmp_path / "cut.pt"), p_cae=0.0)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a CAE state dict"):
        DeepAugment(cae_weights=str(tmp_path / "list.pt"), p_edsr=0.0)
    with pytest.raises(ValueError, match="edsr_weight_draws"):
        DeepAugment(**weights, edsr_weight_draws=-2)


def test_inputs_outside_the_contract_are_rejected_and_outputs_clamped(weights):
    aug = DeepAugment(**weights)
    for seed in range(4):  # the CAE size check does not depend on which images the draw sends to the CAE
        with pytest.raises(ValueError, match="at least 12 px"):
            DeepAugment(**weights, p_cae=0.1, seed=seed)(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"got torch.uint8: convert with x.float\(\) / 255"):
        aug(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 254\].*divide 0-255 images by 255"):
        aug(torch.arange(2 * 3 * 16 * 16).remainder(255).float().view(2, 3, 16, 16))
    slightly = torch.rand(4, 3, 16, 16) * (1 + 5e-4)  # rounding of earlier steps: accepted, then clamped
    out = DeepAugment(**weights, p_edsr=0.0, p_cae=0.0)(slightly)
    torch.testing.assert_close(out, slightly.clamp(0, 1), atol=0, rtol=0)


def test_an_outer_autocast_does_not_change_the_precision(weights):
    x = torch.rand(4, 3, 16, 16)
    plain = DeepAugment(**weights, precision="fp32", seed=1)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = DeepAugment(**weights, precision="fp32", seed=1)(x)
    torch.testing.assert_close(autocast, plain, atol=0, rtol=0)


def test_generator_follows_the_module_and_state_checks_device(weights):
    aug = DeepAugment(**weights, seed=0).to(torch.float64)
    host, dev = aug.generators()
    assert host.device.type == "cpu" and dev.device.type == "cpu"
    out = aug(torch.rand(3, 3, 12, 12, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_generator_dtype_and_replay(weights):
    aug = DeepAugment(**weights, seed=0, images_per_network=4).cuda()
    x = torch.rand(12, 3, 32, 32, device="cuda", dtype=torch.bfloat16)
    state = aug.get_rng_state()
    out = aug(x)
    assert out.device == x.device and out.dtype == x.dtype and aug.generators()[1].device.type == "cuda"
    aug.set_rng_state(state)
    assert torch.equal(aug(x), out)
    cpu_state = DeepAugment(**weights).get_rng_state()
    with pytest.raises(ValueError, match="set_rng_state"):
        aug.set_rng_state(cpu_state)
