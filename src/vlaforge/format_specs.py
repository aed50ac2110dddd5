"""The checkpoint formats' declarations, in one torch-free table: name, doc, write options.

`vlaforge.models.formats.FORMATS` pairs each name with its reader and writer; this table lives outside
`vlaforge.models` so that `vlaforge export --help` lists the formats without importing torch or
transformers (as `vlaforge.head_specs` does for the action heads). A new format is one module there and
one row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatSpec:
    """One checkpoint format, as the CLI shows it.

    Attributes:
        name: what `save_pretrained(format=...)` and `vlaforge export --format` call it.
        doc: one line for `--help`.
        write_options: the keyword options its writer takes (what `vlaforge export` passes on).
    """

    name: str
    doc: str
    write_options: tuple[str, ...] = ()


FORMAT_SPECS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            "vlaforge", "vlaforge's policy directory: config.json, model.safetensors, norm_stats.json"
        ),
        FormatSpec(
            "openvla",
            "OpenVLA's Hugging Face layout (openvla/openvla-7b): timm tensor names, shards, dataset_statistics.json",
            ("max_shard_bytes", "unnorm_key"),
        ),
        FormatSpec(
            "lerobot",
            "LeRobot's pi0 / SmolVLA policy layout: config.json with 'type', model.safetensors, processor files",
        ),
    )
}

__all__ = ["FORMAT_SPECS", "FormatSpec"]
