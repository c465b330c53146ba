// simcalkv CUDA: window scoring of every sequence of a layer (kernels/scoring.hpp on the GPU).
//
// For sequence s (KV head h of request b), the R = G * W window queries of the group attend to all
// n entries: logit = tau * q . k_j + bias_j, masked where positions[j] > the query's position.
// From the softmax of each row come the entry's score (mean probability over the rows) and its
// mass w_j = sum_r exp(logit_rj - m_r), which the merge weights use. Two passes over the keys on
// the tensor cores, 64 rows x 64 entries per tile:
//
//  1. window_prep_kernel: the group's queries into [S][Rp][D] 16-bit tiles (Rp = R rounded up
//     to 64; a float query becomes hi + lo), with each row's position.
//  2. score_kernel<PASS 1>: per row, the running max and sum of exp over a split of the entries;
//     row_stats_kernel combines the splits into m_r and 1 / (sum_r * R).
//  3. score_kernel<PASS 2>: per entry, sum_r p_rj / (sum_r R) and sum_r exp(logit - m_r) for
//     the block's 64 rows, written per row group and summed in a fixed order later (no atomics,
//     so results repeat bit for bit). Pass 2 also writes each key's inverse norm.
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/cuda/mma_tile.cuh"

#include <climits>

namespace simcalkv::cuda::detail {

inline constexpr int kRowsPerGroup = 64;
inline constexpr int kEntriesPerTile = 64;
inline constexpr int kLdc = 68;  // float stride of the 64 x 64 product tile

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
};

inline constexpr int kScoreStages = 3;

template <class T, int D, int NA>
struct ScoreSmem {
  static constexpr int ld = D + 8;
  static constexpr std::size_t k_bytes = sizeof(T) * kEntriesPerTile * ld;
  static constexpr std::size_t c_bytes = sizeof(float) * kRowsPerGroup * kLdc;
  static constexpr std::size_t bytes = kScoreStages * k_bytes + c_bytes + kScoreStages * kEntriesPerTile * 8 +
                                       kRowsPerGroup * 12;
};

