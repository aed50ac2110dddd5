"""Can a vision encoder, trained from scratch, learn where reach's goal is? A supervised probe.

    .venv/bin/python bench/locate_goal.py --dataset DIR [--encoder towers|cnn] [--patch 16] [--first 3]

Outside any policy: the encoder reads a frame and a linear read-out predicts the goal's xyz, trained with
the true goal (from the simulator, by each recorded episode's seed) on the frames of a reach dataset
written by `vlaforge collect --tasks reach-v3` (64 px, corner2), then tested on the first frames of
`--heldout` scenes of `--heldout-seed` (raw renders, the frames evaluation gives a policy).

- `towers`: the `tiny` preset's two vision towers and projector (`--patch` px patches), the flattened
  patch tokens read out linearly;
- `cnn`: three 3x3 convolutions (32, 32, 16 maps) over the image and two coordinate channels, a spatial
  soft-argmax per map (temperature `--temperature`, learned), the 16 (x, y) keypoints read out linearly.

`--first N` trains on the first N frames of each episode only (where nothing but the marker tells the goal;
later frames show the arm on its way to it). Prints the training error and the held-out R2 per axis, the
median error and the share within reach's 5 cm every `--eval-every` steps, against guessing the goals'
mean; writes bench/results/locate_goal.json. docs/results.md ("Reach alone") reports its figures.
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlaforge.atomic import write_json
from vlaforge.envs.rendering import configure_rendering

TASK = "reach-v3"


class KeypointCNN(nn.Module):
    """Three convolutions and a spatial soft-argmax: 16 expected (x, y) positions, read out linearly."""

    def __init__(self, size: int, temperature: float, maps: int = 16):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(5, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, maps, 3, padding=1),
        )  # fmt: skip
        self.out = nn.Linear(2 * maps, 3)
        self.log_temp = nn.Parameter(torch.tensor(float(np.log(temperature))))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys]))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.permute(0, 3, 1, 2).float() / 127.5 - 1
        x = torch.cat([x, self.grid.expand(len(x), -1, -1, -1)], 1)
        heat = (self.conv(x).flatten(2) * self.log_temp.exp()).softmax(-1)  # (B, maps, H*W)
        keypoints = torch.einsum("bkn,cn->bkc", heat, self.grid.flatten(1))
        return self.out(keypoints.flatten(1))


class TowersProbe(nn.Module):
    """The tiny preset's towers and projector (`patch` px patches), patch tokens read out linearly."""

    def __init__(self, size: int, patch: int):
        super().__init__()
        from vlaforge.models.backbone import PrismaticBackbone
        from vlaforge.models.presets import get_preset

        p = get_preset("tiny")
        p = replace(p, image_size=size, vision=tuple(replace(v, patch_size=patch) for v in p.vision))
        self.backbone = PrismaticBackbone(p, state_dim=0)
        self.out = nn.Linear((size // patch) ** 2 * p.llm.hidden_size, 3)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.out(self.backbone.embed_images([img]).flatten(1))

    def trainable(self) -> list[nn.Parameter]:
        b = self.backbone
        return [*b.vision.parameters(), *b.projector.parameters(), *self.out.parameters()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="a reach-v3 dataset from vlaforge collect")
    ap.add_argument("--encoder", choices=("towers", "cnn"), default="towers")
    ap.add_argument("--patch", type=int, default=16, help="towers: patch side in pixels")
    ap.add_argument(
        "--temperature", type=float, default=1.0, help="cnn: the soft-argmax's initial temperature"
    )
    ap.add_argument(
        "--first", type=int, default=0, help="train on the first N frames of each episode (0: all)"
    )
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--heldout-seed", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/locate_goal.json")
    args = ap.parse_args()
    configure_rendering()
    from vlaforge.data.dataset import open_dataset
    from vlaforge.envs.base import episode_seed
    from vlaforge.envs.registry import get_env

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    ds = open_dataset(args.dataset)
    size = int(ds.info["features"]["observation.images.corner2"]["shape"][0])
    env = get_env("metaworld").make(TASK, cameras=["corner2"], image_size=size, max_steps=10, render=True)
    goals = []
    for kept in ds.info["vlaforge"]["episodes"]:
        if kept["task"] != TASK:
            raise SystemExit(f"{args.dataset}: episode of {kept['task']}; the probe needs a {TASK} dataset")
        env.reset(kept["seed"], render=False)
        goals.append(np.array(env._env._target_pos, np.float32))  # the goal the episode's seed draws
    goals = np.stack(goals)
    frames = ds.frames("corner2")
    episode = np.asarray(ds.column("episode_index")).reshape(-1)
    frame_index = np.asarray(ds.column("frame_index")).reshape(-1)
    pool = np.flatnonzero(frame_index < args.first) if args.first else np.arange(len(frames))
    mean, std = goals.mean(0), goals.std(0)
    test_images, test_goals = [], []
    for i in range(args.heldout):
        obs = env.reset(episode_seed(args.heldout_seed, TASK, i), render=True)
        test_images.append(obs.images["corner2"])
        test_goals.append(np.array(env._env._target_pos))
    test_x, test_goals = torch.from_numpy(np.stack(test_images)), np.stack(test_goals)

    if args.encoder == "towers":
        net = TowersProbe(size, args.patch)
        params = net.trainable()
    else:
        net = KeypointCNN(size, args.temperature)
        params = list(net.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr)
    rng = np.random.default_rng(args.seed)
    guess = np.linalg.norm(mean - test_goals, axis=1)
    print(f"{args.encoder}: {len(pool)} training frames of {len(goals)} episodes; guessing the goals' mean: "
          f"median error {100 * np.median(guess):.1f} cm, within 5 cm {np.mean(guess < 0.05):.2f}")  # fmt: skip
    print(f"{'step':>6} {'train mse':>10} {'held-out R2 (x, y, z)':>24} {'median cm':>10} {'<5 cm':>6}")
    rows = []
    for step in range(args.steps + 1):
        idx = np.sort(pool[rng.integers(0, len(pool), args.batch_size)])
        x = torch.from_numpy(np.ascontiguousarray(frames[idx]))
        y = torch.from_numpy((goals[episode[idx]] - mean) / std)
        loss = ((net(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                pred = net(test_x).numpy() * std + mean
            err = np.linalg.norm(pred - test_goals, axis=1)
            r2 = 1 - ((pred - test_goals) ** 2).sum(0) / ((test_goals - test_goals.mean(0)) ** 2).sum(0)
            rows.append({"step": step, "train_mse": loss.item(), "heldout_r2": r2.round(4).tolist(),
                         "median_error_m": float(np.median(err)), "within_5cm": float(np.mean(err < 0.05))})  # fmt: skip
            print(f"{step:>6} {loss.item():>10.3f} {str(r2.round(2).tolist()):>24} {100 * np.median(err):>10.1f} "
                  f"{np.mean(err < 0.05):>6.2f}", flush=True)  # fmt: skip
    out = {"config": vars(args), "machine": platform.processor() or platform.machine(), "rows": rows,
           "mean_guess": {"median_error_m": float(np.median(guess)), "within_5cm": float(np.mean(guess < 0.05))}}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
