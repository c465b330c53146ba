"""simcalkv's PyTorch ops against the C++ library's own results and a naive torch reference."""
import struct
from array import array
import subprocess

import pytest
import torch

import simcalkv
from simcalkv import RaggedLayer


def layer(h=2, n=37, d=16, hq=4, w=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(h, n, d, generator=g).to(dtype)
    values = torch.randn(h, n, d, generator=g).to(dtype)
    queries = torch.randn(hq, w, d, generator=g)
    return keys, values, queries


def reference(binary, tmp_path, keys, values, queries, decode_query, spec, ratio):
    """What the C++ library keeps, per head: {position: (bias, key, value)}, and the decode output."""
    h, n, d = keys.shape
    hq, w, _ = queries.shape
    blob = struct.pack("<5i", h, n, d, hq, w) + struct.pack("<d", ratio)
    blob += struct.pack("<i", len(spec)) + spec.encode()
    for t in (keys, values, queries, decode_query):
        blob += array("f", t.float().flatten().tolist()).tobytes()
    path = tmp_path / "layer.bin"
    path.write_bytes(blob)
    text = subprocess.run([binary, str(path)], check=True, capture_output=True, text=True).stdout.splitlines()
    heads, out, i = [], None, 0
    while i < len(text):
        parts = text[i].split()
        if parts[0] == "head":
            count = int(parts[3])
            rows = {}
            for line in text[i + 1 : i + 1 + count]:
                x = [float(v) for v in line.split()]
                rows[int(x[0])] = (x[1], torch.tensor(x[2 : 2 + d]), torch.tensor(x[2 + d :]))
            heads.append(rows)
            i += 1 + count
        else:
            out = torch.tensor([float(v) for v in parts[1:]]).reshape(hq, d)
            i += 1
    return heads, out


SPECS = ["SnapKV", "SimCalKV", "StreamingLLM", "TOVA", "KeyDiff", "AdaKV+SimCalKV", "CaM", "KeepKV"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_compress_matches_the_cpp_library(reference_binary, tmp_path, spec, ratio):
    keys, values, queries = layer(h=2, n=53, d=16, hq=6, w=8, seed=hash(spec) % 1000)
    decode_query = torch.randn(6, 1, 16, generator=torch.Generator().manual_seed(7))
    want, want_out = reference(reference_binary, tmp_path, keys, values, queries, decode_query[:, 0], spec, ratio)
    got = simcalkv.compress(keys, values, queries, spec=spec, compress_ratio=ratio)
    offsets = [0] + torch.cumsum(got.lengths, 0).tolist()
    for h, rows in enumerate(want):
        s, e = offsets[h], offsets[h + 1]
        positions = got.positions[s:e].tolist()
        assert positions == sorted(rows), f"{spec} head {h}: kept {positions}, the C++ library {sorted(rows)}"
        assert got.kept[s:e].tolist() == positions  # positions 0..n-1: kept index == position
        for j, p in enumerate(positions):
            bias, key, value = rows[p]
            assert got.bias[s + j].item() == pytest.approx(bias, abs=1e-5)
            torch.testing.assert_close(got.keys[s + j], key, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got.values[s + j], value, atol=1e-5, rtol=1e-5)
    out = simcalkv.attend(decode_query, torch.tensor([53], dtype=torch.int32), got.keys, got.values, got.bias,
                          got.positions, got.lengths)
    torch.testing.assert_close(out[:, 0], want_out, atol=1e-5, rtol=1e-5)


def naive_attention(queries, query_positions, keys, values, bias, positions, lengths, scale):
    hq, m, d = queries.shape
    h = lengths.numel()
    g = hq // h
    out = torch.zeros(hq, m, d, dtype=torch.float64)
    o = 0
    for kv in range(h):
        n = int(lengths[kv])
        k, v = keys[o : o + n].double(), values[o : o + n].double()
        b, p = bias[o : o + n].double(), positions[o : o + n]
        for qh in range(kv * g, (kv + 1) * g):
            logits = queries[qh].double() @ k.T * scale + b
            logits = logits.masked_fill(p[None, :] > query_positions[:, None], float("-inf"))
            out[qh] = torch.softmax(logits, dim=-1) @ v
        o += n
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(1, 8), (31, 16), (67, 64), (130, 128)])
def test_attention_equals_a_naive_reference(dtype, n, d):
    keys, values, queries = layer(h=2, n=n, d=d, hq=4, w=3, seed=n, dtype=dtype)
    lengths = torch.tensor([n, max(1, n - 5)])
    total = int(lengths.sum())
    k = keys.reshape(-1, d)[:total]
    v = values.reshape(-1, d)[:total]
    bias = torch.linspace(-2, 1, total)
    positions = torch.cat([torch.arange(int(x), dtype=torch.int32) for x in lengths])
    qpos = torch.tensor([n - 3, n - 2, n - 1], dtype=torch.int32).clamp(min=0)
    got = simcalkv.attend(queries, qpos, k, v, bias, positions, lengths, 0.0)
    want = naive_attention(queries, qpos, k, v, bias, positions, lengths, d ** -0.5)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


