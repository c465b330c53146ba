// simcalkv CUDA: in-place compaction of every sequence of a layer by the kept sets of a plan (the
// CPU layouts' move step). The plan is the plain LayerPlanView the CPU flattens to
// (simcalkv/plan_view.hpp): compress_layer passes the one it planned (its merge has already
// rewritten a survivor's own row), apply_plan (apply.cuh) passes any other, a CPU policy's too.
//
// Slot k of sequence s takes the entry keep[first_slot[s] + k] >= k (survivors ascending). Moving down in place is safe one slot at a
// time; in parallel, a chunk of 64 slots may only write its rows once every earlier chunk of the
// same sequence has read its sources (a source of an earlier slot can lie inside a later chunk's
// destination rows). So each block takes a ticket of its sequence (the chunk it handles, in the
// order blocks start), reads its 64 source rows into shared memory, publishes a flag, waits for
// the flags of the earlier chunks of its sequence (all of them hold earlier tickets, so they are
// running or done: no deadlock), then writes. Later chunks never wait for it, and no chunk waits
// for a write.
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/plan_view.hpp"

namespace simcalkv::cuda::detail {

inline constexpr int kCompactChunk = 64;

template <class T, class Layout>
struct CompactParams {
  LayerKV<T, Layout> kv;
  LayerPlanView plan;  // first_slot, kept and keep are read
  int chunks_per_seq;
  unsigned* ticket;  // [S], zeroed before the launch
  int* flags;        // [S * chunks_per_seq], zeroed before the launch
};

/// grid (chunks_per_seq, S), 256 threads.
template <class T, int D, class Layout>
__global__ void __launch_bounds__(256) compact_kernel(CompactParams<T, Layout> p) {
  constexpr int CH = kCompactChunk;
  constexpr int chunks = D * static_cast<int>(sizeof(T)) / 16;  // 16-byte pieces of a row
  __shared__ uint4 ks[CH * chunks];
  __shared__ uint4 vs[CH * chunks];
  __shared__ float bs[CH], ss[CH];
  __shared__ int ps[CH], src_s[CH];
  __shared__ unsigned ticket;
  const int tid = threadIdx.x;
  const int s = blockIdx.y;
  if (tid == 0) ticket = atomicAdd(p.ticket + s, 1u);
  __syncthreads();
  const int c = static_cast<int>(ticket);
  const int n = p.kv.lengths[s];
  const int B = p.plan.kept[s];
  const int a = c * CH;
  if (B >= n || a >= B) return;
  const int cnt = min(CH, B - a);
  const int64_t off = p.plan.first_slot[s];
  const auto seq = p.kv.layout.seq(s);
  const bool scores = p.kv.scores != nullptr;

  if (tid < cnt) src_s[tid] = p.plan.keep[off + a + tid];
  __syncthreads();
  // Read: L2-coherent loads (other blocks write this layer's rows during the kernel).
  for (int i = tid; i < cnt * chunks; i += blockDim.x) {
    const int rr = i / chunks, q = i % chunks;
    const int src = src_s[rr];
    if (src == a + rr) continue;
    const int64_t e = seq.entry(src);
    ks[i] = __ldcg(reinterpret_cast<const uint4*>(p.kv.keys + e * p.kv.key_stride) + q);
    vs[i] = __ldcg(reinterpret_cast<const uint4*>(p.kv.values + e * p.kv.value_stride) + q);
  }
  if (tid < cnt && src_s[tid] != a + tid) {
    const int64_t e = seq.entry(src_s[tid]);
    bs[tid] = __ldcg(p.kv.bias + e);
    ps[tid] = __ldcg(p.kv.positions + e);
    if (scores) ss[tid] = __ldcg(p.kv.scores + e);
  }
  __syncthreads();
  int* flags = p.flags + static_cast<int64_t>(s) * p.chunks_per_seq;
  if (tid == 0) {
    __threadfence();
    store_release(flags + c, 1);
  }
  for (int cc = tid; cc < c; cc += blockDim.x)
    while (load_acquire(flags + cc) == 0) {
    }
  __syncthreads();
  // Write.
  for (int i = tid; i < cnt * chunks; i += blockDim.x) {
    const int rr = i / chunks, q = i % chunks;
    if (src_s[rr] == a + rr) continue;
    const int64_t e = seq.entry(a + rr);
    reinterpret_cast<uint4*>(p.kv.keys + e * p.kv.key_stride)[q] = ks[i];
    reinterpret_cast<uint4*>(p.kv.values + e * p.kv.value_stride)[q] = vs[i];
  }
  if (tid < cnt && src_s[tid] != a + tid) {
    const int64_t e = seq.entry(a + tid);
    p.kv.bias[e] = bs[tid];
    p.kv.positions[e] = ps[tid];
    if (scores) p.kv.scores[e] = ss[tid];
  }
}

}  // namespace simcalkv::cuda::detail
