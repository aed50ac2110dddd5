"""The `vlaforge` command. It parses arguments and calls the library; no logic lives here.

vlaforge collect   --tasks mt10 --episodes 50 --out data/mt10
vlaforge dataset   info DIR | view DIR --episode K --out ep.mp4
vlaforge train     --dataset DIR --preset tiny --head chunk --steps N --out RUN
vlaforge eval      --policy RUN/last --tasks mt10 --episodes 10 --out DIR
vlaforge demo      (collect + train + eval on a small default)
"""

from __future__ import annotations

import argparse
import os
import sys

from vlaforge.errors import InputError

# Headless MuJoCo: OSMesa on CPU unless the user chose a backend (EGL on a GPU machine).
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def _cmd_collect(a: argparse.Namespace) -> None:
    from vlaforge.envs.collect import collect

    collect(
        tasks=a.tasks,
        episodes=a.episodes,
        out=a.out,
        image_size=a.image_size,
        cameras=a.cameras,
        workers=a.workers,
        seed=a.seed,
        max_attempts=a.max_attempts,
        max_steps=a.max_steps,
        overwrite=a.overwrite,
    )


def _cmd_dataset(a: argparse.Namespace) -> None:
    if a.dataset_cmd == "info":
        from vlaforge.data.lerobot import LeRobotDataset

        print(LeRobotDataset(a.dir).summary())
    elif a.dataset_cmd == "view":
        from vlaforge.data.view import render_episode

        path = render_episode(a.dir, episode=a.episode, out=a.out, camera=a.camera)
        print(f"wrote {path}")


def _cmd_train(a: argparse.Namespace) -> None:
    from vlaforge.train.loop import TrainConfig, train

    cfg = TrainConfig(
        dataset=a.dataset,
        out=a.out,
        preset=a.preset,
        head=a.head,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        schedule=a.schedule,
        warmup_steps=a.warmup_steps,
        grad_accum=a.grad_accum,
        clip_grad=a.clip_grad,
        chunk_size=a.chunk_size,
        save_every=a.save_every,
        log_every=a.log_every,
        seed=a.seed,
        resume=a.resume,
        lora_rank=a.lora_rank,
        lora_alpha=a.lora_alpha,
        freeze=a.freeze,
        device=a.device,
        num_workers=a.num_workers,
    )
    train(cfg)


def _cmd_eval(a: argparse.Namespace) -> None:
    from vlaforge.eval.run import EvalConfig, evaluate

    cfg = EvalConfig(
        policy=a.policy,
        tasks=a.tasks,
        episodes=a.episodes,
        out=a.out,
        workers=a.workers,
        max_steps=a.max_steps,
        instructions=a.instructions,
        videos=a.videos,
        seed=a.seed,
        execute_steps=a.execute_steps,
        device=a.device,
    )
    result = evaluate(cfg)
    print(result.table())
    print(f"report: {result.report_path}")


def _cmd_demo(a: argparse.Namespace) -> None:
    from vlaforge.eval.demo import DemoConfig, run_demo

    kwargs = {k: v for k, v in vars(a).items() if k not in ("cmd", "func") and v is not None}
    run_demo(DemoConfig(**kwargs))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vlaforge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("collect", help="record scripted-expert demonstrations as a LeRobot v3.0 dataset")
    c.add_argument(
        "--tasks", default="mt10", help="mt10, mt50, easy, medium, hard, very_hard, or a comma list"
    )
    c.add_argument("--episodes", type=int, default=50, help="successful episodes per task")
    c.add_argument("--out", required=True, help="dataset directory to create")
    c.add_argument("--image-size", type=int, default=128)
    c.add_argument("--cameras", default="corner2", help="comma list of Meta-World camera names")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--max-attempts", type=int, default=None, help="seeds tried per task (default 4 x episodes)"
    )
    c.add_argument("--max-steps", type=int, default=500, help="episode truncation")
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    c.set_defaults(func=_cmd_collect)

    d = sub.add_parser("dataset", help="inspect a LeRobot v3.0 dataset")
    dsub = d.add_subparsers(dest="dataset_cmd", required=True)
    di = dsub.add_parser("info", help="print a summary")
    di.add_argument("dir")
    dv = dsub.add_parser("view", help="render one episode to an mp4 with its instruction and action plot")
    dv.add_argument("dir")
    dv.add_argument("--episode", type=int, default=0)
    dv.add_argument("--out", default="episode.mp4")
    dv.add_argument("--camera", default=None, help="camera key (default: the first)")
    d.set_defaults(func=_cmd_dataset)

    t = sub.add_parser("train", help="train or fine-tune a policy")
    t.add_argument("--dataset", required=True)
    t.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    t.add_argument("--preset", default="tiny")
    t.add_argument("--head", default="chunk", choices=["tokens", "chunk"])
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=None, help="default: the preset's")
    t.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--clip-grad", type=float, default=1.0)
    t.add_argument(
        "--chunk-size", type=int, default=None, help="action chunk H (chunk head; default: preset)"
    )
    t.add_argument(
        "--save-every", type=int, default=None, help="checkpoint every N steps (default: at the end)"
    )
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last exactly")
    t.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on all linear layers (0: off)")
    t.add_argument("--lora-alpha", type=int, default=16)
    t.add_argument("--freeze", default="full", help="full | frozen-vision | last-layer | sandwich")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda")
    t.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a policy in Meta-World")
    e.add_argument("--policy", required=True, help="checkpoint dir, or 'expert' / 'random' baselines")
    e.add_argument("--tasks", default="mt10")
    e.add_argument("--episodes", type=int, default=10, help="episodes per task")
    e.add_argument("--out", required=True)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--max-steps", type=int, default=500)
    e.add_argument("--instructions", default="train", choices=["train", "heldout"])
    e.add_argument("--videos", type=int, default=2, help="videos kept per task")
    e.add_argument("--seed", type=int, default=1000, help="episode seeds; keep apart from collect's --seed")
    e.add_argument(
        "--execute-steps", type=int, default=None, help="open-loop steps per chunk (default: head's)"
    )
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_cmd_eval)

    m = sub.add_parser("demo", help="collect a small dataset, train the tiny preset, evaluate it")
    m.add_argument("--tasks", default=None)
    m.add_argument("--episodes", type=int, default=None)
    m.add_argument("--steps", type=int, default=None)
    m.add_argument("--eval-episodes", type=int, default=None)
    m.add_argument("--out", default=None)
    m.add_argument("--device", default=None)
    m.add_argument("--workers", type=int, default=None)
    m.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except InputError as e:
        # Bad input is reported as one line naming the file/key/shape. Anything else (an internal bug, an
        # out-of-memory) is not the user's input and keeps its traceback.
        if os.environ.get("VLAFORGE_DEBUG"):
            raise
        print(f"vlaforge {args.cmd}: error: {e}", file=sys.stderr)
        print("(set VLAFORGE_DEBUG=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
