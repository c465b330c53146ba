#!/usr/bin/env python3
"""PyTorch baselines for the CUDA benchmarks, on the same GPU in the same run (run_device.sh).

  matmul    bf16 matrix-product rate (8192^3, random data): the prefill-time estimate's rate
  compress  SimCalKV written with PyTorch operations (the same algorithm as the CUDA kernels:
            window scoring with the GQA group, causal mask and bias; top-B with protected sinks and
            recent entries; local cosine search over the 64 nearest survivors on each side;
            mass-weighted merge; bounded calibrated bias; compaction), all 32 layers of the
            Llama-3.1-8B-shaped cache at 32k tokens, heads batched, candidates in chunks
  decode    biased decode attention with SDPA (additive float mask) and FlexAttention (score_mod
            adding the bias), on the decode shapes of bench_cuda's JSON
  dense     the non-attention part of a Llama-3.1-8B decode step (QKV, O, gate/up, down projections
            of 32 layers with random bf16 weights, SiLU-and-multiply, and the LM head) for each
            batch size of bench_cuda's "batch" results

  torch_baselines.py --bench BENCH.json --out OUT.json [--quick]
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def batched_ms(fn, reps=10, inner=10, warmup=2):
    """Median over reps of the mean time of `inner` back-to-back calls (the GPU's time per call,
    launch overhead hidden behind the previous call), as bench_cuda times its decode kernels."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    times.sort()
    return times[len(times) // 2]


def median_ms(fn, reps=10, warmup=2):
    """Median over reps of one call's time."""
    return batched_ms(fn, reps=reps, inner=1, warmup=warmup)


def matmul_rate():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b, reps=10, warmup=3)
    return 2 * n**3 / (ms * 1e-3) / 1e12


# ----------------------------------------------------------------------------------------------
# SimCalKV with PyTorch operations


def simcalkv_layer(K, V, bias, pos, Q, qpos, keep, sinks=4, radius=64, chunk=2048):
    """K, V [H, n, d] bf16 (compressed in place: the first B rows); bias [H, n] f32; pos [H, n]
    int32; Q [H, R, d] (the G*W window queries of each KV head's group); qpos [R]."""
    H, n, d = K.shape
    R = Q.shape[1]
    recent = int(qpos.unique().numel())  # protected recent entries: the window's W tokens
    scale = 1.0 / math.sqrt(d)
    Kf = K.float()
    logits = torch.matmul(Q.float(), Kf.transpose(1, 2)) * scale + bias[:, None, :]
    logits.masked_fill_(pos[:, None, :] > qpos[None, :, None], float("-inf"))
    m = logits.amax(-1, keepdim=True)
    e = torch.exp(logits - m)
    mass = e.sum(1)
    score = (e / (e.sum(-1, keepdim=True) * R)).sum(1)
    del logits, e
    B = int(round(keep * n))
    P = min(n, sinks + recent)
    prot = torch.zeros(n, dtype=torch.bool, device=K.device)
    prot[:sinks] = True
    prot[n - recent:] = True
    sel = score.masked_fill(prot[None, :], float("-inf"))
    top = sel.topk(B - P, dim=-1).indices
    keep_mask = prot[None, :].expand(H, n).clone()
    keep_mask.scatter_(1, top, True)
    keep_idx = keep_mask.nonzero()[:, 1].view(H, B)
    cand_idx = (~keep_mask).nonzero()[:, 1].view(H, n - B)
    E = n - B
    inv = 1.0 / Kf.norm(dim=-1).clamp_min(1e-30)
    kept_n = Kf.gather(1, keep_idx[..., None].expand(-1, -1, d)) * inv.gather(1, keep_idx)[..., None]
    # Local search: survivors [nk - r, nk + r) around each candidate.
    nk = cand_idx - torch.arange(E, device=K.device)[None, :]
    offs = torch.arange(2 * radius, device=K.device)
    target = torch.empty(H, E, dtype=torch.long, device=K.device)
    for c0 in range(0, E, chunk):
        c1 = min(E, c0 + chunk)
        lo = (nk[:, c0:c1] - radius).clamp_min(0)
        hi = (nk[:, c0:c1] + radius).clamp_max(B)
        slots = lo[..., None] + offs
        valid = slots < hi[..., None]
        slots = slots.clamp_max(B - 1)
        kw = kept_n.gather(1, slots.reshape(H, -1)[..., None].expand(-1, -1, d)).view(H, c1 - c0, 2 * radius, d)
        ce = Kf.gather(1, cand_idx[:, c0:c1, None].expand(-1, -1, d))
        sims = torch.einsum("hcd,hcwd->hcw", ce, kw).masked_fill(~valid, float("-inf"))
        target[:, c0:c1] = slots.gather(-1, sims.argmax(-1, keepdim=True)).squeeze(-1)
    # Mass-weighted merge.
    wk = mass.gather(1, keep_idx)
    wc = mass.gather(1, cand_idx)
    Vf = V.float()
    idx_d = target[..., None].expand(-1, -1, d)
    acc_k = Kf.gather(1, keep_idx[..., None].expand(-1, -1, d)) * wk[..., None]
    acc_v = Vf.gather(1, keep_idx[..., None].expand(-1, -1, d)) * wk[..., None]
    acc_k.scatter_add_(1, idx_d, Kf.gather(1, cand_idx[..., None].expand(-1, -1, d)) * wc[..., None])
    acc_v.scatter_add_(1, idx_d, Vf.gather(1, cand_idx[..., None].expand(-1, -1, d)) * wc[..., None])
    total = wk.scatter_add(1, target, wc)
    new_k = acc_k / total[..., None]
    new_v = acc_v / total[..., None]
    bk = bias.gather(1, keep_idx)
    bc = bias.gather(1, cand_idx)
    max_b = bk.scatter_reduce(1, target, bc, reduce="amax", include_self=True)
    lse = torch.exp(bk - max_b).scatter_add(1, target, torch.exp(bc - max_b.gather(1, target)))
    log_count = max_b + torch.log(lse)
    has = torch.zeros(H, B, dtype=torch.bool, device=K.device)
    has.scatter_(1, target, True)
    # Bounded calibrated bias: log of the set's mass minus the merged key's mass under the window.
    pk = pos.gather(1, keep_idx)
    lg = torch.matmul(Q.float(), new_k.transpose(1, 2)) * scale - m
    lg.masked_fill_(pk[:, None, :] > qpos[None, :, None], float("-inf"))
    merged_mass = torch.logsumexp(lg, dim=1)
    calibrated = torch.log(total) - merged_mass
    bounded = torch.minimum(torch.maximum(calibrated, max_b), log_count)
    # Compaction: survivors in position order, merged rows rewritten.
    K[:, :B] = torch.where(has[..., None], new_k, Kf.gather(1, keep_idx[..., None].expand(-1, -1, d))).to(K.dtype)
    V[:, :B] = torch.where(has[..., None], new_v, Vf.gather(1, keep_idx[..., None].expand(-1, -1, d))).to(V.dtype)
    bias[:, :B] = torch.where(has, bounded, bk)
    pos[:, :B] = pk
    return B


