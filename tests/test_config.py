import pytest

from vpfb.config import Config, ConfigError, from_dict, load_config, presets


def test_defaults_presets_and_overrides(tmp_path):
    assert "toy2d" in presets()
    cfg = load_config("toy2d", ["train.steps=12", "loss.estimator=covariance", "path.sigma_min=0.01"])
    assert (cfg.train.steps, cfg.loss.estimator, cfg.path.sigma_min) == (12, "covariance", 0.01)
    f = tmp_path / "mine.yaml"
    f.write_text("model: {hidden: 32}\ntrain: {lr: 1}\n")
    cfg = load_config(str(f))
    assert cfg.model.hidden == 32 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert from_dict(Config().to_dict()).to_dict() == Config().to_dict()


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lr=[1, 2", "override 'train.lr=\\[1, 2' is not valid YAML"),
        ("train.lr=!!python/object:os.system x", "is not valid YAML"),
    ],
)
def test_broken_yaml_and_tags_are_one_line_errors(override, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(str(bad))


def test_numbers_are_read_as_a_user_writes_them():
    cfg = load_config(None, ["train.lr=1e-3", "train.lr_final=2E-5", "loss.t_min=1e-5", "train.ema=.999"])
    assert (cfg.train.lr, cfg.train.lr_final, cfg.loss.t_min, cfg.train.ema) == (1e-3, 2e-5, 1e-5, 0.999)
    with pytest.raises(ConfigError, match="train.lr must be float, got 'fast'"):
        load_config(None, ["train.lr=fast"])


@pytest.mark.parametrize(
    "setting,match",
    [
        ("train.lr=0", "train.lr must be positive"),
        ("train.lr=.inf", "train.lr must be a finite number"),
        ("train.grad_clip=-1", "train.grad_clip must be at least 0"),
        ("train.time_budget=-5", "train.time_budget must be at least 0"),
        ("train.ema=1", r"decay in \[0, 1\)"),
        ("train.steps=0", "train.steps must be at least 1"),
    ],
)
def test_settings_the_trainer_cannot_use_are_refused(setting, match):
    from vpfb.training.trainer import check_train_config

    with pytest.raises(ValueError, match=match):
        check_train_config(load_config(None, [setting]).train)


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"trian": {"steps": 1}}, "unknown section 'trian' \\(did you mean 'train'\\?\\)"),
        ({"train": {"step": 1}}, "unknown key train.step \\(did you mean 'steps'\\?\\)"),
        ({"train": {"steps": "many"}}, "train.steps must be int"),
        ({"train": {"steps": True}}, "train.steps must be int"),
        ({"train": 3}, "must be a mapping"),
    ],
)
def test_bad_config_is_rejected_with_a_hint(raw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


def test_bad_sources():
    with pytest.raises(ConfigError, match="unknown preset 'cifar'"):
        load_config("cifar")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["steps=3"])


@pytest.mark.parametrize(
    "preset,override",
    [
        ("digits-cpu", "model.head=ae"),
        ("toy2d", "loss.name=released"),
        ("toy2d", "loss.time_sampling=logit_normal"),
        ("toy2d", "model.parameterisation=direct"),
    ],
)
def test_partition_term_only_where_it_works(preset, override):
    """The partition term needs few dimensions, adds to the Deep Ritz loss and reads ψ from the energy
    parameterisation: "auto" (the default) turns it off where it cannot work, and an explicit weight there is
    refused by name."""
    from vpfb.factory import build_loss_from_config, partition_weight
    from vpfb.paths import LinearPath

    dim = 64 if preset == "digits-cpu" else 2
    build_loss_from_config(load_config(preset), LinearPath(), dim)  # the preset itself is fine
    assert partition_weight(load_config(preset), dim) == (0.0 if preset == "digits-cpu" else 0.03)
    assert partition_weight(load_config(preset, [override, "loss.partition_weight=auto"]), dim) == 0.0
    with pytest.raises(ConfigError, match="partition_weight"):
        build_loss_from_config(load_config(preset, [override, "loss.partition_weight=0.03"]), LinearPath(), dim)


def test_partition_weight_auto_follows_the_dimension():
    from vpfb.factory import partition_weight

    assert partition_weight(load_config("toy2d"), 5) == 0.03 and partition_weight(load_config("toy2d"), 6) == 0.0
    assert partition_weight(load_config("toy2d", ["loss.partition_weight=0"]), 2) == 0.0
    with pytest.raises(ConfigError, match="at most 5 dimensions"):
        partition_weight(load_config("toy2d", ["loss.partition_weight=0.03"]), 6)
    with pytest.raises(ConfigError, match="must be float or 'auto'"):
        load_config("toy2d", ["loss.partition_weight=sometimes"])
