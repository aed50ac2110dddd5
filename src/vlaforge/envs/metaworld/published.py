"""Published Meta-World MT50 success rates, for `bench/mt50_report.py` to print beside vlaforge's.

Sources are named per row (SmolVLA arXiv 2506.01844's Meta-World table; RLinf's docs; piRL arXiv
2510.25889; Evo-1). Other codebases' protocols: a row beside ours is context, not a controlled comparison.
"""

# fmt: off
# Published MT50 success rates (percent), per group and on average, with where each comes from and how
# it was measured. None: not reported per group.
ANCHORS: list[dict] = [
    {"name": "Diffusion Policy", "groups": {"easy": 23.1, "medium": 10.7, "hard": 1.9, "very_hard": 6.1},
     "average": 10.5, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task; episode length not stated"},
    {"name": "TinyVLA", "groups": {"easy": 77.6, "medium": 21.5, "hard": 11.4, "very_hard": 15.8},
     "average": 31.6, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task; episode length not stated"},
    {"name": "pi0 3.5B (robot-pretrained)", "groups": {"easy": 71.8, "medium": 48.2, "hard": 41.7, "very_hard": 30.0},
     "average": 47.9, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task; episode length not stated"},
    {"name": "SmolVLA 2.25B", "groups": {"easy": 87.1, "medium": 51.8, "hard": 70.0, "very_hard": 64.0},
     "average": 68.2, "source": "SmolVLA (arXiv 2506.01844), Meta-World table",
     "protocol": "50 demos/task, 10 trials/task, 512 px input, chunk 50 re-planned every step; "
                 "episode length not stated"},
    {"name": "pi0 SFT (RLinf)", "groups": {"easy": 77.9, "medium": 51.8, "hard": 53.3, "very_hard": 20.0},
     "average": 50.8, "source": "RLinf docs, Meta-World results",
     "protocol": "lerobot/metaworld_mt50 demos, 10 trials/task, 100-step episodes, 5 actions per inference, "
                 "corner camera 480 px, success at any step"},
    {"name": "pi0 + RL, Flow-SDE (RLinf)", "groups": {"easy": 92.1, "medium": 74.6, "hard": 61.7, "very_hard": 84.0},
     "average": 78.1, "source": "RLinf docs, Meta-World results",
     "protocol": "as pi0 SFT (RLinf), after PPO in simulation"},
    {"name": "pi0 + RL, Flow-Noise (piRL)", "groups": {}, "average": 85.8,
     "source": "RLinf docs, piRL (arXiv 2510.25889) results",
     "protocol": "as pi0 SFT (RLinf), after PPO in simulation; per-group rates not published in the docs"},
    {"name": "Evo-1 0.77B", "groups": {"easy": 89.2, "medium": 76.8, "hard": 77.2, "very_hard": 79.2},
     "average": 80.6, "source": "Evo-1 (arXiv 2511.04555), Table 1",
     "protocol": "50 demos/task, 10 trials/task x 5 runs, corner2 448 px, 400-step episodes in its client"},
]
# fmt: on
