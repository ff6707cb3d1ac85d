"""vpfb.data: toy sets against their true densities, point files and their errors, the standardizer."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch

from vpfb.data import TOY_DATASETS, Standardizer, load_data, load_points, sample_toy, toy2d, toy_log_density

KNOWN = [name for name in TOY_DATASETS if toy_log_density(name, torch.zeros(1, 2)) is not None]
CELL, SUB = 0.125, 3  # histogram cell side, and midpoint-rule points per cell side for the density's cell masses
N_HISTOGRAM, N_ENTROPY = 200_000, 20_000


def density_summary(log_density, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Sample frequencies and density masses of the CELL-sided cells of a box around the samples (its edges on
    multiples of CELL, so on the checkerboard's edges too), and ∫ p log p over the box by the midpoint rule."""
    low = torch.floor((samples.min(0).values.double() - 0.5) / CELL) * CELL
    bins = (torch.ceil((samples.max(0).values.double() + 0.5) / CELL) * CELL - low).div(CELL).round().long()
    h = CELL / SUB
    axes = [low[i] + h * (torch.arange(int(bins[i]) * SUB, dtype=torch.float64) + 0.5) for i in range(2)]
    log_p = log_density(torch.cartesian_prod(*axes)).double()
    p = log_p.exp()
    masses = (p * h**2).reshape(int(bins[0]), SUB, int(bins[1]), SUB).sum((1, 3))
    cells = ((samples.double() - low) / CELL).long()
    counts = torch.zeros(int(bins[0]), int(bins[1]), dtype=torch.float64).index_put_(
        (cells[:, 0], cells[:, 1]), torch.ones(len(samples), dtype=torch.float64), accumulate=True
    )
    return counts / len(samples), masses, float(torch.where(p > 0, p * log_p, 0).sum() * h**2)


@functools.cache
def reference(name: str) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Frequencies, masses, ∫ p log p, and the mean log-density at N_ENTROPY fresh samples (seeded draws)."""
    samples = sample_toy(name, N_HISTOGRAM, seed=1)
    freq, masses, neg_entropy = density_summary(lambda x: toy_log_density(name, x), samples)
    return freq, masses, neg_entropy, float(toy_log_density(name, sample_toy(name, N_ENTROPY, seed=2)).mean())


def total_variation(freq: torch.Tensor, masses: torch.Tensor) -> float:
    return 0.5 * float((freq - masses).abs().sum())


def sampling_noise(masses: torch.Tensor) -> float:
    """About the total variation between the masses and the frequencies of N_HISTOGRAM draws from them:
    ½ Σ E|f − m| with E|f − m| ≈ √(2m/πn) for well-filled cells and ≈ 2m for nearly empty ones."""
    m = masses.clamp_min(0)
    return 0.5 * float(torch.minimum((2 * m / (math.pi * N_HISTOGRAM)).sqrt(), 2 * m).sum())


def test_every_toy_set_has_a_density():
    assert KNOWN == list(TOY_DATASETS)


@pytest.mark.parametrize("name", KNOWN)
def test_density_integrates_to_one(name):
    _, masses, _, _ = reference(name)
    assert abs(float(masses.sum()) - 1) < 1e-3


@pytest.mark.parametrize("name", KNOWN)
def test_sample_histogram_matches_density(name):
    """The histogram of 200k samples is as far from the density's cell masses as sampling noise allows."""
    freq, masses, _, _ = reference(name)
    assert total_variation(freq, masses) < 1.1 * sampling_noise(masses) + 0.005


@pytest.mark.parametrize("name", KNOWN)
def test_mean_log_density_of_samples_is_minus_entropy(name):
    """E_samples log p = ∫ p log p holds for the true p; a wrong p moves the two apart."""
    _, _, neg_entropy, mean_log_p = reference(name)
    assert math.isfinite(mean_log_p)
    assert abs(mean_log_p - neg_entropy) < 0.04


@pytest.mark.parametrize(("name", "attribute"), [("moons", "MOONS_NOISE"), ("rings", "RINGS_NOISE")])
def test_density_checks_catch_a_noise_scale_off_by_20_percent(monkeypatch, name, attribute):
    samples = sample_toy(name, N_HISTOGRAM, seed=1)
    monkeypatch.setattr(toy2d, attribute, 1.2 * getattr(toy2d, attribute))
    freq, masses, neg_entropy = density_summary(lambda x: toy_log_density(name, x), samples)
    mean_log_p = float(toy_log_density(name, samples[:N_ENTROPY]).mean())
    assert total_variation(freq, masses) > 1.1 * sampling_noise(masses) + 0.02
    assert abs(mean_log_p - neg_entropy) > 0.1


