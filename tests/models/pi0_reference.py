"""An independent pi0 forward in plain torch ops, written from openpi's JAX definitions (`models/pi0.py`,
`gemma.py`, `siglip.py`), reading the weights from a state dict with LeRobot's key names. Used only to
check `vlaforge.models.pi0` (tests/models/test_pi0.py); nothing here calls the module under test.

Written per openpi: SigLIP pre-LN encoder (LayerNorm eps 1e-6, GELU-tanh MLP, learned position
embedding, final LayerNorm, no pooling head); Gemma `RMSNorm` scale (1 + w) on x * rsqrt(mean(x^2) + eps);
`_apply_rope` on split halves with timescale 1e4 ** (2 i / d); grouped-query attention as an einsum over
(kv head, group) with `big_neg` where the mask is False; the multi-stream `Block` that concatenates the
streams' q/k/v; `make_attn_mask` from the ar_mask cumsum; `posemb_sincos` for the time. With
`cfg.adarms_time`, pi0.5's time path: time_mlp_in / swish / time_mlp_out / swish to a condition, openpi's
adaptive `RMSNorm` (modulation = Dense(cond) split into scale, shift, gate; x_normed * (1 + scale) + shift)
on the expert stream and `_gated_residual` (x + y * gate) around its attention and MLP.
"""

from __future__ import annotations

import math

import torch

VLM = "paligemma_with_expert.paligemma.model."
EXPERT = "paligemma_with_expert.gemma_expert.model."
BIG_NEG = -2.3819763e38


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _lin(sd, name, x):
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if name + ".bias" in sd else y


def siglip(sd, img, heads):
    """(B, 3, R, R) -> (B, N, width), openpi's `siglip.Module` with pool_type "none"."""
    p = VLM + "vision_tower.vision_model."
    w = sd[p + "embeddings.patch_embedding.weight"]  # (D, 3, P, P)
    P = w.shape[-1]
    B, C, R, _ = img.shape
    n = R // P
    patches = img.reshape(B, C, n, P, n, P).permute(0, 2, 4, 1, 3, 5).reshape(B, n * n, C * P * P)
    x = patches @ w.reshape(w.shape[0], -1).T + sd[p + "embeddings.patch_embedding.bias"]
    x = x + sd[p + "embeddings.position_embedding.weight"][None]
    i = 0
    while f"{p}encoder.layers.{i}.layer_norm1.weight" in sd:
        q = f"{p}encoder.layers.{i}."
        h = _layer_norm(x, sd[q + "layer_norm1.weight"], sd[q + "layer_norm1.bias"])
        D = h.shape[-1]
        hd = D // heads

        qq, kk, vv = (_lin(sd, q + f"self_attn.{k}_proj", h).reshape(B, -1, heads, hd) for k in "qkv")
        a = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", qq, kk) / math.sqrt(hd), -1)
        o = torch.einsum("bhqk,bkhd->bqhd", a, vv).reshape(B, -1, D)
        x = x + _lin(sd, q + "self_attn.out_proj", o)
        h = _layer_norm(x, sd[q + "layer_norm2.weight"], sd[q + "layer_norm2.bias"])
        x = x + _lin(sd, q + "mlp.fc2", _gelu_tanh(_lin(sd, q + "mlp.fc1", h)))
        i += 1
    return _layer_norm(x, sd[p + "post_layernorm.weight"], sd[p + "post_layernorm.bias"])


def rms(x, w, eps=1e-6):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * (1 + w)


