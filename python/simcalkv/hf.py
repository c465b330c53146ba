"""simcalkv in Hugging Face transformers (5.x): a cache layer, an attention function, a press.

    import simcalkv.hf
    press = simcalkv.hf.SimCalKVPress("SimCalKV", compression_ratio=0.75)
    with press(model):
        out = model.generate(input_ids, max_new_tokens=64)

How it fits transformers: every attention layer calls `past_key_values.update(k, v, layer_idx)`
and hands what it returns to the function registered for `config._attn_implementation`. The press
(or `SimCalKVCache`) puts a `SimCalKVLayer` in the cache: during prefill it holds the dense prompt
like `DynamicLayer`, and returns its tensors tagged with itself; our attention function
("simcalkv") runs SDPA over them and, at the end of the prefill, compresses the layer with the
prompt's last `window` post-RoPE queries into one `RaggedLayer` per sequence (per-head lengths,
the merged entries' bias, original positions). From then on `update` appends to the ragged cache
and the attention function reads it with the bias. `get_seq_length()` counts the tokens seen, not
the entries kept, so new tokens get their true RoPE positions.

Limits: rows of a batch must have equal, unpadded lengths (the "simcalkv" implementation gets no
padding mask); compressed layers cannot be cropped, reordered for beam search or offloaded.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from . import cuda_batch
from . import ops as _ops
from .ragged import RaggedLayer

ATTENTION_NAME = "simcalkv"


class CompressionConfig:
    """What to do to a layer: a registry policy spec removing `compression_ratio` of the prompt's
    entries, with the last `window` prompt queries; with `decode_interval` N > 0, every N decoded
    tokens the layer is compressed back to the size the prefill compression left. `backend`: "auto"
    runs the CUDA kernels where they apply (a CUDA layer in bfloat16/float16, head_dim 64 or 128,
    StreamingLLM/SnapKV/SimCalKV with or without AdaKV) and the CPU library otherwise; "cpu" and
    "cuda" insist. Under tensor parallelism (`tp_plan="auto"`, each rank holding its KV heads),
    `tp_budgets` says how AdaKV+ policies share the budget: "shard" among the rank's heads, or
    "global" over the whole layer, the single-process result, for two all-gathers per layer over
    `tp_group` (simcalkv.tp); "global" runs on the CPU library's kernels."""

    def __init__(self, spec: str = "SimCalKV", compression_ratio: float = 0.5, window: int = 32,
                 decode_interval: int = 0, num_layers: int = 1, threads: int = 1, backend: str = "auto",
                 tp_budgets: str = "shard", tp_group=None):
        if backend not in ("auto", "cpu", "cuda"):
            raise ValueError(f"backend '{backend}' is not one of auto, cpu, cuda")
        if tp_budgets not in ("shard", "global"):
            raise ValueError(f"tp_budgets '{tp_budgets}' is not one of shard, global")
        if tp_budgets == "global" and backend == "cuda":
            raise ValueError("tp_budgets 'global' runs on the CPU library's kernels; use backend 'auto' or 'cpu'")
        self.tp_budgets, self.tp_group = tp_budgets, tp_group
        if not 0.0 <= compression_ratio < 1.0:
            raise ValueError(f"compression_ratio {compression_ratio} is outside [0, 1)")
        if window < 1:
            raise ValueError(f"window {window} must be at least 1")
        if decode_interval < 0:
            raise ValueError(f"decode_interval {decode_interval} must be >= 0")
        self.spec, self.compression_ratio, self.window = spec, float(compression_ratio), int(window)
        self.decode_interval, self.num_layers, self.threads = int(decode_interval), int(num_layers), int(threads)
        self.backend = backend


