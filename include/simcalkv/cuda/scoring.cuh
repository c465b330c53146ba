// simcalkv CUDA: window scoring of every sequence of a layer (kernels/scoring.hpp on the GPU).
//
// For sequence s (KV head h of request b), the R = G * W window queries of the group attend to all
// n entries: logit = tau * q . k_j + bias_j, masked where positions[j] > the query's position.
// From the softmax of each row come the entry's score (mean probability over the rows) and its
// mass w_j = sum_r exp(logit_rj - m_r), which the merge weights use. Two passes over the keys on
// the tensor cores (mma.sync, the products kept in registers), 64 or 128 rows x 64 entries per
// tile:
//
//  1. window_prep_kernel: the group's queries into [S][Rp][D] 16-bit tiles (Rp = R rounded up
//     to 128; a float query becomes hi + lo), with each row's position.
//  2. score_kernel<PASS 1>: per row, the running max and sum of exp over a split of the entries;
//     row_stats_kernel combines the splits into m_r and 1 / (sum_r * R).
//  3. score_kernel<PASS 2>: per entry, sum_r p_rj / (sum_r R) and sum_r exp(logit - m_r) for
//     the block's rows, written per row group and summed in a fixed order later (no atomics,
//     so results repeat bit for bit). Pass 2 also writes each key's inverse norm.
//
// score_kernel<PASS 3> serves SimCalKV's calibration (merge.cuh): after the compaction, the
// same sums as pass 2's masses, without the bias, over the first budgets[s] rows (the survivors,
// merged keys as stored).
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/cuda/mma_tile.cuh"

#include <climits>

namespace simcalkv::cuda::detail {

inline constexpr int kWindowRowAlign = 128;  // Rp: window rows rounded up to this
inline constexpr int kEntriesPerTile = 64;

template <class T, class Q>
struct PrepParams {
  WindowArgs<Q> window;
  int num_kv_heads;
  int num_seqs;
  int rows;         // R = G * W
  int rows_padded;  // Rp
  T* q_hi;          // [S][Rp][D]
  T* q_lo;          // [S][Rp][D] (float queries only)
  int32_t* row_pos; // [S][Rp]
};

/// grid (S, chunks), 256 threads: chunk y covers rows [y * 8, y * 8 + 8).
template <class T, class Q, int D>
__global__ void window_prep_kernel(PrepParams<T, Q> p) {
  const int s = blockIdx.x;
  const int first = blockIdx.y * 8 * D, last = min(p.rows_padded * D, first + 8 * D);
  const int b = s / p.num_kv_heads, h = s % p.num_kv_heads;
  const int W = p.window.num_tokens, G = p.window.group;
  T* hi = p.q_hi + static_cast<int64_t>(s) * p.rows_padded * D;
  T* lo = p.q_lo ? p.q_lo + static_cast<int64_t>(s) * p.rows_padded * D : nullptr;
  for (int idx = first + static_cast<int>(threadIdx.x); idx < last; idx += blockDim.x) {
    const int r = idx / D, i = idx % D;
    float q = 0.0f;
    if (r < p.rows) {
      const int g = r / W, t = r % W;
      q = to_float(p.window.queries[b * p.window.request_stride + (h * G + g) * p.window.head_stride +
                                    t * p.window.token_stride + i]);
    }
    const T qh = from_float<T>(q);
    hi[idx] = qh;
    if (lo) lo[idx] = from_float<T>(q - to_float(qh));
  }
  for (int r = blockIdx.y * 8 + static_cast<int>(threadIdx.x); r < min(p.rows_padded, static_cast<int>(blockIdx.y) * 8 + 8);
       r += blockDim.x)
    p.row_pos[static_cast<int64_t>(s) * p.rows_padded + r] =
        r < p.rows ? p.window.positions[b * p.window.position_request_stride + r % W] : INT_MIN;
}

template <class T, class Layout>
struct ScoreParams {
  LayerKV<T, Layout> kv;
  const int32_t* ws_off;
  const T* q_hi;
  const T* q_lo;
  const int32_t* row_pos;
  int rows;
  int rows_padded;
  float scale;
  int splits;
  int tiles_per_split;
  float2* stats;          // [S][Rp][splits] (pass 1 out)
  const float* row_max;   // [S][Rp] (pass 2 in)
  const float* row_inv;   // [S][Rp]
  float* score_part;      // [groups][total] (pass 2 out)
  float* mass_part;       // [groups][total]
  int64_t total;
  float* inv_norm;        // [total], optional (pass 2 out)
  const int32_t* budgets; // [S] (pass 3 in: the rows to score where budgets[s] < lengths[s])
};

inline constexpr int kScoreStages = 3;
inline constexpr int kScoreThreads = 128;

/// m-tiles (16 query rows each) a warp of the score kernel keeps in registers: two with 16-bit
/// queries, one with float queries (hi + lo terms double the fragments).
template <int NA>
inline constexpr int kScoreRowTiles = NA == 1 ? 2 : 1;
/// Window rows per score block: 4 warps x 16 x kScoreRowTiles.
template <int NA>
inline constexpr int kScoreRows = 4 * 16 * kScoreRowTiles<NA>;

template <class T, int D>
struct ScoreSmem {
  static constexpr int ld = D + 8;  // padded rows: conflict-free ldmatrix
  static constexpr std::size_t k_bytes = sizeof(T) * kEntriesPerTile * ld;
  static constexpr std::size_t bytes =
      kScoreStages * (k_bytes + kEntriesPerTile * 8) + sizeof(float) * 4 * kEntriesPerTile * 2;
};

/// One step of a warp's reduce-scatter over the lanes that differ in bit `mask`: of the N values
/// a lane holds, it keeps the lower or the upper half (by that bit) summed with its partner's.
/// Every sum has a fixed order, so results repeat bit for bit.
template <int N>
__device__ __forceinline__ void reduce_scatter_step(float* v, int mask) {
  const bool upper = (threadIdx.x & mask) != 0;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const float send = upper ? v[i] : v[i + N / 2];
    const float keep = upper ? v[i + N / 2] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, mask);
  }
}

