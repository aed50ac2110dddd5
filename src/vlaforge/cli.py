"""The `vlaforge` command. It parses arguments and calls the library; no logic lives here.

vlaforge collect   [--env ENV] --tasks mt10 --episodes 50 --out data/mt10
vlaforge dataset   info DIR | view DIR --episode K --out ep.mp4 | synth --out DIR
                   | convert SRC --to rlds|lerobot --out DST
vlaforge train     --dataset DIR --preset tiny --head chunk --steps N --out RUN
vlaforge eval      --policy RUN/last --tasks mt10 --episodes 10 --out DIR
vlaforge rl        --init RUN/last --tasks reach --algo ppo --iterations N --out RL   (RL after imitation)
vlaforge dagger    --init RUN/last --expert scripted --rounds 3 --out DIR   (roll out, label, aggregate,
                   fine-tune, evaluate; --expert recorded --dataset D: a person's interventions)
vlaforge export    RUN/last --format openvla --out DIR   (or an OpenVLA checkpoint to --format vlaforge)
vlaforge tokenizer train --dataset DIR --out TOK         (FAST: DCT + byte-pair encoding of action chunks)
vlaforge idm       train --dataset DIR --out IDM | label SRC --idm IDM --out DST   (inverse dynamics)
vlaforge latent    train --dataset DIR --out LAM | label SRC --lam LAM --out DST   (latent actions, LAPA)
vlaforge teleop    [--env ENV] --task reach-v3 --out DIR         (curses keys; a policy may drive)
vlaforge ui        [--root DIR] [--host 127.0.0.1] [--port 8765]  (the local web UI)
vlaforge worldmodel train --dataset DIR --out WM | judge | quality WM | agreement  (policies in imagination)
vlaforge demo      (collect + train + eval on a small default)
vlaforge --version

The flags of collect, dataset synth, train, eval, dagger and demo are derived from their config dataclasses
(`vlaforge.config`): each field is one flag, its help is the field's doc, its default the field's.
Only the command being run has its parser built (none for `vlaforge --help`), so `vlaforge --help` and
`vlaforge dataset info` do not import torch. A user's mistake (a flag's typo, a missing GPU, a port in
use, a bad file) is one line on stderr, `vlaforge CMD: error: ...`, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from vlaforge.config import add_config_args, config_from_args
from vlaforge.errors import InputError, did_you_mean
from vlaforge.warnlog import deferred_warnings

DEBUG_HINT = "(VLAFORGE_DEBUG=1 shows the traceback)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a choice's typo gets a "did you mean", no usage block is printed."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            known = ", ".join(map(str, action.choices))
            hint = f"{did_you_mean(value, action.choices)} (choose from {known})"
            if isinstance(action, argparse._SubParsersAction):  # the command's name
                raise argparse.ArgumentError(None, f"unknown command {value!r}{hint}")
            raise argparse.ArgumentError(action, f"invalid choice {value!r}{hint}")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    """vlaforge's installed version, and torch's read from its metadata (importing torch takes seconds)."""
    from importlib import metadata

    def installed(name: str, fallback: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return fallback

    from vlaforge import __version__

    return f"vlaforge {installed('vlaforge', __version__)} (torch {installed('torch', 'not installed')})"


def _load(path: str) -> Any:
    """'package.module:Name' -> the object."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _run_collect(cfg: Any) -> None:
    path = _load("vlaforge.envs.collect:collect")(cfg)
    print(f"wrote {path}")


def _run_train(cfg: Any) -> None:
    stopped = _load("vlaforge.train.runtime:TrainingStopped")
    try:
        _load("vlaforge.train.loop:train")(cfg)
    except stopped as e:  # Ctrl-C / SIGTERM: the checkpoint is written; say how to resume
        if str(e):
            print(e, file=sys.stderr)
        sys.exit(e.exit_code)


def _run_eval(cfg: Any) -> None:
    result = _load("vlaforge.eval.run:evaluate")(cfg)
    print(result.table())
    print(f"report: {result.report_path}")


def _run_rl(cfg: Any) -> None:
    run = _load("vlaforge.rl.loop:run_rl")(cfg)
    print(f"wrote {run} (improved policy: {run}/policy, metrics: {run}/metrics.jsonl)")


