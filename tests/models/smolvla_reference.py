"""An independent SmolVLA forward in plain torch ops, from the published definitions (SigLIP, the Idefics3
pixel-shuffle connector, Llama layers, LeRobot 0.4's interleaved cross / self-attention expert, masks and
flow matching), reading weights from a state dict (LeRobot's keys without `model.`). No nn.Module of
vlaforge's or of transformers' is called: it checks `vlaforge.models.smolvla`, it does not share code."""

from __future__ import annotations

import math

import torch

VLM = "vlm_with_expert.vlm.model."
EXP = "vlm_with_expert.lm_expert."


def lin(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    y = torch.einsum("...i,oi->...o", x, sd[name + ".weight"])
    return y + sd[name + ".bias"] if name + ".bias" in sd else y


def layer_norm(sd: dict, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def rms_norm(sd: dict, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return sd[name + ".weight"] * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax_attention(q, k, v, allowed):
    """q (B, Lq, H, D); k, v (B, Lk, G, D) with H a multiple of G (query head h uses kv head h // (H/G));
    allowed (B, Lq, Lk). A row with nothing allowed averages over all keys (LeRobot's finfo.min fill)."""
    B, Lq, H, D = q.shape
    G = k.shape[2]
    qg = q.reshape(B, Lq, G, H // G, D)
    s = torch.einsum("bqgrd,bkgd->bgrqk", qg, k) / math.sqrt(D)
    s = torch.where(allowed[:, None, None], s, torch.full_like(s, torch.finfo(s.dtype).min))
    p = torch.exp(s - s.amax(-1, keepdim=True))
    p = p / p.sum(-1, keepdim=True)
    o = torch.einsum("bgrqk,bkgd->bqgrd", p, v)
    return o.reshape(B, Lq, H * D)


def rotary(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotary as complex multiplication of pairs (x_j, x_{j + D/2}) by exp(i pos / 10000^(2j/D))."""
    D = x.shape[-1]
    j = torch.arange(D // 2, dtype=torch.float64)
    theta = pos.double()[..., None] / (10000.0 ** (2 * j / D))  # (B, L, D/2)
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2 :].double())
    z = z * torch.polar(torch.ones_like(theta), theta)[:, :, None, :]
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


def vision(sd: dict, vc: dict, scale: int, img: torch.Tensor) -> torch.Tensor:
    """SigLIP on (B, 3, S, S) at its own image size, then pixel shuffle and the connector's linear map."""
    P = vc["patch_size"]
    B = img.shape[0]
    n = img.shape[-1] // P
    assert img.shape[-1] == vc["image_size"], "reference handles full-size frames only"
    patches = img.reshape(B, 3, n, P, n, P).permute(0, 2, 4, 1, 3, 5).reshape(B, n * n, 3 * P * P)
    w = sd[VLM + "vision_model.embeddings.patch_embedding.weight"].reshape(-1, 3 * P * P)
    x = patches @ w.T + sd[VLM + "vision_model.embeddings.patch_embedding.bias"]
    x = x + sd[VLM + "vision_model.embeddings.position_embedding.weight"][: n * n]
    H, eps = vc["num_attention_heads"], vc["layer_norm_eps"]
    for i in range(vc["num_hidden_layers"]):
        pre = f"{VLM}vision_model.encoder.layers.{i}."
        h = layer_norm(sd, pre + "layer_norm1", x, eps)
        q, k, v = (lin(sd, pre + f"self_attn.{c}_proj", h).reshape(B, n * n, H, -1) for c in "qkv")
        every = torch.ones(B, n * n, n * n, dtype=torch.bool)
        x = x + lin(sd, pre + "self_attn.out_proj", softmax_attention(q, k, v, every))
        h = layer_norm(sd, pre + "layer_norm2", x, eps)
        x = x + lin(sd, pre + "mlp.fc2", gelu_tanh(lin(sd, pre + "mlp.fc1", h)))
    x = layer_norm(sd, VLM + "vision_model.post_layernorm", x, eps)
    # pixel shuffle: token (r, c) of the (n/s)^2 grid = concat over (row offset, column offset) of features
    D, m = x.shape[-1], n // scale
    x = x.reshape(B, m, scale, m, scale, D).permute(0, 1, 3, 2, 4, 5).reshape(B, m * m, scale * scale * D)
    return lin(sd, VLM + "connector.modality_projection.proj", x)


def swiglu(sd: dict, pre: str, x: torch.Tensor) -> torch.Tensor:
    g, u = lin(sd, pre + "mlp.gate_proj", x), lin(sd, pre + "mlp.up_proj", x)
    return lin(sd, pre + "mlp.down_proj", g * torch.sigmoid(g) * u)


def time_embedding(t: torch.Tensor, dim: int, lo: float, hi: float) -> torch.Tensor:
    k = torch.arange(dim // 2, dtype=torch.float64)
    period = lo * (hi / lo) ** (k / (dim // 2 - 1))
    ang = t.double()[:, None] * 2 * math.pi / period[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1)


def prefix(sd, cfg, vlm, images, img_masks, tokens, lang_masks, state):
    """Prefix embeddings, validity and the block id of each token (0: images + prompt, 1: state)."""
    W = vlm["text_config"]["hidden_size"]
    embed = sd[VLM + "text_model.embed_tokens.weight"]
    parts, valid = [], []
    B = state.shape[0]
    for img, m in zip(images, img_masks, strict=True):
        if cfg.add_image_special_tokens:
            ids = [vlm["fake_image_token_id"], vlm["global_image_token_id"]]
            parts.append(embed[ids][None].expand(B, -1, -1))
            valid.append(torch.ones(B, 2, dtype=torch.bool))
        e = vision(sd, vlm["vision_config"], vlm["scale_factor"], img)
        parts.append(e * math.sqrt(e.shape[-1]))
        valid.append(m[:, None].expand(B, e.shape[1]))
        if cfg.add_image_special_tokens:
            parts.append(embed[[vlm["fake_image_token_id"]]][None].expand(B, -1, -1))
            valid.append(torch.ones(B, 1, dtype=torch.bool))
    parts.append(embed[tokens] * math.sqrt(W))
    valid.append(lang_masks)
    parts.append(lin(sd, "state_proj", state)[:, None])
    valid.append(torch.ones(B, 1, dtype=torch.bool))
    x, ok = torch.cat(parts, 1), torch.cat(valid, 1)
    block = torch.zeros(x.shape[1], dtype=torch.long)
    block[-1] = 1
    return x, ok, block


def velocity(sd, cfg, images, img_masks, tokens, lang_masks, state, x_t, t):
    """(v_t (B, H, A), per-layer [(prefix hidden, suffix hidden)]) for noisy actions x_t at times t."""
    vlm = cfg.resolved_vlm_config()
    tc = vlm["text_config"]
    eps, hd = tc["rms_norm_eps"], tc["head_dim"]
    px, pok, pblock = prefix(sd, cfg, vlm, images, img_masks, tokens, lang_masks, state)
    B, P = pok.shape
    Hc = x_t.shape[1]
    a = lin(sd, "action_in_proj", x_t)
    te = time_embedding(t, a.shape[-1], cfg.min_period, cfg.max_period).to(a.dtype)
    h = lin(sd, "action_time_mlp_in", torch.cat([a, te[:, None].expand_as(a)], -1))
    sx = lin(sd, "action_time_mlp_out", h * torch.sigmoid(h))
    # who may attend to whom: block ids prefix 0 / state 1 / action k -> 2 + k; j visible to i when j is
    # valid, i is valid, and block(j) <= block(i)
    block = torch.cat([pblock, 2 + torch.arange(Hc)])
    ok = torch.cat([pok, torch.ones(B, Hc, dtype=torch.bool)], 1)
    allowed = (block[None, :] <= block[:, None])[None] & ok[:, None, :] & ok[:, :, None]
    pos = torch.cumsum(ok.long(), 1) - 1
    p_pos, s_pos = pos[:, :P], pos[:, P:]
    s_pos0 = s_pos - s_pos[:, :1]
    n_vlm = cfg.num_vlm_layers if cfg.num_vlm_layers > 0 else tc["num_hidden_layers"]
    hidden = []
    for i in range(n_vlm):
        vp, ep = f"{VLM}text_model.layers.{i}.", f"{EXP}layers.{i}."
        hp = rms_norm(sd, vp + "input_layernorm", px, eps)
        hs = rms_norm(sd, ep + "input_layernorm", sx, eps)
        qp, kp, vv = (lin(sd, vp + f"self_attn.{c}_proj", hp).reshape(B, P, -1, hd) for c in "qkv")
        qs = lin(sd, ep + "self_attn.q_proj", hs).reshape(B, Hc, -1, hd)
        if i % cfg.self_attn_every_n_layers == 0:  # one attention over [prefix; actions]
            ks, vs = (lin(sd, ep + f"self_attn.{c}_proj", hs).reshape(B, Hc, -1, hd) for c in "kv")
            q = rotary(torch.cat([qp, qs], 1), pos)
            k = rotary(torch.cat([kp, ks], 1), pos)
            o = softmax_attention(q, k, torch.cat([vv, vs], 1), allowed)
            op, os_ = o[:, :P], o[:, P:]
        else:  # VLM on the prefix alone; the expert reads the VLM's roped keys and its values
            kr = rotary(kp, p_pos)
            op = softmax_attention(rotary(qp, p_pos), kr, vv, allowed[:, :P, :P])
            ke = lin(sd, ep + "self_attn.k_proj", kr.reshape(B, P, -1)).reshape(B, P, -1, hd)
            ve = lin(sd, ep + "self_attn.v_proj", vv.reshape(B, P, -1)).reshape(B, P, -1, hd)
            os_ = softmax_attention(rotary(qs, s_pos0), ke, ve, allowed[:, P:, :P])
        px = px + lin(sd, vp + "self_attn.o_proj", op)
        px = px + swiglu(sd, vp, rms_norm(sd, vp + "post_attention_layernorm", px, eps))
        sx = sx + lin(sd, ep + "self_attn.o_proj", os_)
        sx = sx + swiglu(sd, ep, rms_norm(sd, ep + "post_attention_layernorm", sx, eps))
        hidden.append((px, sx))
    out = rms_norm(sd, EXP + "norm", sx, eps)
    return lin(sd, "action_out_proj", out), hidden


def loss(sd, cfg, images, img_masks, tokens, lang_masks, state, actions, noise, t):
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    v, _ = velocity(sd, cfg, images, img_masks, tokens, lang_masks, state, x_t, t)
    return (noise - actions - v) ** 2


def sample(sd, cfg, images, img_masks, tokens, lang_masks, state, noise, steps):
    x = noise
    for k in range(steps):
        t = torch.full((noise.shape[0],), 1.0 - k / steps)
        v, _ = velocity(sd, cfg, images, img_masks, tokens, lang_masks, state, x, t)
        x = x - v / steps
    return x
