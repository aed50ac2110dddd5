"""`vlaforge demo`: the whole loop on a small default, end to end on a laptop CPU.

1. collect scripted-expert demonstrations for a few easy tasks of an environment (`--env`) as a LeRobot
   v3.0 dataset,
2. train the `tiny` preset with the parallel-decoding chunk head (OpenVLA-OFT style),
3. evaluate the uniform-random baseline in simulation,
4. evaluate the policy with the same protocol and episodes, its report (`OUT/eval/report.html`) showing
   the random baseline beside it per task (`vlaforge eval --compare`), and print both tables.

This module sits above the stages it drives (`vlaforge.envs.collect`, `vlaforge.train`, `vlaforge.eval`),
which know nothing of each other or of it; evaluation in particular never imports training. It does not
restate their options: `DemoConfig` holds the few settings a demo is about and builds the stages' own
configs from them (`collect_config`, `train_config`, `eval_config`), every other option keeping the
stage's default.

Every stage is skipped when its output is already there for the same settings (recorded in
`OUT/demo_state.json`), and an interrupted training run resumes from its last checkpoint, so running
`vlaforge demo` again is cheap. The defaults are chosen so the demo finishes in about half an hour on two
CPU cores and the policy clearly beats random.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlaforge.atomic import write_json
from vlaforge.envs.registry import DEFAULT_ENV, get_env
from vlaforge.errors import InputError
from vlaforge.types import as_list

if TYPE_CHECKING:
    from vlaforge.envs.collect import CollectConfig
    from vlaforge.eval.run import EvalConfig
    from vlaforge.train.loop import TrainConfig

# The default env's demo tasks: easy ones whose objects move little between seeds.
DEMO_TASKS = "drawer-close-v3,button-press-topdown-v3,window-close-v3,drawer-open-v3,faucet-open-v3"
LOG_EVERY = 50  # training metrics lines: often enough to watch the loss, rarely enough to stay quiet


@dataclass
class DemoConfig:
    """The demo's settings; the CLI overrides only the flags the user gave.

    Attributes:
        env: the environment (`vlaforge.envs.base.ENVS`).
        tasks: the env's tasks (comma list or a set name; None: the env's default set, or for the default
            env five easy tasks whose objects move little between seeds, so a few dozen demonstrations
            cover them).
        episodes: demonstrations collected per task.
        steps: training steps of the tiny preset.
        eval_episodes: evaluation episodes per task (the policy and the random baseline each).
        out: output root; gets `data/`, `run/`, `eval/`, `eval-random/`.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        workers: processes for collection and evaluation.
        image_size: camera image side in pixels (collection, training and evaluation).
        cameras: the env's cameras, a comma list (None: the env's default).
        preset: model preset.
        head: action head ("chunk": one forward pass per chunk of actions).
        batch_size: training batch size.
        chunk_size: action chunk length H (None: the preset's default).
        lr: learning rate (None: the preset's default).
        schedule: "cosine" (decays to 0 at the last step: a from-scratch run ends on a quieter policy than
            with a constant rate) or "constant".
        warmup_steps: linear warm-up steps (None: 5% of `steps`, at most 200).
        save_every: checkpoint interval, so an interrupted run resumes.
        max_steps: evaluation episode truncation; the experts finish these tasks in well under it.
        videos: videos per task in the reports.
        seed: seed for collection and training.
        eval_seed: seed of the evaluation episodes; differs from `seed` so that no evaluation episode
            starts from a scene the policy was trained on (evaluation refuses those anyway).
    """

    env: str = DEFAULT_ENV
    tasks: str | None = None
    episodes: int = 30
    steps: int = 5000
    eval_episodes: int = 20
    out: str = "demo"
    device: str = "auto"
    workers: int = 2
    image_size: int = 64
    cameras: str | None = None
    preset: str = "tiny"
    head: str = "chunk"
    batch_size: int = 32
    chunk_size: int | None = None
    lr: float | None = None
    schedule: str = "cosine"
    warmup_steps: int | None = None
    save_every: int = 500
    max_steps: int = 300
    videos: int = 2
    seed: int = 0
    eval_seed: int = 1000

    def __post_init__(self) -> None:
        spec = get_env(self.env)
        self.env = spec.name
        if self.tasks is None:
            self.tasks = DEMO_TASKS if spec.name == DEFAULT_ENV else spec.default_tasks
        if self.cameras is None:
            self.cameras = ",".join(spec.cameras)
        if self.warmup_steps is None:
            self.warmup_steps = min(200, self.steps // 20)
        for name in ("episodes", "steps", "eval_episodes", "image_size", "batch_size", "max_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"demo {name} must be >= 1; got {getattr(self, name)}")
        if self.workers < 0:
            raise InputError(f"demo workers must be >= 0; got {self.workers}")
        if self.eval_seed == self.seed:
            raise InputError(
                f"demo eval_seed must differ from seed ({self.seed}): evaluation would replay training scenes"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"demo device must be auto, cpu or cuda; got {self.device!r}")

    # -- where things go -------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(self.out)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def policy_dir(self) -> Path:
        """The trained policy evaluated: the run's `last` checkpoint."""
        return self.run_dir / "last"

    def torch_device(self) -> str:
        """`device` with "auto" resolved ("cuda" when torch sees a GPU, else "cpu")."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # -- the stages' own configs -------------------------------------------------------------------------

    def collect_config(self) -> CollectConfig:
        """Stage 1: the demonstrations (`vlaforge.envs.collect`), replacing an incomplete dataset."""
        from vlaforge.envs.collect import CollectConfig

        return CollectConfig(
            env=self.env,
            tasks=self.tasks,
            episodes=self.episodes,
            out=self.data_dir,
            image_size=self.image_size,
            cameras=self.cameras,
            workers=self.workers,
            seed=self.seed,
            overwrite=True,
        )

    def train_config(self, resume: bool = False) -> TrainConfig:
        """Stage 2: training on `data_dir` into `run_dir`; options the demo does not set keep
        `TrainConfig`'s defaults (no LoRA, full fine-tuning, clipping at 1.0, no accumulation)."""
        from vlaforge.train.loop import TrainConfig

        return TrainConfig(
            dataset=str(self.data_dir),
            out=str(self.run_dir),
            preset=self.preset,
            head=self.head,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            schedule=self.schedule,
            warmup_steps=int(self.warmup_steps or 0),
            chunk_size=self.chunk_size,
            save_every=self.save_every,
            log_every=LOG_EVERY,
            seed=self.seed,
            resume=resume,
            device=self.device,
        )

    def eval_config(
        self, policy: str | Path, out: str | Path, compare: str | Path | None = None
    ) -> EvalConfig:
        """Stages 3 and 4: the same tasks, episodes and seeds for the policy and for a baseline (which
        renders the demo's cameras and image size, as the policy does). Each run replaces the evaluation
        in `out`; `compare`: an evaluation to show beside this one."""
        from vlaforge.eval.run import EvalConfig

        return EvalConfig(
            policy=str(policy),
            env=self.env,
            out=out,
            tasks=self.tasks,
            episodes=self.eval_episodes,
            workers=self.workers,
            max_steps=self.max_steps,
            videos=self.videos,
            seed=self.eval_seed,
            device=self.torch_device(),
            baseline_cameras=as_list(self.cameras),
            baseline_image_size=self.image_size,
            compare=None if compare is None else str(compare),
            overwrite=True,
        )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _data_key(cfg: DemoConfig) -> dict[str, Any]:
    """What the dataset depends on: the collection settings but where to write and how many processes."""
    key = asdict(cfg.collect_config())
    key["tasks"] = get_env(cfg.env).resolve_tasks(key["tasks"])
    for k in ("out", "workers", "overwrite"):
        key.pop(k)
    return _jsonable(key)


def _train_key(cfg: DemoConfig) -> dict[str, Any]:
    """What the trained weights depend on: the data and every training setting a resume may not change."""
    from vlaforge.train.loop import RESUMABLE_CHANGES

    train = {k: v for k, v in cfg.train_config().to_dict().items() if k not in RESUMABLE_CHANGES}
    return _jsonable({"data": _data_key(cfg), "train": train})


def _dataset_complete(root: Path, n_episodes: int) -> bool:
    if not (root / "meta" / "info.json").is_file():
        return False
    try:
        from vlaforge.data.lerobot import LeRobotDataset

        return LeRobotDataset(root).num_episodes == n_episodes
    except Exception as e:  # an unreadable dataset is simply collected again
        print(f"demo: {root} is not a complete dataset ({e}); collecting it again")
        return False


class _State:
    """`OUT/demo_state.json`: which stage finished with which settings."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, stage: str) -> Any:
        return self.data.get(stage)

    def set(self, stage: str, value: Any) -> None:
        self.data[stage] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.data)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Collects, trains, evaluates (training and held-out instructions on the same episodes), compares with
    random; prints the tables and report paths.

    Args:
        cfg: the demo settings.

    Returns:
        {"policy": EvalResult, "random": EvalResult, "run": run dir, "data": dataset dir, "seconds": {...}}.
    """
    from vlaforge.envs.collect import collect
    from vlaforge.eval.run import evaluate
    from vlaforge.train.loop import train

    tasks = get_env(cfg.env).resolve_tasks(cfg.tasks)
    out, data, run, last = cfg.root, cfg.data_dir, cfg.run_dir, cfg.policy_dir
    state = _State(out / "demo_state.json")
    device = cfg.torch_device()
    seconds: dict[str, float] = {}
    print(
        f"vlaforge demo: {len(tasks)} tasks ({', '.join(tasks)}), {cfg.episodes} demos each, "
        f"{cfg.steps} training steps on {device}; output in {out}/"
    )

    # 1. Demonstrations.
    t0 = time.time()
    data_key = _data_key(cfg)
    if state.get("data") == data_key and _dataset_complete(data, len(tasks) * cfg.episodes):
        print(f"[1/4] dataset {data} already collected; skipping")
    else:
        print(f"[1/4] collecting {cfg.episodes} expert demonstrations per task -> {data}")
        collect(cfg.collect_config())
        state.set("data", data_key)
        state.set("train", None)
    seconds["collect"] = time.time() - t0

    # 2. Training (resumes an interrupted run with the same settings).
    t0 = time.time()
    train_key = _train_key(cfg)
    if state.get("train") == train_key and last.exists():
        print(f"[2/4] {last} already trained; skipping")
    else:
        resume = state.get("train_started") == train_key and last.exists()
        if not resume and run.exists():
            shutil.rmtree(run)
        print(
            f"[2/4] {'resuming' if resume else 'training'} the {cfg.preset} preset ({cfg.head} head) -> {run}"
        )
        state.set("train_started", train_key)
        train(cfg.train_config(resume=resume))
        state.set("train", train_key)
    seconds["train"] = time.time() - t0

    # 3-4. The random baseline, then the policy beside it: same tasks, seeds and episodes.
    t0 = time.time()
    ev, ev_random = out / "eval", out / "eval-random"
    print(f"[3/4] evaluating the random baseline -> {ev_random}")
    baseline = evaluate(cfg.eval_config("random", ev_random))
    seconds["eval_random"] = time.time() - t0
    t0 = time.time()
    print(f"[4/4] evaluating {last} on {cfg.eval_episodes} episodes per task -> {ev} (random beside it)")
    result = evaluate(cfg.eval_config(last, ev, compare=ev_random))
    seconds["eval"] = time.time() - t0

    print()
    print(result.table())
    print()
    print(baseline.table())
    p, r = result.overall, baseline.overall
    heldout = (result.info.get("instruction_suites") or {}).get("heldout", {}).get("overall")

    def pct(x: dict) -> str:
        return f"{100 * x['rate']:.0f}% [{100 * x['ci_low']:.0f}, {100 * x['ci_high']:.0f}]"

    print()
    print(
        f"tiny policy: {pct(p)}{f' (held-out instructions: {pct(heldout)})' if heldout else ''}  vs  "
        f"random: {pct(r)}  (success over {p['n']} episodes, Wilson 95% intervals)"
    )
    print("time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))
    print(f"report: {result.report_path} (the policy and random side by side)")
    print(f"random baseline report: {baseline.report_path}")
    summary = {
        "config": asdict(cfg),
        "policy": p,
        "policy_heldout": heldout,
        "random": r,
        "seconds": seconds,
        "reports": [str(result.report_path), str(baseline.report_path)],
    }
    write_json(out / "demo_summary.json", _jsonable(summary))
    return {"policy": result, "random": baseline, "run": run, "data": data, "seconds": seconds}


__all__ = ["DemoConfig", "run_demo"]
