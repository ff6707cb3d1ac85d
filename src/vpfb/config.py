"""Typed run configuration: dataclasses, YAML presets, dotted `key=value` overrides, validation with clear errors."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    name: str = "moons"  # points: a toy set or a .npy/.npz/.csv file [N, d]; images: a set (vpfb.data.IMAGE_SETS),
    #                      a folder or a .npy/.npz array (see vpfb.data.load_images); the architecture decides which
    n: int = 100_000  # training points drawn from a toy data set
    seed: int = 0
    key: str = ""  # points: the array to read from a .npz archive that holds several
    root: str = ""  # images: where torchvision sets live ("" = $VPFB_DATA or ~/.cache/vpfb/data)
    image_size: int = 0  # images: resize (or pad, for digits) to this size; 0 keeps the native size
    flip: bool = False  # images: random horizontal flips
    dequantize: bool = False  # images: add u ~ U[0, 1) to each 8-bit value before scaling (for honest bits/dim)
    download: bool = False  # images: let torchvision download a missing set


@dataclass
class PathConfig:
    name: str = "linear"  # "linear" or "log_homotopy"
    sigma_min: float = 0.0  # linear path only
    omega: float = 1.0  # log-homotopy only: prior scale ω
    nu: float = 0.01  # log-homotopy only: likelihood scale ν

    def kwargs(self) -> dict:
        return {"sigma_min": self.sigma_min} if self.name == "linear" else {"omega": self.omega, "nu": self.nu}


@dataclass
class ModelConfig:
    architecture: str = "mlp"  # "mlp" (points), "unet" or "wideresnet" (images)
    hidden: int = 256  # mlp width
    depth: int = 3  # mlp hidden layers; wideresnet depth (6k + 4)
    network: str = "mnist5k-cpu"  # unet: a named setting of vpfb.potentials.UNET_CONFIGS
    head: str = "ae"  # unet: "ae" (direct: the released Φ = ½‖x − U‖²; energy: ψ = −½‖x/√v − μW‖²) or "scalar"
    widen: int = 10  # wideresnet widen factor
    conditional: bool = False  # Φ(x, t | c) on the data's class labels
    label_dropout: float = 0.2  # conditional: probability of the null label during training
    time_varying: bool = True
    parameterisation: str = "energy"  # "energy" (well-conditioned log-density) or "direct" (Φ = network)


@dataclass
class LossConfig:
    name: str = "deep_ritz"  # "deep_ritz" or "released"
    estimator: str = "pathwise"  # "pathwise" or "covariance"
    control_variate: bool = False  # covariance only: subtract γΦ(μx̄, t), a zero-mean control variate
    weight: str = "snr"  # "snr", "uniform", "sigma2" or "dsm" (see vpfb.losses.time_weight)
    snr_floor: float = 0.2  # c in the "snr" weight (μ² + c)/(σ² + c)
    # λ of the partition term (vpfb.losses.PartitionTerm), or "auto": 0.03 where it works (points of d ≤ 5, energy
    # parameterisation, Deep Ritz loss, uniform times), 0 elsewhere (images); vpfb.fit.partition_weight
    partition_weight: float | str = field(default="auto", metadata={"or": "auto"})
    partition_scale: float = 2.0  # its proposal N(0, s²I), in standardised units
    time_sampling: str = "uniform"  # "uniform" or "logit_normal"
    t_min: float = 1e-5


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 256
    lr: float = 3e-3
    lr_final: float = 1e-4  # cosine decay from lr to lr_final
    ema: float = 0.995  # EMA decay β of the saved weights
    ema_warmup: bool = True  # decay min(β, (1 + n)/(10 + n)) after n updates, so a short run's EMA forgets its start
    grad_clip: float = 1.0  # global norm; 0 disables
    seed: int = 0
    log_every: int = 100
    time_budget: float = 0.0  # seconds; > 0 stops training when spent (the LR schedule then follows the clock)
    device: str = "cpu"  # "cuda" to train on a GPU
    warmup_steps: int = 0  # linear LR warm-up from 0 to lr over these steps, then the cosine decay
    clip_mode: str = "norm"  # "norm" (global norm ≤ grad_clip) or "released" (each entry to ±(3√v̂ + 0.1), Adam's v̂)
    checkpoint_every: int = 1000  # steps between checkpoints (written only with a run directory) and restore points
    keep_checkpoints: int = 2  # newest checkpoints kept in run_dir/checkpoints
    max_restores: int = 3  # non-finite steps survived between restore points (restore the last good state, skip)
    sample_every: int = 0  # steps between calls of train()'s callback(step, ema_module); 0 never calls it
    tensorboard: bool = False  # also log metrics to TensorBoard (beside metrics.csv) when it is installed
    amp: str = "none"  # "none" or "bf16" (autocast of the loss, on CUDA or CPU)
    compile: bool = False  # compile Φ with ∇ₓΦ for the training step (CompiledVelocity)
    threads: int = 0  # CPU threads for training; 0 chooses from the work's size (see vpfb.training.trainer)


@dataclass
class EvalConfig:
    density_t: float = 0.9  # log_density reads ψ here (data smoothed by σ/μ = 0.11 std units); docs/method.md §3
    calibrate: bool = True  # after training, pick density_t among calibrate_times by agreement with the CNF
    calibrate_times: list = field(default_factory=lambda: [0.8, 0.85, 0.9, 0.95, 0.98, 1.0])
    calibrate_points: int = 1000
    solver: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    path: PathConfig = field(default_factory=PathConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def from_dict(raw: dict, base: Config | None = None, where: str = "config") -> Config:
    """Overlay a nested dict on `base` (default: all defaults), rejecting unknown sections and keys."""
    cfg = base or Config()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        target = getattr(cfg, section, None) if section in Config.__dataclass_fields__ else None
        if target is None:
            raise ConfigError(f"{where}: unknown section {section!r}{_hint(section, Config.__dataclass_fields__)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {values!r}")
        for key, value in values.items():
            _set(target, section, key, value, where)
    return cfg


def _set(target: Any, section: str, key: str, value: Any, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ConfigError(f"{where}: unknown key {section}.{key}{_hint(key, fields)}")
    alternative = fields[key].metadata.get("or")  # a float field that also takes this one word
    if alternative is not None and value == alternative:
        setattr(target, key, value)
        return
    expected = float if alternative is not None else type(getattr(target, key))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        kind = expected.__name__ + (f" or {alternative!r}" if alternative is not None else "")
        raise ConfigError(f"{where}: {section}.{key} must be {kind}, got {value!r}")
    setattr(target, key, value)


def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(choices))})"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(source: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then a preset name or YAML file, then `section.key=value` overrides (values parsed as YAML)."""
    cfg = Config()
    if source:
        path = Path(source)
        if path.suffix not in (".yaml", ".yml"):
            if source not in presets():
                raise ConfigError(f"unknown preset {source!r}; presets: {', '.join(presets())} (or a .yaml file)")
            path = PRESET_DIR / f"{source}.yaml"
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        cfg = from_dict(_yaml(path.read_text(), str(path)) or {}, cfg, where=str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.steps=2000")
        cfg = from_dict({section: {name: _yaml(value, f"override {item!r}")}}, cfg, where="override")
    return cfg


def _yaml(text: str, where: str) -> Any:
    """YAML's safe loader (no tags, nothing executed), its errors as one ConfigError line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None
