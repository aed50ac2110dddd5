"""What a world-model training run (`WorldModelConfig`) and a success judge's run (`JudgeConfig`) are;
torch-free, so the CLI builds `vlaforge worldmodel`'s flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlaforge.config import JsonConfig
from vlaforge.errors import InputError

WM_CONFIG = "worldmodel.json"  # the model's sizes, camera and held-out episodes, beside its weights
WM_WEIGHTS = "worldmodel.safetensors"
JUDGE_CONFIG = "judge.json"
JUDGE_WEIGHTS = "judge.safetensors"
STATE_DIR = "state"  # `vlaforge worldmodel state`'s predictor (and scene judge) beside the run's last/
STATE_CONFIG = "state.json"
STATE_WEIGHTS = "state.safetensors"
INPUT_STD_FLOOR = 1e-2  # the smallest spread a state input is normalised by (metres, or values in [-1, 1])
OBJECTIVES = ("flow", "mse")


def model_dir(path: str | Path) -> Path:
    """A world model's directory: ``RUN/last`` for a `vlaforge worldmodel train` run, else `path` itself."""
    root = Path(path)
    return root / "last" if (root / "last" / WM_CONFIG).is_file() else root


def _check(problems: list[str], what: str) -> None:
    if problems:
        raise InputError(f"{what}: " + "; ".join(problems))


