"""Reinforcement learning after imitation: `vlaforge rl` improves a trained policy by acting in simulation.

`config` (torch-free: the CLI's flags), `logprob` (log-probabilities of the chunk and flow heads),
`algos` (GAE, PPO's clipped objective, GRPO's group-relative advantages), `actor` (the policy with its
exploration noise and a critic), `rollout` (episodes in the registered environments, in this process or in
simulation workers), `loop` (the run, its checkpoints and metrics). See docs/rl.md.
"""
