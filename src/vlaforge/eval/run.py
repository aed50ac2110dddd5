"""`vlaforge eval`: evaluate a checkpoint (or the expert / random baseline) in a registered environment
(`--env`; by default the one the checkpoint was trained in).

Outputs, under `--out`:
- `eval_info.json`: every episode (task, instruction, seed, success, steps, video), the aggregates per
  task, per difficulty group and overall (n, successes, rate, Wilson 95% interval), and the protocol
  (software versions, checkpoint path and sha256, cameras, image size, max_steps, the execution strategy
  with its execute_steps / replan_every / ensemble_decay, seed, instruction split, wall time) so that a
  number can be traced back to exactly how it was measured.
- `report.html`: one self-contained page (videos and chart embedded) that opens offline.
- `videos/`: up to `--videos` mp4 per task, among them a success and a failure wherever both happened
  (every episode is recorded to disk while it runs; the others are deleted).

The directory is built beside `--out` and swapped in whole at the end (`vlaforge.atomic.StagedDir`);
an evaluation already there is refused unless `--overwrite`. What the numbers mean is recorded with
them (`vlaforge.eval.summary`): which rule chose the tasks (`tasks_rule`: the checkpoint's training tasks
by default), per task whether the policy was trained on it (`trained_on`; "overall" pools trained tasks
only), held-out instructions (`protocol.instructions_note`), and `--compare DIR`, another evaluation of
the same episodes shown beside this one.

Instruction suites (`vlaforge.eval.suites`): by default every episode runs twice, with the training
instruction and with a held-out paraphrase, on the same seeds; `instruction_suites` in eval_info.json has
each suite's instructions, rate and Wilson interval per task and overall. The first suite ("train" unless
only "heldout" is asked for) is the evaluation's own column: `episodes`, `aggregates`, the videos and
`--compare` are its. Baselines ignore instructions and run the first suite only.

Design choices: a checkpoint is checked against the environment *before* any rollout (a policy trained
on other cameras, image size, state or action space is refused with the mismatch named), and the env is
always built with the checkpoint's own cameras and image size; only episodes that may end up in the
report are recorded, so memory stays flat however many episodes run.

A served policy is evaluated the same way: `--policy ws://HOST:PORT` drives it through `vlaforge.client`
(the openpi websocket protocol, token from the VLAFORGE_TOKEN environment variable), so the act-observe
loop over the wire gets the same episodes and statistics as in-process evaluation. The embodiment comes
from the server's metadata; a server that does not send one (another framework's) is taken to drive
the env's robot with the baseline cameras and image size. Training seeds cannot be checked remotely.

How a chunk is executed is a choice of the run (`execution`, see `vlaforge.eval.rollout`): `open-loop`
runs `execute_steps` actions of each chunk, then re-plans; `receding` re-plans every `replan_every` steps
(the same rollout as `open-loop` with that many `execute_steps`, but refused when K exceeds the chunk);
`ensemble` re-plans every step and executes ACT's temporally ensembled action. The steps run per plan are
always recorded as `execute_steps` (1 for `ensemble`), whichever way they were chosen.

Evaluation never silently replays training scenes: a checkpoint records the (task, seed) of every episode
it was trained on (`training_data` in config.json, read through `PolicyFiles.training_seeds()`), and an
evaluation whose episodes start from any of those seeds is refused before any rollout, unless
`allow_training_seeds` is set; the number of such episodes and the flag are recorded in the protocol.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlaforge.atomic import StagedDir, write_json
from vlaforge.devices import resolve_device
from vlaforge.envs.base import EnvSpec, episode_seed
from vlaforge.envs.registry import DEFAULT_ENV, get_env
from vlaforge.errors import InputError
from vlaforge.eval.baselines import BASELINES
from vlaforge.eval.checks import (
    PolicySide,
    check_output,
    check_training_seeds,
    is_remote,
    policy_side,
    stride_mismatch,
    trained_env,
    training_seeds,
)
from vlaforge.eval.rollout import (
    ENSEMBLE_DECAY,
    EXECUTIONS,
    VIDEO_CRF,
    Job,
    JobPool,
    VideoGate,
    WorkerSpec,
    run_jobs,
)
from vlaforge.eval.suites import ABOUT, MODES, instruction_for, load_phrasings, parse_mode
from vlaforge.eval.summary import (
    HELDOUT_NOTE,
    format_table,
    load_compare,
    pooled_aggregates,
    trained_on,
    trained_tasks,
    untrained_warning,
)

INSTRUCTION_SPLITS = tuple(MODES)  # or a JSON file of phrasings
# Named evaluation protocols: the settings a published number was measured with. `vlaforge` is ours; a
# protocol fixes max_steps, and a run that sets another max_steps is refused (name none to choose freely).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "vlaforge": {
        "max_steps": 500,
        "about": "Meta-World's own episode length (max_path_length 500), success at any step, episode seeds "
        "from episode_seed(seed, task, i), recorded",
    },
    "rlinf-100": {
        "max_steps": 100,
        "about": "100-step episodes, as RLinf reports pi0 / pi0.5 on Meta-World MT50 (a success must come "
        "within 100 steps, so rates are lower than under the 500-step protocol for slow policies)",
    },
}


@dataclass
class EvalConfig:
    """How to evaluate (the `vlaforge eval` flags).

    Attributes:
        policy: a checkpoint directory (e.g. `RUN/last`), "expert" / "random" for the baselines, or a
            served policy `ws://HOST:PORT` (`vlaforge serve`, or any openpi-protocol server).
        env: the environment, a name in `vlaforge.envs.registry.ENVS`. None: the one the checkpoint was
            trained in (its config.json `training_data`), else the default env. A checkpoint trained in
            another registered env is refused.
        tasks: a task set of the env (e.g. mt10, a difficulty group), or a comma list of task names
            (None: the tasks the checkpoint was trained on when its config.json records them, in the env's
            order, else the env's default set; the rule that chose them is recorded as `tasks_rule`).
        episodes: episodes per task.
        out: output directory (eval_info.json, report.html, videos/), built beside it and swapped in
            whole at the end.
        workers: rollout worker processes (0: run in this process).
        max_steps: episode truncation (None: the env's episode length).
        instructions: which instruction suites run on the same episodes (`vlaforge.eval.suites`):
            "both" (the training instruction and the held-out paraphrases, cycled by episode index),
            "perturb" (both, plus distractor words, word order and typos), "train" or "heldout" alone,
            or the path of a JSON file {task: [phrasing, ...]} (train plus those phrasings, cycled).
        videos: videos kept per task (0: none).
        video_crf: the videos' H.264 quality, 0 (lossless: every frame exact, for looking at one-pixel
            details or comparing two runs frame by frame) to 51; the default keeps files small.
        seed: base seed; episode i of task t starts from `episode_seed(seed, t, i)`. `vlaforge collect`
            draws its demonstrations from `episode_seed(collect_seed, t, k)`, so keep the two seeds apart
            (collect defaults to 0, eval to 1000) or the evaluation replays training scenes.
        execute_steps: `open-loop` only: actions executed from each predicted chunk before re-planning
            (None: the policy's `execute_steps`; at most the chunk).
        device: torch device for the policy ("auto": CUDA when present, "cpu", "cuda").
        baseline_cameras: cameras the baselines render (checkpoints use their own; None: the env's).
        baseline_image_size: image side the baselines render (checkpoints use their own; None: the
            env's).
        allow_training_seeds: evaluate even episodes that start from a scene the checkpoint was trained
            on (a (task, seed) in its config.json `training_data`). Off by default: such episodes measure
            memorisation, not generalisation, so evaluation refuses them before any rollout; when set,
            their number is recorded in eval_info.json's protocol (`training_seed_overlap`).
        execution: how a predicted chunk becomes actions: "open-loop" (run `execute_steps` of it, then
            re-plan), "receding" (re-plan every `replan_every` steps, running the first `replan_every`
            actions of each chunk: the same rollout as open-loop with `execute_steps` = `replan_every`)
            or "ensemble" (ACT's temporal ensembling: a chunk every step, each step's action the weighted
            mean of every prediction made for it, weights exp(-m i), i = 0 for the oldest).
        replan_every: `receding` only: the steps between re-plans, K (None: 1, re-plan every step); at
            most the policy's chunk.
        ensemble_decay: `ensemble` only: the weight m (ACT's 0.01; 0 is a plain mean; larger values
            weight the older predictions more, so the action changes more smoothly).
        protocol: a named protocol (`PROTOCOLS`: "vlaforge", 500 steps, or "rlinf-100", 100 steps) that
            fixes max_steps and is recorded in eval_info.json; None: max_steps as given.
        envs_per_worker: batched evaluation (`vlaforge.eval.vector`): each worker simulates this many
            episodes at once and the policy, loaded once in this process, sees them in one forward pass
            per re-plan. 0 runs the per-process path (a policy copy per worker, batch 1). Baselines, served
            policies and history policies always run per process.
        threads: torch threads of the batched forward pass in this process (None: 1 on a CPU, where the
            workers take the other cores; torch's default with a GPU).
        compare: another evaluation's directory (with eval_info.json) to show beside this one in the
            report, per task with intervals; refused unless its env, tasks, protocol and episode seeds are
            this evaluation's.
        overwrite: replace an evaluation already in `out` (refused otherwise).
        record: also save the first suite's rollouts, every frame, as a LeRobot v3.0 dataset there
            (`vlaforge.eval.record`; rollouts then run per process; --overwrite replaces it too).
        record_tail: with `record`, steps the policy keeps acting after an episode's first success, as
            `vlaforge collect` keeps after the expert's (a success judge needs successful scenes to learn
            from); the success rate, `steps` and videos are those of the episode ending at its success.
        unnorm_key: a checkpoint trained on a mixture of several datasets (each with its own statistics):
            whose statistics un-normalise its actions, one of its `unnorm_keys` (the training dataset this
            env's robot matches). Required for such a checkpoint; refused for any other policy.
    """

    policy: str
    env: str | None = None
    tasks: str | list[str] | None = None
    episodes: int = 10
    out: str | Path = "evals/out"
    workers: int = 2
    max_steps: int | None = None
    instructions: str = "both"
    videos: int = 2
    video_crf: int = VIDEO_CRF
    seed: int = 1000
    execute_steps: int | None = None
    device: str = "auto"
    baseline_cameras: list[str] | None = None
    baseline_image_size: int | None = None
    allow_training_seeds: bool = False
    execution: str = field(default="open-loop", metadata={"choices": list(EXECUTIONS)})
    replan_every: int | None = None
    ensemble_decay: float = ENSEMBLE_DECAY
    protocol: str | None = field(default=None, metadata={"choices": list(PROTOCOLS)})
    envs_per_worker: int = 8
    threads: int | None = None
    compare: str | None = None
    overwrite: bool = False
    record: str | None = None
    record_tail: int = 10
    unnorm_key: str | None = None

    def __post_init__(self) -> None:
        self.policy = str(self.policy)
        if self.protocol is not None:
            if self.protocol not in PROTOCOLS:
                raise InputError(f"protocol must be one of {list(PROTOCOLS)}; got {self.protocol!r}")
            fixed = PROTOCOLS[self.protocol]["max_steps"]
            if self.max_steps not in (fixed, None):
                raise InputError(
                    f"protocol {self.protocol!r} runs {fixed}-step episodes; got max_steps {self.max_steps}. "
                    "Leave max_steps out, or name no protocol to choose it freely."
                )
            self.max_steps = fixed
        if self.envs_per_worker < 0:
            raise InputError(
                f"envs_per_worker must be >= 0 (0: per-process evaluation); got {self.envs_per_worker}"
            )
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1; got {self.threads}")
        self.out = Path(self.out)
        if self.episodes < 1:
            raise InputError(f"episodes must be >= 1; got {self.episodes}")
        if self.workers < 0:
            raise InputError(f"workers must be >= 0; got {self.workers}")
        if self.videos < 0:
            raise InputError(f"videos must be >= 0; got {self.videos}")
        if not 0 <= self.video_crf <= 51:
            raise InputError(f"video_crf must be in 0..51 (H.264's scale, 0 lossless); got {self.video_crf}")
        if self.record_tail < 0:
            raise InputError(f"record_tail must be >= 0; got {self.record_tail}")
        self.instructions = str(self.instructions)
        self.suites, self.phrasings_file = parse_mode(self.instructions)
        if self.policy in BASELINES:  # a baseline ignores the words: one suite measures it
            self.suites = self.suites[:1]
        if self.execute_steps is not None and self.execute_steps < 1:
            raise InputError(
                f"execute_steps must be >= 1 (or None for the policy's); got {self.execute_steps}"
            )
        if self.policy not in BASELINES and not is_remote(self.policy) and not Path(self.policy).is_dir():
            raise InputError(
                f"--policy {self.policy!r} is neither a checkpoint directory, a baseline {list(BASELINES)}, "
                f"nor a served policy ws://HOST:PORT"
            )
        if self.record and Path(self.record).exists() and not self.overwrite:
            raise InputError(f"--record {self.record} already exists; use --overwrite to replace it")
        self._check_execution()
        self._choose_env()

    def _choose_env(self) -> None:
        """Fills `env` (from the checkpoint when not given) and the env's defaults; refuses a checkpoint
        trained in another registered env."""
        trained = trained_env(self.policy)
        if self.env is None:
            self.env = trained or DEFAULT_ENV
        spec = get_env(self.env)
        self.env = spec.name
        if trained and trained not in (spec.name, spec.extra.get("imitates")):
            raise InputError(
                f"--policy {self.policy} was trained in {trained!r} (its config.json training_data), not in "
                f"{spec.name!r}: evaluate it with --env {trained}, or leave --env out"
            )
        if self.max_steps is None:
            self.max_steps = spec.max_steps
        if self.max_steps < 1:
            raise InputError(f"max_steps must be >= 1; got {self.max_steps}")
        self.tasks_rule = "given"  # which rule chose the tasks, recorded in eval_info.json
        if self.tasks is None:
            trained = trained_tasks(training_seeds(self.policy), spec.tasks)
            self.tasks_rule = "trained" if trained else "env-default"
            self.tasks = trained or spec.default_tasks
        if self.baseline_cameras is None:
            self.baseline_cameras = list(spec.cameras)
        if self.baseline_image_size is None:
            self.baseline_image_size = spec.image_size

    def _check_execution(self) -> None:
        """Each strategy takes its own knob; a knob given to another strategy is a mistake, not a no-op."""
        if self.execution not in EXECUTIONS:
            close = difflib.get_close_matches(str(self.execution).replace("_", "-"), list(EXECUTIONS), 1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"execution must be one of {list(EXECUTIONS)}; got {self.execution!r}{hint}")
        if self.execute_steps is not None and self.execution != "open-loop":
            instead = (
                f"use replan_every {self.execute_steps} (receding with replan_every K is open-loop with "
                f"execute_steps K)"
                if self.execution == "receding"
                else "ensemble re-plans every step and executes the ensembled action; leave execute_steps out"
            )
            raise InputError(
                f"execute_steps is the open-loop setting; got execute_steps {self.execute_steps} with "
                f"execution {self.execution!r}: {instead}"
            )
        if self.replan_every is not None:
            if self.execution != "receding":
                raise InputError(
                    f"replan_every applies to execution 'receding'; got replan_every {self.replan_every} with "
                    f"execution {self.execution!r} (open-loop re-plans every execute_steps, ensemble every "
                    f"step): pass execution='receding' (--execution receding) or leave replan_every out"
                )
            if self.replan_every < 1:
                raise InputError(
                    f"replan_every must be >= 1 (1: re-plan every step); got {self.replan_every}"
                )
        elif self.execution == "receding":
            self.replan_every = 1
        decay = float(self.ensemble_decay)
        if not math.isfinite(decay) or decay < 0:
            raise InputError(
                f"ensemble_decay must be a finite number >= 0 (ACT's is {ENSEMBLE_DECAY}; 0 is a plain mean); "
                f"got {self.ensemble_decay}"
            )
        if decay != ENSEMBLE_DECAY and self.execution != "ensemble":
            raise InputError(
                f"ensemble_decay applies to execution 'ensemble'; got ensemble_decay {decay} with execution "
                f"{self.execution!r}: pass execution='ensemble' (--execution ensemble) or leave it out"
            )
        self.ensemble_decay = decay


@dataclass
class EvalResult:
    """What `evaluate` returns.

    Attributes:
        info: the content of eval_info.json.
        out: the output directory.
        report_path: the HTML report.
    """

    info: dict[str, Any]
    out: Path
    report_path: Path

    @property
    def overall(self) -> dict[str, Any]:
        return self.info["aggregates"]["overall"]

    def table(self) -> str:
        """A plain-text table: one row per task, then one per difficulty group, then overall."""
        return format_table(self.info)


def _versions(packages: tuple[str, ...]) -> dict[str, str]:
    import vlaforge

    out = {"vlaforge": vlaforge.__version__, "python": platform.python_version()}
    for pkg in (*packages, "torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _choose_videos(records: list[dict], keep: int) -> set[int]:
    """Episode indices whose videos to keep: the first success and the first failure (those that exist,
    within `keep`), then by episode order."""
    recorded = sorted((r for r in records if r["video"]), key=lambda r: r["episode"])
    chosen: list[int] = []
    for want in (True, False):
        first = next((r for r in recorded if r["success"] is want), None)
        if first is not None and len(chosen) < keep:
            chosen.append(first["episode"])
    for r in recorded:
        if len(chosen) >= keep:
            break
        if r["episode"] not in chosen:
            chosen.append(r["episode"])
    return set(chosen)


def _make_jobs(
    cfg: EvalConfig,
    spec: EnvSpec,
    tasks: list[str],
    out: Path,
    suite: str | None = None,
    custom: dict[str, list[str]] | None = None,
) -> tuple[list[Job], dict[str, list[str]]]:
    """Every (task, episode) with its seed, instruction (`suite`'s; None: the first suite) and video path
    under `out`; and the instructions used per task. With videos on, every episode of the first suite may
    be recorded (to disk, one at a time) so that the kept ones can show a failure and a success wherever
    both happened, however late in the task; `rollout.VideoGate` drops, as each episode starts, the
    recordings that can no longer be kept. The other suites record none."""
    suite = suite or cfg.suites[0]
    video_dir = out / "videos"
    record_first = cfg.episodes if cfg.videos and suite == cfg.suites[0] else 0
    jobs, used = [], {}
    for task in tasks:
        used[task] = []
        for i in range(cfg.episodes):
            seed = episode_seed(cfg.seed, task, i)
            words = instruction_for(suite, spec, task, i, seed, custom)
            if words not in used[task]:
                used[task].append(words)
            video = str(video_dir / f"{task}_ep{i:03d}.mp4") if i < record_first else None
            jobs.append(Job(task, i, seed, words, video))
    return jobs, used


def _batched(cfg: EvalConfig, spec: WorkerSpec, side: PolicySide) -> bool:
    """Whether the batched runner runs the jobs: a local one-frame checkpoint, not recording."""
    files = side.files
    return (
        files is not None
        and cfg.envs_per_worker > 0
        and cfg.workers > 0
        and int(files.preset.get("history", 1)) == 1
        and not spec.record_dir
    )


def _roll_out(
    cfg: EvalConfig, spec: WorkerSpec, side: PolicySide, jobs: list[Job], desc: str = "",
    pool: JobPool | None = None,
) -> tuple[list[dict], bool, list[int]]:  # fmt: skip
    """Runs the jobs (batched for a local one-frame checkpoint, else per process, on `pool` if given: it
    must have been built from `spec`); the records in job order, whether the batched runner ran, and its
    batch sizes."""
    batched = _batched(cfg, spec, side)
    gate = VideoGate(cfg.videos)  # records only the videos that can still be kept
    records: list[dict] = []
    batch_sizes: list[int] = []
    label = f"eval {Path(cfg.policy).name}" + (f" ({desc})" if desc else "")
    with tqdm(total=len(jobs), desc=label, unit="ep") as bar:
        if batched:
            from vlaforge.eval.vector import BatchedRunner

            runner = BatchedRunner(spec, cfg.workers, cfg.envs_per_worker, cfg.threads)
            stream = runner.run(jobs, progress=bar, gate=gate)
            batch_sizes = runner.batch_sizes
        else:
            stream = (
                pool.run(jobs, bar, gate)
                if pool is not None
                else run_jobs(spec, jobs, cfg.workers, bar, gate)
            )
        for rec in stream:
            records.append(rec)
            bar.set_postfix(success=f"{sum(r['success'] for r in records) / len(records):.2f}")
    order = {(j.task, j.episode): k for k, j in enumerate(jobs)}
    records.sort(key=lambda r: order[(r["task"], r["episode"])])
    return records, batched, batch_sizes


def _keep_videos(records: list[dict], tasks: list[str], keep: int, out: Path) -> None:
    """Deletes the recorded videos not chosen for the report; the others' paths become relative to `out`."""
    for task in tasks:
        per_task = [r for r in records if r["task"] == task]
        chosen = _choose_videos(per_task, keep)
        for r in per_task:
            if r["video"] and r["episode"] not in chosen:
                Path(r["video"]).unlink(missing_ok=True)
                r["video"] = None
            elif r["video"]:
                r["video"] = str(Path(r["video"]).relative_to(out))


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Rolls out the policy on every (task, episode), writes eval_info.json and report.html.

    Args:
        cfg: the evaluation settings.

    Returns:
        An `EvalResult` with the info dict, the output dir and the report path.
    """
    start = time.time()
    check_output(cfg.out, cfg.overwrite, cfg.policy)
    env = get_env(cfg.env)
    tasks = env.resolve_tasks(cfg.tasks)
    side = policy_side(cfg, env, tasks[0])
    if cfg.execution == "receding" and side.chunk and cfg.replan_every > side.chunk:
        raise InputError(
            f"--replan-every {cfg.replan_every} exceeds the chunk of {side.chunk} action(s) that {cfg.policy} "
            f"predicts: receding executes the first replan_every actions of each chunk, so use at most "
            f"{side.chunk}"
        )
    note = stride_mismatch(cfg, env, side)
    if note:
        warnings.warn(note, stacklevel=1)
    custom = load_phrasings(cfg.phrasings_file, env, tasks) if cfg.phrasings_file else None
    jobs, used_instructions = _make_jobs(cfg, env, tasks, cfg.out, custom=custom)
    overlap = check_training_seeds(jobs, side.files, cfg) if side.files is not None else 0
    trained = trained_tasks(side.files.training_seeds(), env.tasks) if side.files is not None else None
    marks = trained_on(tasks, trained)
    compare = None
    if cfg.compare:
        ours = {"env": env.name, "max_steps": cfg.max_steps, "protocol": cfg.protocol,
                "episodes_per_task": cfg.episodes, "seed": cfg.seed, "instructions": cfg.suites[0]}  # fmt: skip
        compare = load_compare(
            cfg.compare, env.name, tasks, ours, [(j.task, j.episode, j.seed) for j in jobs]
        )
    device = resolve_device(cfg.device)
    warning = untrained_warning(marks, cfg.policy)
    if warning:
        print(warning)

    # The whole directory is built beside --out and swapped in at the end: an interrupted evaluation
    # leaves the earlier one (or nothing) in place, never a mix.
    staged = StagedDir(cfg.out, overwrite=True)
    # Per-process rollouts load the policy in every worker: the instruction suites share the workers (a
    # recording first suite has workers of its own).
    spec = _worker_spec(cfg, env, side, device)
    share = not cfg.record and len(cfg.suites) > 1 and not _batched(cfg, spec, side)
    try:
        jobs, _ = _make_jobs(cfg, env, tasks, staged.path, custom=custom)
        with JobPool(spec, cfg.workers) if share else contextlib.nullcontext() as pool:
            t_first = time.time()
            result = _run(
                cfg, env, tasks, side, jobs, used_instructions, staged.path, device, start, overlap, pool
            )
            result.info.update(
                tasks_rule=getattr(cfg, "tasks_rule", "given"), training_tasks=trained, trained_on=marks,
                compare=compare,
            )  # fmt: skip
            result.info["aggregates"] = pooled_aggregates(
                result.info["episodes"], env.difficulty, env.groups, marks
            )
            result.info["instruction_suites"] = _suites(
                cfg, env, tasks, side, device, marks, custom, result.info, staged.path, time.time() - t_first,
                pool,
            )  # fmt: skip
        result.info["protocol"]["wall_time_s"] = round(time.time() - start, 2)
        write_json(staged.path / "eval_info.json", result.info)
        from vlaforge.eval.report import write_report

        write_report(result.info, staged.path)
    except BaseException:
        staged.abort()
        raise
    staged.commit()
    return EvalResult(info=result.info, out=cfg.out, report_path=cfg.out / "report.html")


def _worker_spec(
    cfg: EvalConfig, env: EnvSpec, side: PolicySide, device: str, record_dir: str | None = None
) -> WorkerSpec:
    """What every rollout worker of an instruction suite is given (only the first suite records)."""
    return WorkerSpec(
        policy=str(cfg.policy), cameras=list(side.embodiment.camera_names), image_size=side.embodiment.image_size,
        max_steps=cfg.max_steps, execute_steps=side.execute_steps, device=device, fps=float(env.control_hz),
        execution=cfg.execution, ensemble_decay=cfg.ensemble_decay, env=env.name, record_dir=record_dir,
        record_tail=cfg.record_tail, unnorm_key=cfg.unnorm_key, video_crf=cfg.video_crf,
    )  # fmt: skip


def _run(
    cfg: EvalConfig,
    env: EnvSpec,
    tasks: list[str],
    side: PolicySide,
    jobs: list[Job],
    used_instructions: dict[str, list[str]],
    out: Path,
    device: str,
    start: float,
    overlap: int,
    pool: JobPool | None = None,
) -> EvalResult:
    """Rolls the jobs out into `out` (the staging directory; on `pool` if given) and builds the info dict."""
    spec = _worker_spec(cfg, env, side, device, record_dir=str(out / ".record") if cfg.record else None)
    records, batched, batch_sizes = _roll_out(cfg, spec, side, jobs, pool=pool)
    if cfg.record:
        from vlaforge.eval.record import write_recording

        write_recording(cfg.record, spec.record_dir, records, env, side.embodiment, cfg.policy,
                        side.checkpoint, cfg.overwrite)  # fmt: skip
        shutil.rmtree(spec.record_dir)
    _keep_videos(records, tasks, cfg.videos, out)

    used = {r.pop("execute_steps") for r in records}
    execute_steps = used.pop() if len(used) == 1 else side.execute_steps
    info = {
        "format": "vlaforge-eval/1",
        "policy": cfg.policy,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": {
            "benchmark": env.name,
            "env": env.name,
            "env_title": env.title,
            "versions": _versions(env.packages),
            "checkpoint": side.checkpoint,
            "baseline": cfg.policy if cfg.policy in BASELINES else None,
            "embodiment": side.embodiment.to_dict(),
            "cameras": list(side.embodiment.camera_names),
            "image_size": side.embodiment.image_size,
            "max_steps": cfg.max_steps,
            "protocol": cfg.protocol,  # a named protocol (PROTOCOLS), or None
            "protocol_about": PROTOCOLS[cfg.protocol]["about"] if cfg.protocol else None,
            "execution": cfg.execution,
            "execute_steps": execute_steps,  # actions run per plan, however chosen (ensemble: 1)
            "replan_every": cfg.replan_every,  # receding only
            "ensemble_decay": cfg.ensemble_decay if cfg.execution == "ensemble" else None,
            "unnorm_key": cfg.unnorm_key,  # whose statistics un-normalised (a mixture's checkpoint)
            "episodes_per_task": cfg.episodes,
            "seed": cfg.seed,
            "seed_rule": "episode i of task t starts from vlaforge.envs.base.episode_seed(seed, t, i)",
            "training_seed_overlap": overlap,  # episodes starting from a scene the policy was trained on
            "allow_training_seeds": cfg.allow_training_seeds,
            "success": env.success,
            "instructions": cfg.suites[0],  # the first suite: this evaluation's own column
            "instructions_note": HELDOUT_NOTE if cfg.suites[0] == "heldout" else None,
            "instruction_suites": list(cfg.suites),
            "instructions_file": cfg.phrasings_file,
            "device": device,
            "workers": cfg.workers,
            "runner": "batched" if batched else "per-process",
            "envs_per_worker": cfg.envs_per_worker if batched else None,
            "mean_batch": round(sum(batch_sizes) / len(batch_sizes), 2) if batch_sizes else None,
            "videos_per_task": cfg.videos,
            "video_crf": cfg.video_crf if cfg.videos else None,  # the videos' H.264 quality (0: lossless)
            "wall_time_s": None,  # filled below
        },
        "tasks": tasks,
        "groups": {t: env.difficulty[t] for t in tasks},
        "instructions": used_instructions,
        "aggregates": {},  # filled by evaluate (trained tasks pooled apart)
        "episodes": records,
    }
    info["protocol"]["wall_time_s"] = round(time.time() - start, 2)
    return EvalResult(info=info, out=out, report_path=out / "report.html")


def _suites(
    cfg: EvalConfig,
    env: EnvSpec,
    tasks: list[str],
    side: PolicySide,
    device: str,
    marks: dict[str, bool | None],
    custom: dict[str, list[str]] | None,
    info: dict[str, Any],
    out: Path,
    first_s: float,
    pool: JobPool | None = None,
) -> dict[str, Any]:
    """Every instruction suite on the first suite's episodes: {suite: {about, instructions, overall,
    per_task, episodes, wall_time_s}}; the first suite's episodes are `info["episodes"]` (not repeated
    here); `first_s`: the first suite's rollout time; `pool`: the workers the first suite ran on, if shared."""
    suites: dict[str, Any] = {}
    for k, suite in enumerate(cfg.suites):
        t0 = time.time()
        if k == 0:
            records, used = info["episodes"], info["instructions"]
        else:
            jobs, used = _make_jobs(cfg, env, tasks, out, suite=suite, custom=custom)
            spec = _worker_spec(cfg, env, side, device)
            records, _, _ = _roll_out(cfg, spec, side, jobs, desc=suite, pool=pool)
            for r in records:
                r.pop("execute_steps", None)
                r.pop("video", None)
        agg = pooled_aggregates(records, env.difficulty, env.groups, marks)
        suites[suite] = {
            "about": ABOUT[suite],
            "instructions": used,
            "overall": agg["overall"],
            "per_task": agg["per_task"],
            "episodes": None if k == 0 else records,
            "wall_time_s": round(first_s if k == 0 else time.time() - t0, 2),
        }
    return suites
