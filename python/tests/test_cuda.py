"""The CUDA kernels through simcalkv._C (CudaRaggedBatch) against the CPU library on the same data:
the same entries kept, the same biases, keys and values, and decode attention that agrees.
Skipped where simcalkv._C was built without CUDA or no GPU is visible."""
import pytest
import torch

import simcalkv
from simcalkv import _C, cuda_batch

pytestmark = pytest.mark.skipif(not (getattr(_C, "has_cuda", False) and torch.cuda.is_available()),
                                reason="simcalkv._C without CUDA, or no GPU")


def layer(b=2, h=2, n=301, d=128, hq=8, w=32, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(b, h, n, d, generator=g).to(dtype)
    values = torch.randn(b, h, n, d, generator=g).to(dtype)
    queries = torch.randn(b, hq, w, d, generator=g)
    return keys, values, queries


@pytest.mark.parametrize("spec", ["StreamingLLM", "SnapKV", "SimCalKV", "AdaKV+SimCalKV",
                                  "SnapKV:sinks=0,pooling=avg,pool_kernel=5"])
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_gpu_compression_equals_the_cpu_library(spec, ratio):
    keys, values, queries = layer()
    b, h, n, d = keys.shape
    w = queries.shape[2]
    window_positions = torch.arange(n - w, n, dtype=torch.int32)
    batch = cuda_batch.CudaRaggedBatch(keys.cuda(), values.cuda())
    batch.compress(queries.cuda(), window_positions.cuda(), spec, ratio)
    # what is held: the kept rows and the decode reserve, keys and values plus bias and position
    assert torch.equal(batch.capacity, batch.host_lengths + batch.reserve)
    assert batch.nbytes() == int(batch.capacity.sum()) * (2 * d * keys.element_size() + 8)
    for r in range(b):
        cpu = simcalkv.compress(keys[r], values[r], queries[r], spec=spec, compress_ratio=ratio,
                                window_positions=window_positions)
        start = 0
        for head in range(h):
            s = r * h + head
            n_gpu = int(batch.host_lengths[s])
            n_cpu = int(cpu.lengths[head])
            assert n_gpu == n_cpu, f"request {r} head {head}: GPU kept {n_gpu}, CPU {n_cpu}"
            o = int(batch.offsets[s])
            sl = slice(start, start + n_cpu)
            assert torch.equal(batch.positions[o:o + n_gpu].cpu(), cpu.positions[sl])
            torch.testing.assert_close(batch.bias[o:o + n_gpu].cpu(), cpu.bias[sl], atol=2e-3, rtol=2e-3)
            torch.testing.assert_close(batch.keys[o:o + n_gpu].cpu().float(), cpu.keys[sl].float(), atol=2e-2, rtol=2e-2)
            torch.testing.assert_close(batch.values[o:o + n_gpu].cpu().float(), cpu.values[sl].float(), atol=2e-2, rtol=2e-2)
            start += n_cpu
        # decode attention over the compressed cache, one new query per request
        q = torch.randn(8, 1, d)
        ref = simcalkv.attend(q, torch.tensor([n], dtype=torch.int32), cpu.keys, cpu.values, cpu.bias, cpu.positions,
                              cpu.lengths)
        out = batch.decode(q[:, 0].unsqueeze(0).repeat(b, 1, 1).cuda().to(keys.dtype))[r]
        torch.testing.assert_close(out.float().cpu(), ref[:, 0], atol=3e-2, rtol=3e-2)


def test_gpu_append_and_decode_see_the_new_token():
    keys, values, queries = layer(b=1, h=2, n=64, hq=4, w=8)
    batch = cuda_batch.CudaRaggedBatch(keys.cuda(), values.cuda(), reserve=2)
    batch.compress(queries.cuda(), torch.arange(56, 64, dtype=torch.int32).cuda(), "SimCalKV", 0.5)
    for step in range(5):  # past the reserve: the layer repacks
        k = torch.randn(1, 2, 1, 128, dtype=torch.bfloat16)
        batch.append(k.cuda(), k.cuda(), 64 + step)
    assert batch.kept_lengths() == [[32 + 5, 32 + 5]]
    q = torch.randn(1, 4, 128, dtype=torch.bfloat16).cuda()
    out = batch.decode(q)
    ref = batch.attend(q[:, :, None], torch.tensor([68], dtype=torch.int32))[:, :, 0]
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_gpu_refuses_nan_and_leaves_the_layer_as_it_was():
    keys, values, queries = layer(b=1, h=2, n=64, hq=4, w=8)
    keys[0, 1, 5, 3] = float("nan")
    batch = cuda_batch.CudaRaggedBatch(keys.cuda(), values.cuda())
    before = batch.keys.clone()
    with pytest.raises(ValueError, match="NaN or Inf"):
        batch.compress(queries.cuda(), torch.arange(56, 64, dtype=torch.int32).cuda(), "SimCalKV", 0.5)
    assert batch.kept_lengths() == [[64, 64]] and torch.equal(batch.keys.isnan(), before.isnan())


def test_specs_the_kernels_lack_stay_on_the_cpu_library():
    assert cuda_batch.policy_of("AdaKV+SnapKV:pooling=max") is not None
    assert cuda_batch.policy_of("H2O") is None and cuda_batch.policy_of("SimCalKV:search=exact") is None
