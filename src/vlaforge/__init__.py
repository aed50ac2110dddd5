"""vlaforge: train, fine-tune, evaluate and serve Vision-Language-Action robot policies."""

from vlaforge.types import Embodiment, FeatureStats, NormStats, Observation

__version__ = "0.1.0"

__all__ = ["Embodiment", "FeatureStats", "NormStats", "Observation", "Policy", "__version__"]


def __getattr__(name: str):
    # `from vlaforge import Policy` without importing torch for users who only need the types.
    if name == "Policy":
        from vlaforge.models.policy import Policy

        return Policy
    raise AttributeError(f"module 'vlaforge' has no attribute {name!r}")
