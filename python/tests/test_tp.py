"""Tensor parallelism on the CPU: 2 and 4 gloo processes, each compressing its KV heads
(simcalkv.tp), against one process compressing the whole layer."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import simcalkv
from simcalkv import tp

HEADS, GROUP, N, D, W = 8, 2, 150, 32, 8
CASES = [("SnapKV", "shard"), ("SimCalKV", "shard"), ("H2O", "shard"), ("CaM", "shard"), ("AdaKV+SnapKV", "global"),
         ("AdaKV+SimCalKV", "global"), ("AdaKV+SimCalKV", "shard")]


def layer(dtype=torch.bfloat16):
    """Heads of unequal lengths (ragged), as after an earlier compression, with accumulated scores."""
    g = torch.Generator().manual_seed(11)
    lengths = torch.tensor([N - 9 * h for h in range(HEADS)], dtype=torch.int64)
    total = int(lengths.sum())
    keys = (torch.randn(total, D, generator=g).cumsum(0) * 0.2).to(dtype)
    values = torch.randn(total, D, generator=g).to(dtype)
    positions = torch.cat([torch.arange(N - n, N, dtype=torch.int32) for n in lengths.tolist()])
    scores = torch.rand(total, generator=g)
    queries = torch.randn(HEADS * GROUP, W, D, generator=g)
    return keys, values, positions, scores, lengths, queries


def shard_of(rank, world):
    """This rank's heads of the layer: its rows, lengths and query heads."""
    keys, values, positions, scores, lengths, queries = layer()
    first, count = tp.head_shard(HEADS, world, rank)
    offsets = [0] + lengths.cumsum(0).tolist()
    rows = slice(offsets[first], offsets[first + count])
    return (keys[rows], values[rows], positions[rows], scores[rows], lengths[first:first + count],
            queries[first * GROUP:(first + count) * GROUP])


def compress(spec, budgets, k, v, pos, sc, lengths, q, **kw):
    fn = tp.compress_shard if budgets else simcalkv.compress
    extra = {"budgets": budgets} if budgets else {}
    return fn(k, v, q, spec=spec, compress_ratio=0.6, lengths=lengths, positions=pos, scores=sc,
              window_positions=torch.arange(N - W, N, dtype=torch.int32), **extra, **kw)


def as_tuple(c):
    return (c.keys, c.values, c.bias, c.positions, c.lengths, c.kept, c.scores)


def worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for spec, budgets in CASES:
        c = compress(spec, budgets, *shard_of(rank, world))
        parts = [None] * world
        dist.all_gather_object(parts, as_tuple(c))
        results[(spec, budgets)] = parts
    try:
        compress("TOVA", "shard", *shard_of(rank, world))
        results["TOVA refused"] = None
    except ValueError as error:
        results["TOVA refused"] = str(error)
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(world):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.spawn(worker, args=(world, os.path.join(tmp, "init"), out), nprocs=world, join=True)
        return torch.load(out)


def join(parts):
    """The ranks' packed results in rank order, as one layer."""
    return tuple(None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in range(7))


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_give_the_single_process_layer(world):
    results = run_ranks(world)
    refused = results.pop("TOVA refused")
    assert refused and "decides over every KV head of a layer" in refused
    keys, values, positions, scores, lengths, queries = layer()
    for (spec, budgets), parts in results.items():
        got = join(parts)
        if budgets == "global" or not spec.startswith("AdaKV+"):
            want = as_tuple(compress(spec, None, keys, values, positions, scores, lengths, queries))
            for name, a, b in zip(("keys", "values", "bias", "positions", "lengths", "kept", "scores"), got, want):
                assert (a is None) == (b is None), (spec, budgets, name)
                if a is not None:
                    assert torch.equal(a, b), f"{spec} ({budgets} budgets, {world} ranks): {name} differ"
        else:
            # Per shard: AdaKV of each shard's sub-layer, and each rank keeps exactly its share.
            for rank, part in enumerate(parts):
                sub = shard_of(rank, world)
                want = as_tuple(compress(spec, None, *sub))
                for a, b in zip(part, want):
                    assert (a is None and b is None) or torch.equal(a, b), (spec, rank)
                share = sum(round(0.4 * n) for n in sub[4].tolist())
                assert abs(int(part[4].sum()) - share) <= len(sub[4]), (spec, rank)
    # Global AdaKV moved budget between ranks' heads: the case is not trivially per head.
    kept = [int(p[4].sum()) for p in results[("AdaKV+SimCalKV", "global")]]
    shard = [int(p[4].sum()) for p in results[("AdaKV+SimCalKV", "shard")]]
    assert kept != shard


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="8 KV heads do not split evenly over 3 ranks"):
        tp.head_shard(8, 3, 0)
    with pytest.raises(ValueError, match="rank 4 is outside"):
        tp.head_shard(8, 4, 4)
    keys, values, positions, scores, lengths, queries = layer()
    with pytest.raises(ValueError, match="budgets 'everywhere' is not one of shard, global"):
        tp.compress_shard(keys, values, queries, lengths=lengths, budgets="everywhere")
    with pytest.raises(ValueError, match="does not move budget between heads"):
        simcalkv.ops.score_layer(keys, values, queries, spec="SnapKV", lengths=lengths)
    with pytest.raises(ValueError, match="budgets: KV head 0 has budget 999"):
        simcalkv.compress(keys, values, queries, spec="SnapKV", lengths=lengths,
                          budgets=torch.full((HEADS,), 999, dtype=torch.int64))
