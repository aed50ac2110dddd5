"""`vlaforge idm train | label | check`: flags from `IdmConfig` and `IdmLabelConfig` (torch-free here)."""

from __future__ import annotations

from typing import Any

from vlaforge.cli_group import ConfigCommand, add_group, print_json

IDM_HELP = "an inverse dynamics model: learn actions from a few labelled episodes, label action-free video"


def _commands() -> dict[str, ConfigCommand]:
    from vlaforge.idm.config import IdmConfig, IdmLabelConfig

    return {
        "train": ConfigCommand(
            "train an IDM on a dataset's (first --labelled) episodes",
            IdmConfig,
            "vlaforge.idm.train:train_idm",
        ),
        "label": ConfigCommand(
            "write a LeRobot v3.0 dataset whose actions are the IDM's",
            IdmLabelConfig,
            "vlaforge.idm.label:label_dataset",
            positional=("src",),
        ),
    }


def add_idm_command(sub: Any, build: bool) -> None:
    """Adds `vlaforge idm` to the CLI's subparsers (its own flags only when `build`)."""
    isub = add_group(sub, "idm", IDM_HELP, build, _commands)
    if isub is None:
        return
    c = isub.add_parser("check", help="R^2 and MAE per action dim against a dataset's real actions (JSON)")
    c.add_argument("dataset", help="a LeRobot v3.0 dataset with real actions")
    c.add_argument("--idm", required=True, help="the IDM (its run directory or model directory)")
    c.add_argument("--episodes", default=None, help="A:B, a comma list, or @FILE (default: all)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    c.add_argument(
        "--camera", default=None, help="read this camera instead of the IDM's (default: the IDM's)"
    )
    c.set_defaults(
        func=print_json("vlaforge.idm.label:check_idm", "idm", "dataset", "episodes", "device", "camera")
    )


__all__ = ["IDM_HELP", "add_idm_command"]
