"""The library's operators on torch tensors: compress one layer, attend over it.

Shapes: a layer of H KV heads is ragged: keys and values [total, head_dim] (head h's entries are
rows offsets[h]..offsets[h+1], offsets the running sum of `lengths`), bias [total] float32 (the
additive logit bias of merged entries), positions [total] int32 (each entry's original position,
for causality and the next compression). Queries are [num_query_heads, tokens, head_dim], query
head q belonging to KV head q // G (Hugging Face's repeat_kv order). The CPU kernels run on CPU
tensors; tensors on another device are copied to the CPU and the results copied back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _C


def policy_names() -> list[str]:
    """The names `compress` accepts as the start of a spec (options follow a colon)."""
    return list(_C.policy_names())


@dataclass
class Compressed:
    """What `compress` returns: the kept entries of every head, packed, and what happened."""

    keys: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor  # int64 [heads]
    kept: torch.Tensor  # int64 [total]: each kept entry's index within its head before compression
    scores: torch.Tensor | None
    merged: int
    evicted: int


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu")


def _ragged_inputs(keys, values, window_queries, lengths, positions, bias, window_positions, scores):
    """The arguments of the C++ ops from `compress`'s: CPU tensors, ragged, defaults filled in.
    Returns (keys, values, bias, positions, lengths, window_queries, window_positions, scores)."""
    if keys.dim() == 3:
        if lengths is not None:
            raise ValueError("compress: pass lengths only with ragged [total, head_dim] keys")
        heads, n, d = keys.shape
        if values.shape != keys.shape:
            raise ValueError(f"compress: values {tuple(values.shape)} differ from keys {tuple(keys.shape)}")
        lengths = torch.full((heads,), n, dtype=torch.int64)
        keys = keys.reshape(heads * n, d)
        values = values.reshape(heads * n, d)
        if positions is not None and positions.dim() == 1 and positions.numel() == n:
            positions = positions.repeat(heads)
        elif positions is not None and positions.dim() == 2:
            positions = positions.reshape(-1)
        if bias is not None:
            bias = bias.reshape(-1)
        if scores is not None:
            scores = scores.reshape(-1)
    elif lengths is None:
        raise ValueError("compress: ragged [total, head_dim] keys need lengths [heads]")
    keys, values, lengths = _cpu(keys), _cpu(values), _cpu(lengths).to(torch.int64)
    total = keys.shape[0]
    if positions is None:
        positions = torch.cat([torch.arange(int(n), dtype=torch.int32) for n in lengths.tolist()])
    if bias is None:
        bias = torch.zeros(total, dtype=torch.float32)
    positions = _cpu(positions).to(torch.int32)
    bias = _cpu(bias).to(torch.float32)
    wq = _cpu(window_queries).to(torch.float32)
    if window_positions is None:
        last = int(positions.max()) + 1 if total else 0
        window_positions = torch.arange(last - wq.shape[1], last, dtype=torch.int32)
    return keys, values, bias, positions, lengths, wq, _cpu(window_positions).to(torch.int32), _cpu(scores)


def reallocates(spec: str) -> bool:
    """Whether policy `spec` moves budget between the KV heads of a layer (AdaKV+...)."""
    return bool(_C.policy_reallocates(spec))


def decides_across_heads(spec: str) -> bool:
    """Whether a head's plan under policy `spec` depends on the layer's other heads (TOVA and
    PyramidInfer keep one set per layer, D2O takes one merge decision): a rank holding a shard of
    the heads cannot reproduce it."""
    return bool(_C.policy_decides_across_heads(spec))


def score_layer(
    keys: torch.Tensor,
    values: torch.Tensor,
    window_queries: torch.Tensor,
    *,
    spec: str,
    compress_ratio: float = 0.5,
    lengths: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    window_positions: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    layer: int = 0,
    num_layers: int = 1,
    threads: int = 1,
    first_kv_head: int = 0,
) -> dict:
    """What an AdaKV policy `spec` reallocates from, for the layer `compress` would compress (same
    arguments): {"lengths": int64 [H], "budgets": int64 [H] (before the reallocation), "scores":
    float32 [sum of lengths] (every head's selection scores, one after the other)}. The ranks of a
    tensor-parallel layer gather these to reallocate over the whole layer (`global_budgets`)."""
    args = _ragged_inputs(keys, values, window_queries, lengths, positions, bias, window_positions, scores)
    return dict(_C.score_layer(*args[:7], spec, float(compress_ratio), args[7], int(layer), int(num_layers),
                               int(threads), int(first_kv_head)))


def global_budgets(spec: str, lengths: torch.Tensor, budgets: torch.Tensor, scores: torch.Tensor,
                   window_tokens: int) -> torch.Tensor:
    """The per-head budgets (int64) of a whole layer from every rank's `score_layer` output,
    concatenated in rank order: the same on every rank, and those of one process holding every
    head."""
    return _C.global_budgets(spec, _cpu(lengths).to(torch.int64), _cpu(budgets).to(torch.int64),
                             _cpu(scores).to(torch.float32), int(window_tokens))


def compress(
    keys: torch.Tensor,
    values: torch.Tensor,
    window_queries: torch.Tensor,
    *,
    spec: str = "SimCalKV",
    compress_ratio: float = 0.5,
    lengths: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    window_positions: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    shared_selection: bool = False,
    layer: int = 0,
    num_layers: int = 1,
    threads: int = 1,
    budgets: torch.Tensor | None = None,
    first_kv_head: int = 0,
) -> Compressed:
    """Compresses one layer with a registry policy `spec` (e.g. "SnapKV", "AdaKV+SimCalKV",
    "SimCalKV:bias=log_count") removing `compress_ratio` of its entries.

    keys/values: dense [H, n, d] (every head n entries; lengths, positions and bias may be left
    out: positions 0..n-1, bias 0) or ragged [total, d] with `lengths` [H]. window_queries: the last
    W post-RoPE queries [num_query_heads, W, d] (any float dtype); window_positions [W] defaults to
    the W positions after the last entry's, minus W (the window ends the prompt). budgets: int64 [H],
    final per-head budgets the policy selects with as they are (no schedule, no AdaKV
    reallocation): what `simcalkv.tp` passes after reallocating over every rank's heads.
    first_kv_head: the index of these heads' first in the whole layer, when a rank holds a slice
    of it (a method whose rule depends on the head's identity, CaM's draws, then repeats).
    """
    device = keys.device
    args = _ragged_inputs(keys, values, window_queries, lengths, positions, bias, window_positions, scores)
    result = _C.compress_ragged(
        *args[:7], spec, float(compress_ratio), args[7], bool(shared_selection), int(layer), int(num_layers),
        int(threads), None if budgets is None else _cpu(budgets).to(torch.int64), int(first_kv_head),
    )

    def back(t):
        return None if t is None else t.to(device)

    return Compressed(
        keys=back(result["keys"]), values=back(result["values"]), bias=back(result["bias"]),
        positions=back(result["positions"]), lengths=result["lengths"], kept=result["kept"],
        scores=back(result["scores"]), merged=int(result["merged"]), evicted=int(result["evicted"]),
    )


def attend(
    queries: torch.Tensor,
    query_positions: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    positions: torch.Tensor,
    lengths: torch.Tensor,
    scale: float = 0.0,
) -> torch.Tensor:
    """softmax(scale * q.k + bias) v for queries [Hq, m, d] over a ragged layer, each query seeing
    the entries whose position is <= its own; scale 0 means 1/sqrt(d). Returns float32 [Hq, m, d]."""
    out = _C.attend_ragged(
        _cpu(queries).to(torch.float32), _cpu(query_positions).to(torch.int32), _cpu(keys), _cpu(values),
        _cpu(bias).to(torch.float32), _cpu(positions).to(torch.int32), _cpu(lengths).to(torch.int64), float(scale),
    )
    return out.to(queries.device)
