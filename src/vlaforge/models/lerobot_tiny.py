"""A tiny random pi0 / SmolVLA checkpoint in LeRobot's layout, for tests, docs and smoke runs.

    python -m vlaforge.models.lerobot_tiny --family smolvla --out models/smolvla_tiny

writes config.json, model.safetensors, the processor files with statistics, and a character-level
tokenizer.json (made with the `tokenizers` library, no download) into a new directory. The model is the
family's tiny configuration with random weights; the robot has one 64 px camera ("image"), a 4-dim state
and 4-dim actions, like `vlaforge dataset synth`'s datasets.
"""

from __future__ import annotations

import argparse
import importlib
import string
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.types import Embodiment, FeatureStats, NormStats

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def write_tokenizer(directory: str | Path) -> Path:
    """A character-level tokenizer.json (lower-case letters, digits, punctuation, space, newline; <bos>
    first, as PaliGemma's), small enough for any tiny vocabulary (< 80 ids)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    chars = string.ascii_lowercase + string.digits + " \n.,-_'?!"
    vocab = {t: i for i, t in enumerate(SPECIALS + tuple(chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def tiny_lerobot_config(family: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The family's tiny configuration as LeRobot's config.json dict, with `overrides` (config fields of the
    family, e.g. ``{"adarms_time": True}`` for pi0 with pi0.5's time conditioning) applied."""
    from vlaforge.models.family import get_family

    row = get_family(family)
    module = importlib.import_module(row.module)
    cfg_cls = getattr(module, row.config_class)
    cfg = cfg_cls.tiny() if hasattr(cfg_cls, "tiny") else module.tiny_config()
    if overrides:
        cfg = cfg_cls.from_lerobot({**cfg.to_lerobot(), **overrides})
    return dict(cfg.to_lerobot())


def tiny_embodiment(
    action_dim: int = 4, state_dim: int = 4, cameras: tuple[str, ...] = ("image",)
) -> Embodiment:
    return Embodiment(
        action_dim=action_dim,
        action_names=[f"a{i}" for i in range(action_dim)],
        normalize_mask=[True] * action_dim,
        action_low=[-1e6] * action_dim,
        action_high=[1e6] * action_dim,
        control_hz=10.0,
        camera_names=list(cameras),
        image_size=64,
        state_dim=state_dim,
    )


def random_stats(embodiment: Embodiment, seed: int = 0) -> NormStats:
    """Statistics with a random mean and std per dim (so normalisation is visible in tests)."""
    rng = np.random.default_rng(seed)

    def feature(dim: int) -> FeatureStats:
        mean, std = rng.normal(size=dim), rng.uniform(0.5, 2.0, size=dim)
        return FeatureStats(
            min=mean - 3 * std, max=mean + 3 * std, mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std
        )

    feats = {"action": feature(embodiment.action_dim)}
    if embodiment.state_dim:
        feats["observation.state"] = feature(embodiment.state_dim)
    return NormStats(feats)


def tiny_policy(
    family: str,
    tokenizer_dir: str | Path,
    seed: int = 0,
    embodiment: Embodiment | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """A `Policy` of the family's tiny configuration (with `overrides`) with random weights (seeded)."""
    import torch

    from vlaforge.models.family import family_preset
    from vlaforge.models.policy import Policy

    cfg = tiny_lerobot_config(family, overrides)
    emb = embodiment or tiny_embodiment()
    torch.manual_seed(seed)
    preset = family_preset(family, cfg, str(tokenizer_dir))
    head = {"kind": family, "chunk_size": preset.chunk_size}
    return Policy(preset, head, emb, random_stats(emb, seed), "mean_std")


def write_tiny(
    directory: str | Path, family: str, seed: int = 0, overrides: dict[str, Any] | None = None
) -> Path:
    """Writes a tiny random `family` checkpoint in LeRobot's layout (with its tokenizer.json)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(tmp)
        policy = tiny_policy(family, tmp, seed, overrides=overrides)
        return policy.save_pretrained(directory, format="lerobot")


def main(argv: list[str] | None = None) -> None:
    from vlaforge.models.family import FAMILIES

    p = argparse.ArgumentParser(
        prog="python -m vlaforge.models.lerobot_tiny", description=__doc__.split("\n")[0]
    )
    p.add_argument("--family", default="smolvla", choices=list(FAMILIES))
    p.add_argument("--out", required=True, help="a new directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--adarms-time",
        action="store_true",
        help="pi0 only: pi0.5's time conditioning (adaptive RMSNorm in the action expert)",
    )
    a = p.parse_args(argv)
    if Path(a.out).exists() and any(Path(a.out).iterdir()):
        p.error(f"--out {a.out} exists and is not empty")
    if a.adarms_time and a.family != "pi0":
        p.error(f"--adarms-time is a pi0 option; --family is {a.family}")
    path = write_tiny(a.out, a.family, a.seed, {"adarms_time": True} if a.adarms_time else None)
    print(f"wrote a tiny random {a.family} checkpoint in LeRobot's layout to {path}")


if __name__ == "__main__":
    main()
