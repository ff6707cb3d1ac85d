"""The FID protocol: sufficient statistics, their distance (torchmetrics' formula), the cached reference, sampling
sharded over processes, and the errors; with a fixed random projection of scikit-learn's 8×8 digits as features."""

import json
import os

import pytest
import torch
from conftest import run_as_ranks
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.utilities import imports

from vpfb.config import load_config
from vpfb.data import load_images
from vpfb.distributed import World
from vpfb.evaluation.fid import (
    FeatureStats,
    InceptionFeatures,
    build_extractor,
    fid,
    frechet_distance_of_stats,
    quantise,
    reference_stats,
    sample_stats,
    task_fid,
    to_uint8,
)
from vpfb.evaluation.frechet import MnistFeatures, _Identity, frechet_distance
from vpfb.factory import build_potential
from vpfb.model import EnergyModel

DIM = 8
DIGITS_TRAIN = 1797 - 300  # scikit-learn's digits without their test split (the last 30 of each class)


class Projection(nn.Module):
    """tanh of a fixed random projection of the flattened image: a cheap, smooth, deterministic extractor."""

    def __init__(self, pixels=64, dim=DIM, seed=0):
        super().__init__()
        self.register_buffer("w", torch.randn(pixels, dim, generator=torch.Generator().manual_seed(seed)) / 4)

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.w)


class Counting(Projection):
    """A Projection that counts the images it has seen."""

    seen = 0

    def forward(self, x):
        self.seen += len(x)
        return super().forward(x)


def tiny_model(image_size=0):
    """An untrained digits U-Net (its weights fixed by the seed): sampling it costs little with 2 Euler steps."""
    cfg = load_config("digits-cpu", ["eval.solver=euler", f"data.image_size={image_size}"])
    torch.manual_seed(0)
    return EnergyModel(build_potential(cfg, (1, 8, 8)), cfg, shape=(1, 8, 8))


def features(n, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", labels=False).batch(torch.arange(DIGITS_TRAIN))


# ---- statistics ----------------------------------------------------------------------------------------------------


def test_stats_hold_the_sums_and_add_in_chunks_as_in_one_update():
    f = features(100)
    whole = FeatureStats.of(f)
    assert whole.count == 100 and torch.equal(whole.total, f.sum(0)) and torch.equal(whole.outer, f.T @ f)
    chunked = FeatureStats.zeros(5)
    for part in f.split(7):
        chunked.update(part)
    added = FeatureStats.of(f[:30]) + FeatureStats.of(f[30:])
    for s in (chunked, added):
        assert s.count == 100
        torch.testing.assert_close(s.total, whole.total, rtol=1e-14, atol=1e-12)
        torch.testing.assert_close(s.outer, whole.outer, rtol=1e-14, atol=1e-12)
    with pytest.raises(ValueError, match="dimension 4 cannot join statistics of dimension 5"):
        whole.update(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        whole.update(torch.tensor([[float("nan")] * 5]))


def test_save_load_round_trip_is_exact_with_metadata(tmp_path):
    stats = FeatureStats.of(features(50), {"extractor": "x-123", "dataset": "digits", "split": "train"})
    path = stats.save(tmp_path / "stats.safetensors")
    back = FeatureStats.load(path)
    assert back.count == 50 and back.meta == stats.meta
    assert torch.equal(back.total, stats.total) and torch.equal(back.outer, stats.outer)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]  # the temporary file was renamed
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="is not a FeatureStats file"):
        FeatureStats.load(path)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors", {"count": "3"})
    with pytest.raises(ValueError, match=r"holds tensors \['weight'\]"):
        FeatureStats.load(tmp_path / "other.safetensors")


def test_distance_of_stats_is_torchmetrics_fid_of_the_features(tmp_path):
    a, b = features(300, seed=1), features(200, seed=2) + 0.5
    metric = FrechetInceptionDistance(feature=_Identity(5))  # torchmetrics on the raw features, its own update
    metric.update(a, real=True)
    metric.update(b, real=False)
    expected = metric.compute().item()
    chunked = FeatureStats.zeros(5)
    for part in b.split(64):
        chunked.update(part)
    loaded = FeatureStats.load(FeatureStats.of(a).save(tmp_path / "a.safetensors"))
    assert expected > 1.0
    assert frechet_distance_of_stats(loaded, chunked) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="differ in dimension: 5 and 3"):
        frechet_distance_of_stats(FeatureStats.of(a), FeatureStats.of(a[:, :3]))
    with pytest.raises(ValueError, match="count 300 and 1 samples"):
        frechet_distance_of_stats(FeatureStats.of(a), FeatureStats.of(b[:1]))


# ---- the protocol's pieces on real images --------------------------------------------------------------------------


