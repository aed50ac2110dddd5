"""Training: the one loop (`loop.train`), atomic checkpoints with exact resume (`checkpoint`), and the
OpenVLA fine-tuning strategies, freezing and LoRA (`finetune`).

    from vlaforge.train import TrainConfig, train
    run = train(TrainConfig(dataset="data/mt10", out="runs/mt10", preset="tiny", head="chunk", steps=2000))
"""

from vlaforge.train.finetune import apply_freeze, apply_lora, lora_param_count, param_counts
from vlaforge.train.loop import TrainConfig, lr_at, restore_policy, train

__all__ = [
    "TrainConfig",
    "apply_freeze",
    "apply_lora",
    "lora_param_count",
    "lr_at",
    "param_counts",
    "restore_policy",
    "train",
]
