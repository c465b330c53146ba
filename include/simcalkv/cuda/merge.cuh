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

#include <climits>

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

inline constexpr int kMergeMembersPerStage = 32;
inline constexpr int kMergeStages = 3;

template <class T, int D, int NA>
struct MergeSmem {
  static constexpr int ld = D + 8;  // padded rows
  static constexpr std::size_t tile_bytes = sizeof(T) * 64 * ld;
  // Phase A: member rows (keys and values) with their mass, bias and score, three stages deep.
  static constexpr std::size_t member_stage = 2 * sizeof(T) * kMergeMembersPerStage * ld + 3 * 4 * kMergeMembersPerStage;
  static constexpr std::size_t phase_a = kMergeStages * member_stage;
  // Phase B: two buffers of 64 window rows (hi, and lo for float queries) and the product tile.
  static constexpr std::size_t phase_b = 2 * NA * tile_bytes + sizeof(float) * 64 * 68;
  static constexpr std::size_t shared = phase_a > phase_b ? phase_a : phase_b;
  // kh, kl (the merged keys as hi + lo), the phase-dependent area, per-slot data.
  static constexpr std::size_t bytes = 2 * tile_bytes + shared + 64 * 4 * 12 + 2 * 64 * 8;
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
  constexpr int TM = kMergeMembersPerStage;
  constexpr int MST = kMergeStages;
  constexpr int DQ = D / 4;  // dimensions per thread: four threads per survivor
  constexpr int CHUNKS = D * static_cast<int>(sizeof(T)) / 16;
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* kh = reinterpret_cast<T*>(smem_raw);
  T* kl = kh + 64 * LD;
  unsigned char* area = smem_raw + 2 * Smem::tile_bytes;  // phase A stages, then phase B buffers
  int* has = reinterpret_cast<int*>(area + Smem::shared);
  float* max_bias = reinterpret_cast<float*>(has + 64);
  float* log_count = max_bias + 64;
  float* set_mass = log_count + 64;
  int* pos_k = reinterpret_cast<int*>(set_mass + 64);
  int* seg_b = pos_k + 64;
  int* seg_e = seg_b + 64;
  int* range = seg_e + 64;                                  // [4]: per-warp min begin, max end
  int64_t* row_k = reinterpret_cast<int64_t*>(range + 64);  // 64 int64
  int* rpos = reinterpret_cast<int*>(row_k + 64);           // [2][64]
  float* rmax = reinterpret_cast<float*>(rpos + 128);       // [2][64]

  const int s = blockIdx.y, tid = threadIdx.x;
  const int n = p.kv.lengths[s];
  const int B = p.budgets[s];
  const int k0 = blockIdx.x * 64;
  if (k0 >= B || B >= n) return;
  const int64_t off = p.ws_off[s];
  const auto seq = p.kv.layout.seq(s);
  const bool scores = p.kv.scores != nullptr;
  const bool calibrate = p.bias == BiasMode::calibrated || p.bias == BiasMode::bounded;

  // The block's survivors have their candidates in one contiguous run of the sorted members.
  if (tid < 64) {
    const int slot = k0 + tid;
    const int beg = slot < B ? p.seg_begin[off + slot] : -1;
    const int end = beg >= 0 ? p.seg_end[off + slot] : -1;
    seg_b[tid] = beg;
    seg_e[tid] = end;
    int lo = beg >= 0 ? beg : INT_MAX, hi = end;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
      hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    if ((tid & 31) == 0) range[tid >> 5] = lo, range[2 + (tid >> 5)] = hi;
  }
  __syncthreads();
  const int m_begin = min(range[0], range[1]), m_end = max(range[2], range[3]);
  if (m_end < 0) return;  // no survivor of this block received candidates

