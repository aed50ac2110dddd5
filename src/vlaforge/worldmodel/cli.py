"""`vlaforge worldmodel train | judge | state | starts | quality | replay | agreement` (torch-free here: flags from the configs)."""

from __future__ import annotations

import json
from typing import Any

from vlaforge.config import add_config_args, config_from_args

WM_HELP = "a learned world model: train it, judge success, measure its predictions, rank policies in it"


def add_worldmodel_command(sub: Any, build: bool) -> None:
    """Adds `vlaforge worldmodel` to the CLI's subparsers (its own flags only when `build`)."""
    p = sub.add_parser("worldmodel", help=WM_HELP, description=WM_HELP)
    if not build:
        return
    from vlaforge.worldmodel.config import JudgeConfig, WorldModelConfig
    from vlaforge.worldmodel.population import AgreementConfig

    wsub = p.add_subparsers(dest="wm_cmd", required=True)
    t = wsub.add_parser("train", help="train the autoencoder and the latent dynamics on LeRobot datasets")
    add_config_args(t, WorldModelConfig)
    t.set_defaults(func=lambda a: _train(config_from_args(WorldModelConfig, a)))
    j = wsub.add_parser("judge", help="train and calibrate a success classifier on recorded episodes")
    add_config_args(j, JudgeConfig)
    j.set_defaults(func=lambda a: _judge(config_from_args(JudgeConfig, a)))
    q = wsub.add_parser("quality", help="PSNR / SSIM at several horizons against copy-last-frame")
    q.add_argument("worldmodel", help="the world model's run directory")
    q.add_argument("--dataset", default=None, help="test on these datasets (default: its held-out episodes)")
    q.add_argument("--horizons", default="1,8,32", help="comma list of horizons (default: 1,8,32)")
    q.add_argument("--stride", type=int, default=4, help="a start every N frames (default: 4)")
    q.add_argument("--seed", type=int, default=0, help="seed of the imagination's noise (default: 0)")
    q.add_argument("--out", default=None, help="also write the table as JSON here")
    q.add_argument(
        "--no-residual",
        action="store_true",
        help="decode each frame from its latent (default: decode changes)",
    )
    q.set_defaults(func=_quality)
    r = wsub.add_parser(
        "replay", help="recorded episodes replayed open loop in the model: errors, motion, the judge"
    )
    r.add_argument("worldmodel", help="the world model's run directory (its judge in RUN/judge when there)")
    r.add_argument("--dataset", default=None, help="replay these datasets (default: its held-out episodes)")
    r.add_argument("--episodes", type=int, default=0, help="the first N episodes only (default: 0, all)")
    r.add_argument("--seed", type=int, default=0, help="seed of the imagination's noise (default: 0)")
    r.add_argument("--strips", type=int, default=4, help="PNG strips of the first N episodes (default: 4)")
    r.add_argument("--out", default=None, help="write replay.json and strips/ here")
    r.set_defaults(func=_replay)
    s = wsub.add_parser("state", help="learn the robot (and scene) state for the world model's environment")
    s.add_argument("worldmodel", help="the world model's run directory (writes RUN/state)")
    s.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    s.add_argument("--batch-size", type=int, default=256, help="transitions per step (default: 256)")
    s.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    s.add_argument("--width", type=int, default=128, help="hidden width of the MLP (default: 128)")
    s.add_argument("--seed", type=int, default=0, help="seeds init and batches (default: 0)")
    s.add_argument(
        "--no-scene",
        action="store_true",
        help="the robot state only, even when the datasets record the scene's (observation.environment_state)",
    )
    s.add_argument(
        "--judge-steps", type=int, default=2000, help="optimizer steps of the scene judge (default: 2000)"
    )
    s.add_argument(
        "--rollout", type=int, default=1, help="predictions unrolled per sample in training (default: 1)"
    )
    s.add_argument(
        "--dataset",
        default=None,
        help="more recorded datasets (comma list) to learn the state and scene judge from, none held out",
    )
    s.add_argument(
        "--ensemble", type=int, default=1, help="predictors from seeds seed.., their mean used (default: 1)"
    )
    s.add_argument(
        "--judge-on",
        choices=("real", "predicted"),
        default="real",
        help="the scene judge learns from the recorded states or the predictor's open-loop ones (default: real)",
    )
    s.set_defaults(func=_state)
    n = wsub.add_parser(
        "starts", help="the same world model, starting its episodes from other recorded scenes"
    )
    n.add_argument("worldmodel", help="the world model's run directory")
    n.add_argument(
        "--starts", required=True, help="comma list of recorded evaluations (`vlaforge eval --record`)"
    )
    n.add_argument("--out", required=True, help="the new model directory")
    n.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    n.set_defaults(func=_starts)
    g = wsub.add_parser("agreement", help="evaluate policies in the simulator and the world model; compare")
    add_config_args(g, AgreementConfig)
    g.set_defaults(func=lambda a: _agreement(config_from_args(AgreementConfig, a)))


def _train(cfg: Any) -> None:
    from vlaforge.worldmodel.train import train_worldmodel

    print(f"wrote {train_worldmodel(cfg)}")


def _judge(cfg: Any) -> None:
    from vlaforge.worldmodel.judge import train_judge

    print(json.dumps(train_judge(cfg), indent=2))


def _quality(a: Any) -> None:
    from vlaforge.worldmodel.quality_cli import run_quality

    run_quality(a.worldmodel, a.dataset, a.horizons, a.stride, a.seed, a.out, not a.no_residual)


def _replay(a: Any) -> None:
    from vlaforge.worldmodel.replay import run_replay

    run_replay(a.worldmodel, a.dataset, a.episodes, a.seed, a.out, a.strips)


def _state(a: Any) -> None:
    from vlaforge.worldmodel.state import train_state

    report = train_state(
        a.worldmodel, a.steps, a.batch_size, a.lr, a.width, a.seed,
        scene=not a.no_scene, judge_steps=a.judge_steps, rollout=a.rollout, judge_on=a.judge_on,
        ensemble=a.ensemble, extra=[d.strip() for d in (a.dataset or '').split(',') if d.strip()],
    )  # fmt: skip
    print(json.dumps(report, indent=2))


def _starts(a: Any) -> None:
    from vlaforge.worldmodel.starts import with_starts

    path = with_starts(a.worldmodel, a.starts, a.out, a.overwrite)
    print(f"wrote {path}; a state predictor is not carried over: `vlaforge worldmodel state {a.out}`")


def _agreement(cfg: Any) -> None:
    from vlaforge.envs.rendering import configure_rendering
    from vlaforge.worldmodel.population import format_table, run_agreement

    configure_rendering()
    print(format_table(run_agreement(cfg)))


__all__ = ["WM_HELP", "add_worldmodel_command"]
