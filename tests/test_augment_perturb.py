"""Every DeepAugment perturbation changes exactly the weights / activations it should, by the expected amount."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_augment_networks import one_thread  # noqa: F401  (autouse fixture)

from augment import perturb_cae, perturb_edsr
from augment.networks import CAE, EDSR
from augment.perturb_cae import LAYERS

LAPLACE_4 = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
LAPLACE_8 = torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]])


def gens(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1000)


def changed(base: dict, new: dict) -> set[str]:
    assert new.keys() == base.keys()
    for k in base:
        if new[k] is not base[k]:
            assert new[k].shape == base[k].shape, k
    return {k for k in base if new[k] is not base[k]}


def edsr_option(option: int, seed: int, feats: int = 4, base: dict | None = None) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    base = base or dict(EDSR(n_feats=feats).state_dict())
    originals = {k: v.clone() for k, v in base.items()}
    new = dict(base)
    perturb_edsr.WEIGHT_OPTION_FNS[option](new, *gens(seed))
    for k, v in base.items():  # the base weights are never written to
        assert torch.equal(v, originals[k])
    return base, new


def block_and_conv(key: str) -> tuple[int, int]:
    parts = key.split(".")
    assert parts[0] == "body" and parts[2] == "body" and parts[4] in ("weight", "bias"), key
    return int(parts[1]), int(parts[3])


@pytest.mark.parametrize("seed", range(4))
def test_edsr_options_0_to_7_exact(seed):
    base, new = edsr_option(0, seed)
    keys = changed(base, new)
    (i,) = {block_and_conv(k)[0] for k in keys}
    assert i in (0, 3, 6, 9)
    assert keys == {f"body.{i}.body.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")}
    assert all(torch.equal(new[k], base[k].flip(0)) for k in keys)

    base, new = edsr_option(1, seed)
    keys = changed(base, new)
    (i,) = {block_and_conv(k)[0] for k in keys}
    assert i in (1, 4, 7) and keys == {f"body.{i}.body.0.weight", f"body.{i}.body.0.bias"}
    assert all(torch.equal(new[k], -base[k]) for k in keys)

    base, new = edsr_option(2, seed)
    keys = changed(base, new)
    (i,) = {block_and_conv(k)[0] for k in keys}
    assert i in (0, 3, 6, 9) and keys == {f"body.{i}.body.0.weight", f"body.{i}.body.0.bias"}
    assert all(not new[k].any() for k in keys)

    base, new = edsr_option(3, seed)
    keys = changed(base, new)
    (i,) = {block_and_conv(k)[0] for k in keys}
    assert i in (0, 3, 6, 9) and keys == {f"body.{i}.body.0.weight", f"body.{i}.body.2.weight"}
    x = base[f"body.{i}.body.0.weight"].double()
    expected = -0.5 * x * (1 + torch.erf(x / np.sqrt(2)))  # -GELU(w)
    torch.testing.assert_close(new[f"body.{i}.body.0.weight"].double(), expected, atol=1e-6, rtol=1e-6)

    for option, kernel in ((4, LAPLACE_4), (5, LAPLACE_8)):
        base, new = edsr_option(option, seed)
        (key,) = changed(base, new)
        assert block_and_conv(key) in {(i, 0) for i in (0, 3, 6, 9)} and key.endswith("weight")
        torch.testing.assert_close(new[key], base[key] * kernel)

    base, new = edsr_option(7, seed)
    keys = changed(base, new)
    (i,) = {block_and_conv(k)[0] for k in keys}
    assert i in (0, 3, 6, 9) and keys == {f"body.{i}.body.0.weight", f"body.{i}.body.2.weight"}
    assert torch.equal(
        new[f"body.{i}.body.0.weight"],
        torch.from_numpy(base[f"body.{i}.body.0.weight"].numpy()[..., ::-1].copy()),
    )
    assert torch.equal(new[f"body.{i}.body.2.weight"], -base[f"body.{i}.body.2.weight"])


def test_edsr_option_6_scales_conv2_around_one():
    ratios = []
    for seed in range(6):
        base, new = edsr_option(6, seed, feats=16)
        (key,) = changed(base, new)
        assert block_and_conv(key) in {(i, 2) for i in (0, 3, 6, 9)} and key.endswith("weight")
        ratio = new[key] / base[key]
        assert ratio.min() >= -1 - 1e-5 and ratio.max() <= 3 + 1e-5  # 1 + 2u(2r - 1), u, r in [0, 1)
        ratios.append(ratio)
    spread = torch.stack([(r - 1).abs().max() for r in ratios])
    assert (torch.stack([r.mean() for r in ratios]) - 1).abs().max() < 0.1 * spread.max()  # centred on 1
    assert min(r.min() for r in ratios) < 0.9  # scales down too (the reference bug only scaled up)


def delta_base(feats: int, key: str, out: int, inp: int) -> dict:
    """EDSR weights where ``key`` is zero except a centre tap at [out, inp]: its convolution reveals the kernel."""
    base = dict(EDSR(n_feats=feats).state_dict())
    w = torch.zeros_like(base[key])
    w[out, inp, 1, 1] = 1.0
    for i in (1, 5, 9, 0, 3, 6):
        for j in (0, 2):
            base[f"body.{i}.body.{j}.weight"] = w.clone()
    return base


@pytest.mark.parametrize("seed", range(3))
def test_edsr_option_8_convolves_with_shared_one_hot_sign_kernels(seed):
    base = delta_base(4, "body.1.body.0.weight", 2, 1)
    _, new = edsr_option(8, seed, base=base)
    (key,) = changed(base, new)
    assert block_and_conv(key) in {(1, 0), (5, 0), (9, 0)}
    w = new[key]
    assert not w[[0, 1, 3]].any()  # only the filter holding the delta is non-zero
    # conv2d(delta at centre, z)[o'] = rot180(z[o', 1]): the same +-1 one-hot kernel for every o'
    assert all(torch.equal(w[2, c], w[2, 0]) for c in range(4))
    assert w[2, 0].abs().sum() == 1 and set(w[2, 0].unique().tolist()) in ({0.0, 1.0}, {-1.0, 0.0})


def test_edsr_option_9_convolves_with_small_uniform_kernels():
    for seed in range(3):
        base = delta_base(8, "body.0.body.0.weight", 3, 5)
        _, new = edsr_option(9, seed, base=base)
        (key,) = changed(base, new)
        assert block_and_conv(key) in {(i, 0) for i in (0, 3, 6, 9)}
        kernels = new[key][3]  # [8, 3, 3] = rot180 of z[:, 5], z = (2 r u - 1) / 6
        assert kernels.min() >= -1 / 6 - 1e-6 and kernels.max() <= 1 / 6 + 1e-6
        assert not new[key][[0, 1, 2, 4, 5, 6, 7]].any()


def test_edsr_option_10_convolves_conv2_with_dirichlet_kernels():
    kernels = []
    for seed in range(4):
        base = delta_base(32, "body.1.body.2.weight", 7, 4)
        _, new = edsr_option(10, seed, base=base)
        (key,) = changed(base, new)
        assert block_and_conv(key) in {(1, 2), (5, 2), (9, 2)}
        kernels.append(new[key][7].flatten(1))  # [32, 9] rot180 of Dirichlet(0.1) kernels
    k = torch.cat(kernels).double()
    torch.testing.assert_close(k.sum(1), torch.ones(len(k), dtype=k.dtype), atol=1e-5, rtol=0)
    assert k.min() >= 0
    ref = np.random.default_rng(0).dirichlet([0.1] * 9, size=20_000)
    assert abs(k.mean().item() - 1 / 9) < 1e-4  # rows sum to 1
    assert (
        abs(k.pow(2).mean().item() - (ref**2).mean()) < 0.012
    )  # second moment 0.1 * 1.1 / (0.9 * 1.9) / ...
    assert abs(k.max(1).values.mean().item() - ref.max(1).mean()) < 0.06


def test_log_gamma_matches_numpy_gamma_samples():
    dev = torch.Generator().manual_seed(0)
    log_g = perturb_edsr._log_gamma(0.1, (400, 500), dev, torch.device("cpu")).double()
    ref = np.log(np.random.default_rng(0).gamma(0.1, size=200_000))
    assert torch.isfinite(log_g).all()
    assert abs(log_g.mean().item() - ref.mean()) < 0.15  # E log G = digamma(0.1) = -10.42; SE ~0.03
    assert abs(log_g.std().item() - ref.std()) < 0.15  # sqrt(trigamma(0.1)) = 10.07
    quantiles = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    np.testing.assert_allclose(
        torch.quantile(log_g, quantiles).numpy(), np.quantile(ref, quantiles), atol=0.3
    )


def test_edsr_option_11_adds_uniform_noise_to_one_conv2():
    base, new = edsr_option(11, 0, feats=16)
    (key,) = changed(base, new)
    assert block_and_conv(key)[1] == 2 and 0 <= block_and_conv(key)[0] <= 14 and key.endswith("weight")
    noise = new[key] - base[key]
    assert (
        noise.min() >= -0.5 - 1e-6 and noise.max() <= 0.5 + 1e-6 and noise.std() > 0.25
    )  # U(-.5, .5): 0.289


@pytest.mark.parametrize("seed", range(3))
def test_edsr_options_12_to_16_touch_blocks_0_to_14(seed):
    base, new = edsr_option(12, seed)  # rot90: a permutation of each kernel tensor's entries
    keys = changed(base, new)
    assert 1 <= len(keys) <= 5
    for k in keys:
        i, j = block_and_conv(k)
        assert i <= 14 and j in (0, 2) and k.endswith("weight")
        assert torch.equal(new[k].flatten().sort().values, base[k].flatten().sort().values)

    for option, values in ((13, {-1.0, 1.0}), (14, {0.0, 1.0})):
        base, new = edsr_option(option, seed)
        keys = changed(base, new)
        assert 1 <= len(keys) <= 5
        for k in keys:
            assert block_and_conv(k)[0] <= 14 and block_and_conv(k)[1] == 0 and k.endswith("weight")
            assert set((new[k] / base[k]).unique().tolist()) <= values

    base, new = edsr_option(15, seed, feats=8)
    keys = changed(base, new)
    assert 1 <= len(keys) <= 5
    for k in keys:
        assert block_and_conv(k)[0] <= 14 and block_and_conv(k)[1] == 0 and k.endswith("weight")
        ratio = (new[k] / base[k]).flatten(1)
        assert torch.equal(ratio, ratio[:, :1].expand_as(ratio))  # whole filters, sign +-1
        negated = int((ratio[:, 0] == -1).sum())
        assert set(ratio[:, 0].tolist()) <= {-1.0, 1.0} and negated <= 8

    base, new = edsr_option(16, seed)
    keys = changed(base, new)
    assert 1 <= len(keys) <= 5
    for k in keys:
        assert block_and_conv(k)[0] <= 14 and k.endswith("weight")
        flat_new, flat_old = new[k].flatten(2), base[k].flatten(2)
        assert ((flat_new != 0).sum(-1) == 1).all()
        top = flat_old.max(-1, keepdim=True)
        assert torch.equal(flat_new.gather(-1, top.indices), top.values)  # the largest tap stays in place


def test_edsr_perturb_weights_draws_three_options_and_none_when_empty():
    base = dict(EDSR(n_feats=4).state_dict())
    host, dev = gens(0)
    assert changed(base, perturb_edsr.perturb_weights(base, (), host, dev)) == set()
    counts = [len(changed(base, perturb_edsr.perturb_weights(base, (1,), *gens(s)))) for s in range(5)]
    assert all(c in (2, 4, 6) for c in counts)  # 3 draws of option 1: one or more blocks, weight + bias


def cae_option(option: int, seed: int) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    base = dict(CAE().state_dict())
    return base, perturb_cae.perturb_weights(base, (option,), *gens(seed))


def layer_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def test_cae_layers_are_the_reference_order():
    convs = [n for n, m in CAE().named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert tuple(convs) == LAYERS and len(LAYERS) == 21


@pytest.mark.parametrize("seed", range(3))
def test_cae_weight_options(seed):
    allowed = {LAYERS[i] for i in range(8, 14)}
    base, new = cae_option(0, seed)  # reverse output channels of one or two layers in 11..15
    keys = changed(base, new)
    assert {layer_of(k) for k in keys} <= {LAYERS[i] for i in range(11, 16)}
    assert all(torch.equal(new[k], base[k].flip(0)) for k in keys) and len(keys) in (2, 4)

    for option, count, fn in ((1, 12, torch.neg), (2, 25, torch.zeros_like), (3, 25, lambda t: -F.gelu(t))):
        base, new = cae_option(option, seed)
        keys = changed(base, new)
        (layer,) = {layer_of(k) for k in keys}
        assert layer in (allowed if option != 3 else {LAYERS[i] for i in range(10, 14)})
        w, b, w0, b0 = (
            new[f"{layer}.weight"],
            new[f"{layer}.bias"],
            base[f"{layer}.weight"],
            base[f"{layer}.bias"],
        )
        out_dim = 1 if layer == "d_up_conv_1.3" else 0  # a transposed conv's filters are dim 1
        hit = [
            c for c in range(w.shape[out_dim]) if not torch.equal(w.select(out_dim, c), w0.select(out_dim, c))
        ]
        assert 1 <= len(hit) <= count
        for c in range(w.shape[out_dim]):
            expect = fn(w0.select(out_dim, c)) if c in hit else w0.select(out_dim, c)
            torch.testing.assert_close(w.select(out_dim, c), expect)
            torch.testing.assert_close(b[c], fn(b0[c]) if c in hit else b0[c])

    base, new = cae_option(4, seed)  # scale one or two layers by [1, 1 + 8u)
    for k in changed(base, new):
        assert layer_of(k) in allowed and k.endswith("weight")
        ratio = new[k] / base[k]
        assert ratio.min() >= 1 - 1e-5 and ratio.max() <= 81 + 1e-3  # at most twice 1 + 8u

    base, new = cae_option(5, seed)
    (key,) = changed(base, new)
    assert layer_of(key) in allowed
    assert set((new[key] / base[key]).unique().tolist()) in ({0.0, 1.0}, {-1.0, 1.0})

    base, new = cae_option(6, seed)
    (key,) = changed(base, new)
    assert layer_of(key) in allowed
    assert any(torch.equal(new[key], torch.rot90(base[key], k, (2, 3))) for k in (1, 2, 3))

    base, new = cae_option(7, seed)
    (key,) = changed(base, new)
    assert layer_of(key) in allowed and key.endswith("weight")
    out_dim = 1 if layer_of(key) == "d_up_conv_1.3" else 0
    ratio = (new[key] / base[key]).movedim(out_dim, 0).flatten(1)
    assert set(ratio.unique().tolist()) == {-1.0, 1.0}
    assert int((ratio[:, 0] == -1).sum()) <= ratio.shape[0] // 5
    assert torch.equal(ratio, ratio[:, :1].expand_as(ratio))

    base, new = cae_option(8, seed)
    (key,) = changed(base, new)
    flat = new[key].flatten(2)
    assert ((flat != 0).sum(-1) <= 1).all()
    torch.testing.assert_close(flat.sum(-1), base[key].flatten(2).max(-1).values)


def test_cae_default_weight_options_are_the_reference_eight():
    assert tuple(range(8)) == perturb_cae.WEIGHT_OPTIONS
    base = dict(CAE().state_dict())
    assert changed(base, perturb_cae.perturb_weights(base, (), *gens(0))) == set()


def test_edsr_pre_options():
    m, c, size = 64, 16, (8, 8)
    x = torch.randn(m, c, *size)
    for option in (1, 2, 3, 4):
        params, hooks = perturb_edsr.sample_activations(
            m, c, size, 17, (option,), (5,), *gens(option), torch.float32
        )
        kw = hooks(params)
        out = x if kw["pre"] is None else kw["pre"](x)
        if option == 1:  # swap 5 channel pairs: a permutation moving at most 10 channels
            perm = params["perm"]
            assert torch.equal(perm.sort(1).values, torch.arange(c).expand(m, c))
            assert ((perm != torch.arange(c)).sum(1) <= 10).all() and (perm != torch.arange(c)).any()
            assert torch.equal(out, torch.stack([x[s, perm[s]] for s in range(m)]))
        elif option == 2:
            ratio = out / x
            assert (
                set(ratio.unique().tolist()) == {0.0, 1.0} and abs((ratio == 0).float().mean() - 0.05) < 0.01
            )
        elif option == 3:
            ratio = out / x
            assert (
                set(ratio.unique().tolist()) == {-1.0, 1.0}
                and abs((ratio < 0).float().mean() - 0.025) < 0.007
            )
        else:
            assert kw["pre"] is None


def test_edsr_body_options_per_sample():
    m, c = 300, 4
    params, hooks = perturb_edsr.sample_activations(
        m, c, (6, 6), 17, (4,), (1, 2, 3, 4, 5), *gens(3), torch.float32
    )
    x = torch.randn(m, c, 6, 6)
    kw = hooks(params)
    assert kw["mid_index"] == 5
    out = kw["mid"](x)
    relu = gelu = flips = 0
    for s in range(m):
        candidates = {"neg": -x[s], "relu": F.relu(x[s]), "gelu": F.gelu(x[s])}
        candidates |= {"ch": x[s].flip(0, 1), "cw": x[s].flip(0, 2), "none": x[s]}
        (name,) = [n for n, v in candidates.items() if torch.allclose(out[s], v)]
        relu, gelu, flips = relu + (name == "relu"), gelu + (name == "gelu"), flips + (name in ("ch", "cw"))
        skipped = [i for i, mask in kw["skip"].items() if mask[s]]
        assert name == "none" or not skipped  # skip is its own option
        assert all(2 <= i <= 16 for i in skipped) and len(skipped) <= 3
    assert 0.15 < relu / (relu + gelu) < 0.5  # ReLU 1/3, GELU 2/3
    assert 0.1 < flips / m < 0.3 and any(mask.any() for mask in kw["skip"].values())


def latent(option: int, m: int = 200, size: tuple[int, int] = (6, 6)):
    params, hooks = perturb_cae.sample_latent(m, size, (option,), *gens(option), torch.float32)
    return params, hooks(params)


def test_cae_latent_noise_and_code_scale():
    params, kw = latent(0)
    assert (
        params["noise"].shape == (200, 32, 6, 6) and params["noise"].min() >= 0 and params["noise"].max() < 1
    )
    assert kw["latent"] is None
    factor = params["factor"]
    assert factor.min() >= 3 and factor.max() < 7  # [3, 3 + 4u)
    b = torch.where(torch.rand(200, 32, 6, 6) < 0.5, -1.0, 1.0)
    torch.testing.assert_close(
        kw["code"](b), (b + 1) * factor - 1
    )  # (0|1) code times the factor, back to +-1


def test_cae_latent_masks():
    z = torch.rand(200, 32, 6, 6) + 0.1
    for option, values, rate in ((1, {0.0, 1.0}, 0.2), (2, {-1.0, 1.0}, 0.1)):
        _, kw = latent(option)
        ratio = kw["latent"](z) / z
        assert set(ratio.unique().tolist()) == values
        assert torch.equal(ratio, ratio[:, :1].expand_as(ratio))  # positions, shared by the channels
        assert abs((ratio[:, 0] != 1).float().mean() - rate) < 0.02


def test_cae_latent_permutation_and_flips():
    z = torch.randn(200, 32, 6, 6)
    _, kw = latent(3)
    out = kw["latent"](z)
    torch.testing.assert_close(out[:, 10:], z[:, 10:], atol=1e-6, rtol=0)
    for s in range(5):
        src = [next(j for j in range(10) if torch.allclose(out[s, c], z[s, j], atol=1e-6)) for c in range(10)]
        assert sorted(src) == list(range(10))
    for option in (4, 5):
        _, kw = latent(option)
        out = kw["latent"](z)
        for s in range(20):
            flipped = 0
            for c in range(32):
                variants = [z[s, c], z[s, c].flip(0), z[s, c].flip(1), z[s, c].flip(0, 1)]
                match = [k for k, v in enumerate(variants) if torch.equal(out[s, c], v)]
                assert match, (option, s, c)
                flipped += 0 not in match
            assert (1 <= flipped <= 5) if option == 4 else flipped == 32


def test_cae_latent_channel_mixing_kernels():
    eye = torch.zeros(32, 32, 3, 3)
    eye[torch.arange(32), torch.arange(32), 1, 1] = 1
    params, kw = latent(6)
    delta = params["kernel"] - eye
    assert delta.abs().max() <= 0.1 + 1e-6 and delta.std() > 0.05  # identity + U(-0.1, 0.1)
    params, _ = latent(7)
    extra = params["kernel"] - eye
    assert set(extra.unique().tolist()) <= {-1.0, 0.0, 1.0} and (extra.flatten(2).sum(-1) >= 0).all()
    per_channel = (params["kernel"] != 0).flatten(2).sum(-1)  # identity + at most one extra tap
    assert per_channel.max() <= 2 and abs((per_channel == 2).float().mean() - 0.5) < 0.06
    params, kw = latent(8)
    k = params["kernel"]
    assert torch.equal(k.sum((3, 4)), eye.sum((2, 3)).expand(200, 32, 32))  # one tap on the diagonal
    z = torch.randn(200, 32, 6, 6)
    expected = torch.stack([F.conv2d(z[s : s + 1], k[s], padding=1)[0] for s in range(200)])
    torch.testing.assert_close(kw["latent"](z), expected, atol=1e-5, rtol=1e-5)
