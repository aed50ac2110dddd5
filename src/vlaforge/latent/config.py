"""What a latent-action-model run (`LatentConfig`) and a labelling (`LabelConfig`) are; torch-free, so the
CLI builds `vlaforge latent`'s flags without importing torch.

Sizes follow LAPA's published latent action quantisation (LatentActionPretraining/LAPA, laq/train_sthv2.py:
`codebook_size=8`, `code_seq_len=4`, `quant_dim=32`): a transition is 4 tokens from one shared codebook of 8,
so 8^4 = 4,096 distinct latent actions, few enough that a policy predicts them from a little data and enough
for a robot's few motion primitives (Genie uses a single token from 8 per frame, for a game's 8 controls).
Our frames are 64 px (LAPA: 256), so the code dimension is halved to 16 and the networks are small convnets
rather than LAPA's spatio-temporal transformers: the model must train in minutes on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlaforge.config import JsonConfig, device_problems, run_problems
from vlaforge.data.relabel import parse_episodes  # noqa: F401  (re-exported: the episode forms)
from vlaforge.errors import InputError

LAM_CONFIG = "lam_config.json"  # the model's sizes (`LatentConfig.model_dict`), beside its weights
LAM_WEIGHTS = "lam.safetensors"
LAM_STATE = "trainer_state.json"  # step, elapsed time, the run's config (resume)
LAM_OPTIMIZER = "optimizer.safetensors"


@dataclass
class LatentConfig(JsonConfig):
    """A latent action model's training run (``vlaforge latent train`` passes each flag here).

    Attributes:
        dataset: a LeRobot v3.0 directory, or a comma list of them; only its camera frames are read (never
            its actions), so an action-free dataset is fine.
        out: run directory (``lam_config.json``, ``lam.safetensors``, ``checkpoints/``, ``last``,
            ``metrics.jsonl``).
        camera: the camera whose frames are paired (None: the dataset's first).
        horizon: H, the frame offset of a pair (t, t + H): one latent action covers H control steps (LAPA
            pairs frames a fixed offset apart). Near an episode's end the pair is (t, last frame). 8: at
            Meta-World's 80 Hz a 64 px frame changes by ~0.5 grey level per step on average, too little
            for the decoder to need a code; 8 steps (0.1 s) move the arm a few pixels.
        tokens: latent tokens per transition (LAPA: 4).
        codebook_size: entries of the shared codebook (LAPA: 8).
        code_dim: dimension of a codebook entry (LAPA: 32 at 256 px; 16 here at 64 px).
        width: channels of the convolutional encoder and decoder.
        image_size: side of the square frames the model sees (None: the dataset's).
        commitment: beta of the commitment loss ||z_e - sg(z_q)||^2 (VQ-VAE's 0.25).
        ema_decay: decay of the codebook's exponential moving averages (VQ-VAE-2: 0.99); the codebook is
            updated by EMA, not by gradients.
        restart_below: a code whose EMA usage (expected assignments per batch) falls under this is moved
            to a random encoder output of the batch (dead-code restart, as LAPA's NSVQ replaces unused
            codes); 0 turns it off.
        steps: optimizer steps.
        batch_size: frame pairs per step.
        lr: AdamW learning rate (LAPA: 1e-4 for its transformer; a small convnet takes 1e-3).
        save_every: checkpoint every N steps (and always at the end).
        log_every: write a metrics line every N steps.
        seed: seeds init and the pair sampler.
        resume: continue from ``out/last`` exactly (weights, codebook, optimizer, sampler position).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch CPU threads (None: the cores other processes leave free, as `vlaforge train`).
    """

    dataset: str
    out: str
    camera: str | None = None
    horizon: int = 8
    tokens: int = 4
    codebook_size: int = 8
    code_dim: int = 16
    width: int = 32
    image_size: int | None = None
    commitment: float = 0.25
    ema_decay: float = 0.99
    restart_below: float = 0.03
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    save_every: int = 1000
    log_every: int = 50
    seed: int = 0
    resume: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        self.dataset, self.out = str(self.dataset), str(self.out)
        problems = []
        for name in (
            "horizon",
            "tokens",
            "code_dim",
            "width",
            "steps",
            "batch_size",
            "save_every",
            "log_every",
        ):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.codebook_size < 2:
            problems.append(f"codebook_size={self.codebook_size} (must be >= 2)")
        if self.image_size is not None and self.image_size < 8:
            problems.append(f"image_size={self.image_size} (at least 8 pixels, or None for the dataset's)")
        if not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay={self.ema_decay} (must be in (0, 1))")
        if self.commitment < 0 or self.restart_below < 0:
            problems.append(
                f"commitment={self.commitment}, restart_below={self.restart_below} (must be >= 0)"
            )
        problems += run_problems(self.lr, self.device, self.threads)
        if problems:
            raise InputError("invalid latent action model config: " + "; ".join(problems))


@dataclass
class LabelConfig:
    """Labelling a dataset with a latent action model (``vlaforge latent label SRC --lam LAM --out DST``).

    Attributes:
        src: the LeRobot v3.0 dataset whose frames are labelled (its actions, if any, are dropped).
        lam: a latent action model: a run directory (its ``last``) or a checkpoint directory.
        out: the LeRobot v3.0 dataset to write.
        episodes: which of `src`'s episodes to label: ``A:B`` (episodes A to B - 1), a comma list of
            indices, or ``@FILE`` holding such a list (None: all).
        batch_size: frame pairs encoded per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: replace an existing `out`.
    """

    src: str
    lam: str
    out: str
    episodes: str | None = None
    batch_size: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.src, self.lam, self.out = str(self.src), str(self.lam), str(self.out)
        if self.batch_size < 1:
            raise InputError(f"latent label: batch_size={self.batch_size} (must be >= 1)")
        problems = device_problems(self.device)
        if problems:
            raise InputError(f"latent label: {problems[0]}")
