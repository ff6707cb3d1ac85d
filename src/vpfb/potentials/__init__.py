from vpfb.potentials.base import CompiledVelocity, Potential, potential_and_velocity, value_and_grad, velocity
from vpfb.potentials.heads import AEEnergy, ScalarHead
from vpfb.potentials.mlp import MLP, MLPPotential
from vpfb.potentials.unet import UNET_CONFIGS, UNet, unet_config
from vpfb.potentials.wideresnet import WideResNet, WideResNetPotential

__all__ = [
    "AEEnergy",
    "CompiledVelocity",
    "MLP",
    "MLPPotential",
    "Potential",
    "ScalarHead",
    "UNET_CONFIGS",
    "UNet",
    "WideResNet",
    "WideResNetPotential",
    "potential_and_velocity",
    "unet_config",
    "value_and_grad",
    "velocity",
]