def apply_rope(x, positions, max_wavelength=10_000):
    """openpi `_apply_rope`: x (B, T, H, d), positions (B, T)."""
    d = x.shape[-1]
    freq_exponents = (2.0 / d) * torch.arange(d // 2, dtype=torch.float32)
    timescale = max_wavelength**freq_exponents
    radians = positions[..., None].float() / timescale  # (B, T, d/2)
    radians = radians[..., None, :]  # (B, T, 1, d/2)
    sin, cos = torch.sin(radians), torch.cos(radians)
    x1, x2 = torch.split(x, d // 2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def make_attn_mask(input_mask, mask_ar):
    """openpi `make_attn_mask`, element by element (no broadcasting tricks)."""
    B, N = input_mask.shape
    cum = torch.cumsum(mask_ar.long(), dim=1)
    out = torch.zeros(B, N, N, dtype=torch.bool)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                out[b, i, j] = (
                    bool(cum[b, j] <= cum[b, i]) and bool(input_mask[b, i]) and bool(input_mask[b, j])
                )
    return out


def norm_stream(sd, name, x, cond):
    """openpi `RMSNorm(x, cond)` -> (normed, gate): the plain Gemma norm without a condition, else the
    adaptive one whose Dense ("<name>.dense") gives scale, shift and gate."""
    if cond is None:
        return rms(x, sd[name + ".weight"]), None
    mod = _lin(sd, name + ".dense", cond)[:, None, :]
    scale, shift, gate = torch.split(mod, mod.shape[-1] // 3, dim=-1)
    normed = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)
    return normed * (1 + scale) + shift, gate


def gated_residual(x, y, gate):
    return x + y if gate is None else x + y * gate


def joint_layers(sd, xs, mask, positions, heads, head_dim, conds=(None, None)):
    """openpi's multi-stream Gemma `Module` over [prefix, suffix] with `adarms_cond` per stream; returns
    (per-layer inputs, outputs)."""
    prefixes = [VLM + "language_model.", EXPERT]
    depth = 0
    while f"{prefixes[0]}layers.{depth}.input_layernorm.weight" in sd:
        depth += 1
    hidden = []
    for li in range(depth):
        hidden.append([x.clone() for x in xs])
        qs, ks, vs, gates = [], [], [], []
        for x, pre, c in zip(xs, prefixes, conds, strict=True):
            L = f"{pre}layers.{li}."
            h, gate = norm_stream(sd, L + "input_layernorm", x, c)
            gates.append(gate)
            B, T, _ = h.shape
            qs.append((h @ sd[L + "self_attn.q_proj.weight"].T).reshape(B, T, heads, head_dim))
            ks.append((h @ sd[L + "self_attn.k_proj.weight"].T).reshape(B, T, -1, head_dim))
            vs.append((h @ sd[L + "self_attn.v_proj.weight"].T).reshape(B, T, -1, head_dim))
        q = apply_rope(torch.cat(qs, 1), positions)
        k = apply_rope(torch.cat(ks, 1), positions)
        v = torch.cat(vs, 1)
        q = q * head_dim**-0.5
        K = k.shape[2]
        q = q.reshape(B, q.shape[1], K, heads // K, head_dim)  # BTKGH
        logits = torch.einsum("btkgh,bskh->bkgts", q, k)
        logits = torch.where(mask[:, None, None], logits, torch.tensor(BIG_NEG))
        probs = torch.softmax(logits, dim=-1)
        enc = torch.einsum("bkgts,bskh->btkgh", probs, v).reshape(B, -1, heads * head_dim)
        out, start = [], 0
        for x, pre, c, g in zip(xs, prefixes, conds, gates, strict=True):
            L = f"{pre}layers.{li}."
            T = x.shape[1]
            x = gated_residual(x, enc[:, start : start + T] @ sd[L + "self_attn.o_proj.weight"].T, g)
            start += T
            h, g2 = norm_stream(sd, L + "post_attention_layernorm", x, c)
            act = _gelu_tanh(h @ sd[L + "mlp.gate_proj.weight"].T)
            up = h @ sd[L + "mlp.up_proj.weight"].T
            out.append(gated_residual(x, (act * up) @ sd[L + "mlp.down_proj.weight"].T, g2))
        xs = out
    finals = [norm_stream(sd, pre + "norm", x, c)[0] for x, pre, c in zip(xs, prefixes, conds, strict=True)]
    return hidden, finals


def posemb_sincos(pos, dim, min_period, max_period):
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** fraction
    sinusoid_input = pos.double()[:, None] * (1.0 / period[None, :] * 2 * math.pi)
    return torch.cat([torch.sin(sinusoid_input), torch.cos(sinusoid_input)], dim=-1).float()


def velocity(sd, cfg, images, img_masks, tokens, tok_masks, state, x_t, t):
    """openpi `Pi0.embed_prefix` / `embed_suffix` / the transformer / `action_out_proj`.
    Returns (per-layer inputs, v)."""
    vis_heads = cfg.vision_size.num_heads
    heads, head_dim = cfg.vlm_size.num_heads, cfg.vlm_size.head_dim
    tokens_, input_mask, ar = [], [], []
    for img, m in zip(images, img_masks, strict=True):
        e = _lin(sd, VLM + "multi_modal_projector.linear", siglip(sd, img, vis_heads))
        tokens_.append(e)
        input_mask.append(m[:, None].expand(-1, e.shape[1]))
        ar += [False] * e.shape[1]
    emb = sd[VLM + "language_model.embed_tokens.weight"][tokens]
    tokens_.append(emb * math.sqrt(emb.shape[-1]))
    input_mask.append(tok_masks)
    ar += [False] * tokens.shape[1]
    prefix = torch.cat(tokens_, 1)
    B, H = x_t.shape[:2]
    st = _lin(sd, "state_proj", state)[:, None]
    a = _lin(sd, "action_in_proj", x_t)
    te = posemb_sincos(t, a.shape[-1], cfg.min_period, cfg.max_period)
    cond = None
    if cfg.adarms_time:  # pi0.5: the action tokens are action_in_proj alone; the time goes to the norms
        c = _lin(sd, "time_mlp_in", te)
        c = _lin(sd, "time_mlp_out", c * torch.sigmoid(c))
        cond, at = c * torch.sigmoid(c), a
    else:
        at = _lin(sd, "action_time_mlp_in", torch.cat([a, te[:, None].expand(-1, H, -1)], -1))
        at = _lin(sd, "action_time_mlp_out", at * torch.sigmoid(at))
    suffix = torch.cat([st, at], 1)
    input_mask += [torch.ones(B, 1 + H, dtype=torch.bool)]
    ar += [True] + [True] + [False] * (H - 1)
    input_mask = torch.cat(input_mask, 1)
    ar = torch.tensor(ar)[None].expand(B, -1)
    mask = make_attn_mask(input_mask, ar)
    positions = torch.cumsum(input_mask.long(), 1) - 1
    hidden, (_, out) = joint_layers(sd, [prefix, suffix], mask, positions, heads, head_dim, (None, cond))
    return hidden, _lin(sd, "action_out_proj", out[:, -H:])


def loss(sd, cfg, images, img_masks, tokens, tok_masks, state, actions, noise, t):
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    _, v = velocity(sd, cfg, images, img_masks, tokens, tok_masks, state, x_t, t)
    return (v - (noise - actions)) ** 2


def sample(sd, cfg, images, img_masks, tokens, tok_masks, state, noise, steps):
    """openpi `sample_actions`: Euler from t = 1 while t >= -dt / 2."""
    dt = -1.0 / steps
    x, t = noise, 1.0
    while t >= -dt / 2:
        tt = torch.full((x.shape[0],), t)
        _, v = velocity(sd, cfg, images, img_masks, tokens, tok_masks, state, x, tt)
        x, t = x + dt * v, t + dt
    return x
