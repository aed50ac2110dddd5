"""The latent action model: the vector quantiser on hand-checked numbers, class recovery on a synthetic
world of a moving square, the labelled dataset, and `--init` from a latent-action policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlaforge.data.lerobot import LeRobotDataset
from vlaforge.data.synth import SynthConfig, write_synthetic
from vlaforge.latent.config import LabelConfig, LatentConfig, parse_episodes
from vlaforge.latent.label import label_dataset
from vlaforge.latent.model import LatentActionModel, VectorQuantizer, cluster_scores, load_lam
from vlaforge.latent.train import episode_pairs, train_lam
from vlaforge.weights_hash import sha256_file


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _vq(decay=0.5) -> VectorQuantizer:
    vq = VectorQuantizer(2, 2, decay=decay, commitment=0.25, eps=0.0)
    vq.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    vq.embed_sum.copy_(vq.embed)
    vq.initialised.fill_(True)
    return vq


def test_quantiser_picks_nearest_entry_and_passes_gradients_straight_through():
    vq = _vq().eval()  # eval: no codebook update
    z = torch.tensor([[[0.1, 0.0], [0.9, 0.2], [0.6, -0.1]]], requires_grad=True)  # (1, 3, 2)
    z_q, codes, commit = vq(z)
    assert codes.tolist() == [[0, 1, 1]]
    assert torch.equal(z_q.detach(), torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]))
    # beta * mean squared distance to the chosen entries: (0.01 + 0.01 + 0.04 + 0.16 + 0.01) / 6
    assert commit.item() == pytest.approx(0.25 * 0.23 / 6)
    w = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    (z_q * w).sum().backward(retain_graph=True)
    assert torch.equal(z.grad, w)  # straight through: d z_q / d z = identity
    z.grad = None
    commit.backward()
    expected = 0.25 * 2 * (z.detach() - z_q.detach()) / 6  # the commitment loss pulls z to its entry
    torch.testing.assert_close(z.grad, expected)


def test_codebook_moves_by_ema_of_assigned_vectors():
    vq = _vq(decay=0.5).train()
    z = torch.tensor([[[0.1, 0.0], [0.9, 0.0], [0.8, 0.0]]])
    vq(z)
    # N = 0.5 * [1, 1] + 0.5 * [1, 2] = [1, 1.5]; S_0 = 0.5 * [0, 0] + 0.5 * [0.1, 0];
    # S_1 = 0.5 * [1, 0] + 0.5 * [1.7, 0] = [1.35, 0]; e = S / N.
    torch.testing.assert_close(vq.cluster_size, torch.tensor([1.0, 1.5]))
    torch.testing.assert_close(vq.embed, torch.tensor([[0.05, 0.0], [0.9, 0.0]]))
    # An entry nobody picks decays to the restart threshold and is moved onto a batch vector.
    vq = _vq(decay=0.5).train()
    vq.restart_below = 0.3
    for _ in range(2):  # entry 0's N: 1 -> 0.5 -> 0.25 < 0.3
        vq(torch.tensor([[[0.9, 0.0], [1.1, 0.0]]]))
    assert vq.cluster_size[0].item() == 1.0
    assert any(torch.equal(vq.embed[0], torch.tensor(v)) for v in ([0.9, 0.0], [1.1, 0.0]))


DIRS = np.array([[0, 2], [0, -2], [2, 0], [-2, 0]])  # the K = 4 displacements of the square (rows, cols)


def _square_world(
    n: int, rng: np.random.Generator, side: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of frames: a white 3x3 square, then the same square moved by one of `DIRS`; and the class."""
    a = np.zeros((n, side, side, 3), np.uint8)
    b = a.copy()
    cls = rng.integers(0, len(DIRS), n)
    pos = rng.integers(3, side - 6, (n, 2))
    for i in range(n):
        (y, x), (v, u) = pos[i], pos[i] + DIRS[cls[i]]
        a[i, y : y + 3, x : x + 3] = 255
        b[i, v : v + 3, u : u + 3] = 255
    return a, b, cls