def test_density_values_and_dtypes():
    inside, white, outside = [0.5, 0.5], [-0.5, 0.5], [4.5, 0.0]
    log_p = toy_log_density("checkerboard", torch.tensor([inside, white, outside]))
    assert log_p.dtype == torch.float32 and log_p[0].item() == pytest.approx(-math.log(32))
    assert log_p[1:].isinf().all()
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = toy2d.EIGHT_RADIUS * torch.stack([angles.cos(), angles.sin()], 1)
    sq = ((centres[:1] - centres) ** 2).sum(1)
    expected = math.log(float((-sq / (2 * toy2d.EIGHT_STD**2)).exp().mean() / (2 * math.pi * toy2d.EIGHT_STD**2)))
    log_p = toy_log_density("eightgaussians", centres[:1])
    assert log_p.dtype == torch.float64 and log_p.item() == pytest.approx(expected, abs=1e-12)
    assert toy_log_density("moons", torch.zeros(5, 2, dtype=torch.int64)).dtype == torch.float32


def test_sample_toy_is_seeded_and_shaped():
    for name in TOY_DATASETS:
        a = sample_toy(name, 500, seed=3)
        assert a.shape == (500, 2) and a.dtype == torch.float32
        assert torch.equal(a, sample_toy(name, 500, seed=3))
        assert not torch.equal(a, sample_toy(name, 500, seed=4))
        assert sample_toy(name, 1, seed=0).shape == (1, 2) and sample_toy(name, 7).shape == (7, 2)


def test_toy_errors():
    with pytest.raises(ValueError, match="unknown toy data set 'moon'; choose one of moons, eightgaussians"):
        sample_toy("moon", 10)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            sample_toy("moons", n)
    with pytest.raises(ValueError, match="unknown toy data set"):
        toy_log_density("moon", torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"shape \[N, 2\], got \(3,\)"):
        toy_log_density("moons", torch.zeros(3))


def write_points(path, x: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".npz":
        np.savez(path, points=x)
    else:
        np.savetxt(path, x, delimiter=",", header="a,b,c" if "header" in path.stem else "", comments="")


@pytest.mark.parametrize("filename", ["points.npy", "points.npz", "header.csv", "plain.csv"])
def test_point_files_round_trip(tmp_path, filename):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    path = tmp_path / filename
    write_points(path, x)
    torch.testing.assert_close(load_points(path), torch.from_numpy(x), rtol=1e-6, atol=1e-6)
    points, description = load_data(str(path))
    assert points.dtype == torch.float32 and str(path) in description and "50 points of dimension 3" in description


def test_npz_key_and_integer_arrays(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 2)), b=np.arange(12).reshape(4, 3))
    b = load_points(tmp_path / "two.npz", key="b")
    assert b.dtype == torch.float32 and b.tolist() == np.arange(12).reshape(4, 3).tolist()


def test_load_data_toy_sets():
    points, description = load_data("moons", n=100, seed=5)
    assert torch.equal(points, sample_toy("moons", 100, seed=5)) and "moons" in description
    assert load_data("rings")[0].shape == (20000, 2)


def bad_file(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".npz"):
        np.savez(path, **content)
    else:
        np.save(path, content)
    return str(path)