  // Phase A: merge. Four threads per survivor (DQ dimensions each); the members stream through
  // shared memory in runs of TM rows, and each survivor adds its own in candidate order, as the
  // CPU does, so a merge repeats bit for bit.
  const int sl = tid >> 2, q = tid & 3, slot = k0 + sl;
  const int beg = seg_b[sl], end = seg_e[sl];
  const bool mine = beg >= 0;
  auto stage_k = [&](int st) { return reinterpret_cast<T*>(area + st * Smem::member_stage); };
  auto stage_v = [&](int st) { return stage_k(st) + TM * LD; };
  auto stage_meta = [&](int st) { return reinterpret_cast<float*>(stage_v(st) + TM * LD); };  // w, b, score
  const int mtiles = static_cast<int>(ceil_div(m_end - m_begin, TM));
  // A stage's member rows are gathered by index: each thread reads its row's index one stage
  // before it issues the copies, so the index load is never waited for.
  static_assert(MST == 3, "the index prefetch below assumes three stages");
  auto member_of = [&](int t) {
    const int m = m_begin + t * TM + (tid >> 3);
    return t < mtiles && m < m_end ? p.members[m] : -1;
  };
  auto load_members = [&](int t, int e) {
    if (t >= mtiles) return;
    const int st = t % MST;
    const int r = tid >> 3, part = tid & 7;
    const bool ok = e >= 0;
    const int64_t row = ok ? seq.entry(e) : 0;
    T* kd = stage_k(st) + r * LD;
    T* vd = stage_v(st) + r * LD;
    for (int c = part; c < CHUNKS; c += 8) {
      cp_async16(kd + c * 8, p.kv.keys + row * p.kv.key_stride + c * 8, ok);
      cp_async16(vd + c * 8, p.kv.values + row * p.kv.value_stride + c * 8, ok);
    }
    float* meta = stage_meta(st);
    if (part == 0) cp_async4(meta + r, p.mass + off + (ok ? e : 0), ok);
    if (part == 1) cp_async4(meta + TM + r, p.kv.bias + row, ok);
    if (part == 2 && scores) cp_async4(meta + 2 * TM + r, p.kv.scores + row, ok);
  };
  {
    const int e0 = member_of(0), e1 = member_of(1);
    load_members(0, e0);
    cp_async_commit();
    load_members(1, e1);
    cp_async_commit();
  }
  int e_next = member_of(2);

