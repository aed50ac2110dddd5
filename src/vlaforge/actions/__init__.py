"""Pure-numpy action utilities: normalisation and the OpenVLA bin tokenizer (no model imports)."""

from vlaforge.actions.normalize import MODES, Normalizer
from vlaforge.actions.tokenizer import BinTokenizer

__all__ = ["MODES", "BinTokenizer", "Normalizer"]