def _float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255


def test_lam_recovers_the_directions_of_a_moving_square():
    torch.manual_seed(0)
    cfg = {"tokens": 1, "codebook_size": 8, "code_dim": 8, "width": 16, "image_size": 16, "commitment": 0.25,
           "ema_decay": 0.9, "restart_below": 0.03, "horizon": 1, "camera": "c"}  # fmt: skip
    lam = LatentActionModel(cfg)
    opt = torch.optim.Adam(lam.parameters(), 3e-3)
    rng = np.random.default_rng(0)
    a, b, cls = _square_world(512, np.random.default_rng(1))
    before = cluster_scores(cls, lam.label(_float(a), _float(b))[:, 0].numpy())
    for _ in range(300):
        x, y, _ = _square_world(64, rng)
        loss = lam(_float(x), _float(y))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = cluster_scores(cls, lam.label(_float(a), _float(b))[:, 0].numpy())
    assert after["purity"] >= 0.95 and after["nmi"] >= 0.7, (before, after)  # measured: 1.0, 0.83
    assert before["nmi"] < 0.3  # an untrained encoder does not already separate them


def test_cluster_scores_match_hand_computed_values():
    assert cluster_scores([0, 0, 1, 1], [5, 5, 7, 7]) == {"purity": 1.0, "nmi": pytest.approx(1.0)}
    s = cluster_scores([0, 0, 1, 1], [0, 1, 0, 1])
    assert s["purity"] == 0.5 and s["nmi"] == pytest.approx(0.0, abs=1e-12)
    # labels {0,0,1,1}, codes {0,0,0,1}: I = 0.5 log 2 + ... computed by hand below
    p = np.array([[0.5, 0.0], [0.25, 0.25]])
    pl, pc = p.sum(1), p.sum(0)
    mi = sum(p[i, j] * np.log(p[i, j] / pl[i] / pc[j]) for i in range(2) for j in range(2) if p[i, j])
    h = (-(pl * np.log(pl)).sum() - (pc * np.log(pc)).sum()) / 2
    assert cluster_scores([0, 0, 1, 1], [0, 0, 0, 1])["nmi"] == pytest.approx(mi / h)


def test_episode_pairs_stop_at_each_episode_end():
    assert episode_pairs([(0, 3), (3, 5)], 2).tolist() == [[0, 2], [1, 2], [2, 2], [3, 4], [4, 4]]
    assert parse_episodes("1:3", 4) == [1, 2] and parse_episodes("3,0", 4) == [0, 3]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    src = write_synthetic(SynthConfig(out=str(root / "src"), episodes=3, length=10, image_size=32, tasks=2))
    run = train_lam(LatentConfig(dataset=str(src), out=str(root / "lam"), steps=2, batch_size=8, device="cpu",
                                 threads=1, horizon=3))  # fmt: skip
    out = label_dataset(
        LabelConfig(src=str(src), lam=str(run), out=str(root / "lab"), episodes="1:3", device="cpu")
    )
    return src, run, out


