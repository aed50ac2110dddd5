"""`vlaforge idm train | label | check`: flags from `IdmConfig` and `IdmLabelConfig` (torch-free here)."""

from __future__ import annotations

from typing import Any

from vlaforge.config import add_config_args, config_from_args

IDM_HELP = "an inverse dynamics model: learn actions from a few labelled episodes, label action-free video"


def add_idm_command(sub: Any, build: bool) -> None:
    """Adds `vlaforge idm` to the CLI's subparsers (its own flags only when `build`)."""
    p = sub.add_parser("idm", help=IDM_HELP, description=IDM_HELP)
    if not build:
        return
    from vlaforge.idm.config import IdmConfig, IdmLabelConfig

    isub = p.add_subparsers(dest="idm_cmd", required=True)
    t = isub.add_parser("train", help="train an IDM on a dataset's (first --labelled) episodes")
    add_config_args(t, IdmConfig)
    t.set_defaults(func=lambda a: _train(config_from_args(IdmConfig, a)))
    lab = isub.add_parser("label", help="write a LeRobot v3.0 dataset whose actions are the IDM's")
    add_config_args(lab, IdmLabelConfig, positional=("src",))
    lab.set_defaults(func=lambda a: _label(config_from_args(IdmLabelConfig, a)))
    c = isub.add_parser("check", help="R^2 and MAE per action dim against a dataset's real actions (JSON)")
    c.add_argument("dataset", help="a LeRobot v3.0 dataset with real actions")
    c.add_argument("--idm", required=True, help="the IDM (its run directory or model directory)")
    c.add_argument("--episodes", default=None, help="A:B, a comma list, or @FILE (default: all)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    c.add_argument(
        "--camera", default=None, help="read this camera instead of the IDM's (default: the IDM's)"
    )
    c.set_defaults(func=_check)


def _train(cfg: Any) -> None:
    from vlaforge.idm.train import train_idm

    train_idm(cfg)


def _label(cfg: Any) -> None:
    from vlaforge.idm.label import label_dataset

    label_dataset(cfg)


def _check(a: Any) -> None:
    import json

    from vlaforge.idm.label import check_idm

    print(json.dumps(check_idm(a.idm, a.dataset, a.episodes, a.device, a.camera), indent=2))


__all__ = ["IDM_HELP", "add_idm_command"]