def test_the_training_set_against_itself_is_zero_and_noise_raises_fid_monotonically(digits, tmp_path):
    extractor = Projection()
    reference = reference_stats("digits", extractor, "projection", cache_dir=tmp_path)
    assert reference.count == DIGITS_TRAIN and reference.meta["shape"] == "1x8x8"

    def fid_of(x):
        with torch.no_grad():
            return frechet_distance_of_stats(reference, FeatureStats.of(extractor(quantise(x))))

    trace = torch.trace(reference.outer / reference.count).item()
    assert abs(fid_of(digits)) < 1e-9 * trace  # quantising real images changes nothing
    noise = torch.randn(digits.shape, generator=torch.Generator().manual_seed(0))
    fids = [fid_of(digits + s * noise) for s in (0.1, 0.3, 0.6)]
    assert 1e-4 < fids[0] < fids[1] < fids[2], fids


def test_quantise_is_what_a_saved_picture_holds():
    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.3, 1.0, 5.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 128, 166, 255, 255]
    assert torch.equal(quantise(x), to_uint8(x).float() / 127.5 - 1)
    assert torch.equal(quantise(quantise(x)), quantise(x))


def test_inception_features_take_uint8_with_three_channels():
    seen = []

    class Fake(nn.Module):
        def forward(self, images):
            seen.append(images)
            return images.float().mean((2, 3))

    x = torch.rand(2, 1, 5, 5) * 2 - 1
    out = InceptionFeatures(Fake())(x)
    assert seen[0].dtype == torch.uint8 and seen[0].shape == (2, 3, 5, 5) and out.shape == (2, 3)
    assert all(torch.equal(seen[0][:, c], to_uint8(x)[:, 0]) for c in range(3))


def test_extractors_are_named_by_their_weights():
    from pathlib import Path

    classifier = Path(__file__).parents[1] / "benchmarks" / "artifacts" / "mnist_classifier.safetensors"
    module, name = build_extractor("mnist", classifier)
    assert isinstance(module, MnistFeatures) and name == build_extractor("mnist", classifier)[1]
    assert name.startswith("mnist-") and len(name) == len("mnist-") + 12
    names = {build_extractor(Projection(seed=s))[1] for s in (0, 0, 1)}
    assert len(names) == 2 and all(n.startswith("Projection-") for n in names)


def test_inception_without_torch_fidelity_names_the_install(monkeypatch):
    monkeypatch.setattr(imports, "_TORCH_FIDELITY_AVAILABLE", False)
    with pytest.raises(ImportError, match=r"torch-fidelity.*pip install 'vpfb\[metrics\]'"):
        fid(tiny_model(), 100, extractor="inception", progress=False)


# ---- the reference cache -------------------------------------------------------------------------------------------


def test_the_reference_is_computed_once_then_read_from_the_cache(tmp_path):
    extractor = Counting()
    first = reference_stats("digits", extractor, "counting", cache_dir=tmp_path, batch_size=500)
    assert extractor.seen == DIGITS_TRAIN
    files = list(tmp_path.iterdir())
    assert [p.name for p in files] == ["digits-train-native-counting.safetensors"]
    second = reference_stats("digits", extractor, "counting", cache_dir=tmp_path)
    assert extractor.seen == DIGITS_TRAIN  # not recomputed
    assert second.count == first.count and torch.equal(second.outer, first.outer)

    files[0].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        third = reference_stats("digits", extractor, "counting", cache_dir=tmp_path, batch_size=500)
    assert extractor.seen == 2 * DIGITS_TRAIN and torch.equal(third.outer, first.outer)
    assert FeatureStats.load(files[0]).count == DIGITS_TRAIN  # rewritten

    os.replace(files[0], tmp_path / "digits-train-native-other.safetensors")  # a file under another key's name
    with pytest.warns(UserWarning, match="describe.*counting.*recomputing"):
        reference_stats("digits", extractor, "other", cache_dir=tmp_path)
    assert extractor.seen == 3 * DIGITS_TRAIN