def bench_compress(layers, keep, reps):
    H, d, G, W, n = 8, 128, 4, 32, 32768
    torch.manual_seed(0)
    t = torch.arange(n, device="cuda", dtype=torch.float32)
    freq = 0.002 + 0.02 * torch.rand(d, device="cuda")
    phase = 6.2831853 * torch.rand(d, device="cuda")
    K0 = [(1.5 * torch.sin(t[:, None] * freq + phase) + 0.5 * (2 * torch.rand(n, d, device="cuda") - 1)).expand(H, n, d)
          .to(torch.bfloat16).contiguous() for _ in range(layers)]
    V0 = [(2 * torch.rand(H, n, d, device="cuda") - 1).to(torch.bfloat16) for _ in range(layers)]
    Q = (2 * (2 * torch.rand(H, G * W, d, device="cuda") - 1)).to(torch.bfloat16)
    qpos = torch.arange(n - W, n, device="cuda", dtype=torch.int32).repeat(G)
    times = []
    for r in range(reps + 1):
        Ks = [k.clone() for k in K0]
        Vs = [v.clone() for v in V0]
        bs = [torch.zeros(H, n, device="cuda") for _ in range(layers)]
        ps = [torch.arange(n, device="cuda", dtype=torch.int32).expand(H, n).contiguous() for _ in range(layers)]
        torch.cuda.synchronize()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for l in range(layers):
            simcalkv_layer(Ks[l], Vs[l], bs[l], ps[l], Q, qpos, keep)
        b.record()
        b.synchronize()
        if r > 0:
            times.append(a.elapsed_time(b))
        del Ks, Vs, bs, ps
    times.sort()
    return times[len(times) // 2]


# ----------------------------------------------------------------------------------------------
# Decode attention baselines


def bench_decode(entry, with_flex=True):
    n, reqs, Hkv, G, d = entry["tokens_per_head"], entry["requests"], 8, 4, 128
    q = torch.randn(reqs, Hkv * G, 1, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(reqs, Hkv, n, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(reqs, Hkv, n, d, device="cuda", dtype=torch.bfloat16)
    bias = 0.5 * torch.randn(reqs, Hkv, n, device="cuda", dtype=torch.float32)
    out = {"tokens_per_head": n, "requests": reqs}
    mask = bias.to(torch.bfloat16).repeat_interleave(G, dim=1)[:, :, None, :].contiguous()  # [B, 32, 1, n]
    try:
        out["sdpa_gqa_mask_ms"] = batched_ms(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), reps=20)
    except Exception as e:  # noqa: BLE001
        out["sdpa_gqa_mask_error"] = str(e)[:200]
    try:
        ke = k.repeat_interleave(G, dim=1)
        ve = v.repeat_interleave(G, dim=1)
        out["sdpa_expanded_kv_mask_ms"] = batched_ms(
            lambda: F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask), reps=20)
        del ke, ve
    except Exception as e:  # noqa: BLE001
        out["sdpa_expanded_kv_mask_error"] = str(e)[:200]
    del mask
    try:
        if not with_flex:
            raise RuntimeError("skipped at this length (one compilation per shape costs device time)")
        from torch.nn.attention.flex_attention import flex_attention

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b, h // G, kv_idx]

        flex = torch.compile(flex_attention, dynamic=False)
        t0 = time.time()
        flex(q, k, v, score_mod=score_mod, enable_gqa=True)
        torch.cuda.synchronize()
        out["flex_compile_s"] = time.time() - t0
        out["flex_score_mod_ms"] = batched_ms(lambda: flex(q, k, v, score_mod=score_mod, enable_gqa=True), reps=20)
    except Exception as e:  # noqa: BLE001
        out["flex_error"] = str(e)[:300]
    del q, k, v, bias
    torch.cuda.empty_cache()
    return out


def bench_dense(batches):
    hidden, inter, vocab, layers = 4096, 14336, 128256, 32
    torch.manual_seed(1)
    w_qkv = torch.randn(hidden, 6144, device="cuda", dtype=torch.bfloat16) * 0.02
    w_o = torch.randn(hidden, hidden, device="cuda", dtype=torch.bfloat16) * 0.02
    w_gu = torch.randn(hidden, 2 * inter, device="cuda", dtype=torch.bfloat16) * 0.02
    w_d = torch.randn(inter, hidden, device="cuda", dtype=torch.bfloat16) * 0.02
    w_lm = torch.randn(hidden, vocab, device="cuda", dtype=torch.bfloat16) * 0.02
    res = {}
    for bsz in batches:
        x = torch.randn(bsz, hidden, device="cuda", dtype=torch.bfloat16)

        def step():
            h = x
            for _ in range(layers):
                qkv = h @ w_qkv
                h = h + qkv[:, :hidden] @ w_o
                gu = h @ w_gu
                h = h + (F.silu(gu[:, :inter]) * gu[:, inter:]) @ w_d
            return h @ w_lm

        res[str(bsz)] = median_ms(step, reps=10, warmup=2)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    bench = json.load(open(args.bench))
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    def save():
        json.dump(res, open(args.out, "w"), indent=2)

    res["matmul_tflops"] = matmul_rate()
    print(f"bf16 matmul 8192^3: {res['matmul_tflops']:.0f} TFLOP/s", flush=True)
    save()
    if "dense" not in skip:
        batches = sorted({r["requests"] for r in bench["results"] if r["bench"] == "batch"})
        res["dense_step_ms"] = bench_dense(batches)
        print("dense decode step (ms) by batch:", res["dense_step_ms"], flush=True)
        save()
    if "compress" not in skip:
        layers = 4 if args.quick else 32
        res["compress"] = []
        for keep in ([0.25] if args.quick else [0.25, 0.5, 0.1]):
            ms = bench_compress(layers, keep, reps=1)
            res["compress"].append({"policy": "SimCalKV (PyTorch)", "keep": keep, "layers": layers, "ms_median": ms})
            print(f"PyTorch SimCalKV keep {keep}: {ms:.1f} ms for {layers} layers", flush=True)
            save()
            torch.cuda.empty_cache()
    if "decode" not in skip:
        res["decode"] = []
        for entry in bench["results"]:
            if entry["bench"] != "decode":
                continue
            if args.quick and entry["tokens_per_head"] != 8192:
                continue
            r = bench_decode(entry, with_flex=entry["tokens_per_head"] in (8192, 32768))
            res["decode"].append(r)
            print("decode", r, flush=True)
            save()
    save()


if __name__ == "__main__":
    sys.exit(main())
