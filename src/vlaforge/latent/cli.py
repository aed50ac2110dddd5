"""`vlaforge latent train | label`: the flags come from `LatentConfig` and `LabelConfig` (torch-free here)."""

from __future__ import annotations

from typing import Any

from vlaforge.config import add_config_args, config_from_args

LATENT_HELP = "learn latent actions from video alone (LAPA) and label a dataset with them"


def add_latent_command(sub: Any, build: bool) -> None:
    """Adds `vlaforge latent` to the CLI's subparsers (its own flags only when `build`)."""
    p = sub.add_parser("latent", help=LATENT_HELP, description=LATENT_HELP)
    if not build:
        return
    from vlaforge.latent.config import LabelConfig, LatentConfig

    lsub = p.add_subparsers(dest="latent_cmd", required=True)
    t = lsub.add_parser("train", help="train a latent action model on a dataset's frames (actions unused)")
    add_config_args(t, LatentConfig)
    t.set_defaults(func=lambda a: _train(config_from_args(LatentConfig, a)))
    lab = lsub.add_parser("label", help="write a LeRobot v3.0 dataset whose actions are the latent actions")
    add_config_args(lab, LabelConfig, positional=("src",))
    lab.set_defaults(func=lambda a: _label(config_from_args(LabelConfig, a)))
    c = lsub.add_parser("check", help="does the code matter? decoder MSE with true vs shuffled codes (JSON)")
    c.add_argument(
        "dataset", help="a LeRobot v3.0 dataset (its actions, if any, are compared with the codes)"
    )
    c.add_argument("--lam", required=True, help="the latent action model (a run directory or a checkpoint)")
    c.add_argument("--pairs", type=int, default=4000, help="random frame pairs measured (default: 4000)")
    c.add_argument("--seed", type=int, default=0, help="seed of the pairs and the shuffle (default: 0)")
    c.set_defaults(func=_check)


def _train(cfg: Any) -> None:
    from vlaforge.latent.train import train_lam

    train_lam(cfg)


def _check(a: Any) -> None:
    import json

    from vlaforge.latent.check import check_lam

    print(json.dumps(check_lam(a.lam, a.dataset, pairs=a.pairs, seed=a.seed), indent=2))


def _label(cfg: Any) -> None:
    from vlaforge.latent.label import label_dataset

    label_dataset(cfg)


__all__ = ["LATENT_HELP", "add_latent_command"]
