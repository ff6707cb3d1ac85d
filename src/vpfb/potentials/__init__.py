from vpfb.potentials.base import Potential, potential_and_velocity, value_and_grad, velocity
from vpfb.potentials.mlp import MLP, MLPPotential

__all__ = ["MLP", "MLPPotential", "Potential", "potential_and_velocity", "value_and_grad", "velocity"]