def _run_dagger(cfg: Any) -> None:
    state = _load("vlaforge.dagger.run:run_dagger")(cfg)
    for r in state["rounds"]:
        o = r["rates"]["overall"]
        print(f"round {r['round']}: {o['rate']:.2f} [{o['ci_low']:.2f}, {o['ci_high']:.2f}] (n={o['n']})")
    print(f"wrote {cfg.out}/dagger.json and {cfg.out}/curve.png")


def _run_serve(cfg: Any) -> None:
    _load("vlaforge.serve.server:serve")(cfg)


def _run_demo(cfg: Any) -> None:
    _load("vlaforge.demo:run_demo")(cfg)


def _run_teleop(cfg: Any) -> None:
    path = _load("vlaforge.teleop.terminal:run_teleop")(cfg)
    print(f"wrote {path}" if path is not None else "no episode was kept; nothing written")


def _run_ui(cfg: Any) -> None:
    _load("vlaforge.ui.server:serve_ui")(cfg)


def _run_synth(cfg: Any) -> None:
    path = _load("vlaforge.data.synth:write_synthetic")(cfg)
    print(f"wrote {path}")


# name -> (help, config class, runner). The config's fields are the command's flags.
CONFIG_COMMANDS: dict[str, tuple[str, str, Callable[[Any], None]]] = {
    "collect": (
        "record scripted-expert demonstrations as a LeRobot v3.0 dataset",
        "vlaforge.envs.collect:CollectConfig",
        _run_collect,
    ),
    "train": ("train or fine-tune a policy", "vlaforge.train.config:TrainConfig", _run_train),
    "eval": ("evaluate a policy in simulation (--env)", "vlaforge.eval.run:EvalConfig", _run_eval),
    "rl": (
        "improve a trained policy by acting in simulation (PPO, GRPO or DSRL's SAC on the success flag)",
        "vlaforge.rl.config:RLConfig",
        _run_rl,
    ),
    "dagger": (
        "DAgger: roll the policy out, label its states with an expert's actions, aggregate, fine-tune",
        "vlaforge.dagger.config:DaggerConfig",
        _run_dagger,
    ),
    "serve": (
        "serve a policy to robots (openpi websocket + OpenVLA POST /act, batched)",
        "vlaforge.serve.server:ServeConfig",
        _run_serve,
    ),
    "teleop": (
        "drive an env task from the terminal (curses keys), recording a LeRobot v3.0 dataset",
        "vlaforge.teleop.terminal:TeleopConfig",
        _run_teleop,
    ),
    "ui": (
        "the local web UI: datasets, evaluations, training curves, rollouts, teleoperation, jobs",
        "vlaforge.ui.config:UIConfig",
        _run_ui,
    ),
    "demo": (
        "collect a small dataset, train the tiny preset, evaluate it",
        "vlaforge.demo:DemoConfig",
        _run_demo,
    ),
}
DATASET_HELP = "inspect a dataset, render an episode, or write a synthetic one"


