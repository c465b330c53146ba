"""Tensor parallelism: a layer's KV heads split over torch.distributed ranks, each rank
compressing its own.

Under tensor parallelism (transformers' `tp_plan="auto"` under torchrun, vLLM, TensorRT-LLM) rank r
of R holds KV heads [r H/R, (r+1) H/R) of every layer and their query heads, because k_proj and
v_proj are split column-wise. Each rank compresses the heads it holds:

- a per-head policy (SnapKV, SimCalKV, H2O, ...) needs nothing more: a head's result depends on
  that head and its query group only, so every rank gets exactly what one process holding the whole
  layer gets;
- a policy that moves budget between heads (AdaKV+...) has two modes, `budgets=`:
  - "shard": AdaKV among the rank's own heads. No communication, and every rank keeps exactly its
    share of the layer's budget (memory stays balanced), but the result is AdaKV of the sub-layer;
  - "global": the single-process result. Every rank scores its heads (`ops.score_layer`), the ranks
    all-gather the heads' sizes and then their scores (two all-gathers per layer: the sizes are
    needed to pad the scores to one length), every rank runs the same reallocation over all heads
    (`ops.global_budgets`) and compresses its own with its slice of the budgets. Ranks may then
    hold different numbers of entries.

TOVA, PyramidInfer (one kept set per layer) and D2O (one merge decision per layer) read every head
of the layer; `compress_shard` refuses them when the group has more than one rank.

The C++ side of the same steps is include/simcalkv/tensor_parallel.hpp.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import ops

MODES = ("shard", "global")


def head_shard(num_kv_heads: int, world_size: int, rank: int) -> tuple[int, int]:
    """(first head, number of heads) rank `rank` holds: a contiguous block, as a column-wise split
    of k_proj and v_proj gives."""
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"tp: rank {rank} is outside [0, {world_size})")
    if num_kv_heads % world_size:
        raise ValueError(f"tp: {num_kv_heads} KV heads do not split evenly over {world_size} ranks")
    per = num_kv_heads // world_size
    return rank * per, per


def _collective_device(group) -> torch.device:
    """NCCL all-gathers CUDA tensors only; gloo takes CPU tensors."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_budgets(spec: str, layer_scores: dict, window_tokens: int, group=None) -> torch.Tensor:
    """Every rank's `ops.score_layer` output gathered, and the whole layer's per-head budgets
    reallocated from it (int64 [H_total], identical on every rank, in rank order of the heads)."""
    world = dist.get_world_size(group)
    device = _collective_device(group)
    heads = layer_scores["lengths"].numel()
    header = torch.cat([layer_scores["lengths"], layer_scores["budgets"]]).to(device)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    if any(h.numel() != header.numel() for h in headers):
        raise ValueError("tp: ranks hold different numbers of KV heads")
    sizes = [int(h[:heads].sum()) for h in headers]
    padded = torch.zeros(max(sizes), dtype=torch.float32, device=device)
    padded[: layer_scores["scores"].numel()] = layer_scores["scores"].to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    lengths = torch.cat([h[:heads].cpu() for h in headers])
    budgets = torch.cat([h[heads:].cpu() for h in headers])
    scores = torch.cat([g[:n].cpu() for g, n in zip(gathered, sizes)])
    return ops.global_budgets(spec, lengths, budgets, scores, window_tokens)


def compress_shard(keys: torch.Tensor, values: torch.Tensor, window_queries: torch.Tensor, *, spec: str = "SimCalKV",
                   compress_ratio: float = 0.5, budgets: str = "shard", group=None, **kwargs) -> ops.Compressed:
    """`ops.compress` of this rank's KV heads (keys/values hold only them, window_queries only their
    query heads), under torch.distributed `group` (default: the world). `budgets`: "shard" or
    "global" (see the module docstring; it matters only for AdaKV+ policies). Other keyword
    arguments are `ops.compress`'s."""
    if budgets not in MODES:
        raise ValueError(f"tp: budgets '{budgets}' is not one of {', '.join(MODES)}")
    distributed = dist.is_available() and dist.is_initialized()
    heads = keys.shape[0] if keys.dim() == 3 else kwargs["lengths"].numel()
    rank = dist.get_rank(group) if distributed else 0
    if distributed and dist.get_world_size(group) > 1 and ops.decides_across_heads(spec):
        raise ValueError(f"tp: {spec} decides over every KV head of a layer (one kept set or one merge decision), "
                         "which a rank holding a shard of the heads cannot reproduce")
    kwargs.setdefault("first_kv_head", rank * heads)  # the heads keep their identity in the layer
    if budgets == "shard" or not ops.reallocates(spec) or not distributed:
        return ops.compress(keys, values, window_queries, spec=spec, compress_ratio=compress_ratio, **kwargs)
    score_args = {k: v for k, v in kwargs.items() if k != "shared_selection"}
    mine = ops.score_layer(keys, values, window_queries, spec=spec, compress_ratio=compress_ratio, **score_args)
    whole = gather_budgets(spec, mine, window_queries.shape[-2], group)
    own = whole[rank * heads:(rank + 1) * heads]
    return ops.compress(keys, values, window_queries, spec=spec, compress_ratio=compress_ratio, budgets=own, **kwargs)