def test_label_writes_the_codes_of_each_frame_pair_with_provenance(labelled):
    src, run, out = labelled
    lam, ckpt_dir = load_lam(run)
    s, d = LeRobotDataset(src), LeRobotDataset(out)
    assert d.num_episodes == 2 and d.num_frames == 20
    assert d.tasks == [s.tasks[1], s.tasks[0]]  # episodes 1 and 2 of the source, in order
    codes = np.asarray(d.column("latent.codes")).reshape(20, 4)
    for e, src_ep in enumerate([1, 2]):
        r, q = s.episode_frames(src_ep), d.episode_frames(e)
        frames = s.frames("corner2")
        t = np.arange(r.start, r.stop)
        want = lam.label(
            _float(np.asarray(frames[t])), _float(np.asarray(frames[np.minimum(t + 3, r.stop - 1)]))
        )
        assert codes[q.start : q.stop].tolist() == want.tolist()
        # the frames are the source's, re-encoded: a few grey levels apart at most on average
        diff = np.abs(d.frames("corner2")[q.start : q.stop].astype(int) - frames[t].astype(int)).mean()
        assert diff < 3.0
        np.testing.assert_array_equal(d.states()[q.start : q.stop], s.states()[t])
    onehot = d.actions().reshape(20, 4, 8)
    assert (onehot.sum(-1) == 1).all() and (onehot.argmax(-1) == codes).all()
    assert (np.asarray(d.column("action.provenance")).reshape(-1) == 1).all()
    info = json.loads((out / "meta" / "info.json").read_text())["vlaforge"]
    assert info["latent_actions"]["lam_sha256"] == sha256_file(ckpt_dir / "lam.safetensors")
    assert info["latent_actions"]["source_episodes"] == [1, 2]
    emb = d.embodiment()
    assert emb.action_dim == 32 and emb.normalize_mask == [False] * 32 and emb.state_dim == 4


def test_init_from_a_latent_action_policy_keeps_the_backbone_and_renews_the_head(labelled, tmp_path):
    from vlaforge.models.policy import Policy
    from vlaforge.train.build import build_policy
    from vlaforge.train.config import TrainConfig

    src, _, out = labelled
    lab, real = LeRobotDataset(out), LeRobotDataset(src)
    torch.manual_seed(1)
    pre = Policy.from_preset("tiny", "chunk", lab.embodiment(), lab.norm_stats())
    pre.save_pretrained(tmp_path / "pre")
    saved = load_file(str(tmp_path / "pre" / "model.safetensors"))
    lines: list[str] = []
    cfg = TrainConfig(dataset=str(src), out=str(tmp_path / "ft"), init=str(tmp_path / "pre"), device="cpu")
    policy, _ = build_policy(cfg, real.embodiment(), real.norm_stats(), say=lines.append)
    now = policy.state_dict()
    backbone = [k for k in now if k.startswith(("backbone.vision.", "backbone.projector.", "backbone.llm."))]
    assert len(backbone) > 50 and all(torch.equal(now[k], saved[k]) for k in backbone)
    head = [k for k in now if k.startswith(("head.", "backbone.state_proj."))]
    assert any(now[k].shape != saved[k].shape for k in head)  # the output layer: 4 actions, not 32
    same_shape = [k for k in head if now[k].shape == saved[k].shape and now[k].numel() > 1]
    assert same_shape and not any(torch.equal(now[k], saved[k]) for k in same_shape if saved[k].std() > 0)
    assert lines == [lines[0]] and "action head and state projection re-initialised" in lines[0]
    assert "action dim 32 differs from this dataset's 4" in lines[0]


def test_check_measures_the_decoder_with_true_and_shuffled_codes(labelled):
    from vlaforge.latent.check import check_lam

    src, run, _ = labelled
    out = check_lam(str(run), str(src), pairs=12, seed=3)
    lam, _ = load_lam(run)
    s = LeRobotDataset(src)
    every = episode_pairs([(s.episode_frames(e).start, s.episode_frames(e).stop) for e in range(3)], 3)
    p = every[np.random.default_rng(3).choice(len(every), 12, replace=False)]
    a, b = _float(np.asarray(s.frames("corner2")[p[:, 0]])), _float(np.asarray(s.frames("corner2")[p[:, 1]]))
    assert out["pairs"] == 12
    assert out["mse_copy_frame_t"] == pytest.approx(float((a - b).pow(2).mean()), rel=1e-6)
    with torch.no_grad():
        want = float((lam.decode(a, lam.vq.embed[lam.label(a, b)]) - b).pow(2).mean())
    assert out["mse"] == pytest.approx(want, rel=1e-6)
    assert 0 <= out["vs_xyz_direction"]["nmi"] <= 1 and out["distinct_codes"] >= 1
