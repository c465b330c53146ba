// simcalkv CUDA: mass-weighted merging and the merged entry's bias (kernels/merge.hpp on the GPU).
//
// After the assignment, a radix sort by survivor lists each survivor's set in candidate order;
// segments_kernel records where each set starts and ends. merge_kernel then rewrites every
// survivor that received candidates, in place, in its own (pre-compaction) row:
//
//     k' = sum_i w_i k_i / sum_i w_i,  v' likewise  (w_i: mass under the window, bias included),
//
// with the CPU's fallback to a plain average when the whole set's mass underflowed, and the bias
// of BiasMode: log_count = log sum_i exp(b_i); calibrated = log sum_i w_i minus the log of the
// merged key's own mass under the window (log sum_r exp(tau q_r . k' - m_r) over the rows that
// see it); bounded = calibrated clamped to [max_i b_i, log_count]; none = 0. The calibration's
// dot products run on the tensor cores with k' and float queries as hi + lo 16-bit pairs (about
// 16 significant bits), 64 merged keys x 64 window rows per tile.
//
// Sums run in candidate order, as on the CPU, so a merge repeats bit for bit.
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/cuda/mma_tile.cuh"

namespace simcalkv::cuda::detail {

/// sort_keys[i] = sentinel for i < count.
__global__ void fill_keys_kernel(uint32_t* keys, int64_t count, uint32_t sentinel) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    keys[i] = sentinel;
}

/// seg_begin / seg_end (pre-filled with -1) of each survivor id present in the sorted keys.
__global__ void segments_kernel(const uint32_t* sorted, int64_t count, uint32_t sentinel, int32_t* seg_begin,
                                int32_t* seg_end) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t k = sorted[i];
    if (k == sentinel) continue;
    if (i == 0 || sorted[i - 1] != k) seg_begin[k] = static_cast<int32_t>(i);
    if (i == count - 1 || sorted[i + 1] != k) seg_end[k] = static_cast<int32_t>(i + 1);
  }
}

template <class T, class Layout>
struct MergeParams {
  LayerKV<T, Layout> kv;
  const int32_t* ws_off;
  const int32_t* budgets;
  const int32_t* order;
  const float* mass;         // [total]
  const int32_t* seg_begin;  // [total], by global survivor id
  const int32_t* seg_end;
  const int32_t* members;    // sorted candidate entries
  const T* q_hi;             // window rows, as for scoring
  const T* q_lo;
  const int32_t* row_pos;
  const float* row_max;
  int rows;
  int rows_padded;
  float scale;
  BiasMode bias;
  bool merge_keys;
};

template <class T, int D, int NA>
struct MergeSmem {
  static constexpr int ld = D + 8;
  static constexpr std::size_t tile_bytes = sizeof(T) * 64 * ld;
  static constexpr std::size_t bytes = (NA + 2) * tile_bytes + sizeof(float) * 64 * 68 + 64 * 4 * 12;
};

/// Adds bias b to a running log-sum-exp (max m, shifted sum l), as the CPU's add_bias.
__device__ __forceinline__ void add_bias(float& m, float& l, float b) {
  if (b == kNegInf) return;
  if (b > m) {
    l = l * expf(m - b) + 1.0f;
    m = b;
  } else {
    l += expf(b - m);
  }
}