def with_nan_and_inf() -> np.ndarray:
    x = np.zeros((10, 2))
    x[3, 1], x[7, 0] = np.nan, np.inf
    return x


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("flat.npy", np.zeros(10), r"got shape \(10,\); for 1-D data save x.reshape\(-1, 1\)"),
        ("cube.npy", np.zeros((2, 2, 2)), r"2-D array \[N, d\], got shape \(2, 2, 2\)"),
        ("one.npy", np.zeros((1, 3)), "holds 1 point"),
        ("nan.npy", with_nan_and_inf(), r"NaN or inf in 2 of 10 rows \(first: row 3"),
        ("flags.npy", np.ones((4, 2), dtype=bool), "holds bool values"),
        ("objects.npy", np.array([[{"a": 1}, None]] * 3, dtype=object), "Python objects"),
        ("corrupt.npy", b"not numpy at all", "not a readable numpy file"),
        ("two.npz", {"a": np.zeros((5, 2)), "b": np.zeros((5, 2))}, r"holds 2 arrays \(a, b\); choose one with key="),
        ("words.csv", "x,y\n1,2\nfoo,bar\n", "not a numeric comma-separated table"),
        ("ragged.csv", "1,2\n3,4,5\n", "not a numeric comma-separated table"),
        ("typo.csv", "1.0,2o\n3,4\n5,6\n", "not a numeric comma-separated table"),  # a typo, not a header
        ("header_only.csv", "x,y\n", "no data rows"),
        ("empty.csv", "", "no data rows"),
        ("one_row.csv", "x,y\n1,2\n", "holds 1 point"),
        ("points.txt", "1,2\n3,4\n", r"must end in .npy, .npz, .csv"),
    ],
)
def test_bad_point_files_are_refused(tmp_path, name, content, message):
    path = bad_file(tmp_path, name, content)
    with pytest.raises(ValueError, match=message) as err:
        load_points(path)
    assert name in str(err.value)


def forged_npy(path, shape):
    """A .npy whose header declares `shape` of float64 but which holds 16 bytes of data."""
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 16)


def test_a_forged_header_is_refused_before_any_allocation(tmp_path):
    forged_npy(tmp_path / "huge.npy", (10**12, 2))  # 16 TB asked for
    with pytest.raises(ValueError, match=r"declares shape \(1000000000000, 2\).*more than the 16 bytes"):
        load_points(tmp_path / "huge.npy")
    forged_npy(tmp_path / "inner.npy", (10**12, 2))
    import zipfile

    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.write(tmp_path / "inner.npy", "x.npy")
    with pytest.raises(ValueError, match=r"\(array x.npy\) declares shape"):
        load_points(tmp_path / "huge.npz")


def test_missing_files_and_bad_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
        load_points(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_data(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="is not a file"):
        load_points(tmp_path)
    np.savez(tmp_path / "one.npz", a=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="no array 'c'; it holds a"):
        load_points(tmp_path / "one.npz", key="c")
    np.save(tmp_path / "x.npy", np.zeros((5, 2)))
    with pytest.raises(ValueError, match="single array"):
        load_points(tmp_path / "x.npy", key="a")
    with pytest.raises(ValueError, match=r"unknown data 'moon': give a toy set \(moons, .*\) or a point file \(.npy"):
        load_data("moon")
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 2)), b=np.ones((4, 3)))
    assert load_data(str(tmp_path / "two.npz"), key="b")[0].shape == (4, 3)  # data.key=b on the command line


def test_standardizer_round_trip_and_fit():
    m, s = torch.tensor([3.0, -1.0]), torch.tensor([0.5, 4.0])
    x = m + s * torch.randn(100_000, 2)
    st = Standardizer.fit(x)
    torch.testing.assert_close(st.mean, m, atol=0.05, rtol=0)
    torch.testing.assert_close(st.std, s, atol=0, rtol=0.02)
    torch.testing.assert_close(st.inverse(st.transform(x)), x, rtol=1e-5, atol=1e-4)
    assert st.transform(x.double()).dtype == torch.float64


def test_standardizer_log_det_identity():
    """log N(x; m, diag s²) = log N((x − m)/s; 0, I) − Σ log s."""
    m, s = torch.tensor([3.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 4.0], dtype=torch.float64)
    st = Standardizer(m, s)
    y = m + 3 * s * torch.randn(10, 2, dtype=torch.float64)
    user = (-((y - m) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(1)
    z = st.transform(y)
    standard = (-(z**2) / 2 - 0.5 * math.log(2 * math.pi)).sum(1)
    torch.testing.assert_close(standard - st.log_abs_det(), user)


def test_standardizer_constant_column_and_serialisation():
    x = torch.stack([torch.full((1000,), 0.1), torch.randn(1000)], 1)
    st = Standardizer.fit(x)
    assert st.std[0].item() == 1.0 and torch.isfinite(st.transform(x)).all()
    again = Standardizer.from_dict(json.loads(json.dumps(st.to_dict())))
    assert torch.equal(again.mean, st.mean) and torch.equal(again.std, st.std)
    with pytest.raises(ValueError, match="positive std"):
        Standardizer.from_dict({"mean": [0.0, 1.0], "std": [1.0, 0.0]})
    with pytest.raises(ValueError, match="N >= 2"):
        Standardizer.fit(torch.zeros(1, 2))
