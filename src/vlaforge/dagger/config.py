"""What a DAgger run is: `DaggerConfig`, every flag of `vlaforge dagger`, validated. Torch-free, so the
command's --help imports no torch.

DAgger (Ross, Gordon and Bagnell, 2011, "A Reduction of Imitation Learning and Structured Prediction to
No-Regret Online Learning"): each round runs the current policy, labels every state it visits with the
expert's action, adds those pairs to the data of all earlier rounds and retrains on the whole. By default the
policy acts alone (the paper's beta_i = 0: the first round's policy is already the behaviour-cloned
`init`); `beta` > 0 lets the expert drive a share of the roll-outs' chunks, beta_r = beta * beta_decay **
(r - 1) in round r. The retraining is a fine-tune of the previous round's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaforge.config import SCHEDULES, JsonConfig
from vlaforge.errors import InputError
from vlaforge.types import as_list

EXPERTS = ("scripted", "recorded")
LABELS = ("step", "plan")
# The column LeRobot's human-in-the-loop recordings flag a frame a person drove with (LeRobot's
# `lerobot/rl/buffer.py` writes `complementary_info.<key>` columns; the key is "is_intervention", the name
# `lerobot/processor/hil_processor.py` gives the teleoperator's take-over). 1 / True: a human drove.
INTERVENTION_COLUMN = "complementary_info.is_intervention"
# The state of a run, beside its rounds' directories.
STATE_FILE = "dagger.json"
# Settings that may change when a run is continued; the rest must match what the run started with.
RESUMABLE = ("rounds", "out", "workers", "device", "dataset")


@dataclass(kw_only=True)
class DaggerConfig(JsonConfig):
    """Everything one DAgger run needs (``vlaforge dagger`` passes each flag here).

    Attributes:
        init: the policy the first round rolls out and fine-tunes (a training checkpoint, e.g. RUN/last).
        out: the run's directory: ``dagger.json`` (state and every round's rates), ``curve.png``, and per
            round ``round-K/`` with its ``data`` (the labelled frames), ``mix.json`` (the aggregate),
            ``train`` (the fine-tuning run) and ``eval``.
        expert: who labels the frames: ``scripted`` (the env's scripted expert, at every state the policy
            visits) or ``recorded`` (the frames of ``dataset`` a person drove, flagged in the column
            ``complementary_info.is_intervention``).
        expert_variant: ``scripted`` only: which of the env's scripted experts labels (one of its
            `EnvSpec.expert_variants`, such as an expert that also recovers from states its plain script
            cannot leave; None: the env's default, the first).
        rounds: rounds of roll-out (or recorded labels), aggregation, fine-tuning and evaluation. A run
            continued with more rounds goes on from its last finished one.
        dataset: ``recorded`` only: the recorded datasets (LeRobot v3.0), a comma list with one per round
            (a single one serves every round, so give it once with ``rounds`` 1).
        base: the datasets the labels are aggregated with (a dataset, a comma list or a mix.json); None: the
            dataset the ``init`` run was trained on, read from its training config; "none": only the
            rounds' labels.
        env: the environment (None: the one ``init`` was trained in, else the default env).
        tasks: the tasks rolled out and evaluated (a task set, names or a comma list; None: the tasks
            ``init`` was trained on, else the env's default set).
        episodes_per_round: ``scripted`` only: roll-outs per task per round.
        steps_per_round: optimizer steps of each round's fine-tuning.
        max_steps: episode truncation of roll-outs and evaluation (None: the env's episode length).
        tail: steps recorded after a roll-out's first success (as `vlaforge collect` keeps after the
            expert's), then the roll-out stops.
        takeover: ``scripted`` only. 0: every state the policy visits is labelled with the expert's action
            (DAgger). N > 0: the policy drives alone for N steps; a roll-out it has not finished by then
            is taken over by the expert, which drives it to the end, and only the frames the expert
            drove become labels, with the actions it executed, flagged in
            ``complementary_info.is_intervention`` (HG-DAgger, the scripted expert as the person watching);
            a take-over the expert does not finish is dropped.
        labels: ``scripted`` plain DAgger (``takeover`` 0) only: what a labelled state's chunk target is.
            ``step``: the expert's action there, and the chunk is cut from the labels of the states
            after it, as from a demonstration; but those states are where the policy went, so the chunk
            is the expert's answers along the policy's path, not a plan the expert would carry out.
            ``plan``: the expert's own next H actions (H: the ``init`` run's chunk), run open loop from
            that state in the simulator and the episode put back (the env's ``snapshot``/``restore``),
            stored in the column ``expert_plan`` that training reads in place of the cut chunk.
        beta: ``scripted`` only, plain DAgger (``takeover`` 0): the paper's mixing weight in round 1, the
            probability that the expert, not the policy, drives a chunk (drawn at every chunk boundary,
            per roll-out from its own generator; the expert then drives the next ``execute_steps`` steps).
            Every visited state is still labelled with the expert's action; the frames the expert drove
            are flagged in ``complementary_info.is_intervention``. 0: the policy drives alone.
        beta_decay: round r mixes with ``beta * beta_decay ** (r - 1)`` (the paper's beta_i = p^(i-1)
            with ``beta`` 1 and ``beta_decay`` p).
        label_share: the share of a round's fine-tuning draws that come from the rounds' labels together
            (the mixture weighs them so; `vlaforge.dagger.run.mix_entries`). 0: every frame, base or label,
            weighs the same (plain aggregation), so labels few beside a large base are seldom drawn.
        rollout_seed: roll-out i of task t in round r starts from ``episode_seed(rollout_seed, t,
            (r - 1) * episodes_per_round + i)``; must differ from ``eval_seed`` (and from the collection
            seed of the ``base`` data), and the two sets of episode seeds are checked to be disjoint.
        eval_seed: evaluation's base seed (`vlaforge eval --seed`), the same held-out episodes every round.
        eval_episodes: evaluation episodes per task, every round (round 0 evaluates ``init``).
        batch_size: fine-tuning micro-batch (None: the ``init`` run's).
        lr: fine-tuning learning rate (None: the ``init`` run's).
        schedule: each round's learning-rate schedule: ``constant`` (the rate throughout, no warm-up) or
            ``cosine`` (a short warm-up, then down to 0 at the round's last step, so the round ends at a
            settled point rather than wherever the last constant-rate steps left it).
        seed: the fine-tuning runs' seed (round r trains with seed + r).
        workers: evaluation worker processes (0: in this process).
        device: torch device for roll-outs and fine-tuning (``auto``: CUDA when present).
    """

    init: str
    out: str
    expert: str = field(default="scripted", metadata={"choices": list(EXPERTS)})
    expert_variant: str | None = None
    rounds: int = 3
    dataset: str | None = None
    base: str | None = None
    env: str | None = None
    tasks: str | None = None
    episodes_per_round: int = 10
    steps_per_round: int = 500
    max_steps: int | None = None
    tail: int = 10
    takeover: int = 0
    labels: str = field(default="step", metadata={"choices": list(LABELS)})
    beta: float = 0.0
    beta_decay: float = 1.0
    label_share: float = 0.0
    rollout_seed: int = 2000
    eval_seed: int = 1000
    eval_episodes: int = 10
    batch_size: int | None = None
    lr: float | None = None
    schedule: str = field(default="constant", metadata={"choices": list(SCHEDULES)})
    seed: int = 0
    workers: int = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        self.init, self.out = str(self.init), str(self.out)
        problems = []
        if self.expert not in EXPERTS:
            problems.append(f"expert {self.expert!r} (choose one of {list(EXPERTS)})")
        for name in ("rounds", "episodes_per_round", "steps_per_round", "eval_episodes"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps={self.max_steps} (must be >= 1, or None for the env's)")
        if self.tail < 0:
            problems.append(f"tail={self.tail} (must be >= 0)")
        if self.takeover < 0:
            problems.append(f"takeover={self.takeover} (must be >= 0; 0 labels every visited state)")
        elif self.takeover and self.expert != "scripted":
            problems.append("--takeover is for --expert scripted (a recording flags who drove itself)")
        if self.labels not in LABELS:
            problems.append(f"labels {self.labels!r} (choose one of {list(LABELS)})")
        elif self.labels == "plan" and (self.takeover or self.expert != "scripted"):
            problems.append(
                "--labels plan runs the scripted expert ahead from the states the policy visits: give it "
                "with --expert scripted and --takeover 0 (a take-over's frames are the expert's own plan)"
            )
        for name in ("beta", "beta_decay"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                problems.append(f"{name}={getattr(self, name)} (must be in [0, 1])")
        if self.beta and (self.takeover or self.expert != "scripted"):
            problems.append(
                "--beta mixes the scripted expert into plain DAgger's roll-outs: give it with --expert "
                "scripted and --takeover 0"
            )
        if not 0.0 <= float(self.label_share) < 1.0:
            problems.append(f"label_share={self.label_share} (must be in [0, 1); 0: plain aggregation)")
        if self.workers < 0:
            problems.append(f"workers={self.workers} (must be >= 0)")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (must be >= 1)")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr={self.lr} (must be > 0)")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} (choose one of {list(SCHEDULES)})")
        if self.rollout_seed == self.eval_seed:
            problems.append(
                f"rollout_seed and eval_seed are both {self.eval_seed}: the roll-outs would train on the "
                "evaluation's episodes; give them different values"
            )
        if self.expert == "recorded":
            if not self.dataset:
                problems.append("expert 'recorded' needs --dataset (the recorded interventions)")
            elif len(self.recorded_datasets) not in (1, self.rounds):
                problems.append(
                    f"--dataset names {len(self.recorded_datasets)} datasets for {self.rounds} rounds "
                    "(give one per round)"
                )
        elif self.dataset:
            problems.append(
                "--dataset is for --expert recorded; the scripted expert labels its own roll-outs"
            )
        if self.expert_variant is not None and self.expert != "scripted":
            problems.append("--expert-variant chooses a scripted expert: give it with --expert scripted")
        if problems:
            raise InputError("invalid dagger config: " + "; ".join(problems))

    @property
    def recorded_datasets(self) -> list[str]:
        """The recorded datasets, one per round (recorded mode)."""
        return [str(Path(p)) for p in as_list(self.dataset or "")]

    def recorded_for(self, round_index: int) -> str:
        """The recorded dataset of round `round_index` (1-based)."""
        ds = self.recorded_datasets
        return ds[0] if len(ds) == 1 else ds[round_index - 1]

    def beta_for(self, round_index: int) -> float:
        """The mixing weight of round `round_index` (1-based): beta * beta_decay ** (round_index - 1)."""
        return float(self.beta) * float(self.beta_decay) ** (round_index - 1)

    def rollout_index(self, round_index: int, i: int) -> int:
        """The `episode_seed` index of roll-out `i` (per task) of round `round_index` (1-based)."""
        return (round_index - 1) * self.episodes_per_round + i

    def check_continues(self, saved: dict[str, Any], where: Path) -> None:
        """Refuses to continue the run in `where` (started with `saved`) under other settings."""
        diffs = self.changed_since(saved, RESUMABLE)
        if diffs:
            raise InputError(
                f"{where} holds a DAgger run started with other settings ({'; '.join(diffs)}); only "
                f"{', '.join(RESUMABLE)} may change when it continues. Use another --out for a new run."
            )
