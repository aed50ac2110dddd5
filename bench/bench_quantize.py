"""OpenVLA's quantisation table here: precision, weight memory, actions/s, agreement with full precision.

    .venv/bin/python bench/bench_quantize.py [--preset openvla-scaled] [--inputs 8] [--repeats 5]

OpenVLA (Kim et al., 2024) compares its 7B policy served in bfloat16, int8 and int4 (bitsandbytes). This
bench builds one policy with a fixed seed, copies it and quantises each copy with
`vlaforge.models.quantize.quantize_policy` (token head, greedy decoding, as OpenVLA), then measures per
precision:

- weight memory: bytes of every parameter and buffer of `policy.backbone`, and of the weights of its
  Linear layers alone (quantised or not, the LLM's output layer included);
- actions/s at batch 1 (`predict_action_batch` with one sample) and batched (all N inputs in one call);
  actions/s = samples x chunk length / latency, the median of the repeats after a warm-up. The timed calls
  alternate between the precisions, round by round, so load from neighbours on a shared machine falls on
  all of them alike;
- agreement with full precision on the same N inputs (seeded random 224 x 224 images and instructions),
  through `policy._context` and the token head's decoding: the share of identical tokens (and of
  identical first tokens, decoded from the same prefix) and the share of decoded ids that are action bins
  at all; then, decoding with the argmax restricted to the action bins, the share of identical bins and the
  mean absolute difference of the normalised actions; and the largest change of a first-position logit
  relative to the largest logit.

The weights are random, so agreement measures numerical drift, not task success. Random weights also give
nearly flat logits, where a small drift flips the argmax far more often than on a trained model: expect
lower token agreement here than a trained policy would show. An untrained policy also decodes mostly ids
outside the action bins (256 of 32064 ids); those all map to the extreme bin, so flips among them change
no action, which is why the action difference is measured with the argmax restricted to the bins.

The default preset, `openvla-scaled`, is OpenVLA's architecture scaled down to ~220 M parameters so one
action takes a second or two on a 2-core CPU: fused DINOv2-with-registers + SigLIP towers (384 wide, 12
layers each, 224 px, 14 px patches, SigLIP's attention-pool head kept as in the 7B preset), a Llama with
hidden size 1024 and 8 layers, the 32064-row vocabulary, 256 action bins on ids 31744..31999. The
self-contained byte tokenizer replaces Llama's (nothing is downloaded), with the instruction alone as the
prompt, so sequences stay near OpenVLA's length. `--preset openvla-7b` runs the real dimensions (a GPU's
job: bfloat16 by default on CUDA, where `auto` quantises with bitsandbytes).

On the CPU the portable kernels dequantise each weight in every call: quantised precisions use less memory
and run slower. Writes bench/results/quantize.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vlaforge.atomic import write_json
from vlaforge.models.policy import Policy
from vlaforge.models.presets import PRESETS, LLMSpec, Preset, ViTSpec
from vlaforge.models.quantize import (
    QUANT_MODES,
    Int4Linear,
    Int8Linear,
    is_quantized_layer,
    layer_weight_bytes,
    quantize_policy,
)
from vlaforge.types import Embodiment, FeatureStats, NormStats

SCALED = Preset(
    name="openvla-scaled",
    vision=(
        ViTSpec("dinov2_reg", 384, 12, 6, 1536, 14, num_register_tokens=4),
        ViTSpec("siglip", 384, 12, 6, 1536, 14, use_head=True),
    ),
    image_size=224,
    llm=LLMSpec(1024, 8, 16, 2816, vocab_size=32064, max_position_embeddings=2048),
    tokenizer="byte",
    prompt="instruction",
    action_vocab_size=32000,
    use_state=False,
    chunk_size=1,
)
BENCH_PRESETS = ("openvla-scaled", *PRESETS)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INSTRUCTIONS = [
    "put the carrot on the plate",
    "open the top drawer",
    "pick up the red block and place it in the bowl",
    "wipe the table with the sponge",
    "close the microwave",
    "move the spoon to the left of the pot",
]
NOTE = (
    "weights are random (seeded init): agreement measures numerical drift from quantisation, not task "
    "success; near-flat random logits flip tokens more often than a trained model's would"
)


def bench_preset(name: str) -> Preset:
    """The preset to measure: the scaled one, or a registered one with the byte tokenizer (no download)."""
    if name == "openvla-scaled":
        return SCALED
    return PRESETS[name].with_overrides(
        tokenizer="byte", tokenizer_path=None, prompt="instruction", use_state=False
    )


def embodiment(image_size: int) -> tuple[Embodiment, NormStats]:
    """A 7-dim end-effector robot with one camera (OpenVLA's Bridge setup) and q01/q99 = -1/1 stats."""
    d = 7
    mask = [True] * 6 + [False]  # the gripper passes through unnormalised, as OpenVLA
    emb = Embodiment(
        action_dim=d,
        action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
        normalize_mask=mask,
        action_low=[-1.0] * d,
        action_high=[1.0] * d,
        control_hz=5.0,
        camera_names=["primary"],
        image_size=image_size,
    )
    ones = np.ones(d)
    stats = FeatureStats(min=-ones, max=ones, mean=0 * ones, std=ones, q01=-ones, q99=ones, mask=mask)
    return emb, NormStats({"action": stats})


def make_inputs(n: int, seed: int) -> dict[str, Any]:
    """N seeded observations: uint8 (N, 224, 224, 3) images and instructions."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
    return {
        "images": {"primary": images},
        "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
    }


def build(preset: Preset, dtype: torch.dtype, device: str, seed: int) -> Policy:
    """The full-precision policy, initialised from `seed`, built directly on `device`."""
    emb, stats = embodiment(preset.image_size)
    torch.manual_seed(seed)
    with torch.device(device):
        policy = Policy.from_preset(preset, "tokens", emb, stats)
    return policy.to(dtype).eval()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_memory(backbone: nn.Module) -> tuple[int, int]:
    """(bytes of every parameter and buffer of the backbone, bytes of its Linear layers' weights alone).

    Quantised layers count their codes and statistics (scales, zeros; bitsandbytes' row scales or block
    absmax, which are not buffers); Linear weights include the layers kept in full precision (the LLM's
    output layer)."""
    total = linear = 0
    for m in backbone.modules():
        total += sum(_nbytes(t) for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))
        if is_quantized_layer(m) or isinstance(m, nn.Linear):
            w = layer_weight_bytes(m)
            linear += w
            if is_quantized_layer(m) and not isinstance(m, (Int8Linear, Int4Linear)):
                total += w - _nbytes(m.weight)  # bitsandbytes: statistics held outside parameters
    return total, linear


@torch.inference_mode()
def decode(policy: Policy, inputs: dict[str, Any], bins_only: bool = False) -> tuple[torch.Tensor, ...]:
    """Greedy ids (N, H*D), normalised actions (N, H, D) and first-position logits (N, V), through the context
    `predict_action_batch` builds.

    `bins_only` restricts every step's argmax to the action bins (`TokenHead.decode` with a masked argmax):
    an untrained policy's argmax mostly lands outside them, where every id decodes to the same extreme bin,
    so only this view shows how far the quantised actions move.
    """
    ctx = policy._context(inputs["images"], None, inputs["instruction"])
    head, bb = policy.head, policy.backbone
    if not bins_only:
        ids, logits = head.decode(bb, ctx)
    else:
        lo, hi = head.bins.first_id, head.bins.last_id + 1
        prefix = bb.encode_prefix(ctx.images, ctx.state, ctx.prompt_ids)
        steps = [bb.lm_head(prefix.last_hidden).float()]  # (N, V) per step
        chosen = [steps[-1][:, lo:hi].argmax(-1) + lo]
        for _ in range(head.n_tokens - 1):
            bb.run_suffix(prefix, bb.embed_tokens(chosen[-1][:, None]), keep=True)
            steps.append(bb.lm_head(prefix.last_hidden).float())
            chosen.append(steps[-1][:, lo:hi].argmax(-1) + lo)
        ids, logits = torch.stack(chosen, 1), torch.stack(steps, 1)
    return ids.cpu(), head.ids_to_actions(ids).float().cpu(), logits[:, 0].float().cpu()


def time_alternating(
    policies: dict[str, Policy], batches: dict[str, dict], repeats: int, bar: tqdm
) -> dict[tuple[str, str], float]:
    """Median seconds of `predict_action_batch` per (precision, batch): one warm-up call each, then `repeats`
    rounds that each time every (precision, batch) once, so a neighbour's load on a shared machine falls on
    every precision alike rather than on whichever ran at that moment."""
    calls = [(p, b) for p in policies for b in batches]
    times: dict[tuple[str, str], list[float]] = {c: [] for c in calls}
    for rnd in range(1 + repeats):
        for p, b in calls:
            t0 = time.perf_counter()
            policies[p].predict_action_batch(batches[b])
            if rnd:  # round 0 is the warm-up
                times[(p, b)].append(time.perf_counter() - t0)
            bar.update()
    return {c: statistics.median(t) for c, t in times.items()}


def agreement(out: dict[str, tuple], ref: dict[str, tuple], action_ids: tuple[int, int]) -> dict[str, float]:
    """How far one precision's decoding is from full precision's on the same inputs: the policy's own
    decoding ("free") and the argmax restricted to the action bins ("bins")."""
    ids, _, logits = out["free"]
    ref_ids, _, ref_logits = ref["free"]
    bin_ids, actions, _ = out["bins"]
    lo, hi = action_ids
    return {
        "token_agreement": round(float((ids == ref_ids).float().mean()), 4),
        "first_token_agreement": round(float((ids[:, 0] == ref_ids[:, 0]).float().mean()), 4),
        # ids outside the action bins all decode to the extreme bin: flips among them leave actions equal
        "action_token_share": round(float(((ids >= lo) & (ids <= hi)).float().mean()), 4),
        "bin_agreement": round(float((bin_ids == ref["bins"][0]).float().mean()), 4),
        "mean_abs_action_diff": round(float((actions - ref["bins"][1]).abs().mean()), 5),
        "first_logit_drift": round(float((logits - ref_logits).abs().max() / ref_logits.abs().max()), 5),
    }


def _names(names: list[str], show: int = 3) -> str:
    """A short list of layer names: all of them when few, else the first ones and the count."""
    if len(names) <= show:
        return ", ".join(names) or "none"
    return f"{', '.join(names[:show])} ... ({len(names)} layers; all in the JSON)"


def machine(device: str) -> dict[str, Any]:
    """The CPU model and threads, or the GPU's name, and the software versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info | {"torch": torch.__version__, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="openvla-scaled", choices=BENCH_PRESETS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype", default=None, choices=list(DTYPES), help="default: float32 on CPU, bfloat16 on CUDA"
    )
    ap.add_argument(
        "--inputs", type=int, default=8, help="N fixed observations (the batched call takes all N)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement, after one warm-up")
    ap.add_argument("--group-size", type=int, default=128, help="int4 group size of the portable kernels")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "bitsandbytes"])
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and of the inputs")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument(
        "--json", "--out", dest="json", default=str(Path(__file__).parent / "results" / "quantize.json")
    )
    a = ap.parse_args(argv)
    if a.inputs < 1 or a.repeats < 1:
        ap.error("--inputs and --repeats must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype_name = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    dtype = DTYPES[dtype_name]

    preset = bench_preset(a.preset)
    inputs = make_inputs(a.inputs, a.seed)
    t0 = time.perf_counter()
    full = build(preset, dtype, a.device, a.seed)
    print(
        f"{preset.name}: {sum(p.numel() for p in full.parameters()) / 1e6:.1f} M parameters, built in "
        f"{time.perf_counter() - t0:.1f} s; {dtype_name} on {a.device}, {torch.get_num_threads()} threads"
    )

    policies, summaries, quantise_s = {dtype_name: full}, {}, {}
    for mode in QUANT_MODES:
        policies[mode] = copy.deepcopy(full)
        t0 = time.perf_counter()
        summaries[mode] = quantize_policy(policies[mode], mode, group_size=a.group_size, backend=a.backend)
        quantise_s[mode] = time.perf_counter() - t0

    n = a.inputs
    batches = {
        "1": {
            "images": {"primary": inputs["images"]["primary"][:1]},
            "instruction": inputs["instruction"][:1],
        }
    }
    batches[str(n)] = inputs  # with --inputs 1 the two are the same call
    total = len(policies) * (len(batches) * (1 + a.repeats) + 2)
    with tqdm(total=total, desc="timing, then decoding", unit="call", leave=False) as bar:
        latency = time_alternating(policies, batches, a.repeats, bar)
        decoded = {}
        for p, policy in policies.items():
            for view in ("free", "bins"):
                decoded.setdefault(p, {})[view] = decode(policy, inputs, bins_only=view == "bins")
                bar.update()

    bins = full.bins
    H = full.chunk_size
    rows = []
    for p, policy in policies.items():
        total_bytes, linear_bytes = weight_memory(policy.backbone)
        lat1, latn = latency[(p, "1")], latency[(p, str(n))]
        row = {
            "precision": p,
            "backbone_bytes": total_bytes,
            "linear_weight_bytes": linear_bytes,
            "latency_batch1_ms": round(lat1 * 1e3, 1),
            "actions_per_s_batch1": round(H / lat1, 3),
            "latency_batched_ms": round(latn * 1e3, 1),
            "actions_per_s_batched": round(n * H / latn, 3),
            **agreement(decoded[p], decoded[dtype_name], (bins.first_id, bins.last_id)),
        }
        if p in summaries:
            s = summaries[p]
            row |= {
                "backend": s["backend"],
                "layers_quantised": s["layers"],
                "layers_skipped": s["skipped"],
                "quantised_bytes_before": s["weight_bytes_before"],
                "quantised_bytes_after": s["weight_bytes_after"],
                "quantise_s": round(quantise_s[p], 2),
            }
        rows.append(row)

    mb = 2**20
    print(
        f"\n{preset.name}, token head ({full.head.n_tokens} tokens per action), batch 1 and batch {n}; median "
        f"of {a.repeats} alternating timed rounds after a warm-up; agreement with {dtype_name} on {n} inputs"
    )
    print(
        f"{'precision':<10}{'backbone MB':>12}{'Linear MB':>11}{'act/s b1':>10}{f'act/s b{n}':>11}"
        f"{'tokens same':>13}{'action ids':>12}{'bins same':>11}{'mean |Δa|':>11}{'logit drift':>13}"
    )
    for r in rows:
        print(
            f"{r['precision']:<10}{r['backbone_bytes'] / mb:>12.1f}{r['linear_weight_bytes'] / mb:>11.1f}"
            f"{r['actions_per_s_batch1']:>10.2f}{r['actions_per_s_batched']:>11.2f}"
            f"{r['token_agreement']:>13.1%}{r['action_token_share']:>12.1%}{r['bin_agreement']:>11.1%}"
            f"{r['mean_abs_action_diff']:>11.4f}{r['first_logit_drift']:>13.4f}"
        )
    for r in rows[1:]:
        print(
            f"{r['precision']}: {r['layers_quantised']} layers quantised ({r['backend']}) in {r['quantise_s']} s, "
            f"their weights {r['quantised_bytes_before'] / mb:.1f} -> {r['quantised_bytes_after'] / mb:.1f} MB; "
            f"kept in full precision: {_names(r['layers_skipped'])}"
        )
    print(
        "tokens same / action ids: the policy's own greedy decoding (ids equal to full precision's / ids that "
        "are action bins); bins same / mean |Δa|: argmax restricted to the bins, normalised actions"
    )
    print(f"note: {NOTE}")

    report = {
        "preset": preset.name,
        "preset_config": preset.to_dict(),
        "parameters": sum(p.numel() for p in full.parameters()),
        "dtype": dtype_name,
        "device": a.device,
        "inputs": n,
        "repeats": a.repeats,
        "group_size": a.group_size,
        "seed": a.seed,
        "machine": machine(a.device),
        "rows": rows,
        "note": NOTE,
        "definition": (
            "actions/s = samples x chunk length / median predict_action_batch latency (one warm-up call first); "
            "token agreement = share of the greedy ids equal to full precision's on the same inputs; action ids = "
            "share of the decoded ids that are action bins (the others all decode to the extreme bin); bin "
            "agreement and mean |Δa| (normalised actions) come from greedy decoding with the argmax restricted "
            "to the action bins; logit drift = max |Δ first-position logit| / max |logit|"
        ),
    }
    out = Path(a.json)
    write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
