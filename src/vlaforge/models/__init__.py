"""Models: vision featurizers, the Prismatic backbone, action heads and their registry, `Policy`, presets.

The vision code reads transformers 5's module layout (a ViT block returns a tensor, SigLIP's vision model
is flattened), so an older transformers fails here, at import, with a message instead of deep inside a
forward pass.
"""

from __future__ import annotations

from vlaforge.errors import InputError

# The oldest major version whose layer outputs the vision code expects; pyproject declares the same range.
TRANSFORMERS_MIN, TRANSFORMERS_BELOW = (5, 0), (6, 0)


def check_transformers_version(version: str) -> None:
    """Raises InputError unless `version` is within the range vlaforge's models are written and tested for."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    have = tuple(parts + [0] * (2 - len(parts)))
    if not TRANSFORMERS_MIN <= have < TRANSFORMERS_BELOW:
        lo, hi = ".".join(map(str, TRANSFORMERS_MIN)), ".".join(map(str, TRANSFORMERS_BELOW))
        raise InputError(
            f"vlaforge's models need transformers >= {lo}, < {hi} (its 5.x layer outputs); this environment "
            f"has transformers {version}. Install a supported version: pip install 'transformers>={lo},<{hi}'"
        )


def _check_installed() -> None:
    import transformers

    check_transformers_version(transformers.__version__)


_check_installed()