/// grid (splits, Rp / 64, S), 256 threads. The 64 query rows stay in registers (WMMA A
/// fragments); key tiles stream through shared memory, three stages deep.
template <class T, int D, int NA, int PASS, class Layout>
__global__ void __launch_bounds__(kTileThreads) score_kernel(ScoreParams<T, Layout> p) {
  using Smem = ScoreSmem<T, D, NA>;
  constexpr int LD = Smem::ld;
  constexpr int ST = kScoreStages;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* kt = reinterpret_cast<T*>(smem_raw);                                          // [ST][64][LD]
  float* c = reinterpret_cast<float*>(smem_raw + ST * Smem::k_bytes);              // [64][kLdc]
  float* bias_t = c + kRowsPerGroup * kLdc;                                        // [ST][64]
  int32_t* pos_t = reinterpret_cast<int32_t*>(bias_t + ST * kEntriesPerTile);      // [ST][64]
  int32_t* rpos = pos_t + ST * kEntriesPerTile;                                    // [64]
  float* rmax = reinterpret_cast<float*>(rpos + kRowsPerGroup);                    // [64]
  float* rinv = rmax + kRowsPerGroup;                                              // [64]

  const int x = blockIdx.x, rg = blockIdx.y, s = blockIdx.z;
  const int tid = threadIdx.x;
  const int n = p.kv.lengths[s];
  const int tiles = static_cast<int>(ceil_div(n, kEntriesPerTile));
  const int t_begin = x * p.tiles_per_split;
  const int t_end = min(tiles, t_begin + p.tiles_per_split);
  const int64_t row0 = static_cast<int64_t>(s) * p.rows_padded + rg * kRowsPerGroup;
  const int r = tid >> 2, part = tid & 3;  // the row (pass 1) or column (pass 2) a thread works on

  if (t_begin >= t_end) {
    if constexpr (PASS == 1) {
      if (tid < kRowsPerGroup) p.stats[(row0 + tid) * p.splits + x] = make_float2(kNegInf, 0.0f);
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
    load_rows_async<T, D>(kt + buf * kEntriesPerTile * LD, LD, kEntriesPerTile, valid,
                          [&](int rr) { return p.kv.keys + seq.entry(j0 + rr) * p.kv.key_stride; }, p.kv.keys);
    if (tid < kEntriesPerTile) {
      const bool ok = tid < valid;
      const int64_t e = ok ? seq.entry(j0 + tid) : 0;
      cp_async4(bias_t + buf * kEntriesPerTile + tid, p.kv.bias + e, ok);
      cp_async4(pos_t + buf * kEntriesPerTile + tid, p.kv.positions + e, ok);
    }
  };
#pragma unroll
  for (int i = 0; i < ST - 1; ++i) {
    load_tile(t_begin + i);
    cp_async_commit();
  }
  // Query rows of this group (contiguous in the workspace) into registers, and their row data.
  AFragments<T, D, NA> qa;
  qa.load(p.q_hi + row0 * D, NA == 2 ? p.q_lo + row0 * D : nullptr, D);
  if (tid < kRowsPerGroup) {
    rpos[tid] = p.row_pos[row0 + tid];
    if constexpr (PASS == 2) {
      rmax[tid] = p.row_max[row0 + tid];
      rinv[tid] = p.row_inv[row0 + tid];
    }
  }

  float run_m = kNegInf, run_l = 0.0f;  // pass 1: row r's running max and sum
  for (int t = t_begin; t < t_end; ++t) {
    const int buf = (t - t_begin) % ST;
    cp_async_wait<ST - 2>();
    __syncthreads();
    load_tile(t + ST - 1);
    cp_async_commit();
    const T* kb = kt + buf * kEntriesPerTile * LD;
    mma_tile_64x64<T, D, NA>(qa, kb, LD, c, kLdc);
    __syncthreads();
    const int j0 = t * kEntriesPerTile;
    const float* bt = bias_t + buf * kEntriesPerTile;
    const int32_t* pt = pos_t + buf * kEntriesPerTile;
    if constexpr (PASS == 1) {
      // Thread (r, part): row r, columns part, part + 4, ... (conflict-free shared reads).
      const int rp = rpos[r];
      float v[16];
      float tile_max = kNegInf;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int col = i * 4 + part;
        const bool ok = j0 + col < n && pt[col] <= rp;
        v[i] = ok ? c[r * kLdc + col] * p.scale + bt[col] : kNegInf;
        tile_max = fmaxf(tile_max, v[i]);
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < 16; ++i) sum += fast_exp_diff(v[i], tile_max);
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      lse_combine(run_m, run_l, tile_max, sum);
    } else {
      // Thread (col = r, part): column r, rows part, part + 4, ...
      const int col = r;
      const bool col_ok = j0 + col < n;
      const int pj = pt[col];
      const float bj = bt[col];
      float mass = 0.0f, score = 0.0f;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int row = i * 4 + part;
        if (col_ok && pj <= rpos[row] && rmax[row] != kNegInf) {
          const float e = __expf(c[row * kLdc + col] * p.scale + bj - rmax[row]);
          mass += e;
          score += e * rinv[row];
        }
      }
      mass += __shfl_xor_sync(0xffffffffu, mass, 1);
      mass += __shfl_xor_sync(0xffffffffu, mass, 2);
      score += __shfl_xor_sync(0xffffffffu, score, 1);
      score += __shfl_xor_sync(0xffffffffu, score, 2);
      if (part == 0 && col_ok) {
        p.mass_part[rg * p.total + off + j0 + col] = mass;
        p.score_part[rg * p.total + off + j0 + col] = score;
      }
      if (p.inv_norm && rg == 0) {
        float sq = 0.0f;
        const T* krow = kb + col * LD;
#pragma unroll 8
        for (int i = part; i < D; i += 4) {
          const float k = to_float(krow[i]);
          sq += k * k;
        }
        sq += __shfl_xor_sync(0xffffffffu, sq, 1);
        sq += __shfl_xor_sync(0xffffffffu, sq, 2);
        if (part == 0 && col_ok) p.inv_norm[off + j0 + col] = sq > 0.0f ? 1.0f / sqrtf(sq) : 0.0f;
      }
    }
  }
  cp_async_wait<0>();
  if constexpr (PASS == 1) {
    if (part == 0) p.stats[(row0 + r) * p.splits + x] = make_float2(run_m, run_l);
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
