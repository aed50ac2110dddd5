"""Training: the one loop (`loop.train`), its config (`config`), building the policy (`build`), atomic
checkpoints with exact resume (`checkpoint`), and the OpenVLA fine-tuning strategies, freezing and LoRA
(`finetune`).

    from vlaforge.train import TrainConfig, train
    run = train(TrainConfig(dataset="data/mt10", out="runs/mt10", preset="tiny", head="chunk", steps=2000))
    run = train(resume_config("runs/mt10"))  # after a Ctrl-C (`TrainingStopped`): continue it exactly
"""

from importlib import import_module

# name -> its module; imported on first use, so that `vlaforge.train.config` (the CLI's flags) imports no torch.
_EXPORTS = {
    "restore_policy": "build",
    "TrainConfig": "config",
    "lr_at": "config",
    "recipe_config": "config",
    "resume_config": "config",
    "TrainingStopped": "loop",
    "apply_freeze": "finetune",
    "apply_lora": "finetune",
    "lora_param_count": "finetune",
    "param_counts": "finetune",
    "train": "loop",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"vlaforge.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'vlaforge.train' has no attribute {name!r}")


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
