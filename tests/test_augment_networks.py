"""EDSR-baseline x4 and the CAE: checkpoint names / shapes and forward semantics against independent code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from augment.networks import CAE, EDSR
from augment.networks.cae import binarize
from augment.networks.edsr import downscale


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread per augment test module (the others import this fixture).

    The tensors are small, and a single thread avoids OpenMP barrier stalls when the machine is busy.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def edsr_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the public edsr_baseline_x4 checkpoint, as listed in the reference facts."""
    shapes = {"sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,), "add_mean.weight": (3, 3, 1, 1)}
    shapes |= {"add_mean.bias": (3,), "head.0.weight": (64, 3, 3, 3), "head.0.bias": (64,)}
    for i in range(16):
        for j in (0, 2):
            shapes |= {f"body.{i}.body.{j}.weight": (64, 64, 3, 3), f"body.{i}.body.{j}.bias": (64,)}
    shapes |= {"body.16.weight": (64, 64, 3, 3), "body.16.bias": (64,)}
    shapes |= {"tail.0.0.weight": (256, 64, 3, 3), "tail.0.0.bias": (256,)}
    shapes |= {"tail.0.2.weight": (256, 64, 3, 3), "tail.0.2.bias": (256,)}
    shapes |= {"tail.1.weight": (3, 64, 3, 3), "tail.1.bias": (3,)}
    return shapes


def cae_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the public CAE model_final.state (the reference's 42-entry weight list)."""
    convs = [("e_conv_1.1", 64, 3, 5), ("e_conv_2.1", 128, 64, 5)]
    convs += [(f"e_block_{b}.{j}", 128, 128, 3) for b in (1, 2, 3) for j in (1, 4)]
    convs += [("e_conv_3.0", 32, 128, 5), ("d_up_conv_1.0", 64, 32, 3)]
    shapes = {f"{n}.weight": (o, i, k, k) for n, o, i, k in convs} | {
        f"{n}.bias": (o,) for n, o, _, _ in convs
    }
    shapes |= {"d_up_conv_1.3.weight": (64, 128, 2, 2), "d_up_conv_1.3.bias": (128,)}  # transposed: [in, out]
    convs = [(f"d_block_{b}.{j}", 128, 128, 3) for b in (1, 2, 3) for j in (1, 4)]
    convs += [("d_up_conv_2.0", 32, 128, 3), ("d_up_conv_3.0", 16, 256, 3), ("d_up_conv_3.3", 3, 16, 3)]
    shapes |= {f"{n}.weight": (o, i, k, k) for n, o, i, k in convs} | {
        f"{n}.bias": (o,) for n, o, _, _ in convs
    }
    shapes |= {"d_up_conv_2.3.weight": (32, 256, 2, 2), "d_up_conv_2.3.bias": (256,)}
    return shapes


def test_edsr_matches_public_checkpoint_keys_and_loads_strictly():
    expected = edsr_checkpoint_shapes()
    net = EDSR()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    fake = {k: torch.randn(s) for k, s in expected.items()}
    net.load_state_dict(fake, strict=True)
    assert torch.equal(net.body[7].body[2].weight, fake["body.7.body.2.weight"])


def test_cae_matches_public_checkpoint_keys_and_loads_strictly():
    expected = cae_checkpoint_shapes()
    assert len(expected) == 42
    net = CAE()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    net.load_state_dict({k: torch.randn(s) for k, s in expected.items()}, strict=True)


def test_edsr_forward_equals_independent_functional_edsr():
    torch.manual_seed(0)
    net = EDSR(n_feats=8)
    sd = net.state_dict()
    x = torch.rand(2, 3, 6, 5)

    def conv(t, name, pad=1):
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=pad)

    mean = 255 * torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
    h = conv(x * 255 - mean, "head.0")
    r = h
    for i in range(16):
        r = r + conv(F.relu(conv(r, f"body.{i}.body.0")), f"body.{i}.body.2")
    r = conv(r, "body.16") + h
    up = F.pixel_shuffle(conv(F.pixel_shuffle(conv(r, "tail.0.0"), 2), "tail.0.2"), 2)
    expected = (conv(up, "tail.1") + mean) / 255
    out = net(x)
    assert out.shape == (2, 3, 24, 20)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_edsr_skip_hook_bypasses_chosen_body_modules_per_sample():
    torch.manual_seed(0)
    net = EDSR(n_feats=4)
    x = torch.rand(2, 3, 5, 5)
    skip = {3: torch.tensor([True, False]), 16: torch.tensor([True, False])}
    out = net(x, skip=skip)
    h = net.head(net.sub_mean(x[:1] * 255))
    r = h
    for i, module in enumerate(net.body):
        r = r if i in (3, 16) else module(r)
    expected0 = net.add_mean(net.tail(r + h)) / 255
    torch.testing.assert_close(out[:1], expected0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], net(x[1:]), atol=1e-6, rtol=1e-6)


def test_cae_sizes_and_forward_equals_independent_code():
    torch.manual_seed(0)
    net = CAE()
    sd = net.state_dict()
    x = torch.rand(2, 3, 16, 20)
    noise = torch.rand(2, 32, 4, 5)

    def conv(t, name, pad=(0, 0, 0, 0), stride=1):
        return F.conv2d(F.pad(t, pad), sd[f"{name}.weight"], sd[f"{name}.bias"], stride=stride)

    def up(t, name):
        return F.conv_transpose2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=2)

    def block(t, name):
        return t + conv(F.leaky_relu(conv(t, f"{name}.1", (1, 1, 1, 1))), f"{name}.4", (1, 1, 1, 1))

    e = F.leaky_relu(
        conv(F.leaky_relu(conv(x, "e_conv_1.1", (1, 2, 1, 2), 2)), "e_conv_2.1", (1, 2, 1, 2), 2)
    )
    for b in (1, 2, 3):
        e = block(e, f"e_block_{b}")
    z = torch.tanh(conv(e, "e_conv_3.0", (2, 2, 2, 2)))
    code = torch.where(noise <= (1 + z) / 2, 1.0, -1.0)
    d = up(F.pad(F.leaky_relu(conv(code, "d_up_conv_1.0")), (1, 1, 1, 1)), "d_up_conv_1.3")
    for b in (1, 2, 3):
        d = block(d, f"d_block_{b}")
    d = up(F.pad(F.leaky_relu(conv(d, "d_up_conv_2.0")), (1, 1, 1, 1)), "d_up_conv_2.3")
    d = F.pad(F.leaky_relu(conv(d, "d_up_conv_3.0")), (2, 2, 2, 2), mode="reflect")
    expected = torch.tanh(conv(d, "d_up_conv_3.3"))
    assert net.encode(x).shape == (2, 32, 4, 5)
    out = net(x, noise=noise)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_binarize_is_stochastic_sign_with_straight_through_gradient():
    z = torch.full((200_000,), 0.5, requires_grad=True)
    b = binarize(z, torch.rand(200_000, generator=torch.Generator().manual_seed(0)))
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    assert abs((b == 1).float().mean().item() - 0.75) < 0.005  # P(+1) = (1 + z) / 2
    b.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_downscale_is_antialiased_bicubic_by_four():
    x = torch.rand(1, 3, 16, 12)
    y = downscale(x)
    assert y.shape == (1, 3, 4, 3)
    torch.testing.assert_close(y.mean(), x.mean(), atol=0.02, rtol=0)  # antialiasing keeps the average
    const = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(downscale(const), torch.full((1, 3, 4, 4), 0.3))
