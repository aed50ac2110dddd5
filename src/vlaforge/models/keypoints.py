"""Spatial soft-argmax keypoints: a position-aware read-out of camera images, one token per image.

Levine, Finn, Darrell & Abbeel (2016), "End-to-End Training of Deep Visuomotor Policies": a small conv net
keeps the image's grid, a softmax over positions turns each of its K output channels into a distribution
over the image, and the channel's expected coordinates (x, y) are the features. robomimic and Diffusion
Policy read images the same way. A ViT's patch tokens hold where things are only in their position
embeddings, and the LLM must learn to pick the one patch that matters out of all of them; the expected
coordinates hand it positions directly, at finer than patch resolution. Measured on Meta-World's reach
(docs/results.md, "Reach alone"), the tiny policy read the goal from its patches as well without them.

With `Preset.keypoints = K > 0` the Prismatic backbone runs one `KeypointEncoder` over every camera image
(the first tower's normalised pixels at `image_size`) and adds its token after that image's patches:
`Linear(2K -> d_llm)` of the K (x, y) pairs. Coordinates are in [-1, 1], x across the width and y down the
height, -1 and 1 at the centres of the first and last cells of the conv net's grid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: channels of the two hidden conv layers
WIDTH = 32
#: the softmax's temperature at initialisation, over standardised maps: logits of std 2, so a map over
#: 32 x 32 cells starts with its largest cell at ~10% (uniform: 0.1%), peaked yet smooth enough to learn
TEMPERATURE = 0.5


def grid_coordinates(height: int, width: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of every cell of an (height, width) grid, flattened row-major: two (height * width,) tensors
    in [-1, 1] (cell centres; a single row or column sits at 0)."""

    def axis(n: int) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)

    gy, gx = torch.meshgrid(axis(height), axis(width), indexing="ij")
    gx, gy = gx.to(device=device, dtype=dtype), gy.to(device=device, dtype=dtype)
    return gx.reshape(-1), gy.reshape(-1)


class SpatialSoftmax(nn.Module):
    """(N, K, H, W) feature maps -> (N, K, 2) expected (x, y) under softmax(z / temperature) over the H*W
    cells, z each map standardised over its cells (zero mean, unit std).

    Standardising makes a map's peakedness the temperature's alone: a freshly initialised conv net gives
    maps whose values barely vary (std ~0.03), and weight decay shrinks them further, so without it the
    distributions stay uniform, the coordinates stay at the centre for every image, and the token carries
    nothing. The temperature is learned (stored as its log) and starts at `TEMPERATURE`.
    """

    def __init__(self, temperature: float = TEMPERATURE) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        N, K, H, W = maps.shape
        z = maps.reshape(N, K, H * W).float()
        z = (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True, correction=0) + 1e-6)
        prob = torch.softmax(z / self.log_temperature.float().exp(), dim=-1)  # (N, K, H*W)
        gx, gy = grid_coordinates(H, W, maps.device, torch.float32)
        xy = torch.stack([prob @ gx, prob @ gy], dim=-1)  # (N, K, 2)
        return xy.to(maps.dtype)


class KeypointEncoder(nn.Module):
    """Normalised pixels (N, 3, S, S) -> one token (N, d_out) of K soft-argmax keypoints.

    conv 5x5 stride 2 (3 -> 32), GELU, conv 3x3 (32 -> 32), GELU, conv 1x1 (32 -> K): K maps at S/2 x S/2
    (a one-pixel detail stays inside the first layer's 5 x 5 window), then `SpatialSoftmax` and
    `Linear(2K -> d_out)`.
    """

    def __init__(self, n_keypoints: int, d_out: int) -> None:
        super().__init__()
        self.n_keypoints = n_keypoints
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(WIDTH, WIDTH, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(WIDTH, n_keypoints, kernel_size=1)
        self.act = nn.GELU()
        self.softmax = SpatialSoftmax()
        self.proj = nn.Linear(2 * n_keypoints, d_out)

    def points(self, pixels: torch.Tensor) -> torch.Tensor:
        """The keypoints themselves: (N, K, 2) expected (x, y) in [-1, 1]."""
        x = self.act(self.conv1(pixels))
        x = self.act(self.conv2(x))
        return self.softmax(self.conv3(x))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.points(pixels).flatten(1))