class SimCalKVLayer(DynamicLayer):
    """A transformers cache layer that becomes a compressed ragged cache after the prefill."""

    def __init__(self, config: CompressionConfig, layer_idx: int):
        super().__init__()
        self.compression = config
        self.layer_idx = layer_idx
        self.rows: list[RaggedLayer] | None = None  # one per sequence once compressed (CPU kernels)
        self.batch: cuda_batch.CudaRaggedBatch | None = None  # or the whole batch (CUDA kernels)
        self.compress_seconds = None  # CUDA events around the last compression (start, end)
        self.seen = 0  # tokens seen (the next token's position)
        self.window_queries: list[torch.Tensor] = []  # recent decode queries, for decode_interval
        self.target: list[int] = []  # per row: entries per head the prefill compression kept
        self.since_compression = 0

    # --- the CacheLayerMixin surface -------------------------------------------------------
    def update(self, key_states, value_states, *args, **kwargs):
        t = key_states.shape[-2]
        if self.batch is not None:
            self.batch.append(key_states, value_states, self.seen)
            keys, values = key_states, value_states
        elif self.rows is None:
            keys, values = super().update(key_states, value_states, *args, **kwargs)
        else:
            positions = torch.arange(self.seen, self.seen + t, dtype=torch.int32)
            for b, row in enumerate(self.rows):
                row.append(key_states[b], value_states[b], positions)
            keys, values = key_states, value_states
        self.seen += t
        keys._simcalkv_layer = self  # read by the attention function
        return keys, values

    @property
    def compressed(self) -> bool:
        return self.rows is not None or self.batch is not None

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        if self.compressed:
            raise NotImplementedError("simcalkv: a compressed layer cannot be cropped")
        super().crop(tokens_to_remove)
        self.seen = super().get_seq_length()

    def reorder_cache(self, beam_idx):
        if self.compressed:
            raise NotImplementedError("simcalkv: a compressed layer cannot be reordered (no beam search)")
        super().reorder_cache(beam_idx)

    def offload(self):
        if self.compressed:
            raise NotImplementedError("simcalkv: a compressed layer cannot be offloaded")
        super().offload()

    # --- memory --------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes this layer holds on its device."""
        if self.batch is not None:
            return self.batch.nbytes()
        if self.rows is None:
            return 0 if self.keys is None else self.keys.numel() * self.keys.element_size() * 2
        return sum(r.nbytes() for r in self.rows)

    def kept_lengths(self) -> list[list[int]]:
        """Entries per head of every row."""
        if self.batch is not None:
            return self.batch.kept_lengths()
        return [r.lengths.tolist() for r in self.rows] if self.rows is not None else []

    # --- compression ---------------------------------------------------------------------
    def compress_prefill(self, query: torch.Tensor) -> None:
        """Compresses the dense prompt with its last `window` queries ([b, Hq, n, d], post-RoPE)."""
        c = self.compression
        n = self.seen
        w = min(c.window, query.shape[-2], n)
        window_positions = torch.arange(n - w, n, dtype=torch.int32)
        global_budgets = c.tp_budgets == "global" and _ops.reallocates(c.spec)
        if c.backend != "cpu" and not global_budgets and cuda_batch.eligible(self.keys, query.shape[1], c.spec):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            batch = cuda_batch.CudaRaggedBatch(self.keys, self.values)
            if c.compression_ratio > 0:
                batch.compress(query[:, :, -w:], window_positions.to(query.device), c.spec, c.compression_ratio)
            end.record()
            self.compress_seconds = (start, end)
            self.batch = batch
            self.target = [int(round(float(torch.tensor(r, dtype=torch.float64).mean()))) for r in batch.kept_lengths()]
            self.keys = torch.zeros(0, dtype=self.dtype, device=self.device)
            self.values = torch.zeros(0, dtype=self.dtype, device=self.device)
            # a copy: a view would keep the whole prompt's queries alive
            self.window_queries = [query[:, :, -w:].detach().clone()] if c.decode_interval > 0 else []
            return
        if c.backend == "cuda":
            raise ValueError(f"simcalkv: backend 'cuda' cannot run spec '{c.spec}' on {self.keys.dtype} "
                             f"{self.keys.device} keys of head_dim {self.keys.shape[-1]}")
        rows = []
        for b in range(self.keys.shape[0]):
            row = RaggedLayer.from_dense(self.keys[b], self.values[b])
            if c.compression_ratio > 0:
                row.compress(query[b, :, -w:], window_positions, c.spec, c.compression_ratio, self.layer_idx,
                             c.num_layers, threads=c.threads, tp_budgets=c.tp_budgets, tp_group=c.tp_group)
            rows.append(row)
        self.rows = rows
        self.target = [int(r.lengths.float().mean().round()) for r in rows]
        self.keys = torch.zeros(0, dtype=self.dtype, device=self.device)  # the dense prompt is released
        self.values = torch.zeros(0, dtype=self.dtype, device=self.device)
        # a copy: a view would keep the whole prompt's queries alive
        self.window_queries = [query[:, :, -w:].detach().clone()] if c.decode_interval > 0 else []

    def after_decode(self, query: torch.Tensor) -> None:
        """Records decode queries and re-compresses every `decode_interval` tokens."""
        c = self.compression
        if c.decode_interval <= 0:
            return
        self.window_queries.append(query.detach())
        recent = torch.cat(self.window_queries, dim=-2)[:, :, -c.window:]
        self.window_queries = [recent]
        self.since_compression += query.shape[-2]
        if self.since_compression < c.decode_interval:
            return
        self.since_compression = 0
        w = recent.shape[-2]
        window_positions = torch.arange(self.seen - w, self.seen, dtype=torch.int32)
        if self.batch is not None:
            mean = float(self.batch.host_lengths.double().mean())
            ratio = max(0.0, 1.0 - (sum(self.target) / len(self.target)) / mean) if mean > 0 else 0.0
            if ratio > 0:
                self.batch.compress(recent, window_positions.to(recent.device), c.spec, ratio)
            return
        for b, row in enumerate(self.rows):
            mean = float(row.lengths.float().mean())
            ratio = max(0.0, 1.0 - self.target[b] / mean) if mean > 0 else 0.0
            if ratio > 0:
                row.compress(recent[b], window_positions, c.spec, ratio, self.layer_idx, c.num_layers,
                             threads=c.threads, tp_budgets=c.tp_budgets, tp_group=c.tp_group)


