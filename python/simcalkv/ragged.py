"""One layer's compressed KV cache for one sequence, on any device: ragged per-head storage.

Head h's entries live in rows offsets[h] .. offsets[h] + lengths[h] of keys/values [rows, d], with
capacity[h] rows reserved for it, so decoding appends to every head without moving the others, and
a head that kept fewer entries (AdaKV budgets) holds fewer rows: `nbytes()` is what is really held.
"""
from __future__ import annotations

import math

import torch

from . import ops


class RaggedLayer:
    def __init__(self, keys, values, bias, positions, lengths, reserve: int = 64):
        """From packed ragged tensors (no slack): keys/values [total, d], bias [total] float32,
        positions [total] int32, lengths int64 [heads]. `reserve` rows per head are added for
        appends."""
        self.reserve = int(reserve)
        self._pack(keys, values, bias, positions, lengths.to(torch.int64).cpu())

    @classmethod
    def from_dense(cls, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor | None = None,
                   reserve: int = 64) -> "RaggedLayer":
        """From one sequence's dense [heads, n, d] keys and values (positions [n], default 0..n-1)."""
        heads, n, d = keys.shape
        if positions is None:
            positions = torch.arange(n, dtype=torch.int32, device=keys.device)
        return cls(keys.reshape(heads * n, d), values.reshape(heads * n, d),
                   torch.zeros(heads * n, dtype=torch.float32, device=keys.device),
                   positions.to(device=keys.device, dtype=torch.int32).repeat(heads),
                   torch.full((heads,), n, dtype=torch.int64), reserve)

    # --- storage ---------------------------------------------------------------------------
    def _pack(self, keys, values, bias, positions, lengths):
        heads = lengths.numel()
        d = keys.shape[1]
        capacity = lengths + self.reserve
        offsets = torch.zeros(heads, dtype=torch.int64)
        offsets[1:] = torch.cumsum(capacity, 0)[:-1]
        rows = int(capacity.sum())
        dev = keys.device
        self.keys = torch.zeros(rows, d, dtype=keys.dtype, device=dev)
        self.values = torch.zeros(rows, d, dtype=values.dtype, device=dev)
        self.bias = torch.zeros(rows, dtype=torch.float32, device=dev)
        self.positions = torch.full((rows,), -1, dtype=torch.int32, device=dev)
        src = torch.zeros(heads + 1, dtype=torch.int64)
        src[1:] = torch.cumsum(lengths, 0)
        dst = self._rows(offsets, lengths).to(dev)
        self.keys[dst] = keys
        self.values[dst] = values
        self.bias[dst] = bias.to(device=dev, dtype=torch.float32)
        self.positions[dst] = positions.to(device=dev, dtype=torch.int32)
        self.offsets, self.capacity, self.lengths = offsets, capacity, lengths.clone()

    @staticmethod
    def _rows(offsets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The storage rows of every live entry, head by head."""
        if int(lengths.sum()) == 0:
            return torch.zeros(0, dtype=torch.int64)
        return torch.cat([torch.arange(int(o), int(o) + int(n)) for o, n in zip(offsets.tolist(), lengths.tolist())])

    @property
    def heads(self) -> int:
        return self.lengths.numel()

    @property
    def head_dim(self) -> int:
        return self.keys.shape[1]

    def packed(self):
        """(keys, values, bias, positions, lengths) with no slack, head after head."""
        rows = self._rows(self.offsets, self.lengths).to(self.keys.device)
        return self.keys[rows], self.values[rows], self.bias[rows], self.positions[rows], self.lengths.clone()

    def nbytes(self) -> int:
        """Bytes the layer holds (keys, values, bias and positions, slack included)."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.bias, self.positions))

    def live_bytes(self) -> int:
        """Bytes of the live entries alone."""
        n = int(self.lengths.sum())
        per = 2 * self.head_dim * self.keys.element_size() + 4 + 4
        return n * per

    # --- decoding --------------------------------------------------------------------------
    def append(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Appends t tokens to every head: keys/values [heads, t, d], positions [t]."""
        heads, t, d = keys.shape
        if heads != self.heads or d != self.head_dim:
            raise ValueError(f"RaggedLayer.append: got [{heads}, {t}, {d}] for a layer of {self.heads} heads of dim {self.head_dim}")
        if bool((self.lengths + t > self.capacity).any()):
            k, v, b, p, n = self.packed()
            self.reserve = max(self.reserve, t, int(0.25 * float(n.max())))
            self._pack(k, v, b, p, n)
        dev = self.keys.device
        base = (self.offsets + self.lengths).to(dev)
        rows = (base[:, None] + torch.arange(t, device=dev)[None, :]).reshape(-1)
        self.keys[rows] = keys.reshape(heads * t, d).to(self.keys.dtype)
        self.values[rows] = values.reshape(heads * t, d).to(self.values.dtype)
        self.bias[rows] = 0.0
        self.positions[rows] = positions.to(device=dev, dtype=torch.int32).repeat(heads)
        self.lengths += t

    def compress(self, window_queries: torch.Tensor, window_positions: torch.Tensor, spec: str,
                 compress_ratio: float, layer: int = 0, num_layers: int = 1, tp_budgets: str = "shard",
                 tp_group=None, **options) -> ops.Compressed:
        """Compresses the layer in place with a registry policy; returns what `ops.compress` did.
        Under tensor parallelism (this layer holds one rank's KV heads), tp_budgets="global" gives
        AdaKV+ policies the budgets of the whole layer (simcalkv.tp; a collective over tp_group)."""
        k, v, b, p, n = self.packed()
        args = dict(spec=spec, compress_ratio=compress_ratio, lengths=n, positions=p, bias=b,
                    window_positions=window_positions, layer=layer, num_layers=num_layers, **options)
        if tp_budgets == "shard":
            result = ops.compress(k, v, window_queries, **args)
        else:
            from . import tp  # torch.distributed, only when asked for

            result = tp.compress_shard(k, v, window_queries, budgets=tp_budgets, group=tp_group, **args)
        self._pack(result.keys, result.values, result.bias, result.positions, result.lengths)
        return result

    # --- attention -------------------------------------------------------------------------
    def attend(self, queries: torch.Tensor, query_positions: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """softmax(scale q.k + bias) v for queries [Hq, m, d] (query head q on KV head q // G), each
        query seeing entries at positions <= its own. CPU: the library's kernel; other devices: the
        same math in torch over a padded gather. Returns float32 [Hq, m, d]."""
        scale = 1.0 / math.sqrt(self.head_dim) if scale is None else float(scale)
        if self.keys.device.type == "cpu":
            k, v, b, p, n = self.packed()
            return ops.attend(queries, query_positions, k, v, b, p, n, scale)
        return self._attend_torch(queries, query_positions, scale)

    def _attend_torch(self, queries, query_positions, scale, chunk: int = 1024):
        dev = self.keys.device
        hq, m, d = queries.shape
        h = self.heads
        g = hq // h
        longest = int(self.lengths.max())
        j = torch.arange(longest, device=dev)
        lengths = self.lengths.to(dev)
        valid = j[None, :] < lengths[:, None]
        rows = torch.where(valid, self.offsets.to(dev)[:, None] + j[None, :], 0)
        k = self.keys[rows].float()  # [h, L, d]
        v = self.values[rows].float()
        b = torch.where(valid, self.bias[rows], float("-inf"))
        p = self.positions[rows]
        q = queries.float().reshape(h, g, m, d)
        qp = query_positions.to(dev)
        out = torch.empty(h, g, m, d, dtype=torch.float32, device=dev)
        for s in range(0, m, chunk):  # chunks of queries bound the [h, g, chunk, L] logits
            e = min(m, s + chunk)
            logits = torch.einsum("hgmd,hld->hgml", q[:, :, s:e], k) * scale + b[:, None, None, :]
            visible = p[:, None, None, :] <= qp[None, None, s:e, None]
            logits = logits.masked_fill(~visible, float("-inf"))
            out[:, :, s:e] = torch.einsum("hgml,hld->hgmd", torch.softmax(logits, dim=-1), v)
        return out.reshape(hq, m, d)
