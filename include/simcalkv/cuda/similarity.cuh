// simcalkv CUDA: sending each removed entry to its most cosine-similar survivor
// (kernels/similarity.hpp on the GPU), on the tensor cores.
//
// Candidate c (the c-th removed entry of a sequence, entry e_c) has nk = e_c - c survivors before
// it. The local search looks at survivor slots [nk - radius, nk + radius) (clipped), the exact one
// at all of them; the best is argmax_s (k_e . k_keep[s]) / |k_keep[s]|, the first slot on ties, and
// its similarity that value / |k_e|. A candidate whose similarity is below the threshold, or that
// has no survivor to go to, is evicted.
//
// A block takes 64 consecutive candidates (their windows nearly coincide, and both ends only grow
// with c) and walks the union of their windows in tiles of 64 survivors: 64 x 64 dot products on
// the tensor cores (16-bit keys, float accumulation: the products of stored keys are exact), then
// each candidate scans its own columns. Survivor tiles are gathered by index with cp.async, two
// stages deep.
//
// Output: for a merged candidate at workspace position p, sort_keys[p] = the survivor's global
// slot id (ws_off + slot) and sort_vals[p] = e_c; a radix sort by key then lists each survivor's
// set in candidate order (merge.cuh).
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/cuda/mma_tile.cuh"

namespace simcalkv::cuda::detail {

template <class T, class Layout>
struct AssignParams {
  LayerKV<T, Layout> kv;
  const int32_t* ws_off;
  const int32_t* budgets;
  const int32_t* order;     // survivors then candidates, per sequence
  const float* inv_norm;    // [total]
  Search search;
  int radius;
  float threshold;
  uint32_t* sort_keys;      // [total]
  int32_t* sort_vals;       // [total]
  int32_t* evicted;         // [S], added to
};

inline constexpr int kAssignStages = 3;

template <class T, int D>
struct AssignSmem {
  static constexpr int ld = D + 8;
  static constexpr std::size_t tile_bytes = sizeof(T) * 64 * ld;
  static constexpr std::size_t bytes =
      (1 + kAssignStages) * tile_bytes + sizeof(float) * 64 * 68 + kAssignStages * 64 * 4 + 3 * 64 * 4;
};

/// grid (ceil(max_len / 64), S), 256 threads.
template <class T, int D, class Layout>
__global__ void __launch_bounds__(kTileThreads) assign_kernel(AssignParams<T, Layout> p) {
  using Smem = AssignSmem<T, D>;
  constexpr int LD = Smem::ld;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int ST = kAssignStages;
  T* a = reinterpret_cast<T*>(smem_raw);                                           // candidates [64][LD]
  T* kt = reinterpret_cast<T*>(smem_raw + Smem::tile_bytes);                       // survivors [ST][64][LD]
  float* c = reinterpret_cast<float*>(smem_raw + (1 + ST) * Smem::tile_bytes);     // [64][68]
  float* inv_t = c + 64 * 68;                                                      // [ST][64]
  int* lo_c = reinterpret_cast<int*>(inv_t + ST * 64);
  int* hi_c = lo_c + 64;
  int* e_c = hi_c + 64;

  const int s = blockIdx.y, tid = threadIdx.x;
  const int n = p.kv.lengths[s];
  const int B = p.budgets[s];
  const int E = n - B;
  const int c0 = blockIdx.x * 64;
  if (c0 >= E) return;
  const int valid_c = min(64, E - c0);
  if (B == 0) {
    if (tid == 0) atomicAdd(&p.evicted[s], valid_c);
    return;
  }
  const int64_t off = p.ws_off[s];
  const int32_t* keep = p.order + off;
  const int32_t* cand = keep + B;
  const auto seq = p.kv.layout.seq(s);
  const bool local = p.search == Search::local;

  auto window_of = [&](int cc, int& lo, int& hi) {
    const int nk = cand[cc] - cc;
    lo = local ? max(0, nk - p.radius) : 0;
    hi = local ? min(B, nk + p.radius) : B;
  };
  if (tid < 64) {
    int lo = 0, hi = 0, e = 0;
    if (tid < valid_c) {
      e = cand[c0 + tid];
      window_of(c0 + tid, lo, hi);
    }
    lo_c[tid] = lo;
    hi_c[tid] = hi;
    e_c[tid] = e;
  }
  int u_lo, u_hi, tmp;
  window_of(c0, u_lo, tmp);
  window_of(c0 + valid_c - 1, tmp, u_hi);
  const int tiles = u_hi > u_lo ? static_cast<int>(ceil_div(u_hi - u_lo, 64)) : 0;

  load_rows_async<T, D>(a, LD, 64, valid_c, [&](int rr) { return p.kv.keys + seq.entry(cand[c0 + rr]) * p.kv.key_stride; },
                        p.kv.keys);
  auto load_tile = [&](int t) {
    if (t >= tiles) return;
    const int buf = t % ST;
    const int s0 = u_lo + t * 64;
    const int valid = min(64, u_hi - s0);
    load_rows_async<T, D>(kt + buf * 64 * LD, LD, 64, valid,
                          [&](int rr) { return p.kv.keys + seq.entry(keep[s0 + rr]) * p.kv.key_stride; }, p.kv.keys);
    if (tid < 64) {
      const bool ok = tid < valid;
      cp_async4(inv_t + buf * 64 + tid, p.inv_norm + off + (ok ? keep[s0 + tid] : 0), ok);
    }
  };
#pragma unroll
  for (int i = 0; i < ST - 1; ++i) {
    load_tile(i);
    cp_async_commit();  // the candidates travel with the first group
  }

  const int r = tid >> 2, part = tid & 3;
  float best = kNegInf;
  int best_slot = -1;
  AFragments<T, D, 1> fa;
  for (int t = 0; t < tiles; ++t) {
    const int buf = t % ST;
    cp_async_wait<ST - 2>();
    __syncthreads();
    if (t == 0) fa.load(a, nullptr, LD);
    load_tile(t + ST - 1);
    cp_async_commit();
    mma_tile_64x64<T, D, 1>(fa, kt + buf * 64 * LD, LD, c, 68);
    __syncthreads();
    const int s0 = u_lo + t * 64;
    const int lo = lo_c[r], hi = hi_c[r];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int col = i * 4 + part;
      const int slot = s0 + col;
      if (slot >= lo && slot < hi) {
        const float sim = c[r * 68 + col] * inv_t[buf * 64 + col];
        if (sim > best) {
          best = sim;
          best_slot = slot;
        }
      }
    }
  }
  cp_async_wait<0>();
  // The best of the four threads of a row: the larger value, then the lower slot.
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int os = __shfl_xor_sync(0xffffffffu, best_slot, o);
    if (os >= 0 && (best_slot < 0 || ov > best || (ov == best && os < best_slot))) {
      best = ov;
      best_slot = os;
    }
  }
  if (part == 0 && r < valid_c) {
    const int cc = c0 + r;
    const float similarity = best * p.inv_norm[off + e_c[r]];
    if (best_slot < 0 || similarity < p.threshold) {
      atomicAdd(&p.evicted[s], 1);
    } else {
      p.sort_keys[off + B + cc] = static_cast<uint32_t>(off + best_slot);
      p.sort_vals[off + B + cc] = e_c[r];
    }
  }
}

}  // namespace simcalkv::cuda::detail