class SimCalKVCache(DynamicCache):
    """A transformers cache whose layers compress after the prefill (see the module docstring).
    Pass it as `past_key_values` with `attn_implementation="simcalkv"` (call `register()` first)."""

    def __init__(self, num_layers: int, spec: str = "SimCalKV", compression_ratio: float = 0.5,
                 window: int = 32, decode_interval: int = 0, threads: int = 1, backend: str = "auto",
                 tp_budgets: str = "shard", tp_group=None):
        config = CompressionConfig(spec, compression_ratio, window, decode_interval, num_layers, threads, backend,
                                   tp_budgets, tp_group)
        super().__init__()
        self.layers = [SimCalKVLayer(config, i) for i in range(num_layers)]
        self.layer_class_to_replicate = None

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers if isinstance(layer, SimCalKVLayer))


def _causal_bottom_right(q_len: int, kv_len: int, device) -> torch.Tensor:
    i = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return (torch.arange(kv_len, device=device)[None, :] <= i)[None, None]


def simcalkv_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The "simcalkv" attention function: SDPA before compression, biased ragged attention after."""
    layer = getattr(key, "_simcalkv_layer", None)
    q_len = query.shape[-2]
    if layer is None or layer.rows is None:
        if attention_mask is None and q_len > 1 and key.shape[-2] > q_len:
            attention_mask = _causal_bottom_right(q_len, key.shape[-2], query.device)
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                              scaling=scaling, **kwargs)
        if layer is not None and q_len > 1 and layer.seen == key.shape[-2] == q_len:
            layer.compress_prefill(query)  # the end of the prefill: the whole prompt in one call
        return out, weights
    if layer.batch is not None:
        if q_len == 1:
            out = layer.batch.decode(query[:, :, 0], scaling).unsqueeze(1)  # [b, 1, Hq, d]
        else:
            positions = torch.arange(layer.seen - q_len, layer.seen, dtype=torch.int32, device=query.device)
            out = layer.batch.attend(query, positions, scaling).to(query.dtype).transpose(1, 2).contiguous()
        layer.after_decode(query)
        return out.to(query.dtype), None
    positions = torch.arange(layer.seen - q_len, layer.seen, dtype=torch.int32)
    outs = [row.attend(query[b], positions, scaling) for b, row in enumerate(layer.rows)]
    out = torch.stack(outs).to(query.dtype)  # [b, Hq, q, d]
    layer.after_decode(query)
    return out.transpose(1, 2).contiguous(), None


def set_attention(model, name: str) -> None:
    """Sets the model's attention implementation (set_attn_implementation where the installed
    transformers accepts the name, else the config attribute it reads)."""
    try:
        model.set_attn_implementation(name)
    except (AttributeError, ValueError, KeyError):
        for config in [model.config] + [getattr(model.config, k) for k in (getattr(model.config, "sub_configs", None) or {})]:
            config._attn_implementation = name


def register() -> str:
    """Registers the "simcalkv" attention function with transformers; returns its name."""
    AttentionInterface.register(ATTENTION_NAME, simcalkv_attention)
    # The masks SDPA takes (none at all for an unpadded causal prefill, so SDPA runs is_causal),
    # not the eager [n, n] float mask an unknown implementation name would get.
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    except ImportError:
        pass
    return ATTENTION_NAME


class SimCalKVPress:
    """kvpress's shape of use: `with press(model): model.generate(...)` or a pipeline call inside.

    While active, the model's attention implementation is "simcalkv" and every cache the model
    is given (or creates) gets `SimCalKVLayer`s before its first update. On exit the model's
    attention implementation is restored."""

    def __init__(self, spec: str = "SimCalKV", compression_ratio: float = 0.5, window: int = 32,
                 decode_interval: int = 0, threads: int = 1, backend: str = "auto", tp_budgets: str = "shard",
                 tp_group=None):
        self.spec, self.compression_ratio, self.window = spec, compression_ratio, window
        self.decode_interval, self.threads, self.backend = decode_interval, threads, backend
        self.tp_budgets, self.tp_group = tp_budgets, tp_group
        CompressionConfig(spec, compression_ratio, window, decode_interval, backend=backend,
                          tp_budgets=tp_budgets)  # validate now

    @contextmanager
    def __call__(self, model):
        register()
        language_model = model.model.language_model if hasattr(model.model, "language_model") else model.model
        attention_layers = [layer.self_attn for layer in language_model.layers]
        config = CompressionConfig(self.spec, self.compression_ratio, self.window, self.decode_interval,
                                   len(attention_layers), self.threads, self.backend, self.tp_budgets, self.tp_group)

        def install(module, args, kwargs):
            cache = kwargs.get("past_key_values")
            if cache is None:
                return
            i = module.layer_idx
            if getattr(cache, "layer_class_to_replicate", None) is not None:
                while len(cache.layers) <= i:
                    cache.layers.append(cache.layer_class_to_replicate())
            current = cache.layers[i]
            if isinstance(current, SimCalKVLayer):
                return  # ours already (this press's, an earlier one's or a SimCalKVCache's)
            if current.get_seq_length() > 0:
                raise ValueError("simcalkv: the cache given already holds uncompressed tokens of another cache "
                                 "layer type; start from an empty cache")
            cache.layers[i] = SimCalKVLayer(config, i)

        previous = model.config._attn_implementation
        hooks = [m.register_forward_pre_hook(install, with_kwargs=True) for m in attention_layers]
        set_attention(model, ATTENTION_NAME)
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
            set_attention(model, previous)
