"""vpfb: energy-based generative modelling via potential flow (Variational Potential Flow Bayes).

`import vpfb` stays light (torch only); the model handle and its dependencies load on first use.
"""

__version__ = "0.1.0"
__all__ = ["EnergyModel", "load", "__version__"]


def __getattr__(name: str):
    if name in ("EnergyModel", "load"):
        from vpfb import model

        return getattr(model, name)
    raise AttributeError(f"module 'vpfb' has no attribute {name!r}")