def test_ragged_layer_decodes_like_the_dense_cache():
    keys, values, queries = layer(h=2, n=80, d=16, hq=4, w=4)
    full = RaggedLayer.from_dense(keys, values, reserve=2)
    compressed = RaggedLayer.from_dense(keys, values)
    compressed.compress(queries, torch.arange(76, 80, dtype=torch.int32), "AdaKV+SimCalKV", 0.75)
    assert int(compressed.lengths.sum()) == 40  # 25% of 2 x 80, split between the heads by AdaKV
    assert compressed.live_bytes() * 4 == full.live_bytes()
    assert compressed.nbytes() == compressed.live_bytes() + 2 * 64 * (2 * 16 * 4 + 8)  # plus the append reserve
    g = torch.Generator().manual_seed(3)
    for step in range(5):  # appends past the reserve re-pack without losing entries
        k, v = torch.randn(2, 1, 16, generator=g), torch.randn(2, 1, 16, generator=g)
        pos = torch.tensor([80 + step], dtype=torch.int32)
        full.append(k, v, pos)
        compressed.append(k, v, pos)
        q = torch.randn(4, 1, 16, generator=g)
        a = full.attend(q, pos)
        b = full._attend_torch(q, pos, 0.25)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        c = compressed.attend(q, pos)
        assert torch.isfinite(c).all()
    assert full.lengths.tolist() == [85, 85]
    assert int(compressed.lengths.sum()) == 50


def test_full_keeps_everything_and_attention_equals_sdpa():
    keys, values, queries = layer(h=2, n=29, d=32, hq=4, w=4)
    got = simcalkv.compress(keys, values, queries, spec="Full", compress_ratio=0.5)
    assert got.lengths.tolist() == [29, 29]
    q = torch.randn(4, 1, 32)
    out = simcalkv.attend(q, torch.tensor([29], dtype=torch.int32), got.keys, got.values, got.bias, got.positions,
                          got.lengths)
    logits = torch.einsum("hgmd,hnd->hgmn", q.reshape(2, 2, 1, 32), keys) / 32 ** 0.5
    ref = torch.einsum("hgmn,hnd->hgmd", torch.softmax(logits, -1), values).reshape(4, 1, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(spec="NoSuchPolicy"), "unknown policy 'NoSuchPolicy'"),
        (dict(compress_ratio=1.0), "compress_ratio"),
        (dict(compress_ratio=-0.1), "compress_ratio"),
        (dict(window_queries=torch.randn(3, 8, 16)), "not a multiple of 2 KV heads"),
        (dict(window_queries=torch.randn(4, 8, 15)), "dimension 2 is 15, expected 16"),
        (dict(values=torch.randn(2, 35, 16)), "differ from keys"),
        (dict(spec="SimCalKV:nonsense=1"), "nonsense"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(change, message):
    keys, values, queries = layer(h=2, n=36, d=16, hq=4, w=8)
    before = keys.clone(), values.clone()
    args = dict(keys=keys, values=values, window_queries=queries, spec="SimCalKV", compress_ratio=0.5)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        simcalkv.compress(**args)
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])


def test_non_finite_input_is_refused_and_nothing_changes():
    keys, values, queries = layer(h=2, n=36, d=16, hq=4, w=8)
    keys[1, 5, 3] = float("nan")
    before = keys.clone()
    with pytest.raises(ValueError, match="NaN or Inf"):
        simcalkv.compress(keys, values, queries, spec="SnapKV", compress_ratio=0.5)
    assert torch.equal(keys.isnan(), before.isnan()) and torch.equal(keys.nan_to_num(), before.nan_to_num())
    queries[0, 0, 0] = float("inf")
    keys[1, 5, 3] = 0.0
    with pytest.raises(ValueError, match="NaN or Inf"):
        simcalkv.compress(keys, values, queries, spec="SnapKV", compress_ratio=0.5)


def test_ragged_shapes_are_checked():
    k = torch.randn(10, 8)
    with pytest.raises(ValueError, match="lengths"):
        simcalkv.attend(torch.randn(2, 1, 8), torch.tensor([9], dtype=torch.int32), k, k, torch.zeros(10),
                        torch.arange(10, dtype=torch.int32), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="need lengths"):
        simcalkv.compress(k, k, torch.randn(2, 1, 8))


def test_policy_names_come_from_the_registry():
    names = simcalkv.policy_names()
    assert {"SimCalKV", "SnapKV", "AdaKV+SimCalKV", "StreamingLLM", "KNorm"} <= set(names)
