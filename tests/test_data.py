import math

import numpy as np
import pytest
import torch

from vpfb.data import TOY_DATASETS, Standardizer, load_data, load_points, sample_toy, toy_log_density
from vpfb.data import toy2d
from vpfb.likelihood import grid_log_normaliser

KNOWN = [n for n in TOY_DATASETS if toy_log_density(n, torch.zeros(1, 2)) is not None]


def test_sampling_is_deterministic_and_shaped():
    for name in TOY_DATASETS:
        a, b = sample_toy(name, 500, seed=3), sample_toy(name, 500, seed=3)
        assert a.shape == (500, 2) and a.dtype == torch.float32
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, sample_toy(name, 500, seed=4))


@pytest.mark.parametrize("name", KNOWN)
def test_true_density_is_normalised(name):
    low, high = torch.tensor([-6.0, -6.0]), torch.tensor([6.0, 6.0])  # cells align with the checkerboard
    log_z = grid_log_normaliser(lambda y: toy_log_density(name, y), low, high, points=150)
    assert abs(log_z.item()) < 1e-2


def histogram_tv(name, samples, bins=30):
    """Total variation between a histogram of samples and the density integrated over the same cells."""
    low, high = samples.min(0).values - 0.5, samples.max(0).values + 0.5
    edges = [torch.linspace(float(low[i]), float(high[i]), bins + 1) for i in range(2)]
    counts = torch.histogramdd(samples.double(), bins=[e.double() for e in edges]).hist.flatten()
    counts = counts / counts.sum()
    sub = 3  # midpoint rule on a 3 × 3 sub-grid of every cell
    fine = [torch.linspace(float(low[i]), float(high[i]), bins * sub + 1) for i in range(2)]
    mids = [(f[1:] + f[:-1]) / 2 for f in fine]
    grid = torch.cartesian_prod(*mids)
    area = ((high - low) / (bins * sub)).prod()
    mass = (toy_log_density(name, grid).double().exp() * area).reshape(bins, sub, bins, sub).sum((1, 3)).flatten()
    return 0.5 * (counts - mass).abs().sum().item()


@pytest.mark.parametrize("name", KNOWN)
def test_samples_follow_the_true_density(name):
    samples = sample_toy(name, 100_000, seed=1)
    assert histogram_tv(name, samples) < 0.03


def test_density_check_can_fail(monkeypatch):
    """The histogram test notices a density whose noise scale is off by 30%."""
    samples = sample_toy("moons", 100_000, seed=1)
    monkeypatch.setattr(toy2d, "MOONS_NOISE", 0.13)
    assert histogram_tv("moons", samples) > 0.05


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_point_files_round_trip(tmp_path, suffix):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    path = tmp_path / f"points{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, points=x)
    else:
        np.savetxt(path, x, delimiter=",", header="a,b,c", comments="")
    torch.testing.assert_close(load_points(path), torch.from_numpy(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(load_data(str(path))[0], torch.from_numpy(x), rtol=1e-6, atol=1e-6)


def test_point_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_points(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="must end in"):
        load_points(tmp_path / "points.txt")
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(ValueError, match="reshape"):
        load_points(tmp_path / "flat.npy")
    bad = np.zeros((10, 2))
    bad[3, 1], bad[7, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN or inf in 2 of 10 rows"):
        load_points(tmp_path / "nan.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 2)), b=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="several arrays"):
        load_points(tmp_path / "two.npz")
    assert load_points(tmp_path / "two.npz", key="b").shape == (5, 2)
    (tmp_path / "words.csv").write_text("x,y\n1,2\nfoo,bar\n")
    with pytest.raises(ValueError, match="not a numeric"):
        load_points(tmp_path / "words.csv")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="never unpickles"):
        load_points(tmp_path / "objects.npy")
    (tmp_path / "corrupt.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_points(tmp_path / "corrupt.npy")
    with pytest.raises(ValueError, match="unknown data"):
        load_data("moon")


def test_standardizer_log_det_identity():
    """log N(x; m, diag s²) = log N((x − m)/s; 0, I) − Σ log s."""
    m, s = torch.tensor([3.0, -1.0]), torch.tensor([0.5, 4.0])
    x = m + s * torch.randn(100_000, 2)
    st = Standardizer.fit(x)
    torch.testing.assert_close(st.inverse(st.transform(x)), x, rtol=1e-5, atol=1e-4)
    y = torch.randn(10, 2)
    exact = (-(y - m) ** 2 / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(1)
    z = (y - m) / s
    via = (-z**2 / 2 - 0.5 * math.log(2 * math.pi)).sum(1) - float(s.log().sum())
    torch.testing.assert_close(via, exact)
    z_fit = st.transform(y)
    approx = (-z_fit**2 / 2 - 0.5 * math.log(2 * math.pi)).sum(1) - st.log_abs_det()
    torch.testing.assert_close(approx, exact, atol=0.05, rtol=0.01)
    again = Standardizer.from_dict(st.to_dict())
    torch.testing.assert_close(again.mean, st.mean) and torch.testing.assert_close(again.std, st.std)
    assert Standardizer.fit(torch.ones(5, 2)).std.tolist() == [1.0, 1.0]
