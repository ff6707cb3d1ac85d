"""vpfb.evaluation.ood_sets: synthetic sets, exact interpolations, and the paper's CIFAR-10 protocol on fakes of the
official files (tests/fakes.py), whose tests skip where torchvision does not import and run in .venv-vision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import write_celeba, write_cifar, write_mnist, write_svhn

from vpfb.data import ImageData
from vpfb.evaluation.ood_sets import PROTOCOLS, Protocol, interpolated_images, protocol_sets, synthetic_ood_sets


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 127.5 - 1


def rows_of(x: torch.Tensor, pool: torch.Tensor) -> list[int]:
    """For each image of x the index of the equal image in pool (fails if there is none)."""
    found = [(pool == image).flatten(1).all(1).nonzero().flatten().tolist() for image in x]
    assert all(found), "an image is not in the pool"
    return [f[0] for f in found]


# --- synthetic sets and interpolations ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16)])
def test_synthetic_sets_match_the_batch_and_repeat_with_a_seed(shape):
    x = torch.rand(5, *shape, generator=seeded(1)) * 2 - 1
    sets = synthetic_ood_sets(x, seeded())
    assert list(sets) == [
        "uniform noise",
        "constant",
        "inverted",
        "rotated 90°",
        "rotated 180°",
        "blurred",
        "shifted 3 px",
        "digits 8×8 upscaled",
    ]
    for name, s in sets.items():
        assert s.shape == x.shape and s.min() >= -1 and s.max() <= 1, name
    assert torch.equal(sets["inverted"], -x) and torch.equal(sets["rotated 90°"][..., 0, :], x[..., :, -1])
    assert torch.equal(sets["rotated 180°"], x.flip(-1).flip(-2))
    assert torch.equal(sets["shifted 3 px"][..., 3:, 3:], x[..., :-3, :-3])
    assert torch.equal(sets["shifted 3 px"][..., :3, 3:], x[..., :1, :-3].expand_as(x[..., :3, :-3]))
    assert sets["constant"].flatten(1).std(1).max() == 0 and sets["uniform noise"].std() > 0.5
    again = synthetic_ood_sets(x, seeded())
    assert all(torch.equal(sets[k], again[k]) for k in sets)
    assert not torch.equal(synthetic_ood_sets(x, seeded(2))["uniform noise"], sets["uniform noise"])


def test_gaussian_blur_keeps_constants_and_mass_and_spreads_a_point_by_sigma():
    from vpfb.evaluation.ood_sets import gaussian_blur

    torch.testing.assert_close(gaussian_blur(torch.full((2, 3, 9, 9), 0.3), 1.0), torch.full((2, 3, 9, 9), 0.3))
    point = torch.zeros(1, 1, 21, 21)
    point[..., 10, 10] = 1.0
    blurred = gaussian_blur(point, 1.5)[0, 0]
    assert abs(blurred.sum().item() - 1) < 1e-5
    offsets = torch.arange(21.0) - 10
    variance = (blurred.sum(0) * offsets**2).sum()  # σ² along one axis, a little less: the kernel stops near 3σ
    assert abs(variance.item() - 1.5**2) < 0.1


def test_png_bits_grow_with_the_images_complexity():
    from vpfb.evaluation.ood import png_bits

    flat, noise = torch.zeros(2, 1, 28, 28), torch.rand(2, 1, 28, 28, generator=seeded()) * 2 - 1
    bits = png_bits(torch.cat([flat, noise]))
    assert bits.shape == (4,) and bits[0] == bits[1] and bits[2:].min() > 4 * bits[:2].max()
    assert bits[2:].min() > 28 * 28 * 7  # noise does not compress below ~8 bits per pixel


def one_hot_images(n: int) -> torch.Tensor:
    """Image k is 1 at pixel k and −1 elsewhere, so a mixture of images a and b shows a and b."""
    return (torch.eye(n) * 2 - 1).reshape(n, 1, 1, n)


@pytest.mark.parametrize("weight", [0.5, 0.25])
def test_interpolations_are_exact_mixtures_of_two_distinct_images(weight):
    images = one_hot_images(6)
    mixed = interpolated_images(images, 500, seeded(), weight=weight).flatten(1)
    # pixel a holds λ·1 + (1 − λ)·(−1) = 2λ − 1, pixel b 1 − 2λ, every other one −1
    hot = mixed > -1
    assert (hot.sum(1) == 2).all()  # two distinct images in every mixture
    p, q = hot.nonzero()[:, 1].reshape(-1, 2).T
    p_is_a = mixed[torch.arange(500), p] == 2 * weight - 1
    a, b = torch.where(p_is_a, p, q), torch.where(p_is_a, q, p)
    assert torch.equal(mixed, (weight * images[a] + (1 - weight) * images[b]).flatten(1))
    if weight == 0.5:
        assert torch.equal(mixed, ((images[a] + images[b]) / 2).flatten(1))
    assert len(set(zip(a.tolist(), b.tolist()))) == (15 if weight == 0.5 else 30)  # every pair of the 6 drawn
    assert torch.equal(interpolated_images(images, 500, seeded(), weight=weight).flatten(1), mixed)


def test_interpolation_errors():
    with pytest.raises(ValueError, match="two distinct images"):
        interpolated_images(one_hot_images(1), 3)
    with pytest.raises(ValueError, match="n must be"):
        interpolated_images(one_hot_images(3), 0)
    with pytest.raises(ValueError, match=r"weight must lie in \[0, 1\]"):
        interpolated_images(one_hot_images(3), 2, weight=1.5)


# --- protocols: checks before any file is read ----------------------------------------------------------------------


def own_data(n=20, shape=(1, 8, 8)) -> ImageData:
    return ImageData(torch.randint(0, 256, (n, *shape), generator=seeded(3), dtype=torch.uint8), None, None, "own")


def test_synthetic_protocol_draws_distinct_images_of_the_runs_data():
    own = own_data()
    x, sets = protocol_sets("synthetic", (1, 8, 8), 7, generator=seeded(), own=own)
    assert x.shape == (7, 1, 8, 8) and len(set(rows_of(x, own.batch(torch.arange(20))))) == 7
    assert torch.equal(sets["inverted"], -x) and all(s.shape == x.shape for s in sets.values())
    x2, sets2 = protocol_sets("synthetic", (1, 8, 8), 7, generator=seeded(), own=own)
    assert torch.equal(x, x2) and all(torch.equal(sets[k], sets2[k]) for k in sets)


def test_unknown_protocol_lists_the_choices():
    with pytest.raises(ValueError, match="unknown OOD protocol 'cifar'") as err:
        protocol_sets("cifar", (3, 32, 32), 4)
    assert all(name in str(err.value) for name in PROTOCOLS)


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        (
            "cifar10",
            (1, 28, 28),
            r"'cifar10' tests models of cifar10 \(3 channels\); this model takes 1×28×28 images: "
            r"use protocol 'fashion-mnist' or 'mnist' or 'synthetic'",
        ),
        ("fashion-mnist", (3, 32, 32), "use protocol 'cifar10' or 'synthetic'"),
        ("cifar10", (3, 32, 16), "square size"),
        ("cifar10", (3, 32), r"image shape \(C, H, W\)"),
    ],
)
def test_shapes_no_set_can_take(name, shape, match):
    with pytest.raises(ValueError, match=match):
        protocol_sets(name, shape, 4)


def test_bad_n_and_misplaced_own_data():
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            protocol_sets("cifar10", (3, 32, 32), n)
    with pytest.raises(ValueError, match="pass them as own="):
        protocol_sets("synthetic", (1, 8, 8), 4)
    with pytest.raises(ValueError, match="own= is for the 'synthetic' protocol only"):
        protocol_sets("cifar10", (3, 32, 32), 4, own=own_data(shape=(3, 32, 32)))
    with pytest.raises(ValueError, match=r"own images are \(1, 8, 8\), the model takes \(1, 16, 16\)"):
        protocol_sets("synthetic", (1, 16, 16), 4, own=own_data())
    with pytest.raises(ValueError, match="holds 20 images, fewer than the n = 21"):
        protocol_sets("synthetic", (1, 8, 8), 21, own=own_data())
    with pytest.raises(ValueError, match=r"named sets .*\['tiny-imagenet'\]"):
        Protocol(("cifar10", "test"), {"tiny": ("tiny-imagenet", "test")})


# --- the paper's protocol on fakes of the official files ------------------------------------------------------------


@pytest.fixture
def paper_sets(tmp_path, torchvision_without_md5):
    return tmp_path, {
        "cifar10": write_cifar(tmp_path, 10),
        "cifar100": write_cifar(tmp_path, 100, seed=1),
        "svhn": write_svhn(tmp_path, seed=2),
        "celeba": write_celeba(tmp_path, seed=3),
    }


def test_cifar10_protocol_draws_test_splits(paper_sets):
    root, written = paper_sets
    x, sets = protocol_sets("cifar10", (3, 32, 32), 3, root=root, generator=seeded())
    assert list(sets) == ["svhn", "cifar100", "celeba", "cifar10 interpolation"]
    for s in [x, *sets.values()]:
        assert s.shape == (3, 3, 32, 32) and s.dtype == torch.float32 and s.min() >= -1 and s.max() <= 1
    cifar_test = as_float(written["cifar10"]["test"][0])
    assert len(set(rows_of(x, cifar_test))) == 3  # three distinct CIFAR-10 *test* images
    assert len(set(rows_of(sets["svhn"], as_float(written["svhn"]["test"][0])))) == 3
    assert len(set(rows_of(sets["cifar100"], as_float(written["cifar100"]["test"][0])))) == 3
    # the fake faces are one colour inside the crop, so a 32×32 face is that colour up to JPEG's few levels
    colours = as_float(written["celeba"]["test"])[:, :, None, None]
    assert (sets["celeba"][:, None] - colours[None]).abs().amax((2, 3, 4)).min(1).values.max() <= 3 / 127.5
    for mix in sets["cifar10 interpolation"]:  # the even blend of two distinct test images
        halves = (cifar_test[:, None] + cifar_test[None]) / 2
        a, b = torch.nonzero((halves == mix).flatten(2).all(2)).unbind(1)
        assert len(a) and (a != b).all()
    x2, sets2 = protocol_sets("cifar10", (3, 32, 32), 3, root=root, generator=seeded())
    assert torch.equal(x, x2) and all(torch.equal(sets[k], sets2[k]) for k in sets)


def test_cifar10_protocol_at_another_size(paper_sets):
    root, _ = paper_sets
    x, sets = protocol_sets("cifar10", (3, 16, 16), 2, root=root, generator=seeded())
    assert x.shape == (2, 3, 16, 16) and all(s.shape == (2, 3, 16, 16) for s in sets.values())


def test_grey_ood_set_is_repeated_against_an_rgb_model(paper_sets, monkeypatch):
    root, _ = paper_sets
    digits = write_mnist(root)["test"][0]
    monkeypatch.setitem(PROTOCOLS, "grey", Protocol(("cifar10", "test"), {"mnist": ("mnist", "test")}))
    _, sets = protocol_sets("grey", (3, 32, 32), 4, root=root, generator=seeded())
    grey = sets["mnist"]
    assert list(sets) == ["mnist"] and grey.shape == (4, 3, 32, 32)
    assert torch.equal(grey[:, :1].expand_as(grey), grey)
    assert sorted(rows_of(grey[:, :1, 2:30, 2:30], as_float(digits))) == [0, 1, 2, 3]  # 28 → 32 by zero borders
    assert (grey[..., :2, :] == -1).all()


def test_missing_set_says_which_where_and_how(tmp_path, torchvision_without_md5):
    write_cifar(tmp_path, 10)
    with pytest.raises(FileNotFoundError) as err:
        protocol_sets("cifar10", (3, 32, 32), 2, root=tmp_path)
    message = str(err.value)
    for part in (
        "'cifar10' needs the test split of svhn",
        str(tmp_path / "test_32x32.mat"),
        "download=True",
        "--protocol cifar10 --download",
    ):
        assert part in message, part
