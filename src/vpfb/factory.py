"""One factory: the networks, potentials and losses a configuration describes, checked against the data's shape.
Everything that builds from a Config lives here; the rest of vpfb receives built objects."""

from __future__ import annotations

from torch import nn

from vpfb.config import Config, ConfigError
from vpfb.losses import TimeSampler, build_loss
from vpfb.parameterisation import DenoisingEnergy, parameterise
from vpfb.paths import GaussianPath, build_path
from vpfb.potentials import AEEnergy, MLPPotential, ScalarHead, UNet, WideResNetPotential, unet_config

ARCHITECTURES = ("mlp", "unet", "wideresnet")
IMAGE_ARCHITECTURES = ("unet", "wideresnet")
HEADS = {"ae": AEEnergy, "scalar": ScalarHead}


def build_network(cfg: Config, shape: tuple[int, ...], num_classes: int | None = None) -> nn.Module:
    """The scalar network N(x, t[, c]) a config describes, for data of one sample's `shape`."""
    m = cfg.model
    if m.architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown model.architecture {m.architecture!r}; choose one of {ARCHITECTURES}")
    if (m.architecture == "mlp") != (len(shape) == 1):
        kind = "points [N, d]" if m.architecture == "mlp" else "images [N, C, H, W]"
        raise ConfigError(f"model.architecture={m.architecture} takes {kind}, the data has samples of shape {shape}")
    if m.conditional and m.architecture != "unet":
        raise ConfigError(f"model.conditional needs model.architecture=unet, got {m.architecture}")
    if m.architecture == "mlp":
        return MLPPotential(shape[0], m.hidden, m.depth, m.time_varying)
    if m.architecture == "wideresnet":
        if m.time_varying:
            raise ConfigError("the wideresnet potential is autonomous: set model.time_varying=false")
        return WideResNetPotential(shape[0], m.depth, m.widen)
    if m.head not in HEADS:
        raise ConfigError(f"unknown model.head {m.head!r}; choose one of {sorted(HEADS)}")
    setting = unet_config(m.network)
    if (setting["in_channels"], setting["image_size"]) != (shape[0], shape[1]) or shape[1] != shape[2]:
        raise ConfigError(
            f"model.network={m.network} takes {setting['in_channels']}×{setting['image_size']}² "
            f"images, the data has {shape[0]}×{shape[1]}×{shape[2]} (set data.image_size or choose "
            f"another network)"
        )
    backbone = UNet(
        **setting,
        num_classes=num_classes if m.conditional else None,
        time_varying=m.time_varying,
        image_output=m.head == "ae",
    )  # the scalar head reads features: no unused output layers
    return HEADS[m.head](backbone)


def build_potential(cfg: Config, shape: tuple[int, ...] | int, num_classes: int | None = None) -> nn.Module:
    """The potential a config describes: network, path and parameterisation. The autoencoder head under the energy
    parameterisation is the autoencoder energy of ψ (DenoisingEnergy), not ψ = −‖x‖²/(2v) + ½μ‖x − U‖²."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    net = build_network(cfg, shape, num_classes)
    path = build_path(cfg.path.name, **cfg.path.kwargs())
    if cfg.model.parameterisation == "energy" and isinstance(net, AEEnergy):
        net = DenoisingEnergy(net.backbone, path)
    return parameterise(cfg.model.parameterisation, net, path)


PARTITION_MAX_DIM = 5  # importance sampling of Z fails beyond this (docs/method.md §2)
AUTO_PARTITION_WEIGHT = 0.03


def partition_weight(cfg: Config, dim: int) -> float:
    """λ of the partition term for data of `dim` dimensions: loss.partition_weight, or for "auto" 0.03 where the
    term works and 0 elsewhere. A λ > 0 set where it cannot work is a ConfigError naming the reason."""
    unfit = [
        (
            cfg.model.architecture in IMAGE_ARCHITECTURES,
            "is for point data (importance sampling of the partition function fails in image dimensions)",
        ),
        (
            dim > PARTITION_MAX_DIM,
            f"is for point data of at most {PARTITION_MAX_DIM} dimensions (importance "
            f"sampling of the partition function fails beyond), these have {dim}",
        ),
        (
            cfg.model.parameterisation != "energy",
            "needs model.parameterisation=energy: the direct read-out ψ = (2Φ − f‖x‖²)/g² scales the term's "
            "gradient by 1/g² near t = 1, which ruins training",
        ),
        (
            cfg.loss.time_sampling != "uniform",
            f"draws its times uniformly; with loss.time_sampling={cfg.loss.time_sampling!r} its two halves would "
            f"average over different time laws and the loss would fall without bound along ψ + c(t)",
        ),
        (cfg.loss.name != "deep_ritz", f"adds a term to the Deep Ritz loss, not to loss.name={cfg.loss.name!r}"),
    ]
    reasons = [reason for failed, reason in unfit if failed]
    if cfg.loss.partition_weight == "auto":
        return 0.0 if reasons else AUTO_PARTITION_WEIGHT
    if cfg.loss.partition_weight < 0:
        raise ConfigError(f"loss.partition_weight must be ≥ 0 or 'auto', got {cfg.loss.partition_weight}")
    if cfg.loss.partition_weight > 0 and reasons:
        raise ConfigError(
            f"loss.partition_weight={cfg.loss.partition_weight:g}: the partition term {reasons[0]}; "
            f"set loss.partition_weight=0 or auto"
        )
    return cfg.loss.partition_weight


def build_loss_from_config(cfg: Config, path: GaussianPath, dim: int):
    """The loss a config describes, for data of `dim` dimensions per sample."""
    sampler = TimeSampler(cfg.loss.time_sampling, cfg.loss.t_min)
    weight = partition_weight(cfg, dim)
    if cfg.loss.name == "deep_ritz":
        return build_loss(
            "deep_ritz",
            path,
            estimator=cfg.loss.estimator,
            weight=cfg.loss.weight,
            time_sampler=sampler,
            control_variate=cfg.loss.control_variate,
            snr_floor=cfg.loss.snr_floor,
            partition_weight=weight,
            partition_scale=cfg.loss.partition_scale,
        )
    return build_loss(cfg.loss.name, path, time_sampler=sampler)
