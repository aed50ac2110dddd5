"""What a training run is: `TrainConfig` (every flag of `vlaforge train`, validated), the learning-rate
schedule, named recipes as configs, and which settings a resumed run may change.

Schedule: OpenVLA trains and fine-tunes with a constant learning rate (Kim et al., 2024: 2e-5 for the 7B
model), so runs from an OpenVLA base keep it; every other run defaults to linear warm-up + cosine decay
over 5,000 steps, the schedule of vlaforge's demo (`vlaforge.demo`) and what most VLA codebases offer
(LeRobot, openpi).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from vlaforge.config import SCHEDULES, JsonConfig, changed_settings, device_problems
from vlaforge.errors import InputError
from vlaforge.head_specs import HEADS  # torch-free, so the CLI builds train's flags without torch
from vlaforge.train.recipes import RECIPES, check_recipe

# OpenVLA's freezing strategies (`vlaforge.train.finetune`), declared here so the config imports no torch,
# and "frozen-vlm": the whole VLM (vision, projector, LLM) frozen, only the action expert / head trains
# (SmolVLA's default, LeRobot's `train_expert_only`).
FREEZE_STRATEGIES = ("full", "frozen-vision", "last-layer", "sandwich", "frozen-vlm")

# The run directory's record of its TrainConfig (not a policy's config: `vlaforge.policy_files` owns those).
RUN_CONFIG = "config.json"

# Fields a resumed run may change; everything else must match the checkpoint's config.
RESUMABLE_CHANGES = (
    "steps",
    "save_every",
    "log_every",
    "resume",
    "device",
    "num_workers",
    "out",
    "cache_max_gb",  # cached and streamed frames are the same batches
    "decode_workers",
    "threads",  # how many cores compute a step, not what it computes
    "save_minutes",
    "keep_checkpoints",
)

# The demo's warm-up (`vlaforge.demo.DemoConfig`): 5% of the steps, at most 200.
WARMUP_FRACTION, WARMUP_MAX = 20, 200


@dataclass
class TrainConfig(JsonConfig):
    """Everything one training run needs (``vlaforge train`` passes each flag here).

    Attributes:
        dataset: a LeRobot v3.0 or RLDS / TFDS directory, or a mixture: a comma list of them or a mix.json
            (`vlaforge.data.mixture`; each dataset keeps its own statistics, the policy's unnorm_keys).
        out: run directory (``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``last``).
        preset: a preset name (``tiny``, ``openvla-7b``, ...) or a policy directory whose backbone
            weights initialise the run (fine-tuning; head and state projection start fresh).
        init: weights to fine-tune from, replacing ``preset``: an OpenVLA checkpoint (a directory whose
            config.json says ``model_type: "openvla"``, or a hub id such as ``openvla/openvla-7b``), a
            LeRobot pi0 / SmolVLA checkpoint (config.json with ``"type": "pi0"`` or ``"smolvla"``; the whole
            model, its own action expert, continues: ``head`` does not apply, and its tokenizer.json comes
            from the directory or ``tokenizer_path``) or a vlaforge policy directory. The backbone (vision, projector, LLM) and, for OpenVLA, its Llama
            tokenizer come from it; the head starts fresh (the token head reuses the LLM's output layer,
            so an OpenVLA token head continues from its action tokens), and the run's dataset brings its
            own embodiment (any action dim) and statistics.
        init_head: with a vlaforge policy directory as ``init``, its action head and state projection
            continue too, and its normalisation statistics with them (the whole policy fine-tunes, as
            DAgger's rounds do; `vlaforge.dagger`); needs the same head, chunk size, history and action /
            state dims as the directory's policy. Off: the head starts fresh and the dataset brings its
            own statistics.
        quantize: ``int4`` or ``int8`` quantises the ``init`` base (vision, projector, LLM) on the training
            device and trains LoRA adapters over it (QLoRA, `vlaforge.train.qlora`): bitsandbytes on CUDA,
            vlaforge's portable kernels on the CPU; needs ``lora_rank`` > 0. Checkpoints hold the adapters
            merged into the dequantised base (a plain full-precision policy).
        tokenizer_path: a local directory with the Llama-2 ``tokenizer.json``, for presets that use the
            Llama tokenizer (``openvla-7b``) trained from scratch, or with the tokenizer.json of a LeRobot
            ``init`` checkpoint (PaliGemma's for pi0, SmolVLM2's for SmolVLA), which carries none.
        head: the action head, one of the registry's (`vlaforge.models.registry.HEADS`): ``tokens``
            (OpenVLA's 256-bin tokens) or ``chunk`` (OpenVLA-OFT parallel decoding, L1).
        head_options: the head's own options as key=value (e.g. ``bidirectional=false`` for ``chunk``);
            `vlaforge train --help` lists each head's options.
        steps: total optimizer steps of the run (a resumed run continues up to this). 5,000: the demo's
            (`vlaforge demo`), where the tiny preset reaches its success rate.
        batch_size: samples per micro-batch per process.
        lr: peak learning rate; None takes the preset's.
        schedule: ``constant`` (OpenVLA) or ``cosine`` (after the warm-up, decays to 0 at ``steps``).
            None: ``constant`` for a run from an OpenVLA base (``init``, or an ``openvla*`` preset), as
            OpenVLA trains and fine-tunes; ``cosine`` otherwise (a LeRobot pi0 / SmolVLA ``init`` too,
            as LeRobot fine-tunes them), the demo's schedule.
        warmup_steps: linear warm-up from lr / warmup_steps to lr over this many steps (0: none). None: the
            demo's 5% of ``steps`` (at most 200) under ``cosine``, 0 under ``constant`` (OpenVLA's).
        grad_accum: micro-batches per optimizer step.
        clip_grad: max global gradient norm; <= 0 disables clipping (the norm is still logged).
        chunk_size: action chunk H; None takes the head's default (tokens: 1, chunk: the preset's).
        history: observations per prediction T (the current one and the T - 1 before it, padded at an
            episode's start by repeating its first); None takes the preset's (1).
        keypoints: K spatial soft-argmax keypoints per camera image, one token each
            (`vlaforge.models.keypoints`); None takes the preset's (0: none; a policy directory's own when
            fine-tuning from one).
        save_every: checkpoint every N steps (and always at the end, and on Ctrl-C / SIGTERM at the next
            step boundary); None: only at the end and by ``save_minutes``. 1,000 steps is a few minutes
            of the tiny preset on a CPU; ``save_minutes`` bounds what a slow (large) run can lose.
        save_minutes: also checkpoint when this many minutes of training have passed since the last
            checkpoint (at a step boundary; rank 0's clock decides for every rank); None: no time-based
            checkpoints. 30 minutes of a 7B run lost, at most, to a crash or a kill -9.
        keep_checkpoints: how many of the newest checkpoints ``checkpoints/`` keeps (the one ``last``
            names is always kept); 0 keeps every one (e.g. to evaluate a policy at several training steps).
        log_every: write a metrics line every N steps.
        seed: seeds model init, the sampler and every RNG.
        resume: continue from ``out/last`` exactly (weights, optimizer, schedule, RNG, sampler).
        lora_rank: LoRA rank on every backbone Linear; 0 trains without LoRA.
        lora_alpha: LoRA alpha (the update is scaled by alpha / rank).
        freeze: ``full``, ``frozen-vision``, ``last-layer`` or ``sandwich`` (OpenVLA's strategies), or
            ``frozen-vlm`` (vision, projector and LLM frozen: only the head, or a pi0 / SmolVLA action
            expert with its projections, trains): the parts that train; with LoRA, the parts that get
            adapters (the rest stays frozen).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_workers: 0 builds batches in the training loop; N > 0 builds them in a background thread
            with N batches of look-ahead (the sampler is vectorised, so one thread suffices).
        image_size: side of the square frames the policy is trained on (the video cache is decoded at
            this size, Pillow bicubic, antialiased) and the embodiment's ``image_size``, at which
            evaluation renders; None: the dataset's.
        cache_max_gb: the decoded-video cache is used while it takes at most this many GB (1e9 bytes,
            all cameras, at ``image_size``); above it frames are decoded on the fly by ``decode_workers``
            processes ahead of the trainer (streaming: same batches, slower). 0 always streams; None
            always caches.
        decode_workers: processes decoding video frames in streaming mode.
        threads: torch CPU threads (intra-op) of the training process; inter-op threads are set to 1.
            None: the cores this process may use (its CPU affinity, shared between the torchrun processes
            of the machine), less the cores other processes keep busy when the run starts (sampled for
            0.2 s from /proc/stat), less one for a look-ahead thread (``num_workers`` > 0) and
            ``decode_workers`` when the run always streams (``cache_max_gb`` 0); at least 1 and at most
            torch's own default (OMP_NUM_THREADS when set). More threads than free cores are never
            faster: an OpenMP step waits for its slowest thread, and a thread sharing a core with another
            process makes every step ~30x slower. The threads used are in every metrics line.
        unnormalized_actions: action dims left unnormalised, by name or index (a list, or a
            comma-separated string such as ``gripper`` or ``3``); None follows the dataset's metadata
            (vlaforge's stored embodiment) and otherwise normalises every dim.
        augment_shift: random-shift augmentation: every training image moves by up to this many pixels
            in each axis, border repeated (DrQ; `vlaforge.train.augment`); 0 turns it off.
        instruction_aug: instruction augmentation: every sample whose instruction is a simulation task's
            training instruction (`vlaforge.envs`) gets one of that task's phrasings, drawn per sample
            (`vlaforge.envs.phrasing`; never a held-out paraphrase); other instructions stay as they are.
            On by default: it costs nothing, and a policy trained on one wording per task learns a task
            id rather than the words (held-out instructions, `vlaforge eval`). A run that predates it
            resumes without it.
        instruction_dropout: with `instruction_aug`, the chance each word of a drawn phrasing is left out
            (word dropout; at least one word stays); 0 keeps every word.
        balance: ``frames`` (every frame once per epoch) or ``tasks`` (every task equally often, however
            long its demonstrations; `vlaforge.data.sampler`).
        keep_all_steps: RLDS with an Open X-Embodiment standardisation: train on every step instead of
            the steps OpenVLA trains on (it drops Bridge's first and last steps and DROID's still steps).
        recipe: a named recipe (`vlaforge.train.recipes`, e.g. ``mt50``): on the command line its values
            become the defaults of every other flag (flags you give keep your values); from Python use
            `recipe_config`, since here the field only records the name.
    """

    dataset: str
    out: str
    preset: str = "tiny"
    init: str | None = None
    init_head: bool = False
    quantize: str | None = field(default=None, metadata={"choices": ["int8", "int4"]})
    tokenizer_path: str | None = None
    head: str = field(default="chunk", metadata={"choices": lambda: list(HEADS)})
    head_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 5000
    batch_size: int = 32
    lr: float | None = None
    schedule: Literal["constant", "cosine"] | None = None
    warmup_steps: int | None = None
    grad_accum: int = 1
    clip_grad: float = 1.0
    chunk_size: int | None = None
    history: int | None = None
    keypoints: int | None = None
    save_every: int | None = 1000
    keep_checkpoints: int = 3
    save_minutes: float | None = 30.0
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    lora_rank: int = 0
    lora_alpha: int = 16
    freeze: str = field(default="full", metadata={"choices": FREEZE_STRATEGIES})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    image_size: int | None = None
    cache_max_gb: float | None = 20.0
    decode_workers: int = 2
    threads: int | None = None
    unnormalized_actions: list[str] | str | None = None
    augment_shift: int = 0
    instruction_aug: bool = True
    instruction_dropout: float = 0.0
    balance: str = field(default="frames", metadata={"choices": ["frames", "tasks"]})
    keep_all_steps: bool = False
    recipe: str | None = field(default=None, metadata={"choices": lambda: list(RECIPES)})

    def __post_init__(self) -> None:
        self.dataset, self.out = str(self.dataset), str(self.out)
        if self.recipe is not None:
            check_recipe(self.recipe)
        problems = []
        if self.head not in HEADS:
            problems.append(f"head {self.head!r} (choose one of {list(HEADS)})")
        else:
            try:
                self.head_options = HEADS[self.head].resolve_options(dict(self.head_options or {}))
            except InputError as e:
                problems.append(str(e))
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr={self.lr} (must be a positive number)")
        if self.schedule is None:
            openvla = (self.init is not None and not _is_lerobot_family(self.init)) or str(
                self.preset
            ).startswith("openvla")
            self.schedule = "constant" if openvla else "cosine"
        if self.warmup_steps is None:
            cosine = self.schedule == "cosine"
            self.warmup_steps = min(WARMUP_MAX, int(self.steps) // WARMUP_FRACTION) if cosine else 0
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} (choose one of {list(SCHEDULES)})")
        if not 0 <= self.warmup_steps < max(self.steps, 1):
            problems.append(f"warmup_steps={self.warmup_steps} (must be in [0, steps={self.steps}))")
        if self.chunk_size is not None and self.chunk_size < 1:
            problems.append(f"chunk_size={self.chunk_size} (must be >= 1)")
        if self.history is not None and self.history < 1:
            problems.append(f"history={self.history} (must be >= 1)")
        if self.keypoints is not None and self.keypoints < 0:
            problems.append(f"keypoints={self.keypoints} (must be >= 0; 0: no keypoint token)")
        if self.keep_checkpoints < 0:
            problems.append(
                f"keep_checkpoints={self.keep_checkpoints} (must be >= 1, or 0 to keep every one)"
            )
        if self.save_every is not None and self.save_every < 1:
            problems.append(f"save_every={self.save_every} (must be >= 1, or None for the end only)")
        if self.save_minutes is not None and not self.save_minutes > 0:
            problems.append(
                f"save_minutes={self.save_minutes} (must be > 0, or None for no time-based saves)"
            )
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads={self.threads} (must be >= 1, or None for the cores left free)")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            problems.append(
                f"lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha} (rank >= 0, alpha > 0)"
            )
        if self.quantize is not None:
            if self.quantize not in ("int8", "int4"):
                problems.append(f"quantize {self.quantize!r} (choose 'int8' or 'int4')")
            if self.init is None or self.lora_rank <= 0:
                problems.append(
                    f"quantize={self.quantize} needs --init (the base to quantise) and --lora-rank > 0: a "
                    "quantised base is frozen and only LoRA adapters train (QLoRA)"
                )
        if self.init_head and self.init is None:
            problems.append("init_head needs --init (the vlaforge policy directory whose head continues)")
        if self.freeze not in FREEZE_STRATEGIES:
            problems.append(f"freeze {self.freeze!r} (choose one of {list(FREEZE_STRATEGIES)})")
        problems += device_problems(self.device)
        if self.num_workers < 0:
            problems.append(f"num_workers={self.num_workers} (must be >= 0)")
        if self.image_size is not None and int(self.image_size) < 1:
            problems.append(
                f"image_size={self.image_size} (a side in pixels >= 1, or None for the dataset's)"
            )
        if self.cache_max_gb is not None and not (
            self.cache_max_gb >= 0 and math.isfinite(self.cache_max_gb)
        ):
            problems.append(f"cache_max_gb={self.cache_max_gb} (must be >= 0; 0 streams, None never does)")
        if self.decode_workers < 1:
            problems.append(f"decode_workers={self.decode_workers} (must be >= 1)")
        if int(self.augment_shift) < 0:
            problems.append(f"augment_shift={self.augment_shift} (pixels, >= 0; 0 turns it off)")
        if not 0 <= float(self.instruction_dropout) < 1:
            problems.append(f"instruction_dropout={self.instruction_dropout} (a probability in [0, 1))")
        if self.balance not in ("frames", "tasks"):
            problems.append(f"balance {self.balance!r} (choose 'frames' or 'tasks')")
        if self.unnormalized_actions is not None:
            from vlaforge.data.dataset import parse_unnormalized

            try:
                self.unnormalized_actions = parse_unnormalized(self.unnormalized_actions)
            except InputError as e:
                problems.append(str(e))
        if problems:
            raise InputError("invalid training config: " + "; ".join(problems))


def _is_lerobot_family(init: str) -> bool:
    """A LeRobot pi0 / SmolVLA checkpoint directory (config.json's "type"), which LeRobot fine-tunes
    with warm-up and cosine decay (not OpenVLA's constant rate)."""
    try:
        lerobot_config = Path(init) / "config.json"
        return json.loads(lerobot_config.read_text()).get("type") in ("pi0", "pi05", "smolvla")
    except (OSError, ValueError, AttributeError):
        return False


def lr_at(step: int, base_lr: float, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def recipe_config(name: str, **given: Any) -> TrainConfig:
    """A `TrainConfig` of recipe `name` (`vlaforge.train.recipes`), the options in `given` replacing the
    recipe's (e.g. `dataset`, `out`, `steps`). `vlaforge train --recipe NAME` does the same with the flags
    given on the command line."""
    return TrainConfig(**{**check_recipe(name), **given, "recipe": name})


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    """Refuses to resume `where` (a checkpoint of a run started with `saved`) under a changed config."""
    now = cfg.to_dict()
    # A field added after the run started is compared with its default (what the run effectively used).
    defaults = TrainConfig(dataset=cfg.dataset, out=cfg.out).to_dict()
    defaults["instruction_aug"] = False  # added later: older runs trained on their instructions as given
    diffs = changed_settings({**defaults, **saved}, now, RESUMABLE_CHANGES)
    if diffs:
        raise InputError(
            f"cannot resume {where}: the run was started with different settings ({'; '.join(diffs)}); "
            f"only {', '.join(RESUMABLE_CHANGES)} may change. Leave the others out (`vlaforge train --resume` "
            "and `resume_config` take the run's own), or start a new --out."
        )
    if cfg.schedule == "cosine" and saved.get("steps") != cfg.steps:
        # The cosine curve is laid over the run's total steps: changing them mid-run would jump the
        # learning rate to another curve, which is neither the old run continued nor a new one.
        raise InputError(
            f"cannot resume {where} with --steps {cfg.steps}: the run decays its learning rate on a cosine "
            f"schedule over {saved.get('steps')} steps, and changing the total would move it to another "
            f"curve mid-run. Resume with --steps {saved.get('steps')}, or start a new --out (optionally "
            "from these weights: --preset RUN/last)."
        )


def resume_defaults(out: str | Path) -> dict[str, Any]:
    """The settings run `out` trained with, from its last checkpoint (else its config.json): a resumed run
    takes them as the defaults of the flags not given (`vlaforge train --resume`), so it continues under
    its own schedule, total steps and options even after vlaforge's defaults changed. `threads` stays
    automatic (it is sized for the machine the run continues on). {} when `out` holds no run."""
    from vlaforge.train import checkpoint as ckpt  # torch: only when resuming, never for --help

    run = Path(out)
    last = ckpt.find_last(run)
    saved: dict[str, Any] = {}
    if last is not None:
        saved = ckpt.read_trainer_state(last).get("config") or {}
    elif (run / RUN_CONFIG).is_file():
        saved = json.loads((run / RUN_CONFIG).read_text())
    known = {f.name for f in fields(TrainConfig)} - {"resume", "threads"}
    if saved:
        saved.setdefault("instruction_aug", False)  # a run from before instruction augmentation
    return {k: v for k, v in saved.items() if k in known}


def resume_config(out: str | Path, **changes: Any) -> TrainConfig:
    """The `TrainConfig` that continues run `out` under its own settings (`resume_defaults`), `changes`
    (e.g. ``steps`` under a constant schedule, ``device``) on top: the library's ``vlaforge train --resume``."""
    saved = resume_defaults(out)
    if not saved:
        raise InputError(f"{out} holds no run to resume (no checkpoint, no config.json)")
    return TrainConfig(**{**saved, "out": str(out), **changes, "resume": True})
