// simcalkv CUDA: sending each removed entry to its most cosine-similar survivor
// (kernels/similarity.hpp on the GPU), on the tensor cores.
//
// Candidate c (the c-th removed entry of a sequence, entry e_c) has nk = e_c - c survivors before
// it. The local search looks at survivor slots [nk - radius, nk + radius) (clipped), the exact one
// at all of them; the best is argmax_s (k_e . k_keep[s]) / |k_keep[s]|, the first slot on ties, and
// its similarity that value / |k_e|. A candidate whose similarity is below the threshold, or that
// has no survivor to go to, is evicted.
//
// A block takes 128 consecutive candidates (their windows nearly coincide, and both ends only grow
// with c) and walks the union of their windows in tiles of 64 survivors: dot products on the
// tensor cores (mma.sync with 16-bit keys and float accumulation: the products of stored keys are
// exact), kept in registers, where each candidate scans its own columns. Survivor tiles are
// gathered by index with cp.async, three stages deep.
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
inline constexpr int kAssignThreads = 128;
inline constexpr int kAssignRows = 128;  // candidates per block: 4 warps x 2 m-tiles of 16

template <class T, int D>
struct AssignSmem {
  static constexpr int ld = D + 8;  // padded rows: conflict-free ldmatrix
  static constexpr std::size_t tile_bytes = sizeof(T) * 64 * ld;
  static constexpr std::size_t bytes = kAssignStages * (tile_bytes + 64 * 4);
};