/// grid (splits, Rp / kScoreRows, S), 128 threads. Each warp keeps 16 * MT query rows in
/// registers (mma A fragments); 64-entry key tiles stream through shared memory, three stages
/// deep, and each warp multiplies its rows with a tile 32 entries at a time (the products stay in
/// registers). Pass 1 keeps a running max and sum per row and thread, combined at the end; pass 2
/// sums each entry's terms over the thread's rows, then over the warp (reduce-scatter) and the
/// four warps (shared memory), in a fixed order.
template <class T, int D, int NA, int PASS, class Layout>
__global__ void __launch_bounds__(kScoreThreads) score_kernel(ScoreParams<T, Layout> p) {
  using Smem = ScoreSmem<T, D>;
  constexpr int LD = Smem::ld;
  constexpr int ST = kScoreStages;
  constexpr int MT = kScoreRowTiles<NA>;
  constexpr int RB = kScoreRows<NA>;
  constexpr int NB = 4;  // n-blocks of 8 entries per step: half a tile
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* kt = reinterpret_cast<T*>(smem_raw);                                       // [ST][64][LD]
  float* bias_t = reinterpret_cast<float*>(smem_raw + ST * Smem::k_bytes);      // [ST][64]
  int32_t* pos_t = reinterpret_cast<int32_t*>(bias_t + ST * kEntriesPerTile);   // [ST][64]
  float* red = reinterpret_cast<float*>(pos_t + ST * kEntriesPerTile);          // [4 warps][64][2]

  const int x = blockIdx.x, rg = blockIdx.y, s = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  int n = p.kv.lengths[s];
  if constexpr (PASS == 3) {
    const int B = p.budgets[s];
    n = B < n ? B : 0;  // an uncompressed sequence has nothing to calibrate
  }
  const int tiles = static_cast<int>(ceil_div(n, kEntriesPerTile));
  const int t_begin = x * p.tiles_per_split;
  const int t_end = min(tiles, t_begin + p.tiles_per_split);
  const int64_t row0 = static_cast<int64_t>(s) * p.rows_padded + rg * RB;

  if (t_begin >= t_end) {
    if constexpr (PASS == 1) {
      for (int i = tid; i < RB; i += kScoreThreads) p.stats[(row0 + i) * p.splits + x] = make_float2(kNegInf, 0.0f);
    }
    return;
  }
  const int64_t off = p.ws_off[s];
  const auto seq = p.kv.layout.seq(s);

  auto load_tile = [&](int t) {
    if (t >= t_end) return;
    const int buf = (t - t_begin) % ST;
    const int j0 = t * kEntriesPerTile;
    const int valid = min(kEntriesPerTile, n - j0);
    load_rows_async<T, D, kEntriesPerTile, kScoreThreads>(kt + buf * kEntriesPerTile * LD, LD, valid,
                          [&](int rr) { return p.kv.keys + seq.entry(j0 + rr) * p.kv.key_stride; }, p.kv.keys);
    const int e = tid & (kEntriesPerTile - 1);
    const bool ok = e < valid;
    const int64_t row = ok ? seq.entry(j0 + e) : 0;
    if (tid >= kEntriesPerTile) cp_async4(pos_t + buf * kEntriesPerTile + e, p.kv.positions + row, ok);
    else if constexpr (PASS != 3) cp_async4(bias_t + buf * kEntriesPerTile + e, p.kv.bias + row, ok);
  };
#pragma unroll
  for (int i = 0; i < ST - 1; ++i) {
    load_tile(t_begin + i);
    cp_async_commit();
  }

  // This warp's query rows as A fragments, and the data of the four rows each thread touches:
  // row (mt, h) = warp * 16 * MT + mt * 16 + h * 8 + g. Exponentials run in base 2 (one MUFU
  // instruction each): logits are scaled by log2(e), and the row data with them.
  const float scale2 = p.scale * kLog2e;
  const int64_t wrow0 = row0 + warp * 16 * MT;
  WarpRowsA<T, D> qa[NA][MT];
  int rpos[MT][2];
  float rmax2[MT][2], rinv[MT][2];
  int warp_min_pos = INT_MAX;  // the earliest position of this warp's real rows
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    qa[0][mt].load(p.q_hi + (wrow0 + mt * 16) * D, D);
    if constexpr (NA == 2) qa[1][mt].load(p.q_lo + (wrow0 + mt * 16) * D, D);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = wrow0 + mt * 16 + h * 8 + g;
      rpos[mt][h] = p.row_pos[r];
      if (rpos[mt][h] != INT_MIN) warp_min_pos = min(warp_min_pos, rpos[mt][h]);
      if constexpr (PASS >= 2) {
        // A row that sees nothing gets +inf, so that every term of it is exp2(-inf) = 0.
        const float m = p.row_max[r];
        rmax2[mt][h] = m == kNegInf ? __builtin_huge_valf() : m * kLog2e;
        rinv[mt][h] = p.row_inv[r];
      }
    }
  }
  warp_min_pos = __reduce_min_sync(0xffffffffu, warp_min_pos);

  float run_m[MT][2], run_l[MT][2];  // pass 1: running max (base 2) and sum of this thread's columns
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) run_m[mt][0] = run_m[mt][1] = kNegInf, run_l[mt][0] = run_l[mt][1] = 0.0f;

  for (int t = t_begin; t < t_end; ++t) {
    const int buf = (t - t_begin) % ST;
    cp_async_wait<ST - 2>();
    __syncthreads();
    load_tile(t + ST - 1);
    cp_async_commit();
    const T* kb = kt + buf * kEntriesPerTile * LD;
    const float* bt = bias_t + buf * kEntriesPerTile;
    const int32_t* pt = pos_t + buf * kEntriesPerTile;
    const int j0 = t * kEntriesPerTile;
    // Masks only matter in a partial tile or where an entry comes after one of the warp's rows
    // (the last few tiles): elsewhere the epilogue skips the checks.
    const bool masked = j0 + kEntriesPerTile > n || pt[kEntriesPerTile - 1] > warp_min_pos;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float acc[MT][NB][4];
      warp_mma_rows<T, D, MT, NA, NB>(acc, qa, kb + half * NB * 8 * LD, LD);
      // This thread's columns: entry half * 32 + nb * 8 + t4 * 2 + c; their logits (base 2).
      float b2[NB * 2];
      int pj[NB * 2];
#pragma unroll
      for (int i = 0; i < NB * 2; ++i) {
        const int e = half * NB * 8 + (i >> 1) * 8 + t4 * 2 + (i & 1);
        b2[i] = PASS == 3 ? 0.0f : bt[e] * kLog2e;
        pj[i] = j0 + e < n ? pt[e] : INT_MAX;
      }
      auto logit2 = [&](int mt, int h, int i) {
        const float x = fmaf(acc[mt][i >> 1][h * 2 + (i & 1)], scale2, b2[i]);
        return !masked || pj[i] <= rpos[mt][h] ? x : kNegInf;
      };
      if constexpr (PASS == 1) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float v[NB * 2];
            float mx = kNegInf;
#pragma unroll
            for (int i = 0; i < NB * 2; ++i) {
              v[i] = logit2(mt, h, i);
              mx = fmaxf(mx, v[i]);
            }
            const float m_new = fmaxf(run_m[mt][h], mx);
            if (m_new == kNegInf) continue;
            float sum = run_l[mt][h] * fast_exp2(run_m[mt][h] - m_new);
#pragma unroll
            for (int i = 0; i < NB * 2; ++i) sum += fast_exp2(v[i] - m_new);
            run_l[mt][h] = sum;
            run_m[mt][h] = m_new;
          }
      } else {
        // v[i * 2 + k]: column i's mass (k = 0) and score (k = 1) over this thread's rows; then
        // summed over the eight row lanes g.
        float v[NB * 4];
#pragma unroll
        for (int i = 0; i < NB * 2; ++i) {
          float mass = 0.0f, score = 0.0f;
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const float ex = fast_exp2(logit2(mt, h, i) - rmax2[mt][h]);
              mass += ex;
              score = fmaf(ex, rinv[mt][h], score);
            }
          v[i * 2] = mass;
          v[i * 2 + 1] = score;
        }
        reduce_scatter_step<NB * 4>(v, 16);
        reduce_scatter_step<NB * 2>(v, 8);
        reduce_scatter_step<NB>(v, 4);
        // Lane bits (16, 8, 4) pick the column this lane now holds.
        const int ci = ((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1);
        const int e = half * NB * 8 + (ci >> 1) * 8 + t4 * 2 + (ci & 1);
        red[(warp * kEntriesPerTile + e) * 2] = v[0];
        red[(warp * kEntriesPerTile + e) * 2 + 1] = v[1];
      }
    }
    if constexpr (PASS >= 2) {
      __syncthreads();
      if (PASS == 2 || tid < kEntriesPerTile) {  // pass 3 keeps the masses only
        const int e = tid & (kEntriesPerTile - 1), k = tid / kEntriesPerTile;
        const float total = ((red[e * 2 + k] + red[(kEntriesPerTile + e) * 2 + k]) +
                             red[(2 * kEntriesPerTile + e) * 2 + k]) +
                            red[(3 * kEntriesPerTile + e) * 2 + k];
        if (j0 + e < n) (k == 0 ? p.mass_part : p.score_part)[rg * p.total + off + j0 + e] = total;
      }
      if (PASS == 2 && p.inv_norm && rg == 0) {
        // Two threads per key, half of its dimensions each.
        const int e = tid >> 1, hf = tid & 1;
        const T* krow = kb + e * LD + hf * (D / 2);
        float sq = 0.0f;
#pragma unroll
        for (int i = 0; i < D / 2; i += 8) {
          float k8[8];
          unpack8<T>(*reinterpret_cast<const uint4*>(krow + i), k8);
#pragma unroll
          for (int q = 0; q < 8; ++q) sq = fmaf(k8[q], k8[q], sq);
        }
        sq += __shfl_xor_sync(0xffffffffu, sq, 1);
        if (hf == 0 && j0 + e < n) p.inv_norm[off + j0 + e] = sq > 0.0f ? 1.0f / sqrtf(sq) : 0.0f;
      }
    }
  }
  cp_async_wait<0>();
  if constexpr (PASS == 1) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // Back to natural units; a row that sees nothing (padding) has no mass at all.
        float m = rpos[mt][h] == INT_MIN ? kNegInf : run_m[mt][h] * kLn2;
        float l = rpos[mt][h] == INT_MIN ? 0.0f : run_l[mt][h];
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          const float om = __shfl_xor_sync(0xffffffffu, m, o);
          const float ol = __shfl_xor_sync(0xffffffffu, l, o);
          lse_combine(m, l, om, ol);
        }
        if (t4 == 0) p.stats[(wrow0 + mt * 16 + h * 8 + g) * p.splits + x] = make_float2(m, l);
      }
  }
}

struct RowStatsParams {
  const float2* stats;
  int splits;
  int rows;
  int rows_padded;
  int num_seqs;
  float* row_max;
  float* row_inv;
};

/// One thread per (sequence, row).
__global__ void row_stats_kernel(RowStatsParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(p.num_seqs) * p.rows_padded) return;
  float m = kNegInf, l = 0.0f;
  for (int x = 0; x < p.splits; ++x) {
    const float2 st = p.stats[i * p.splits + x];
    lse_combine(m, l, st.x, st.y);
  }
  p.row_max[i] = m;
  p.row_inv[i] = (m != kNegInf && l > 0.0f) ? 1.0f / (l * static_cast<float>(p.rows)) : 0.0f;
}

}  // namespace simcalkv::cuda::detail