def test_the_cache_follows_the_extractors_weights_and_the_image_size(tmp_path):
    model = tiny_model()
    fid(model, 20, extractor=Projection(seed=1), steps=2, cache_dir=tmp_path, progress=False)
    fid(model, 20, extractor=Projection(seed=2), steps=2, cache_dir=tmp_path, progress=False)
    reference_stats("digits", Projection(pixels=256), "p", image_size=16, cache_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and names[0].startswith("digits-train-16-p") and "Projection" in names[1], names


# ---- fid() on a model ----------------------------------------------------------------------------------------------


def test_fid_of_a_tiny_model_is_finite_deterministic_and_seeded(tmp_path):
    model = tiny_model()
    result = fid(model, 40, extractor=Projection(), batch_size=16, steps=2, cache_dir=tmp_path, progress=False)
    assert set(result) == {"fid", "samples", "reference", "extractor", "feature_dim", "seed"}
    assert result["samples"] == 40 and result["feature_dim"] == DIM and result["reference"]["images"] == DIGITS_TRAIN
    assert result["extractor"].startswith("Projection-") and 0 < result["fid"] < float("inf")
    again = fid(model, 40, extractor=Projection(), batch_size=16, steps=2, cache_dir=tmp_path, progress=False)
    other = fid(model, 40, extractor=Projection(), batch_size=16, steps=2, cache_dir=tmp_path, progress=False, seed=1)
    assert again["fid"] == result["fid"] and other["fid"] != result["fid"]
    # the same number from its pieces: the cached reference against the model's samples, one batch by one
    stats, kept = sample_stats(model, Projection(), 40, batch_size=16, steps=2, solver="euler", keep=3)
    reference = reference_stats("digits", Projection(), result["extractor"], cache_dir=tmp_path)
    assert frechet_distance_of_stats(reference, stats) == pytest.approx(result["fid"], rel=1e-12)
    assert kept.shape == (3, 1, 8, 8) and torch.equal(kept, quantise(kept))


def test_task_fid_writes_its_picture_and_a_json_table(tmp_path):
    result = task_fid(
        tiny_model(),
        tmp_path,
        70,
        torch.Generator().manual_seed(0),
        extractor=Projection(),
        steps=2,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert (tmp_path / "fid_samples.png").stat().st_size > 0
    assert json.loads(json.dumps(result))["samples"] == 70 and result["fid"] > 0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(n=DIM), ValueError, r"more samples than feature dimensions: 8 ≤ d = 8.*50,000"),
        (dict(extractor="clip"), ValueError, r"unknown extractor 'clip'; choose one of \('inception', 'mnist'\)"),
        (dict(extractor="mnist"), ValueError, r"needs extractor_path=.*mnist_classifier.safetensors"),
        (dict(extractor="mnist", extractor_path="missing.safetensors"), FileNotFoundError, "no classifier weights"),
        (dict(batch_size=0), ValueError, "batch_size must be at least 1"),
    ],
)
def test_bad_requests_are_clear_errors(tmp_path, kwargs, error, message):
    options = dict(n=20, extractor=Projection(), steps=2, cache_dir=tmp_path, progress=False) | kwargs
    with pytest.raises(error, match=message):
        fid(tiny_model(), **options)


def test_a_reference_of_another_shape_is_an_error_computed_or_cached(tmp_path):
    with pytest.raises(ValueError, match="has images of shape 1x16x16, the model makes 1x8x8"):
        fid(tiny_model(image_size=16), 20, extractor=Projection(), steps=2, cache_dir=tmp_path, progress=False)
    reference_stats("digits", Projection(), "p", cache_dir=tmp_path, shape=(1, 8, 8))
    with pytest.raises(ValueError, match="has images of shape 1x8x8, the model makes 1x4x4"):
        reference_stats("digits", Projection(), "p", cache_dir=tmp_path, shape=(1, 4, 4))


def test_a_point_model_is_refused():
    cfg = load_config("toy2d")
    from vpfb.data import Standardizer

    model = EnergyModel(build_potential(cfg, 2), cfg, Standardizer(torch.zeros(2), torch.ones(2)))
    with pytest.raises(ValueError, match="FID needs an image model"):
        fid(model, 20, extractor=Projection(), progress=False)


# ---- two processes ---------------------------------------------------------------------------------------------------

RANKS = 2


def report(world: World, cache_dir) -> dict:
    """One rank's summed statistics of its shard of 101 features, and its fid() result, as plain numbers."""
    summed = FeatureStats.of(features(101)[world.shard(101)]).all_reduce(world)
    result = fid(
        tiny_model(), 41, extractor=Projection(), batch_size=8, steps=2, cache_dir=cache_dir, progress=False, seed=3
    )
    return {"count": summed.count, "total": summed.total.tolist(), "outer": summed.outer.tolist(), "fid": result}


def test_two_processes_sum_their_shares_to_the_single_process_statistics(tmp_path):
    """Each rank draws its share of the samples with its own generator; the summed statistics, and so the FID,
    equal one process's for the same shares, and every rank returns the same number."""
    reports = run_as_ranks(report, RANKS, tmp_path)
    whole = FeatureStats.of(features(101))
    for r in range(RANKS):
        assert reports[r]["count"] == 101
        for name in ("total", "outer"):
            summed = torch.tensor(reports[r][name], dtype=torch.float64)
            torch.testing.assert_close(summed, getattr(whole, name), rtol=1e-13, atol=1e-12)
    model = tiny_model()
    shares = [
        sample_stats(model, Projection(), 41, World(rank=r, size=RANKS), batch_size=8, seed=3, steps=2)[0]
        for r in range(RANKS)
    ]
    assert [s.count for s in shares] == [21, 20]
    for share, (n, seed) in zip(shares, [(21, 3), (20, 4)]):  # rank r: its share, drawn as one process with seed + r
        alone = sample_stats(model, Projection(), n, batch_size=8, seed=seed, steps=2)[0]
        assert torch.equal(share.outer, alone.outer)
    reference = reference_stats("digits", Projection(), reports[0]["fid"]["extractor"], cache_dir=tmp_path)
    expected = frechet_distance_of_stats(reference, shares[0] + shares[1])
    assert reports[0]["fid"] == reports[1]["fid"]
    assert reports[0]["fid"]["fid"] == pytest.approx(expected, rel=1e-6)