  auto load_dims = [&](const T* row, float* out) {
    const uint4* src = reinterpret_cast<const uint4*>(row + q * DQ);
#pragma unroll
    for (int c = 0; c < DQ / 8; ++c) unpack8<T>(src[c], out + c * 8);
  };
  float ak[DQ], av[DQ];
  float total = 0.0f, mb = kNegInf, lse = 0.0f, score = 0.0f;
  int64_t ej = 0;
  if (mine) {
    const int j = p.order[off + slot];
    ej = seq.entry(j);
    load_dims(p.kv.keys + ej * p.kv.key_stride, ak);
    load_dims(p.kv.values + ej * p.kv.value_stride, av);
    const float w0 = p.mass[off + j];
    total = w0;
    if (p.merge_keys) {
#pragma unroll
      for (int d = 0; d < DQ; ++d) ak[d] *= w0;
    }
#pragma unroll
    for (int d = 0; d < DQ; ++d) av[d] *= w0;
    add_bias(mb, lse, p.kv.bias[ej]);
    score = scores ? p.kv.scores[ej] : 0.0f;
  }
  for (int t = 0; t < mtiles; ++t) {
    cp_async_wait<MST - 2>();
    __syncthreads();
    load_members(t + 2, e_next);
    cp_async_commit();
    e_next = member_of(t + 3);
    const int st = t % MST, m0 = m_begin + t * TM;
    const T* ks = stage_k(st);
    const T* vs = stage_v(st);
    const float* meta = stage_meta(st);
    const int lo = mine ? max(beg, m0) : 0, hi = mine ? min(end, m0 + TM) : 0;
    for (int m = lo; m < hi; ++m) {
      const int r = m - m0;
      const float w = meta[r];
      const uint4* kr = reinterpret_cast<const uint4*>(ks + r * LD + q * DQ);
      const uint4* vr = reinterpret_cast<const uint4*>(vs + r * LD + q * DQ);
#pragma unroll
      for (int c = 0; c < DQ / 8; ++c) {
        float x[8], y[8];
        unpack8<T>(vr[c], y);
#pragma unroll
        for (int i = 0; i < 8; ++i) av[c * 8 + i] = fmaf(w, y[i], av[c * 8 + i]);
        if (p.merge_keys) {
          unpack8<T>(kr[c], x);
#pragma unroll
          for (int i = 0; i < 8; ++i) ak[c * 8 + i] = fmaf(w, x[i], ak[c * 8 + i]);
        }
      }
      total += w;
      add_bias(mb, lse, meta[TM + r]);
      if (scores) score += meta[2 * TM + r];
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // phase B reuses the stages

  int any = 0;
  if (mine) {
    any = 1;
    const bool uniform = !(total > 1e-30f);
    if (uniform) {  // the set's mass underflowed: plain average (rare; straight from global memory)
      load_dims(p.kv.keys + ej * p.kv.key_stride, ak);
      load_dims(p.kv.values + ej * p.kv.value_stride, av);
      total = 1.0f;
      for (int m = beg; m < end; ++m) {
        const int64_t ee = seq.entry(p.members[m]);
        float x[DQ], y[DQ];
        load_dims(p.kv.values + ee * p.kv.value_stride, y);
#pragma unroll
        for (int d = 0; d < DQ; ++d) av[d] += y[d];
        if (p.merge_keys) {
          load_dims(p.kv.keys + ee * p.kv.key_stride, x);
#pragma unroll
          for (int d = 0; d < DQ; ++d) ak[d] += x[d];
        }
        total += 1.0f;
      }
    }
    const float inv = 1.0f / total;
#pragma unroll
    for (int d = 0; d < DQ; ++d) {
      if (p.merge_keys) ak[d] *= inv;
      av[d] *= inv;
    }
    // The merged key for calibration, then the rows in storage (the survivor's own row).
#pragma unroll
    for (int d = 0; d < DQ; ++d) {
      const T hv = from_float<T>(ak[d]);
      kh[sl * LD + q * DQ + d] = hv;
      kl[sl * LD + q * DQ + d] = from_float<T>(ak[d] - to_float(hv));
    }
    auto store_dims = [&](T* row, const float* in) {
      uint4* dst = reinterpret_cast<uint4*>(row + q * DQ);
#pragma unroll
      for (int c = 0; c < DQ / 8; ++c)
        dst[c] = make_uint4(pack2<T>(in[c * 8], in[c * 8 + 1]), pack2<T>(in[c * 8 + 2], in[c * 8 + 3]),
                            pack2<T>(in[c * 8 + 4], in[c * 8 + 5]), pack2<T>(in[c * 8 + 6], in[c * 8 + 7]));
    };
    if (p.merge_keys) store_dims(p.kv.keys + ej * p.kv.key_stride, ak);
    store_dims(p.kv.values + ej * p.kv.value_stride, av);
    const float lc = mb + logf(lse);
    if (q == 0) {
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
  } else {
    if (q == 0) has[sl] = 0;
#pragma unroll
    for (int d = 0; d < DQ; ++d) kh[sl * LD + q * DQ + d] = kl[sl * LD + q * DQ + d] = from_float<T>(0.0f);
  }
  if (!__syncthreads_or(any) || !calibrate) return;

  // Phase B: the merged keys' mass under the window, 64 rows at a time (the next 64 rows load
  // while this group's products are taken).
  T* qbuf = reinterpret_cast<T*>(area);  // [2][NA][64][LD]
  float* c = reinterpret_cast<float*>(area + 2 * NA * Smem::tile_bytes);
  const int col = tid >> 2, part = tid & 3;
  float cm = kNegInf, cl = 0.0f;
  const int groups = p.rows_padded / 64;
  auto load_rows = [&](int grp) {
    const int buf = grp & 1;
    const int64_t row0 = static_cast<int64_t>(s) * p.rows_padded + grp * 64;
    T* qh = qbuf + buf * NA * 64 * LD;
    constexpr int per = 16 / static_cast<int>(sizeof(T));
    for (int i = tid; i < 64 * CHUNKS; i += blockDim.x) {
      const int rr = i / CHUNKS, qq = i % CHUNKS;
      cp_async16(qh + rr * LD + qq * per, p.q_hi + (row0 + rr) * D + qq * per, true);
      if constexpr (NA == 2) cp_async16(qh + 64 * LD + rr * LD + qq * per, p.q_lo + (row0 + rr) * D + qq * per, true);
    }
    if (tid < 64) {
      rpos[buf * 64 + tid] = p.row_pos[row0 + tid];
      rmax[buf * 64 + tid] = p.row_max[row0 + tid];
    }
  };
  load_rows(0);
  cp_async_commit();
  for (int grp = 0; grp < groups; ++grp) {
    const int buf = grp & 1;
    if (grp + 1 < groups) {
      load_rows(grp + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* qh = qbuf + buf * NA * 64 * LD;
    mma_tile_64x64<T, D, NA, 2>(qh, qh + 64 * LD, LD, kh, kl, LD, c, 68);
    __syncthreads();
    if (has[col]) {
      const int pk = pos_k[col];
      float v[16];
      float tm = kNegInf;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int row = i * 4 + part;
        const bool ok = rpos[buf * 64 + row] >= pk && rmax[buf * 64 + row] != kNegInf;
        v[i] = ok ? c[row * 68 + col] * p.scale - rmax[buf * 64 + row] : kNegInf;
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
