"""One layer of a whole batch, compressed and attended on the GPU by the CUDA kernels.

Sequence s = request * heads + head owns rows offsets[s] .. offsets[s] + lengths[s] of keys and
values [rows, d] (bfloat16 or float16), with capacity[s] rows reserved so that decoding appends
without moving anything. `lengths` lives on the GPU (the kernels lower it); the host keeps its
own copy, exact, because it changes only by compression (read back once, to free memory) and by
appends of the same count to every sequence.
"""
from __future__ import annotations

import math
import re

import torch

from . import _C

_METHODS = {"StreamingLLM": 0, "SnapKV": 1, "SimCalKV": 2}
_POOLING = {"none": 0, "max": 1, "avg": 2}


def policy_of(spec: str):
    """The CUDA policy of a registry spec, or None where the CUDA kernels have no such policy
    ("[AdaKV+]StreamingLLM|SnapKV|SimCalKV", options sinks, pooling, pool_kernel only)."""
    m = re.fullmatch(r"(AdaKV\+)?(StreamingLLM|SnapKV|SimCalKV)(?::(.*))?", spec.strip())
    if m is None:
        return None
    policy = {"method": _METHODS[m.group(2)], "sink_tokens": -1, "pooling": -1, "pool_kernel": 0,
              "adakv": m.group(1) is not None}
    for part in filter(None, (m.group(3) or "").split(",")):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key == "sinks" and value.isdigit():
            policy["sink_tokens"] = int(value)
        elif key == "pooling" and value in _POOLING and m.group(2) != "StreamingLLM":
            policy["pooling"] = _POOLING[value]
        elif key == "pool_kernel" and value.isdigit() and int(value) > 0:
            policy["pool_kernel"] = int(value)
        else:
            return None  # an option only the CPU policies know
    return policy