@dataclass
class WorldModelConfig(JsonConfig):
    """A world model's training run (``vlaforge worldmodel train`` passes each flag here).

    Attributes:
        dataset: one LeRobot v3.0 dataset or a comma list of them (same camera, image size, action dim).
        out: run directory (``config.json``, ``metrics.jsonl``, ``samples/``, ``last/``).
        camera: the camera modelled (None: the first dataset's first).
        image_size: square side the frames are modelled at, a multiple of 4 (None: the dataset's own).
        heldout: the last N episodes of every dataset are kept out of training (quality metrics and the
            world model's environment start from them).
        starts: a LeRobot v3.0 dataset or comma list whose episodes are all held out (never trained on),
            e.g. the expert recorded at an evaluation's seed: an evaluation inside the world model then
            starts each episode from the real first frame recorded at that episode's own seed.
        context: K, the frames the dynamics model sees before predicting the next one.
        stride: N, steps between the frames modelled: the model predicts frame t + N from frames t,
            t - N, ... and the N actions taken from each; in imagination the steps in between show the
            last frame again. A policy that executes chunks of N actions open loop (or a multiple)
            meets a new frame exactly when it looks, in N times fewer predictions, each of a change N
            times larger (1: every step).
        latent_channels: channels of the latent grid (a quarter of the image side on each axis).
        width: channels of the autoencoder's first conv layer (doubled once).
        dyn_width: channels of the dynamics model's residual blocks.
        dyn_blocks: residual blocks of the dynamics model.
        objective: "flow" (a stochastic prediction by flow matching on the latent change) or "mse" (a
            deterministic regression of the change, the ablation).
        flow_steps: Euler steps from noise (t = 1) to the prediction (t = 0).
        rollout: R, dynamics steps unrolled per training window on the model's own predictions ("mse"
            only): each step regresses the change from its own previous prediction to the real next
            latent, which teaches the model to correct its drift in open loop; 1 is teacher forcing
            (every step predicted from real frames). A step costs about R times one.
        ae_steps: optimizer steps of the autoencoder alone (phase 1; then it is frozen).
        steps: optimizer steps of the dynamics model (phase 2).
        batch_size: windows per step.
        ae_lr: AdamW learning rate of the autoencoder (phase 1; a low one can stall on the mean image
            when the moving objects are small).
        lr: AdamW learning rate of the dynamics model (phase 2).
        log_every: write a metrics line every N steps.
        save_every: write ``last/`` every N steps (and at the end).
        sample_every: write an imagined-vs-real sample video every N dynamics steps (0: only at the end).
        seed: seeds init, batches and noise (batch and noise of step s come from (seed, s)).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch CPU threads (None: torch's default).
        resume: continue the run in ``out`` from ``last/`` (exactly: same losses as an uninterrupted run).
    """

    dataset: str
    out: str
    camera: str | None = None
    image_size: int | None = None
    heldout: int = 2
    starts: str | None = None
    context: int = 4
    stride: int = 1
    latent_channels: int = 8
    width: int = 32
    dyn_width: int = 64
    dyn_blocks: int = 4
    objective: str = field(default="flow", metadata={"choices": list(OBJECTIVES)})
    flow_steps: int = 10
    rollout: int = 1
    ae_steps: int = 1000
    steps: int = 2000
    batch_size: int = 32
    ae_lr: float = 5e-3
    lr: float = 1e-3
    log_every: int = 50
    save_every: int = 500
    sample_every: int = 500
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        self.dataset, self.out = str(self.dataset), str(self.out)
        p = []
        if self.image_size is not None and (self.image_size < 8 or self.image_size % 4):
            p.append(f"image_size must be a multiple of 4 and >= 8; got {self.image_size}")
        for name in (
            "context",
            "stride",
            "latent_channels",
            "width",
            "dyn_width",
            "dyn_blocks",
            "flow_steps",
            "rollout",
        ):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("ae_steps", "steps", "heldout", "sample_every"):
            if getattr(self, name) < 0:
                p.append(f"{name} must be >= 0; got {getattr(self, name)}")
        for name in ("batch_size", "log_every", "save_every"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.objective not in OBJECTIVES:
            p.append(f"objective must be one of {list(OBJECTIVES)}; got {self.objective!r}")
        if self.rollout > 1 and self.objective != "mse":
            p.append(
                f"rollout={self.rollout} needs --objective mse (a flow prediction is sampled, not unrolled)"
            )
        if not (self.lr > 0 and self.ae_lr > 0):
            p.append(f"lr and ae_lr must be > 0; got {self.lr}, {self.ae_lr}")
        _check(p, "worldmodel train")

    @property
    def datasets(self) -> list[str]:
        return [d.strip() for d in self.dataset.split(",") if d.strip()]

    @property
    def start_datasets(self) -> list[str]:
        return [d.strip() for d in (self.starts or "").split(",") if d.strip()]


@dataclass
class JudgeConfig:
    """A success judge's training run (``vlaforge worldmodel judge``).

    Attributes:
        dataset: recorded episodes (``vlaforge eval --record``), one dataset or a comma list, whose
            ``observation.success`` labels each frame.
        out: run directory (``judge.json`` + ``judge.safetensors`` + ``report.json``).
        camera: the camera read (None: the first dataset's first).
        image_size: square side the frames are read at (None: the dataset's own).
        heldout: the last N episodes of every task of every dataset are kept out of training (so that
            calibration sees every task, recordings being in task order): the temperature is fitted
            and accuracy / ECE are reported on them.
        width: channels of the first conv layer.
        steps: optimizer steps.
        batch_size: frames per step (half of them successful scenes when there are enough).
        lr: AdamW learning rate.
        seed: seeds init and batches.
        device: ``auto``, ``cpu`` or ``cuda``.
        worldmodel: a world model's run: the judge learns from its imagined frames instead of the real
            ones (every recorded episode replayed open loop from its first real frame under its own
            actions, each frame keeping the simulator's label), so that it reads what that model draws;
            camera and image size are the model's.
    """

    dataset: str
    out: str
    camera: str | None = None
    image_size: int | None = None
    heldout: int = 2
    width: int = 16
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    worldmodel: str | None = None

    def __post_init__(self) -> None:
        self.dataset, self.out = str(self.dataset), str(self.out)
        p = []
        for name in ("width", "steps", "batch_size"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.heldout < 1:
            p.append(f"heldout must be >= 1 (calibration needs held-out frames); got {self.heldout}")
        _check(p, "worldmodel judge")

    @property
    def datasets(self) -> list[str]:
        return [d.strip() for d in self.dataset.split(",") if d.strip()]
