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

inline constexpr int kMergeMetaCapacity = 1024;  // members whose data a block stages at once

template <class T, int D, int NA>
struct MergeSmem {
  static constexpr int ld = D + 8;  // padded rows
  static constexpr std::size_t tile_bytes = sizeof(T) * 64 * ld;
  // Buffers of 64 window rows (hi, and lo for float queries) for phase B, loaded during phase A.
  static constexpr int q_buffers = NA == 1 ? 2 : 1;
  // Phase A stages the members' index, mass, bias and score; phase B reuses it for the products.
  static constexpr std::size_t meta_bytes = 16 * kMergeMetaCapacity;
  static constexpr std::size_t c_bytes = sizeof(float) * 64 * 68;
  static constexpr std::size_t shared = meta_bytes > c_bytes ? meta_bytes : c_bytes;
  // kh, kl (own rows, then the merged keys as hi + lo), window rows, shared area, per-slot data.
  // Partial sums of the sets that cross pieces: two per warp.
  static constexpr std::size_t partial_bytes = 2 * (kTileThreads / 32) * (2 * D * 4 + 4 * 4 + 2 * 4);
  static constexpr std::size_t bytes = (2 + q_buffers * NA) * tile_bytes + shared + 64 * 4 * 20 + partial_bytes;
};

/// Adds bias b to a running log-sum-exp (max m, shifted sum l), as the CPU's add_bias.
__device__ __forceinline__ void add_bias(float& m, float& l, float b) {
  if (b == kNegInf) return;
  if (b > m) {
    l = l * __expf(m - b) + 1.0f;
    m = b;
  } else {
    l += __expf(b - m);
  }
}

