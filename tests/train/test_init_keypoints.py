"""`vlaforge train --init DIR --keypoints K` from a vlaforge directory whose policy has keypoint tokens: the
encoder's tensors of the same shape continue (all of them for the same K), the others start fresh."""

from __future__ import annotations

import torch

from vlaforge.data.dataset import open_dataset
from vlaforge.models.policy import Policy
from vlaforge.train.build import build_policy
from vlaforge.train.config import TrainConfig


def test_a_keypoint_encoder_continues_tensor_by_tensor(tiny_dataset, tmp_path):
    ds = open_dataset(str(tiny_dataset))
    emb, stats = ds.embodiment(), ds.norm_stats()
    torch.manual_seed(0)
    Policy.from_preset("tiny", "chunk", emb, stats, keypoints=8).save_pretrained(tmp_path / "src")
    saved = Policy.from_pretrained(tmp_path / "src").backbone.keypoints.state_dict()

    def built(k: int) -> Policy:
        torch.manual_seed(1)  # fresh tensors differ from the saved ones
        cfg = TrainConfig(dataset=str(tiny_dataset), out=str(tmp_path / f"k{k}"), init=str(tmp_path / "src"),
                          head="chunk", keypoints=k)  # fmt: skip
        return build_policy(cfg, emb, stats)[0]

    same = built(8).backbone.keypoints.state_dict()
    assert same.keys() == saved.keys()
    assert all(torch.equal(same[n], saved[n]) for n in saved)

    other = built(4).backbone.keypoints.state_dict()  # 4 maps: the 1x1 conv and the projection change shape
    kept = {n for n in other if other[n].shape == saved[n].shape}
    assert {"conv1.weight", "conv2.weight", "softmax.log_temperature"} <= kept
    assert {"conv3.weight", "proj.weight"}.isdisjoint(kept)
    assert all(torch.equal(other[n], saved[n]) for n in kept)
    assert not built(0).backbone.keypoints  # none asked for: none built
