"""What an IDM training run (`IdmConfig`) and a labelling (`IdmLabelConfig`) are; torch-free, so the CLI
builds `vlaforge idm`'s flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlaforge.config import JsonConfig, device_problems, run_problems
from vlaforge.data.relabel import parse_episodes  # noqa: F401  (re-exported: the episode forms)
from vlaforge.errors import InputError

IDM_CONFIG = "idm_config.json"  # the model's sizes and its camera, beside its weights
IDM_WEIGHTS = "idm.safetensors"  # weights + action/state normalisation buffers
PROVENANCE_RECORDED = 0  # `action.provenance` of frames whose actions were recorded
PROVENANCE_IDM = 2  # `action.provenance` of frames labelled by an IDM (1: a latent action model)


@dataclass
class IdmConfig(JsonConfig):
    """An inverse dynamics model's training run (``vlaforge idm train`` passes each flag here).

    Attributes:
        dataset: a LeRobot v3.0 dataset with real actions.
        out: run directory (``config.json``, ``metrics.jsonl``, ``last`` -> the final model directory).
        labelled: train on the first N episodes only (None: all).
        horizon: H: the model reads frames t and t + H and predicts actions t .. t + H - 1.
        camera: the camera read (None: the dataset's first).
        width: channels of the first conv layer (doubled twice).
        hidden: width of the MLP head.
        use_state: feed the state at t to the model; off, it reads the frames alone (needed to label
            video files, which have no state).
        shift: random-shift augmentation in pixels (the same shift for both frames of a pair); 0: off.
        steps: optimizer steps.
        batch_size: windows per step.
        lr: AdamW learning rate (cosine decay to 0).
        log_every: write a metrics line every N steps.
        seed: seeds init and the window sampler.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch CPU threads (None: the cores other processes leave free).
    """

    dataset: str
    out: str
    labelled: int | None = None
    horizon: int = 4
    camera: str | None = None
    width: int = 16
    hidden: int = 256
    use_state: bool = True
    shift: int = 4
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    log_every: int = 50
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        self.dataset, self.out = str(self.dataset), str(self.out)
        problems = [
            f"{n}={getattr(self, n)} (must be >= 1)"
            for n in ("horizon", "width", "hidden", "steps", "batch_size", "log_every")
            if int(getattr(self, n)) < 1
        ]
        if self.labelled is not None and self.labelled < 1:
            problems.append(f"labelled={self.labelled} (must be >= 1, or None for all episodes)")
        if self.shift < 0:
            problems.append(f"shift={self.shift} (must be >= 0)")
        problems += run_problems(self.lr, self.device, self.threads)
        if problems:
            raise InputError("invalid inverse dynamics model config: " + "; ".join(problems))


@dataclass
class IdmLabelConfig:
    """Labelling a dataset with an IDM (``vlaforge idm label SRC --idm IDM --out DST``).

    Attributes:
        src: the LeRobot v3.0 dataset whose frames are labelled (its actions, if any, are ignored), or a
            folder of video files with a ``tasks.json`` ({"file name": "instruction"}): each listed video
            is one episode, decoded with PyAV, centre-cropped to a square, resized to the IDM's image
            side and resampled to its fps (nearest frame in time).
        idm: an IDM run directory (its ``last``) or model directory.
        out: the LeRobot v3.0 dataset to write.
        episodes: which of `src`'s episodes: ``A:B``, a comma list of indices, or ``@FILE`` holding such a
            list (None: all).
        keep_actions: episodes (same forms) whose recorded actions are kept instead of labelled
            (provenance 0): one dataset of real and IDM actions, normalised with one set of statistics.
        batch_size: windows per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: replace an existing `out`.
    """

    src: str
    idm: str
    out: str
    episodes: str | None = None
    keep_actions: str | None = None
    batch_size: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.src, self.idm, self.out = str(self.src), str(self.idm), str(self.out)
        if self.batch_size < 1:
            raise InputError(f"idm label: batch_size={self.batch_size} (must be >= 1)")
        problems = device_problems(self.device)
        if problems:
            raise InputError(f"idm label: {problems[0]}")