def eligible(keys: torch.Tensor, num_query_heads: int, spec: str) -> bool:
    """Whether the CUDA kernels can compress and attend this layer with this spec."""
    return (getattr(_C, "has_cuda", False) and keys.is_cuda and keys.dtype in (torch.bfloat16, torch.float16)
            and keys.shape[-1] in (64, 128) and num_query_heads % keys.shape[1] == 0
            and num_query_heads // keys.shape[1] <= 8 and policy_of(spec) is not None)


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


class CudaRaggedBatch:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, reserve: int = 64):
        """From a layer's dense [batch, heads, n, d] keys and values (positions 0 .. n-1)."""
        b, h, n, d = keys.shape
        self.requests, self.heads, self.head_dim, self.reserve = b, h, d, int(reserve)
        dev = keys.device
        s = b * h
        self.keys = keys.reshape(s * n, d).contiguous()
        self.values = values.reshape(s * n, d).contiguous()
        self.bias = torch.zeros(s * n, dtype=torch.float32, device=dev)
        self.positions = torch.arange(n, dtype=torch.int32, device=dev).repeat(s)
        self.offsets = torch.arange(s, dtype=torch.int64, device=dev) * n
        self.lengths = torch.full((s,), n, dtype=torch.int32, device=dev)
        self.host_lengths = torch.full((s,), n, dtype=torch.int64)
        self.capacity = torch.full((s,), n, dtype=torch.int64)

    # --- storage -----------------------------------------------------------------------------
    def _repack(self, reserve: int) -> None:
        """Moves every sequence's live rows into fresh buffers with `reserve` spare rows each: what
        compression removed is released."""
        dev = self.keys.device
        n = self.host_lengths
        capacity = n + reserve
        new_offsets = torch.zeros_like(capacity)
        new_offsets[1:] = torch.cumsum(capacity, 0)[:-1]
        # Row indices built on the GPU (output_size given: no synchronisation).
        total = int(n.sum())
        n_dev = n.to(dev)
        seq = torch.repeat_interleave(torch.arange(n.numel(), device=dev), n_dev, output_size=total)
        within = torch.arange(total, device=dev) - torch.repeat_interleave(torch.cumsum(n_dev, 0) - n_dev, n_dev,
                                                                           output_size=total)
        src = self.offsets[seq] + within
        dst = new_offsets.to(dev)[seq] + within
        rows = int(capacity.sum())
        keys = torch.empty(rows, self.head_dim, dtype=self.keys.dtype, device=dev)
        values = torch.empty_like(keys)
        bias = torch.zeros(rows, dtype=torch.float32, device=dev)
        positions = torch.full((rows,), -1, dtype=torch.int32, device=dev)
        keys[dst] = self.keys[src]
        values[dst] = self.values[src]
        bias[dst] = self.bias[src]
        positions[dst] = self.positions[src]
        self.keys, self.values, self.bias, self.positions = keys, values, bias, positions
        self.offsets, self.capacity = new_offsets.to(dev), capacity

    def nbytes(self) -> int:
        """Bytes held on the GPU: keys, values, bias and positions, spare rows included."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.bias, self.positions))

    def kv_bytes_live(self) -> int:
        """Bytes of the live keys and values alone."""
        return int(self.host_lengths.sum()) * 2 * self.head_dim * self.keys.element_size()

    def kept_lengths(self) -> list[list[int]]:
        return self.host_lengths.reshape(self.requests, self.heads).tolist()

    def repeat(self, times: int) -> "CudaRaggedBatch":
        """The batch `times` over (for measuring decode at larger batches from one prefill)."""
        other = CudaRaggedBatch.__new__(CudaRaggedBatch)
        other.requests, other.heads, other.head_dim, other.reserve = self.requests * times, self.heads, self.head_dim, self.reserve
        rows = self.keys.shape[0]
        other.keys, other.values = self.keys.repeat(times, 1), self.values.repeat(times, 1)
        other.bias, other.positions = self.bias.repeat(times), self.positions.repeat(times)
        shift = torch.arange(times, device=self.offsets.device, dtype=torch.int64)[:, None] * rows
        other.offsets = (self.offsets[None, :] + shift).reshape(-1)
        other.lengths = self.lengths.repeat(times)
        other.host_lengths, other.capacity = self.host_lengths.repeat(times), self.capacity.repeat(times)
        return other

    # --- compression -------------------------------------------------------------------------
    def compress(self, window_queries: torch.Tensor, window_positions: torch.Tensor, spec: str,
                 compress_ratio: float) -> None:
        """Compresses every sequence in place with the CUDA kernels (window_queries [batch, Hq, W, d],
        post-RoPE), then releases what was removed. Refuses NaN or Inf before touching anything."""
        policy = policy_of(spec)
        if policy is None:
            raise ValueError(f"simcalkv: the CUDA kernels have no policy '{spec}'")
        if not 0.0 <= compress_ratio < 1.0:
            raise ValueError(f"compress_ratio {compress_ratio} is outside [0, 1)")
        q = window_queries.float()
        for name, t in (("window queries", q), ("keys", self.keys), ("values", self.values)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"simcalkv: {name} contain NaN or Inf")
        _C.cuda_compress(self.keys, self.values, self.bias, self.positions, self.offsets, self.lengths, self.heads,
                         int(self.capacity.max()), q, window_positions.to(device=q.device, dtype=torch.int32).contiguous(),
                         policy["method"], policy["sink_tokens"], policy["pooling"], policy["pool_kernel"],
                         policy["adakv"], float(compress_ratio), _stream())
        self.host_lengths = self.lengths.to("cpu", torch.int64)  # the one read-back
        self._repack(self.reserve)

    # --- decoding ----------------------------------------------------------------------------
    def append(self, keys: torch.Tensor, values: torch.Tensor, first_position: int) -> None:
        """Appends t tokens to every sequence: keys/values [batch, heads, t, d]."""
        b, h, t, d = keys.shape
        if (b, h, d) != (self.requests, self.heads, self.head_dim):
            raise ValueError(f"simcalkv: appending [{b}, {h}, {t}, {d}] to a layer of {self.requests} x {self.heads} "
                             f"heads of dim {self.head_dim}")
        if bool((self.host_lengths + t > self.capacity).any()):
            self._repack(max(self.reserve, t, int(0.25 * float(self.host_lengths.max()))))
        dev = self.keys.device
        rows = (self.offsets + self.lengths.to(torch.int64))[:, None] + torch.arange(t, device=dev)[None, :]
        rows = rows.reshape(-1)
        self.keys[rows] = keys.reshape(-1, d).to(self.keys.dtype)
        self.values[rows] = values.reshape(-1, d).to(self.values.dtype)
        self.bias[rows] = 0.0
        self.positions[rows] = torch.arange(first_position, first_position + t, dtype=torch.int32,
                                            device=dev).repeat(b * h)
        self.lengths += t
        self.host_lengths += t

    def decode(self, queries: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """One token per request: queries [batch, Hq, d] -> [batch, Hq, d] in the cache's dtype."""
        q = queries.to(self.keys.dtype)
        if q.stride(-1) != 1:
            q = q.contiguous()
        return _C.cuda_decode(self.keys, self.values, self.bias, self.positions, self.offsets, self.lengths,
                              self.heads, int(self.host_lengths.max()), q, 0.0 if scale is None else float(scale),
                              _stream())

    def attend(self, queries: torch.Tensor, query_positions: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """Several tokens per request (queries [batch, Hq, m, d], positions [m]), each seeing entries at
        positions <= its own: torch over a padded gather. Returns [batch, Hq, m, d] float32."""
        b, hq, m, d = queries.shape
        h, g = self.heads, hq // self.heads
        dev = self.keys.device
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        longest = int(self.host_lengths.max())
        j = torch.arange(longest, device=dev)
        lengths = self.lengths.to(torch.int64)
        valid = j[None, :] < lengths[:, None]
        rows = torch.where(valid, self.offsets[:, None] + j[None, :], 0)  # [S, L]
        k = self.keys[rows].float().reshape(b, h, longest, d)
        v = self.values[rows].float().reshape(b, h, longest, d)
        bias = torch.where(valid, self.bias[rows], float("-inf")).reshape(b, h, 1, 1, longest)
        p = self.positions[rows].reshape(b, h, 1, 1, longest)
        q = queries.float().reshape(b, h, g, m, d)
        logits = torch.einsum("bhgmd,bhld->bhgml", q, k) * scale + bias
        visible = p <= query_positions.to(dev).reshape(1, 1, 1, m, 1)
        logits = logits.masked_fill(~visible, float("-inf"))
        out = torch.einsum("bhgml,bhld->bhgmd", torch.softmax(logits, dim=-1), v)
        return out.reshape(b, hq, m, d)