/// grid (ceil(max_len / 128), S), 128 threads. Each warp keeps the keys of 32 candidates in
/// registers (mma A fragments); tiles of 64 survivors stream through shared memory, and each
/// thread scans its own products for its rows' best slot (the products stay in registers).
template <class T, int D, class Layout>
__global__ void __launch_bounds__(kAssignThreads) assign_kernel(AssignParams<T, Layout> p) {
  using Smem = AssignSmem<T, D>;
  constexpr int LD = Smem::ld;
  constexpr int ST = kAssignStages;
  constexpr int MT = 2, NB = 4;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* kt = reinterpret_cast<T*>(smem_raw);                                // [ST][64][LD]
  float* inv_t = reinterpret_cast<float*>(smem_raw + ST * Smem::tile_bytes);  // [ST][64]

  const int s = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const int n = p.kv.lengths[s];
  const int B = p.budgets[s];
  const int E = n - B;
  const int c0 = blockIdx.x * kAssignRows;
  if (c0 >= E) return;
  const int valid_c = min(kAssignRows, E - c0);
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
  int u_lo, u_hi, tmp;
  window_of(c0, u_lo, tmp);
  window_of(c0 + valid_c - 1, tmp, u_hi);
  const int tiles = u_hi > u_lo ? static_cast<int>(ceil_div(u_hi - u_lo, 64)) : 0;

  // Survivor tiles are gathered by index: each thread reads the indices of its rows one stage
  // before it issues their copies, so the index loads are never waited for.
  constexpr int CH = D * static_cast<int>(sizeof(T)) / 16;  // 16-byte chunks of a row
  constexpr int RP = kAssignThreads / CH;                   // rows per pass of the block
  constexpr int RPT = 64 / RP;                              // rows per thread and tile
  struct TileRows {
    int idx[RPT];
    int inv_idx;
  };
  auto fetch_rows = [&](int t, TileRows& tr) {
    const int s0 = u_lo + t * 64;
    const int valid = t < tiles ? min(64, u_hi - s0) : 0;
#pragma unroll
    for (int k = 0; k < RPT; ++k) {
      const int r = tid / CH + RP * k;
      tr.idx[k] = r < valid ? keep[s0 + r] : -1;
    }
    tr.inv_idx = tid < valid ? keep[s0 + tid] : -1;
  };
  auto issue_rows = [&](int t, const TileRows& tr) {
    if (t >= tiles) return;
    const int buf = t % ST;
    const int q = tid % CH;
#pragma unroll
    for (int k = 0; k < RPT; ++k) {
      const int r = tid / CH + RP * k;
      const bool ok = tr.idx[k] >= 0;
      const T* src = ok ? p.kv.keys + seq.entry(tr.idx[k]) * p.kv.key_stride + q * 8 : p.kv.keys;
      cp_async16(kt + (buf * 64 + r) * LD + q * 8, src, ok);
    }
    if (tid < 64) cp_async4(inv_t + buf * 64 + tid, p.inv_norm + off + max(tr.inv_idx, 0), tr.inv_idx >= 0);
  };
  static_assert(ST == 3, "the index prefetch below assumes three stages");
  TileRows next;
  {
    TileRows first;
    fetch_rows(0, first);
    fetch_rows(1, next);
    issue_rows(0, first);
    cp_async_commit();
    issue_rows(1, next);
    cp_async_commit();
  }
  fetch_rows(2, next);

  // This thread's four candidates (m-tile mt, half h): row warp * 32 + mt * 16 + h * 8 + g; their
  // keys as A fragments (rows past the end repeat the last candidate and are never written).
  WarpRowsA<T, D> qa[1][MT];
  int lo_r[MT][2], hi_r[MT][2], e_r[MT][2];
  float best[MT][2];
  int best_slot[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const T* rows[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int cc = c0 + min(warp * 32 + mt * 16 + h * 8 + g, valid_c - 1);
      e_r[mt][h] = cand[cc];
      window_of(cc, lo_r[mt][h], hi_r[mt][h]);
      rows[h] = p.kv.keys + seq.entry(e_r[mt][h]) * p.kv.key_stride;
      best[mt][h] = kNegInf;
      best_slot[mt][h] = -1;
    }
    qa[0][mt].load_rows(rows[0], rows[1]);
  }

  for (int t = 0; t < tiles; ++t) {
    const int buf = t % ST;
    cp_async_wait<ST - 2>();
    __syncthreads();
    issue_rows(t + 2, next);
    cp_async_commit();
    fetch_rows(t + 3, next);
    const T* kb = kt + buf * 64 * LD;
    const float* it = inv_t + buf * 64;
    const int s0 = u_lo + t * 64;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float acc[MT][NB][4];
      warp_mma_rows<T, D, MT, 1, NB>(acc, qa, kb + half * NB * 8 * LD, LD);
      // Columns in increasing slot order, so a strict > keeps the first slot of a tie.
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = half * NB * 8 + nb * 8 + t4 * 2 + c;
          const int slot = s0 + col;
          const float inv = it[col];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
              if (slot >= lo_r[mt][h] && slot < hi_r[mt][h]) {
                const float sim = acc[mt][nb][h * 2 + c] * inv;
                if (sim > best[mt][h]) {
                  best[mt][h] = sim;
                  best_slot[mt][h] = slot;
                }
              }
        }
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float bv = best[mt][h];
      int bs = best_slot[mt][h];
      // The best of the four lanes of a row: the larger value, then the lower slot.
#pragma unroll
      for (int o = 1; o <= 2; o <<= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int os = __shfl_xor_sync(0xffffffffu, bs, o);
        if (os >= 0 && (bs < 0 || ov > bv || (ov == bv && os < bs))) {
          bv = ov;
          bs = os;
        }
      }
      const int r = warp * 32 + mt * 16 + h * 8 + g;
      if (t4 == 0 && r < valid_c) {
        const int cc = c0 + r;
        const float similarity = bv * p.inv_norm[off + e_r[mt][h]];
        if (bs < 0 || similarity < p.threshold) {
          atomicAdd(&p.evicted[s], 1);
        } else {
          p.sort_keys[off + B + cc] = static_cast<uint32_t>(off + bs);
          p.sort_vals[off + B + cc] = e_r[mt][h];
        }
      }
    }
}

}  // namespace simcalkv::cuda::detail
