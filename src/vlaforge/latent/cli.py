"""`vlaforge latent train | label | check`: the flags come from `LatentConfig` and `LabelConfig` (torch-free
here)."""

from __future__ import annotations

from typing import Any

from vlaforge.cli_group import ConfigCommand, add_group, print_json

LATENT_HELP = "learn latent actions from video alone (LAPA) and label a dataset with them"


def _commands() -> dict[str, ConfigCommand]:
    from vlaforge.latent.config import LabelConfig, LatentConfig

    return {
        "train": ConfigCommand(
            "train a latent action model on a dataset's frames (actions unused)",
            LatentConfig,
            "vlaforge.latent.train:train_lam",
        ),
        "label": ConfigCommand(
            "write a LeRobot v3.0 dataset whose actions are the latent actions",
            LabelConfig,
            "vlaforge.latent.label:label_dataset",
            positional=("src",),
        ),
    }


def add_latent_command(sub: Any, build: bool) -> None:
    """Adds `vlaforge latent` to the CLI's subparsers (its own flags only when `build`)."""
    lsub = add_group(sub, "latent", LATENT_HELP, build, _commands)
    if lsub is None:
        return
    c = lsub.add_parser("check", help="does the code matter? decoder MSE with true vs shuffled codes (JSON)")
    c.add_argument(
        "dataset", help="a LeRobot v3.0 dataset (its actions, if any, are compared with the codes)"
    )
    c.add_argument("--lam", required=True, help="the latent action model (a run directory or a checkpoint)")
    c.add_argument("--pairs", type=int, default=4000, help="random frame pairs measured (default: 4000)")
    c.add_argument("--seed", type=int, default=0, help="seed of the pairs and the shuffle (default: 0)")
    c.set_defaults(func=print_json("vlaforge.latent.check:check_lam", "lam", "dataset", "pairs", "seed"))


__all__ = ["LATENT_HELP", "add_latent_command"]
