"""OpenVLA in vlaforge, under one name: load a checkpoint as a `Policy` and the helpers scripts use.

The format itself (read / write of the Hugging Face layout) is `vlaforge.models.formats.openvla`, the
tensor mapping `vlaforge.models.openvla_weights`, the image processor `vlaforge.models.processor`; this
module gathers their public names for callers (training's `--init`, serving, benchmarks, tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlaforge.models.formats.base import as_dtype, parameters_on_meta
from vlaforge.models.formats.openvla import (
    DATASET_STATISTICS_FILE,
    FORMAT,
    INDEX_FILE,
    LLAMA_DEFAULTS,
    SINGLE_FILE,
    TOKENIZER_FILES,
    embodiment_from_stats,
    is_hub_id,
    is_openvla_dir,
    norm_to_stats,
    openvla_config,
    read_dataset_statistics,
    resolve,
    stats_to_norm,
)
from vlaforge.models.openvla_weights import TIMM_MODELS, Shards, register_timm_model, weight_groups
from vlaforge.models.policy import Policy
from vlaforge.models.processor import PREPROCESSOR_FILE, Processor, check_preprocessor, preprocessor_config


def load_openvla(
    path_or_id: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> Any:
    """An OpenVLA checkpoint as a vlaforge `Policy` (token head, chunk 1), weights memory-mapped.

    Args:
        path_or_id: the checkpoint directory or a hub id.
        dtype: the weights' dtype; None keeps the checkpoint's (bfloat16 for openvla-7b).
        device: where the policy goes.
    """
    return Policy.from_pretrained(path_or_id, device=device, dtype=dtype, format="openvla")


__all__ = [
    "DATASET_STATISTICS_FILE",
    "FORMAT",
    "INDEX_FILE",
    "LLAMA_DEFAULTS",
    "PREPROCESSOR_FILE",
    "SINGLE_FILE",
    "TIMM_MODELS",
    "TOKENIZER_FILES",
    "Processor",
    "Shards",
    "as_dtype",
    "check_preprocessor",
    "embodiment_from_stats",
    "is_hub_id",
    "is_openvla_dir",
    "load_openvla",
    "norm_to_stats",
    "openvla_config",
    "parameters_on_meta",
    "preprocessor_config",
    "read_dataset_statistics",
    "register_timm_model",
    "resolve",
    "stats_to_norm",
    "weight_groups",
]