/// grid (ceil(max_len / 64), S), 256 threads: 64 survivor slots per block.
template <class T, int D, int NA, class Layout>
__global__ void __launch_bounds__(kTileThreads) merge_kernel(MergeParams<T, Layout> p) {
  using Smem = MergeSmem<T, D, NA>;
  constexpr int LD = Smem::ld;
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* qh = reinterpret_cast<T*>(smem_raw);
  T* qlo = qh + 64 * LD;  // NA == 2
  T* kh = reinterpret_cast<T*>(smem_raw + NA * Smem::tile_bytes);
  T* kl = kh + 64 * LD;
  float* c = reinterpret_cast<float*>(smem_raw + (NA + 2) * Smem::tile_bytes);
  int* has = reinterpret_cast<int*>(c + 64 * 68);
  float* max_bias = reinterpret_cast<float*>(has + 64);
  float* log_count = max_bias + 64;
  float* set_mass = log_count + 64;
  int* pos_k = reinterpret_cast<int*>(set_mass + 64);
  int64_t* row_k = reinterpret_cast<int64_t*>(pos_k + 64);  // 64 int64 = 128 ints
  int* rpos = reinterpret_cast<int*>(row_k + 64);
  float* rmax = reinterpret_cast<float*>(rpos + 64);

  const int s = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = p.kv.lengths[s];
  const int B = p.budgets[s];
  const int k0 = blockIdx.x * 64;
  if (k0 >= B || B >= n) return;
  const int64_t off = p.ws_off[s];
  const auto seq = p.kv.layout.seq(s);
  const bool scores = p.kv.scores != nullptr;
  const bool calibrate = p.bias == BiasMode::calibrated || p.bias == BiasMode::bounded;

  // Phase A: merge. A quarter-warp (8 lanes, D / 8 dims each) per survivor, 32 survivors at a
  // time; each set is summed in candidate order, as on the CPU.
  constexpr int DQ = D / 8;
  const int quarter = lane >> 3, ql = lane & 7;
  const unsigned qmask = 0xffu << (quarter * 8);
  auto load_row = [&](const T* row, float* out) {
    const uint4* src = reinterpret_cast<const uint4*>(row + ql * DQ);
#pragma unroll
    for (int c = 0; c < DQ / 8; ++c) unpack8<T>(src[c], out + c * 8);
  };
  auto store_row = [&](T* row, const float* in) {
    uint4* dst = reinterpret_cast<uint4*>(row + ql * DQ);
#pragma unroll
    for (int c = 0; c < DQ / 8; ++c)
      dst[c] = make_uint4(pack2<T>(in[c * 8], in[c * 8 + 1]), pack2<T>(in[c * 8 + 2], in[c * 8 + 3]),
                          pack2<T>(in[c * 8 + 4], in[c * 8 + 5]), pack2<T>(in[c * 8 + 6], in[c * 8 + 7]));
  };
  int any = 0;
  for (int round = 0; round < 2; ++round) {
    const int sl = round * 32 + warp * 4 + quarter;
    const int slot = k0 + sl;
    const int beg = slot < B ? p.seg_begin[off + slot] : -1;
    if (beg < 0) {
      if (ql == 0) has[sl] = 0;
      for (int d = ql; d < D; d += 8) {
        kh[sl * LD + d] = from_float<T>(0.0f);
        kl[sl * LD + d] = from_float<T>(0.0f);
      }
      continue;
    }
    any = 1;
    const int end = p.seg_end[off + slot];
    const int j = p.order[off + slot];
    const int64_t ej = seq.entry(j);
    float kk[DQ], vv[DQ], ak[DQ], av[DQ], x0[DQ], y0[DQ], x1[DQ], y1[DQ];
    load_row(p.kv.keys + ej * p.kv.key_stride, kk);
    load_row(p.kv.values + ej * p.kv.value_stride, vv);
    const float w0 = p.mass[off + j];
    float total = w0;
#pragma unroll
    for (int d = 0; d < DQ; ++d) ak[d] = w0 * kk[d], av[d] = w0 * vv[d];
    float mb = kNegInf, lse = 0.0f;
    add_bias(mb, lse, p.kv.bias[ej]);
    float score = scores ? p.kv.scores[ej] : 0.0f;
    // Members, eight at a time: their entries, masses, biases and scores fetched by one lane each.
    for (int m0 = beg; m0 < end; m0 += 8) {
      const int cnt = min(8, end - m0);
      int64_t my_e = 0;
      float my_w = 0.0f, my_b = 0.0f, my_s = 0.0f;
      if (ql < cnt) {
        const int e = p.members[m0 + ql];
        my_e = seq.entry(e);
        my_w = p.mass[off + e];
        my_b = p.kv.bias[my_e];
        if (scores) my_s = p.kv.scores[my_e];
      }
      int i = 0;
      for (; i + 2 <= cnt; i += 2) {  // two rows in flight, summed in order
        const int64_t e0 = __shfl_sync(qmask, my_e, i, 8), e1 = __shfl_sync(qmask, my_e, i + 1, 8);
        load_row(p.kv.keys + e0 * p.kv.key_stride, x0);
        load_row(p.kv.values + e0 * p.kv.value_stride, y0);
        load_row(p.kv.keys + e1 * p.kv.key_stride, x1);
        load_row(p.kv.values + e1 * p.kv.value_stride, y1);
        const float wa = __shfl_sync(qmask, my_w, i, 8), wb = __shfl_sync(qmask, my_w, i + 1, 8);
#pragma unroll
        for (int d = 0; d < DQ; ++d) {
          ak[d] = fmaf(wa, x0[d], ak[d]), av[d] = fmaf(wa, y0[d], av[d]);
          ak[d] = fmaf(wb, x1[d], ak[d]), av[d] = fmaf(wb, y1[d], av[d]);
        }
        total += wa;
        total += wb;
        add_bias(mb, lse, __shfl_sync(qmask, my_b, i, 8));
        add_bias(mb, lse, __shfl_sync(qmask, my_b, i + 1, 8));
        const float sa = __shfl_sync(qmask, my_s, i, 8), sb = __shfl_sync(qmask, my_s, i + 1, 8);
        score += sa;
        score += sb;
      }
      if (i < cnt) {
        const int64_t e0 = __shfl_sync(qmask, my_e, i, 8);
        load_row(p.kv.keys + e0 * p.kv.key_stride, x0);
        load_row(p.kv.values + e0 * p.kv.value_stride, y0);
        const float wa = __shfl_sync(qmask, my_w, i, 8);
#pragma unroll
        for (int d = 0; d < DQ; ++d) ak[d] = fmaf(wa, x0[d], ak[d]), av[d] = fmaf(wa, y0[d], av[d]);
        total += wa;
        add_bias(mb, lse, __shfl_sync(qmask, my_b, i, 8));
        score += __shfl_sync(qmask, my_s, i, 8);
      }
    }
    const bool uniform = !(total > 1e-30f);
    if (uniform) {  // the set's mass underflowed: plain average
#pragma unroll
      for (int d = 0; d < DQ; ++d) ak[d] = kk[d], av[d] = vv[d];
      total = 1.0f;
      for (int mm = beg; mm < end; ++mm) {
        const int64_t ee = seq.entry(p.members[mm]);
        load_row(p.kv.keys + ee * p.kv.key_stride, x0);
        load_row(p.kv.values + ee * p.kv.value_stride, y0);
#pragma unroll
        for (int d = 0; d < DQ; ++d) ak[d] += x0[d], av[d] += y0[d];
        total += 1.0f;
      }
    }
    const float inv = 1.0f / total;
#pragma unroll
    for (int d = 0; d < DQ; ++d) {
      ak[d] = p.merge_keys ? ak[d] * inv : kk[d];
      av[d] = av[d] * inv;
    }
    // The merged key for calibration, then the row in storage (the survivor's own row).
#pragma unroll
    for (int d = 0; d < DQ; ++d) {
      const T hv = from_float<T>(ak[d]);
      kh[sl * LD + ql * DQ + d] = hv;
      kl[sl * LD + ql * DQ + d] = from_float<T>(ak[d] - to_float(hv));
    }
    if (p.merge_keys) store_row(p.kv.keys + ej * p.kv.key_stride, ak);
    store_row(p.kv.values + ej * p.kv.value_stride, av);
    const float lc = mb + logf(lse);
    if (ql == 0) {
      has[sl] = 1;
      max_bias[sl] = mb;
      log_count[sl] = lc;
      set_mass[sl] = uniform ? kNegInf : logf(total);
      pos_k[sl] = p.kv.positions[ej];
      row_k[sl] = ej;
      if (p.bias == BiasMode::log_count) p.kv.bias[ej] = lc;
      if (p.bias == BiasMode::none) p.kv.bias[ej] = 0.0f;
      if (scores) p.kv.scores[ej] = score;
    }
  }
  if (!__syncthreads_or(any) || !calibrate) return;

  // Phase B: the merged keys' mass under the window, 64 rows at a time.
  const int col = tid >> 2, part = tid & 3;
  float cm = kNegInf, cl = 0.0f;
  const int groups = p.rows_padded / 64;
  for (int g = 0; g < groups; ++g) {
    const int64_t row0 = static_cast<int64_t>(s) * p.rows_padded + g * 64;
    {
      constexpr int chunks = D * static_cast<int>(sizeof(T)) / 16, per = 16 / static_cast<int>(sizeof(T));
      for (int i = tid; i < 64 * chunks; i += blockDim.x) {
        const int rr = i / chunks, q = i % chunks;
        cp_async16(qh + rr * LD + q * per, p.q_hi + (row0 + rr) * D + q * per, true);
        if constexpr (NA == 2) cp_async16(qlo + rr * LD + q * per, p.q_lo + (row0 + rr) * D + q * per, true);
      }
      cp_async_commit();
      if (tid < 64) {
        rpos[tid] = p.row_pos[row0 + tid];
        rmax[tid] = p.row_max[row0 + tid];
      }
      cp_async_wait<0>();
    }
    __syncthreads();
    mma_tile_64x64<T, D, NA, 2>(qh, qlo, LD, kh, kl, LD, c, 68);
    __syncthreads();
    if (has[col]) {
      const int pk = pos_k[col];
      float v[16];
      float tm = kNegInf;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int row = i * 4 + part;
        const bool ok = rpos[row] >= pk && rmax[row] != kNegInf;
        v[i] = ok ? c[row * 68 + col] * p.scale - rmax[row] : kNegInf;
        tm = fmaxf(tm, v[i]);
      }
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < 16; ++i) sum += exp_diff(v[i], tm);
      lse_combine(cm, cl, tm, sum);
    }
    __syncthreads();
  }
  // Combine the four threads of a column (all four take the same branch).
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, cm, o);
    const float ol = __shfl_xor_sync(0xffffffffu, cl, o);
    lse_combine(cm, cl, om, ol);
  }
  if (part == 0 && has[col]) {
    const float merged_mass = cm == kNegInf ? kNegInf : cm + logf(cl);
    const float sm = set_mass[col];
    const bool defined = sm != kNegInf && merged_mass != kNegInf;
    float b = defined ? sm - merged_mass : log_count[col];
    if (p.bias == BiasMode::bounded) b = b < max_bias[col] ? max_bias[col] : (log_count[col] < b ? log_count[col] : b);
    p.kv.bias[row_k[col]] = b;
  }
}

}  // namespace simcalkv::cuda::detail
