"""Slerp's closed-form properties, and inversion + interpolation through a trained model."""

import math

import pytest
import torch

from vpfb.config import load_config
from vpfb.evaluation.interpolation import interpolate, slerp
from vpfb.fit import fit


def test_slerp_hits_endpoints_and_keeps_norms():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    z1 = z1 * z0.norm() / z1.norm()
    path = slerp(z0, z1, torch.linspace(0, 1, 7))
    assert torch.allclose(path[0], z0, atol=1e-6) and torch.allclose(path[-1], z1, atol=1e-6)
    assert torch.allclose(path.flatten(1).norm(dim=1), z0.norm().expand(7), rtol=1e-5)
    # the angle to z0 grows linearly in α: the great circle at constant speed
    cos = (path.flatten(1) @ z0.flatten()) / (path.flatten(1).norm(dim=1) * z0.norm())
    angles = torch.arccos(cos.clamp(-1, 1))
    assert torch.allclose(angles, angles[-1] * torch.linspace(0, 1, 7), atol=1e-4)


def test_slerp_norm_is_interpolated_linearly_and_shapes_are_checked():
    z0, z1 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(z0, z1, torch.tensor([0.5]))[0]
    assert mid.norm() == pytest.approx(2.0) and torch.allclose(mid / 2, torch.tensor([1, 1]) / math.sqrt(2))
    assert torch.allclose(slerp(z0, 2 * z0, torch.tensor([0.5]))[0], 1.5 * z0)  # parallel: the line
    with pytest.raises(ValueError, match="one shape"):
        slerp(torch.zeros(2), torch.zeros(3), torch.tensor([0.5]))


def test_inversion_round_trip_and_interpolation():
    cfg = load_config("toy2d", ["train.steps=300", "model.hidden=32", "eval.calibrate=false"])
    model = fit(
        cfg, points=torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)) * 2 + 1, progress_bar=False
    )
    x = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    ode = dict(rtol=1e-6, atol=1e-6)
    z = model.invert(x, **ode)
    assert torch.allclose(model.flow_from(z, **ode).x, x, atol=1e-3)
    out = interpolate(model, 5, x[0], x[1], **ode)
    assert out["samples"].shape == (5, 2) and out["log_density"].shape == (5,)
    assert torch.allclose(out["samples"][[0, -1]], x, atol=1e-3)
    assert interpolate(model, 4, generator=torch.Generator().manual_seed(0))["samples"].shape == (4, 2)
    with pytest.raises(ValueError, match="both endpoints"):
        interpolate(model, 4, x_a=x[0])