/// grid (ceil(max_len / 64), S), 256 threads: 64 survivor slots per block.
template <class T, int D, int NA, class Layout>
__global__ void __launch_bounds__(kTileThreads) merge_kernel(MergeParams<T, Layout> p) {
  using Smem = MergeSmem<T, D, NA>;
  constexpr int LD = Smem::ld;
  constexpr int MAXM = kMergeMetaCapacity;
  constexpr int DL = D / 32;  // dimensions per lane: a warp merges one survivor at a time
  constexpr int U = 8;        // member rows a warp has in flight
  constexpr int CHUNKS = D * static_cast<int>(sizeof(T)) / 16;
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int QB = Smem::q_buffers;
  T* kh = reinterpret_cast<T*>(smem_raw);  // [64][LD]: a survivor's own key, then its merged key (hi)
  T* kl = kh + 64 * LD;                    // [64][LD]: its own value, then its merged key (lo)
  T* qbuf = kl + 64 * LD;                  // [QB][NA][64][LD]
  unsigned char* area = smem_raw + (2 + QB * NA) * Smem::tile_bytes;  // member data, then products
  int* has = reinterpret_cast<int*>(area + Smem::shared);
  float* max_bias = reinterpret_cast<float*>(has + 64);
  float* log_count = max_bias + 64;
  float* set_mass = log_count + 64;
  int* pos_k = reinterpret_cast<int*>(set_mass + 64);
  int* seg_b = pos_k + 64;
  int* seg_e = seg_b + 64;
  int* range = seg_e + 64;  // [4]: per-warp min begin, max end
  float* own_w = reinterpret_cast<float*>(range + 64);
  float* own_b = own_w + 64;
  float* own_s = own_b + 64;
  int* rpos = reinterpret_cast<int*>(own_s + 64);           // [2][64]
  float* rmax = reinterpret_cast<float*>(rpos + 128);       // [2][64]
  int64_t* row_k = reinterpret_cast<int64_t*>(rmax + 128);  // 64 int64

  const int s = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = p.kv.lengths[s];
  const int B = p.budgets[s];
  const int k0 = blockIdx.x * 64;
  if (k0 >= B || B >= n) return;
  const int64_t off = p.ws_off[s];
  const auto seq = p.kv.layout.seq(s);
  const bool scores = p.kv.scores != nullptr;
  const bool calibrate = p.bias == BiasMode::calibrated || p.bias == BiasMode::bounded;

  // Each slot's set, own row and data; the block's survivors have their candidates in one
  // contiguous run of the sorted members.
  if (tid < 64) {
    const int slot = k0 + tid;
    // Independent loads first (seg_end is stale where seg_begin is -1, and unused there).
    const int beg = slot < B ? p.seg_begin[off + slot] : -1;
    const int end_raw = slot < B ? p.seg_end[off + slot] : -1;
    const int j = slot < B ? p.order[off + slot] : 0;
    const int end = beg >= 0 ? end_raw : -1;
    seg_b[tid] = beg;
    seg_e[tid] = end;
    has[tid] = 0;
    row_k[tid] = -1;
    if (beg >= 0) {
      const int64_t ej = seq.entry(j);
      row_k[tid] = ej;
      own_w[tid] = p.mass[off + j];
      own_b[tid] = p.kv.bias[ej];
      own_s[tid] = scores ? p.kv.scores[ej] : 0.0f;
      pos_k[tid] = p.kv.positions[ej];
    }
    int lo = beg >= 0 ? beg : INT_MAX, hi = end;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
      hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    if (lane == 0) range[warp] = lo, range[2 + warp] = hi;
  }
  __syncthreads();
  const int m_begin = min(range[0], range[1]), m_end = max(range[2], range[3]);
  if (m_end < 0) return;  // no survivor of this block received candidates

  // In flight while phase A runs: the survivors' own keys and values (zero for slots without a
  // set, whose products are never used) and phase B's first window rows.
  for (int i = tid; i < 64 * CHUNKS; i += blockDim.x) {
    const int sl = i / CHUNKS, q = i % CHUNKS;
    const int64_t ej = row_k[sl];
    const bool ok = ej >= 0;
    cp_async16(kh + sl * LD + q * 8, p.kv.keys + (ok ? ej * p.kv.key_stride + q * 8 : 0), ok);
    cp_async16(kl + sl * LD + q * 8, p.kv.values + (ok ? ej * p.kv.value_stride + q * 8 : 0), ok);
  }
  const int groups = p.rows_padded / 64;
  auto load_window = [&](int grp, int buf) {
    const int64_t row0 = static_cast<int64_t>(s) * p.rows_padded + grp * 64;
    T* qh = qbuf + buf * NA * 64 * LD;
    for (int i = tid; i < 64 * CHUNKS; i += blockDim.x) {
      const int rr = i / CHUNKS, qq = i % CHUNKS;
      cp_async16(qh + rr * LD + qq * 8, p.q_hi + (row0 + rr) * D + qq * 8, true);
      if constexpr (NA == 2) cp_async16(qh + 64 * LD + rr * LD + qq * 8, p.q_lo + (row0 + rr) * D + qq * 8, true);
    }
    if (tid < 64) {
      rpos[buf * 64 + tid] = p.row_pos[row0 + tid];
      rmax[buf * 64 + tid] = p.row_max[row0 + tid];
    }
  };
  cp_async_commit();  // the own rows, waited for before the pieces
  if (calibrate)
    for (int grp = 0; grp < min(QB, groups); ++grp) load_window(grp, grp);
  cp_async_commit();  // the window rows, waited for in phase B

  // Phase A: merge. The block's run of members is cut into pieces of up to PS members, one per
  // warp, eight pieces (a chunk) at a time, so that a set of thousands of members is shared by all
  // warps instead of holding one. A warp walks its piece U rows at a time (their loads in flight
  // together) and adds each row to its survivor's sums in candidate order, DL dimensions per lane;
  // a set inside one piece is finished there, a set across pieces leaves a partial sum per piece,
  // and warp 0 adds those in piece order (a fixed order: a merge repeats bit for bit). The chunk's
  // members' index, mass, bias and score are staged in shared memory by the whole block.
  constexpr int WARPS = kTileThreads / 32;
  constexpr int PS = MAXM / WARPS;
  int* meta_e = reinterpret_cast<int*>(area);
  float* meta_w = reinterpret_cast<float*>(meta_e + MAXM);
  float* meta_b = meta_w + MAXM;
  float* meta_s = meta_b + MAXM;
  // Partial sums: per piece, one for the set it continues (head) and one for the set it starts
  // and leaves unfinished (tail).
  float* part_k = reinterpret_cast<float*>(area + Smem::shared + 64 * 4 * 20);  // [2 * WARPS][D]
  float* part_v = part_k + 2 * WARPS * D;                                      // [2 * WARPS][D]
  float* part_f = part_v + 2 * WARPS * D;                                      // [2 * WARPS][4]
  int* part_slot = reinterpret_cast<int*>(part_f + 2 * WARPS * 4);             // [2 * WARPS]
  int* part_spans = part_slot + 2 * WARPS;                                     // [2 * WARPS]
  using Lane = std::conditional_t<DL == 4, uint2, uint32_t>;  // a lane's DL 16-bit elements
  auto widen = [](const Lane& raw, float* out) {
    if constexpr (DL == 4) {
      const float2 a = unpack2<T>(raw.x), b = unpack2<T>(raw.y);
      out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
    } else {
      const float2 a = unpack2<T>(raw);
      out[0] = a.x, out[1] = a.y;
    }
  };
  auto narrow = [](const float* in) {
    if constexpr (DL == 4) return make_uint2(pack2<T>(in[0], in[1]), pack2<T>(in[2], in[3]));
    else return pack2<T>(in[0], in[1]);
  };
  auto lane_of = [&](const T* row) { return *reinterpret_cast<const Lane*>(row + lane * DL); };

  struct Sums {
    float k[DL], v[DL];
    float total, score, mb, lse;  // mass, accumulated score, log-sum-exp of the biases (max, sum)
  };
  auto clear = [](Sums& a) {
#pragma unroll
    for (int d = 0; d < DL; ++d) a.k[d] = a.v[d] = 0.0f;
    a.total = 0.0f, a.score = 0.0f, a.mb = kNegInf, a.lse = 0.0f;
  };
  auto add_row = [&](Sums& a, const Lane& kr, const Lane& vr, float w, float b, float sc) {
    float x[DL], y[DL];
    widen(vr, y);
#pragma unroll
    for (int d = 0; d < DL; ++d) a.v[d] = fmaf(w, y[d], a.v[d]);
    if (p.merge_keys) {
      widen(kr, x);
#pragma unroll
      for (int d = 0; d < DL; ++d) a.k[d] = fmaf(w, x[d], a.k[d]);
    }
    a.total += w;
    add_bias(a.mb, a.lse, b);
    a.score += sc;
  };
  // The survivor's own row begins its set (staged in kh / kl; its key kept as is when keys are
  // not merged).
  auto add_own = [&](Sums& a, int sl) {
    const Lane kr = lane_of(kh + sl * LD), vr = lane_of(kl + sl * LD);
    add_row(a, kr, vr, own_w[sl], own_b[sl], own_s[sl]);
    if (!p.merge_keys) widen(kr, a.k);
  };
  auto store_partial = [&](int idx, int sl, const Sums& a, bool spans) {
#pragma unroll
    for (int d = 0; d < DL; ++d) part_k[idx * D + lane * DL + d] = a.k[d], part_v[idx * D + lane * DL + d] = a.v[d];
    if (lane == 0) {
      part_f[idx * 4] = a.total, part_f[idx * 4 + 1] = a.score, part_f[idx * 4 + 2] = a.mb, part_f[idx * 4 + 3] = a.lse;
      part_slot[idx] = sl;
      part_spans[idx] = spans;
    }
  };
  auto add_partial = [&](Sums& a, int idx) {
    // (Kept keys: only a set's first partial holds a key, its own; the others hold zeros.)
#pragma unroll
    for (int d = 0; d < DL; ++d) {
      a.k[d] += part_k[idx * D + lane * DL + d];
      a.v[d] += part_v[idx * D + lane * DL + d];
    }
    a.total += part_f[idx * 4];
    a.score += part_f[idx * 4 + 1];
    lse_combine(a.mb, a.lse, part_f[idx * 4 + 2], part_f[idx * 4 + 3]);
  };
  // Writes survivor sl's merged row from its complete sums.
  auto finish = [&](int sl, Sums& a) {
    const int64_t ej = row_k[sl];
    const bool uniform = !(a.total > 1e-30f);
    if (uniform) {  // the set's mass underflowed: plain average (rare; from global memory)
      widen(lane_of(p.kv.keys + ej * p.kv.key_stride), a.k);
      widen(lane_of(p.kv.values + ej * p.kv.value_stride), a.v);
      a.total = 1.0f;
      for (int m = seg_b[sl]; m < seg_e[sl]; ++m) {
        const int64_t row = seq.entry(p.members[m]);
        float x[DL], y[DL];
        widen(lane_of(p.kv.values + row * p.kv.value_stride), y);
        widen(lane_of(p.kv.keys + row * p.kv.key_stride), x);
#pragma unroll
        for (int d = 0; d < DL; ++d) {
          a.v[d] += y[d];
          if (p.merge_keys) a.k[d] += x[d];
        }
        a.total += 1.0f;
      }
    }
    const float inv = 1.0f / a.total;
#pragma unroll
    for (int d = 0; d < DL; ++d) {
      if (p.merge_keys) a.k[d] *= inv;
      a.v[d] *= inv;
    }
    // The merged key for calibration (hi + lo), then the rows in storage (the survivor's own).
    float hi_f[DL], lo_f[DL];
#pragma unroll
    for (int d = 0; d < DL; ++d) {
      hi_f[d] = to_float(from_float<T>(a.k[d]));
      lo_f[d] = a.k[d] - hi_f[d];
    }
    *reinterpret_cast<Lane*>(kh + sl * LD + lane * DL) = narrow(hi_f);
    *reinterpret_cast<Lane*>(kl + sl * LD + lane * DL) = narrow(lo_f);
    if (p.merge_keys) *reinterpret_cast<Lane*>(p.kv.keys + ej * p.kv.key_stride + lane * DL) = narrow(a.k);
    *reinterpret_cast<Lane*>(p.kv.values + ej * p.kv.value_stride + lane * DL) = narrow(a.v);
    if (lane == 0) {
      const float lc = a.mb + logf(a.lse);
      has[sl] = 1;
      max_bias[sl] = a.mb;
      log_count[sl] = lc;
      set_mass[sl] = uniform ? kNegInf : logf(a.total);
      if (p.bias == BiasMode::log_count) p.kv.bias[ej] = lc;
      if (p.bias == BiasMode::none) p.kv.bias[ej] = 0.0f;
      if (scores) p.kv.scores[ej] = a.score;
    }
  };

  Sums carry;  // warp 0: the set that runs across pieces, and its sum so far
  clear(carry);
  int carry_slot = -1;
  for (int cb = m_begin; cb < m_end; cb += MAXM) {
    const int ce = min(m_end, cb + MAXM);
    for (int m = cb + tid; m < ce; m += blockDim.x) {
      const int e = p.members[m];
      const int64_t row = seq.entry(e);
      meta_e[m - cb] = e;
      meta_w[m - cb] = p.mass[off + e];
      meta_b[m - cb] = p.kv.bias[row];
      meta_s[m - cb] = scores ? p.kv.scores[row] : 0.0f;
    }
    if (lane < 2) part_slot[warp * 2 + lane] = -1;
    cp_async_wait<1>();
    __syncthreads();
    // Pieces as even as the chunk allows (a multiple of U members each; at most PS).
    const int ps = min(PS, static_cast<int>(ceil_div(ceil_div(ce - cb, WARPS), U)) * U);
    const int pb = min(ce, cb + warp * ps), pe = min(ce, pb + ps);
    if (pb < pe) {
      int cur = 0;  // the survivor whose set holds member pb
      while (!(seg_b[cur] >= 0 && seg_b[cur] <= pb && pb < seg_e[cur])) ++cur;
      int cur_beg = seg_b[cur], cur_end = seg_e[cur];
      Sums a;
      clear(a);
      if (cur_beg == pb) add_own(a, cur);
      for (int m0 = pb; m0 < pe; m0 += U) {
        const int cnt = min(U, pe - m0);
        Lane kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (u < cnt) {
            const int64_t row = seq.entry(meta_e[m0 + u - cb]);
            vr[u] = lane_of(p.kv.values + row * p.kv.value_stride);
            if (p.merge_keys) kr[u] = lane_of(p.kv.keys + row * p.kv.key_stride);
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (u >= cnt) continue;
          const int m = m0 + u;
          if (m == cur_end) {  // the next survivor's set starts here
            do {
              ++cur;
            } while (seg_b[cur] != m);
            cur_beg = m, cur_end = seg_e[cur];
            clear(a);
            add_own(a, cur);
          }
          add_row(a, kr[u], vr[u], meta_w[m - cb], meta_b[m - cb], meta_s[m - cb]);
          if (m + 1 == cur_end) {
            if (cur_beg >= pb) finish(cur, a);                 // the whole set is in this piece
            else store_partial(warp * 2, cur, a, false);       // it began in an earlier piece
          }
        }
      }
      if (cur_end > pe) {  // the last set goes on past this piece
        if (cur_beg >= pb) store_partial(warp * 2 + 1, cur, a, false);
        else store_partial(warp * 2, cur, a, true);
      }
    }
    __syncthreads();
    if (warp == 0) {
      for (int k = 0; k < WARPS; ++k) {
        if (part_slot[2 * k] >= 0) {  // continues the carried set
          add_partial(carry, 2 * k);
          if (!part_spans[2 * k]) {
            finish(carry_slot, carry);
            carry_slot = -1;
          }
        }
        if (part_slot[2 * k + 1] >= 0) {  // starts a set that goes on
          carry_slot = part_slot[2 * k + 1];
          clear(carry);
          add_partial(carry, 2 * k + 1);
        }
      }
    }
    __syncthreads();  // the next chunk, or phase B, reuses the staged data and the partial sums
  }
  if (!calibrate) return;

  // Phase B: the merged keys' mass under the window, 64 rows at a time (the first QB groups of
  // rows arrived during phase A).
  float* c = reinterpret_cast<float*>(area);
  const int col = tid >> 2, part = tid & 3;
  float cm = kNegInf, cl = 0.0f;
  for (int grp = 0; grp < groups; ++grp) {
    const int buf = grp % QB;
    cp_async_wait<0>();
    __syncthreads();
    const T* qh = qbuf + buf * NA * 64 * LD;
    mma_tile_64x64<T, D, NA, 2>(qh, qh + 64 * LD, LD, kh, kl, LD, c, 68);
    __syncthreads();
    if (has[col]) {
      const int pk = pos_k[col];
      const int* rp = rpos + buf * 64;
      const float* rm = rmax + buf * 64;
      float v[16];
      float tm = kNegInf;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int row = i * 4 + part;
        const bool ok = rp[row] >= pk && rm[row] != kNegInf;
        v[i] = ok ? c[row * 68 + col] * p.scale - rm[row] : kNegInf;
        tm = fmaxf(tm, v[i]);
      }
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < 16; ++i) sum += fast_exp_diff(v[i], tm);
      lse_combine(cm, cl, tm, sum);
    }
    __syncthreads();
    if (grp + QB < groups) {  // the buffer just used takes the group after next
      load_window(grp + QB, buf);
      cp_async_commit();
    }
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
