"""Training: the one loop (`loop.train`), its config (`config`), building the policy (`build`), atomic
checkpoints with exact resume (`checkpoint`), and the OpenVLA fine-tuning strategies, freezing and LoRA
(`finetune`).

    from vlaforge.train import TrainConfig, train
    run = train(TrainConfig(dataset="data/mt10", out="runs/mt10", preset="tiny", head="chunk", steps=2000))
    run = train(resume_config("runs/mt10"))  # after a Ctrl-C (`TrainingStopped`): continue it exactly
"""

from vlaforge.train.build import restore_policy
from vlaforge.train.config import TrainConfig, lr_at, recipe_config, resume_config
from vlaforge.train.finetune import apply_freeze, apply_lora, lora_param_count, param_counts
from vlaforge.train.loop import train

__all__ = [
    "TrainConfig",
    "apply_freeze",
    "apply_lora",
    "lora_param_count",
    "lr_at",
    "param_counts",
    "recipe_config",
    "restore_policy",
    "resume_config",
    "train",
]
