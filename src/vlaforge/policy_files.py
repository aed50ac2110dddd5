"""The policy directory on disk, parsed in one place (plain JSON + numpy: no torch, no model code).

A policy directory (what `Policy.save_pretrained` writes, and every training checkpoint holds):

    config.json        {"format": "vlaforge-policy", "version": 1, "preset": {...}, "head": {...},
                        "chunk_size": H, "image_size": S, "embodiment": {...}, "text_tokenizer": {...},
                        "norm_mode": "q99", "training_data": {...} | null}
    model.safetensors  the state dict
    norm_stats.json    per-feature statistics, validated against the embodiment here
    tokenizer.json     only for presets that use the Llama tokenizer

`training_data` records where the weights were trained: the dataset path and, for datasets vlaforge
collected in simulation, the environment and every episode's (task, seed). Evaluation reads it to refuse
scenes the policy was trained on.

Everything that needs to know what a policy directory holds (the model loader, evaluation's checks
before any rollout, training's fine-tuning from a policy) calls `read_policy_dir`. It also reads a LeRobot
pi0 / SmolVLA directory (`vlaforge.lerobot_files`), described in the same terms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlaforge.errors import InputError
from vlaforge.lerobot_files import is_lerobot_config, read_lerobot_dir
from vlaforge.types import Embodiment, NormStats

CONFIG_FILE, WEIGHTS_FILE, STATS_FILE, TOKENIZER_FILE = (
    "config.json",
    "model.safetensors",
    "norm_stats.json",
    "tokenizer.json",
)
DATASET_STATS_FILE = "dataset_stats.json"  # per training dataset of a mixture: {unnorm_key: norm stats}
FORMAT = "vlaforge-policy"
VERSION = 1


@dataclass
class PolicyFiles:
    """A parsed, validated policy directory (the weights are not read).

    Attributes:
        root: the directory.
        config: config.json as a dict.
        embodiment: the robot the policy drives.
        norm_stats: its statistics, already validated against the embodiment.
        dataset_stats: per training dataset of a mixture, its own statistics by key (the `unnorm_key`s);
            empty for a policy trained on one dataset.
    """

    root: Path
    config: dict[str, Any]
    embodiment: Embodiment
    norm_stats: NormStats
    dataset_stats: dict[str, NormStats] = field(default_factory=dict)

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def head(self) -> dict[str, Any]:
        """The head's config (`kind`, `chunk_size`, options)."""
        return dict(self.config["head"])

    @property
    def chunk_size(self) -> int:
        return int(self.config.get("chunk_size") or self.config["head"]["chunk_size"])

    @property
    def preset(self) -> dict[str, Any]:
        return dict(self.config["preset"])

    @property
    def norm_mode(self) -> str:
        return str(self.config.get("norm_mode", "q99"))

    @property
    def training_data(self) -> dict[str, Any] | None:
        return self.config.get("training_data")

    def training_seeds(self) -> dict[str, set[int]]:
        """{task: seeds of its training episodes} for simulation datasets vlaforge collected; {} otherwise."""
        data = self.training_data or {}
        out: dict[str, set[int]] = {}
        for ep in data.get("episodes") or []:
            if "task" in ep and "seed" in ep:
                out.setdefault(str(ep["task"]), set()).add(int(ep["seed"]))
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def validate_dataset_stats(stats: NormStats, embodiment: Embodiment, where: str) -> None:
    """Checks one training dataset's statistics against the embodiment, as `NormStats.validate`, except
    that their action mask may be their own (OpenVLA un-normalises each `unnorm_key` with its own mask):
    it only has to have one entry per action dim."""
    action = stats.features.get("action")
    if action is not None and action.mask is not None:
        if action.mask.shape != (embodiment.action_dim,):
            raise InputError(
                f"{where}: action mask has {action.mask.shape[0]} entries; the embodiment has "
                f"{embodiment.action_dim} action dims"
            )
        action = replace(action, mask=None)
        stats = NormStats({**stats.features, "action": action})
    stats.validate(embodiment, where=where)


def read_policy_dir(directory: str | Path, need_weights: bool = True) -> PolicyFiles:
    """Reads and validates a policy directory's config, embodiment and statistics.

    Args:
        directory: the policy directory (e.g. `RUN/last`).
        need_weights: also require model.safetensors to exist.

    Raises:
        InputError: a missing directory or file, invalid JSON, not a vlaforge policy, or statistics that
            do not fit the embodiment; the message names the file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"{root}: no such policy directory")
    if (root / CONFIG_FILE).is_file() and is_lerobot_config(_read_json(root / CONFIG_FILE)):
        return _lerobot_policy_files(root, need_weights)
    need = [CONFIG_FILE, STATS_FILE] + ([WEIGHTS_FILE] if need_weights else [])
    missing = [f for f in need if not (root / f).is_file()]
    if missing:
        raise InputError(
            f"{root}: missing {missing}; a policy directory needs {CONFIG_FILE}, {WEIGHTS_FILE} and "
            f"{STATS_FILE} (what vlaforge train writes, e.g. RUN/last or RUN/checkpoints/step-XXXXXXX; Policy.save_pretrained from Python)"
        )
    config = _read_json(root / CONFIG_FILE)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise InputError(f"{root / CONFIG_FILE}: not a vlaforge policy config (format {fmt!r})")
    if config.get("version", VERSION) > VERSION:
        raise InputError(
            f"{root / CONFIG_FILE}: policy format version {config['version']}; this vlaforge reads up to "
            f"{VERSION}. Upgrade vlaforge."
        )
    for key in ("embodiment", "preset", "head"):
        if key not in config:
            raise InputError(f"{root / CONFIG_FILE}: no {key!r} entry; the policy config is incomplete")
    embodiment = Embodiment.from_dict(config["embodiment"])
    stats = NormStats.load(root / STATS_FILE)
    stats.validate(embodiment, where=str(root / STATS_FILE))
    per_dataset: dict[str, NormStats] = {}
    if (root / DATASET_STATS_FILE).is_file():
        doc = _read_json(root / DATASET_STATS_FILE)
        if not isinstance(doc, dict) or not doc:
            raise InputError(f"{root / DATASET_STATS_FILE}: expected {{dataset key: statistics}}")
        for key, d in doc.items():
            where = f"{root / DATASET_STATS_FILE}[{key!r}]"
            per_dataset[key] = NormStats.from_dict(d, where=where)
            validate_dataset_stats(per_dataset[key], embodiment, where=where)
    return PolicyFiles(
        root=root, config=config, embodiment=embodiment, norm_stats=stats, dataset_stats=per_dataset
    )


def _lerobot_policy_files(root: Path, need_weights: bool) -> PolicyFiles:
    """A LeRobot pi0 / SmolVLA directory (`vlaforge.lerobot_files`) described as a policy directory, so
    evaluation and serving check it as they check vlaforge's own."""
    files = read_lerobot_dir(root)
    if need_weights and not (root / WEIGHTS_FILE).is_file():
        raise InputError(
            f"{root}: missing {WEIGHTS_FILE}; a LeRobot policy directory holds its weights there"
        )
    return PolicyFiles(
        root=root, config=files.policy_config(), embodiment=files.embodiment, norm_stats=files.norm_stats
    )


__all__ = [
    "CONFIG_FILE",
    "DATASET_STATS_FILE",
    "FORMAT",
    "STATS_FILE",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "PolicyFiles",
    "read_policy_dir",
    "validate_dataset_stats",
]