def _add_config_command(
    sub: Any, name: str, help_text: str, config_path: str | None, func: Callable, defaults: dict | None = None
) -> None:
    p = sub.add_parser(
        name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if config_path is not None:
        cls = _load(config_path)
        if name == "train":
            from vlaforge.head_specs import describe_heads

            p.epilog = "action heads and their --head-options:\n" + describe_heads()
        add_config_args(p, cls)
        p.set_defaults(func=lambda a: func(_checked(config_from_args(cls, a))), **(defaults or {}))


def _checked(cfg: Any) -> Any:
    """`cfg` once its --device exists on this machine (before anything is loaded or written)."""
    device = getattr(cfg, "device", None)
    if isinstance(device, str) and device not in ("cpu", "auto"):
        from vlaforge.devices import resolve_device

        resolve_device(device)
    return cfg


def _add_dataset_command(sub: Any, build: bool) -> None:
    d = sub.add_parser("dataset", help=DATASET_HELP, description=DATASET_HELP)
    if not build:
        return
    dsub = d.add_subparsers(dest="dataset_cmd", required=True)
    di = dsub.add_parser("info", help="print a summary of a dataset")
    di.add_argument("dir")
    di.set_defaults(func=lambda a: print(_load("vlaforge.data.dataset:open_dataset")(a.dir).summary()))
    dv = dsub.add_parser("view", help="render one episode to an mp4 with its instruction and action plot")
    dv.add_argument("dir")
    dv.add_argument("--episode", type=int, default=0, help="episode index (default: 0)")
    dv.add_argument("--out", default="episode.mp4", help="the mp4 to write (default: episode.mp4)")
    dv.add_argument("--camera", default=None, help="camera key (default: the first)")

    def view(a: argparse.Namespace) -> None:
        path = _load("vlaforge.data.view:render_episode")(
            a.dir, episode=a.episode, out=a.out, camera=a.camera
        )
        print(f"wrote {path}")

    dv.set_defaults(func=view)
    dc = dsub.add_parser(
        "convert",
        help="convert a dataset between LeRobot v3.0 and RLDS / TFDS (streaming, in parallel)",
        description="Convert SRC (a LeRobot v3.0 or an RLDS / TFDS directory) to the other format.",
    )
    dc.add_argument("src", help="the dataset to convert")
    dc.add_argument("--to", required=True, choices=["rlds", "lerobot"], help="the target format")
    dc.add_argument("--out", required=True, help="the directory to write (RLDS: shards go in OUT/1.0.0/)")
    dc.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    dc.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    dc.add_argument(
        "--image-format",
        default="jpeg",
        choices=["jpeg", "png"],
        help="RLDS images (default: jpeg, quality 95)",
    )
    dc.add_argument("--episodes-per-shard", type=int, default=None, help="RLDS shard size (default: ~200 MB)")
    dc.add_argument(
        "--oxe",
        default=None,
        help="reading RLDS: the Open X-Embodiment standardisation to apply (default: by the dataset's name; "
        "'' for none)",
    )
    dc.add_argument(
        "--video-gop", type=int, default=None, help="writing LeRobot: keyframe interval in frames"
    )

    def convert(a: argparse.Namespace) -> None:
        report = _load("vlaforge.data.convert:convert")(
            a.src,
            a.to,
            a.out,
            workers=a.workers,
            overwrite=a.overwrite,
            image_format=a.image_format,
            episodes_per_shard=a.episodes_per_shard,
            oxe=a.oxe,
            video_gop=a.video_gop,
        )
        print(report)

    dc.set_defaults(func=convert)
    ds = dsub.add_parser("synth", help="write a small synthetic LeRobot v3.0 dataset (smoke tests, examples)")
    cls = _load("vlaforge.data.synth:SynthConfig")
    add_config_args(ds, cls)
    ds.set_defaults(func=lambda a: _run_synth(config_from_args(cls, a)))


EXPORT_HELP = "write a policy in another checkpoint format (OpenVLA's or LeRobot's layout, or vlaforge's)"


def _add_export_command(sub: Any, build: bool) -> None:
    e = sub.add_parser("export", help=EXPORT_HELP, description=EXPORT_HELP)
    if not build:
        return
    e.add_argument(
        "policy", help="a vlaforge policy directory (e.g. RUN/last), an OpenVLA directory or hub id"
    )
    e.add_argument("--out", required=True, help="the directory to write")
    formats = _load("vlaforge.format_specs:FORMAT_SPECS")  # the checkpoint formats' table, torch-free
    e.add_argument(
        "--format",
        default="openvla",
        choices=list(formats),
        help="; ".join(f"{f.name}: {f.doc}" for f in formats.values()) + " (default: openvla)",
    )
    e.add_argument(
        "--dtype", default=None, help="cast the weights (bfloat16, float32, float16; default: as stored)"
    )
    e.add_argument(
        "--unnorm-key",
        default=None,
        help="openvla: the statistics' name for a policy trained on one dataset (default: the dataset's directory name)",
    )
    e.add_argument("--max-shard-gb", type=float, default=5.0, help="openvla: the largest shard (default: 5)")

    def export(a: argparse.Namespace) -> None:
        policy = _load("vlaforge.models.policy:Policy").from_pretrained(a.policy, dtype=a.dtype)
        given = {"unnorm_key": a.unnorm_key, "max_shard_bytes": int(a.max_shard_gb * 1e9)}
        options = {k: v for k, v in given.items() if k in formats[a.format].write_options}
        path = policy.save_pretrained(a.out, format=a.format, **options)
        print(f"wrote {path}")

    e.set_defaults(func=export)


TOKENIZER_HELP = "train the FAST action tokenizer (DCT + byte-pair encoding) on a dataset's action chunks"


def _add_tokenizer_command(sub: Any, build: bool) -> None:
    t = sub.add_parser("tokenizer", help=TOKENIZER_HELP, description=TOKENIZER_HELP)
    if not build:
        return
    tsub = t.add_subparsers(dest="tokenizer_cmd", required=True)
    tt = tsub.add_parser("train", help=TOKENIZER_HELP)
    tt.add_argument("--dataset", required=True, help="a LeRobot v3.0 or RLDS dataset")
    tt.add_argument("--out", required=True, help="the directory to write (fast.json + tokenizer.json)")
    tt.add_argument("--chunk-size", type=int, default=10, help="actions per chunk H (default: 10)")
    tt.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary (default: 1024, FAST's)")
    tt.add_argument(
        "--scale", type=float, default=10.0, help="DCT coefficients x scale, rounded (default: 10)"
    )
    tt.add_argument("--max-chunks", type=int, default=None, help="train on at most this many chunks")

    def train_tok(a: argparse.Namespace) -> None:
        report = _load("vlaforge.actions.fast:train_tokenizer_command")(
            a.dataset,
            a.out,
            chunk_size=a.chunk_size,
            vocab_size=a.vocab_size,
            scale=a.scale,
            max_chunks=a.max_chunks,
        )
        print(json.dumps(report, indent=2))

    tt.set_defaults(func=train_tok)


def build_parser(command: str | None = None, defaults: dict | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s flags are built (all of them when None). `defaults` replace the
    defaults of `command`'s flags (a training recipe's values)."""
    p = Parser(prog="vlaforge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in (
        "collect",
        "dataset",
        "train",
        "eval",
        "rl",
        "dagger",
        "serve",
        "export",
        "tokenizer",
        "idm",
        "latent",
        "teleop",
        "ui",
        "worldmodel",
        "demo",
    ):
        build = command in (None, name)
        if name == "idm":
            _load("vlaforge.idm.cli:add_idm_command")(sub, build)
            continue
        if name == "latent":
            _load("vlaforge.latent.cli:add_latent_command")(sub, build)
            continue
        if name == "worldmodel":
            _load("vlaforge.worldmodel.cli:add_worldmodel_command")(sub, build)
            continue
        if name == "dataset":
            _add_dataset_command(sub, build)
            continue
        if name == "export":
            _add_export_command(sub, build)
            continue
        if name == "tokenizer":
            _add_tokenizer_command(sub, build)
            continue
        help_text, config_path, func = CONFIG_COMMANDS[name]
        _add_config_command(
            sub, name, help_text, config_path if build else None, func, defaults if name == command else None
        )
    return p


def _command_of(argv: list[str]) -> str | None:
    known = set(CONFIG_COMMANDS) | {"dataset", "export", "tokenizer", "idm", "latent", "worldmodel"}
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in known else None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv) or ""  # no command (`vlaforge --help`): no command's flags are built
    args = build_parser(command).parse_args(argv)
    values: dict[str, Any] = {}
    try:
        if args.cmd == "train" and args.recipe:  # the recipe's values become the defaults of the other flags
            values = _load("vlaforge.train.recipes:check_recipe")(args.recipe)
        if args.cmd == "train" and args.resume:  # and so do the run's own settings, when it resumes
            values.update(_load("vlaforge.train.config:resume_defaults")(args.out))
    except InputError as e:
        print(f"vlaforge train: error: {e}", file=sys.stderr)
        sys.exit(2)
    if values:
        args = build_parser(command, defaults=values).parse_args(argv)
    if args.cmd in ("collect", "eval", "rl", "dagger", "demo", "teleop", "ui"):
        from vlaforge.envs.rendering import configure_rendering

        configure_rendering()  # before anything imports mujoco
    try:
        with deferred_warnings():  # a library's warnings after the progress bars, once each
            args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except InputError as e:
        # Bad input is reported as one line naming the file/key/shape. Anything else (an internal bug, an
        # out-of-memory) is not the user's input and keeps its traceback.
        if os.environ.get("VLAFORGE_DEBUG"):
            raise
        print(f"vlaforge {args.cmd}: error: {e} {DEBUG_HINT}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
