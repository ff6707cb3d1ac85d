import math

import pytest
import torch
import torch.nn.functional as F

from vpfb.losses import DeepRitzLoss
from vpfb.paths import LinearPath
from vpfb.potentials import (
    AEEnergy,
    ScalarHead,
    UNet,
    WideResNet,
    WideResNetPotential,
    potential_and_velocity,
    unet_config,
    value_and_grad,
)
from vpfb.potentials.unet import SelfAttention, sinusoidal_embedding

TINY = dict(
    in_channels=2,
    image_size=8,
    model_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    dropout=0.0,
)


def randomise(module, scale=0.1):
    """Perturb every parameter, so that zero-initialised layers stop hiding the paths behind them."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
        for m in module.modules():
            if isinstance(m, torch.nn.Embedding):  # the null label's embedding stays 0 (it gets no gradient)
                m.weight[m.padding_idx].zero_()
    return module


def images(n=3, c=2, size=8, dtype=torch.float32):
    return torch.randn(n, c, size, size, dtype=dtype)


CASES = {  # name: (Φ factory, labels)
    "ae-unet": (lambda: AEEnergy(UNet(**TINY)), None),
    "ae-unet-conditional": (lambda: AEEnergy(UNet(**TINY, num_classes=3)), torch.tensor([0, 1, 3])),
    "ae-unet-autonomous": (lambda: AEEnergy(UNet(**TINY, time_varying=False)), None),
    "scalar-unet": (lambda: ScalarHead(UNet(**TINY, use_scale_shift_norm=False, image_output=False)), None),
    "wideresnet": (lambda: WideResNetPotential(in_channels=2, depth=10, widen_factor=1), None),
}


@pytest.mark.parametrize("name", CASES)
def test_potentials_give_one_scalar_per_image_and_a_velocity_of_image_shape(name):
    make, c = CASES[name]
    potential, x, t = make(), images(), torch.rand(3)
    phi, v = potential_and_velocity(lambda y, s: potential(y, s, c), x, t)
    assert phi.shape == (3,) and v.shape == x.shape and torch.isfinite(v).all()


@pytest.mark.parametrize("name", CASES)
def test_each_image_has_its_own_potential(name):
    # No batch statistics: changing one image leaves the other images' Φ alone (why there is no BatchNorm).
    make, c = CASES[name]
    potential, x, t = randomise(make()), images(), torch.rand(3)
    y = x.clone()
    y[0] = torch.randn_like(y[0])
    torch.testing.assert_close(potential(y, t, c)[1:], potential(x, t, c)[1:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_second_order_gradient_of_the_ritz_loss_matches_a_finite_difference(name):
    # ∂θ of ½‖∇Φ‖² − ∇Φ·u goes through autograd's double backward of every layer: check it along a direction.
    make, c = CASES[name]
    potential = randomise(make()).double()
    x, t = images(dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    u = torch.randn_like(x)
    names, params = zip(*potential.named_parameters())

    def loss():
        v = potential_and_velocity(lambda y, s: potential(y, s, c), x, t, create_graph=True)[1]
        return (0.5 * v.square() - v * u).flatten(1).sum(1).mean()

    grads = torch.autograd.grad(loss(), params, allow_unused=True)
    # Every layer takes part, except a scalar head's last bias, which ∇ₓΦ does not see.
    assert {n for n, g in zip(names, grads) if g is None or g.abs().sum() == 0} <= {"linear.bias"}
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    direction = [torch.randn_like(p) for p in params]
    for name, d in zip(names, direction):
        if name.endswith("label_embed.weight"):
            d[-1] = 0  # the null label's row is frozen at 0 (padding_idx): autograd rightly gives it no gradient
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
        up = loss()
        for p, d in zip(params, direction):
            p.sub_(2 * h * d)
        down = loss()
        for p, d in zip(params, direction):
            p.add_(h * d)
    predicted = sum((g * d).sum() for g, d in zip(grads, direction))
    torch.testing.assert_close(predicted, (up - down) / (2 * h), rtol=1e-6, atol=1e-9)


def test_ae_head_starts_at_half_squared_norm_exactly():
    # The zero-initialised output conv makes U ≡ 0, so Φ = ½‖x‖² and ∇Φ = x, bit for bit.
    potential = AEEnergy(randomise(UNet(**TINY, num_classes=3)).apply(_zero_output_conv))
    x, t = images(), torch.rand(3)
    phi, v = value_and_grad(lambda y: potential(y, t, torch.tensor([0, 1, 3])), x)
    assert torch.equal(phi, 0.5 * x.flatten(1).square().sum(1))
    assert torch.equal(v, x)
    fresh = AEEnergy(UNet(**TINY))
    assert torch.equal(fresh(x, t), 0.5 * x.flatten(1).square().sum(1))


def _zero_output_conv(module):
    if isinstance(module, UNet):
        torch.nn.init.zeros_(module.out_conv.weight)
        torch.nn.init.zeros_(module.out_conv.bias)


def test_scalar_heads_start_at_zero_and_still_learn():
    wrn = WideResNetPotential(in_channels=2, depth=10, widen_factor=1)
    for potential in (ScalarHead(UNet(**TINY, image_output=False)), wrn):
        x = images()
        phi, v = potential_and_velocity(potential, x, torch.rand(3), create_graph=True)
        assert torch.equal(phi, torch.zeros(3)) and torch.equal(v, torch.zeros_like(x))
        loss = (0.5 * v.square() - v * torch.randn_like(x)).sum()
        assert torch.autograd.grad(loss, potential.linear.weight)[0].abs().sum() > 0


def test_autonomous_networks_ignore_t_exactly():
    unet = randomise(UNet(**TINY, time_varying=False))
    wrn = randomise(WideResNetPotential(in_channels=2, depth=10, widen_factor=1))
    assert unet.time_embed is None
    x = images()
    for net in (unet, wrn):
        out = net(x, torch.zeros(3))
        assert torch.equal(out, net(x, torch.rand(3))) and torch.equal(out, net(x))


def test_time_varying_network_depends_on_t_and_broadcasts_a_scalar_time():
    net, x = randomise(UNet(**TINY)), images()
    assert not torch.allclose(net(x, torch.full((3,), 0.2)), net(x, torch.full((3,), 0.7)))
    assert torch.equal(net(x, torch.tensor(0.3)), net(x, torch.full((3,), 0.3)))


def test_conditional_network_depends_on_the_label_and_defaults_to_the_null_label():
    assert torch.equal(UNet(**TINY, num_classes=3).label_embed.weight[3], torch.zeros(32))  # null label: zero
    net, x, t = randomise(UNet(**TINY, num_classes=3)), images(), torch.rand(3)
    assert not torch.allclose(net(x, t, torch.tensor([0, 0, 0])), net(x, t, torch.tensor([1, 1, 1])))
    assert torch.equal(net(x, t), net(x, t, torch.full((3,), 3)))
    autonomous = randomise(UNet(**TINY, num_classes=3, time_varying=False))
    c1, c2 = torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0])
    assert not torch.allclose(autonomous(x, None, c1), autonomous(x, None, c2))


def test_sinusoidal_embedding_spans_frequencies_one_to_max_freq():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    emb = sinusoidal_embedding(t, 9, max_freq=1000.0)
    assert emb.shape == (3, 9) and torch.equal(emb[:, 8], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(emb[:, 0], torch.cos(t))
    torch.testing.assert_close(emb[:, 3], torch.cos(1000 * t))
    torch.testing.assert_close(emb[:, 7], torch.sin(1000 * t))
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 5, dtype=torch.float64))


def test_self_attention_equals_scaled_dot_product_attention():
    attn = randomise(SelfAttention(8, num_heads=2))
    x = torch.randn(2, 8, 3, 5)
    q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 4, 15).unbind(1)
    ref = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    expected = x + attn.proj(ref.transpose(-1, -2).reshape(2, 8, 3, 5))
    torch.testing.assert_close(attn(x), expected)


@pytest.mark.parametrize("name,millions", [("cifar10", 55.7), ("celeba64", 55.7), ("mnist5k-cpu", 1.07)])
def test_named_settings_have_the_stated_parameter_counts(name, millions):
    count = sum(p.numel() for p in UNet(**unet_config(name)).parameters())
    assert abs(count / 1e6 - millions) <= 0.01 * millions


def test_wideresnet_has_the_textbook_shape():
    # WRN-16-2 (no BatchNorm, GroupNorm instead): three groups of two blocks, 32/64/128 channels, stride 4 overall.
    trunk = WideResNet(in_channels=3, depth=16, widen_factor=2)
    assert len(trunk.blocks) == 6 and trunk.feature_channels == 128
    assert trunk.features(torch.randn(2, 3, 32, 32)).shape == (2, 128, 8, 8)


def test_dtype_follows_the_input():
    for potential in (AEEnergy(UNet(**TINY)), WideResNetPotential(in_channels=2, depth=10, widen_factor=1)):
        phi, v = potential_and_velocity(potential.double(), images(dtype=torch.float64), torch.rand(3))
        assert phi.dtype == v.dtype == torch.float64
    net = UNet(**TINY).to(torch.bfloat16)
    assert net(images(dtype=torch.bfloat16), torch.rand(3)).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_follows_the_input():
    potential = AEEnergy(randomise(UNet(**TINY, num_classes=3))).cuda()
    x, t = images().cuda(), torch.rand(3).cuda()
    phi, v = potential_and_velocity(potential, x, t)
    assert phi.device == v.device == x.device
    cpu = potential.cpu()
    torch.testing.assert_close(phi.cpu(), cpu(x.cpu(), t.cpu()), rtol=1e-4, atol=1e-4)


def test_deep_ritz_loss_trains_an_image_potential():
    potential = AEEnergy(UNet(**TINY))
    out = DeepRitzLoss(LinearPath())(potential, images())
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and potential.backbone.out_conv.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    net, x, t = UNet(**TINY), images(), torch.rand(3)
    with pytest.raises(ValueError, match=r"shape \[N, 2, 8, 8\]"):
        net(images(c=3), t)
    with pytest.raises(ValueError, match=r"shape \[N, 2, 8, 8\]"):
        net(images(size=16), t)
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="time-varying"):
        net(x)
    with pytest.raises(ValueError, match="1 or N = 3"):
        net(x, torch.rand(2))
    conditional = UNet(**TINY, num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        conditional(x, t, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="integers"):
        conditional(x, t, torch.zeros(3))
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNet(**{**TINY, "attention_resolutions": (3,)})
    with pytest.raises(ValueError, match="divisible"):
        UNet(**{**TINY, "image_size": 6, "channel_mult": (1, 2, 2)})
    with pytest.raises(ValueError, match="num_heads"):
        UNet(**TINY, num_heads=3)
    with pytest.raises(RuntimeError, match="image_output=False"):
        UNet(**TINY, image_output=False)(x, t)
    with pytest.raises(ValueError, match="unknown U-Net setting"):
        unet_config("imagenet")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=12)
    with pytest.raises(ValueError, match="unconditional WideResNet"):
        WideResNetPotential(in_channels=2, depth=10, widen_factor=1)(x, t, torch.zeros(3, dtype=torch.long))
