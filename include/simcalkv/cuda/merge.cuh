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
// see it, k' as stored); bounded = calibrated clamped to [max_i b_i, log_count]; none = 0.
//
// The calibration runs after the compaction, when the survivors sit in rows 0..B-1 of their
// sequence: score_kernel<PASS 3> (scoring.cuh) sums the merged keys' masses under the window as
// pass 2 sums every entry's, and calibrate_bias_kernel turns them into biases from the set data
// the merge left per slot (log sum w_i, max_i b_i, log_count).
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

/// Per merged slot (indexed by global survivor id, ws_off[s] + k): what the calibration needs.
struct SetStats {
  float* log_mass;   // log sum_i w_i; -inf where the set's mass underflowed
  float* log_count;  // log sum_i exp(b_i)
  float* max_bias;   // max_i b_i
};

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
  BiasMode bias;
  bool merge_keys;
  SetStats sets;             // written for the calibrated and bounded biases
};

inline constexpr int kMergeMetaCapacity = 1024;  // members whose data a block stages at once

template <class T, int D>
struct MergeSmem {
  static constexpr int ld = D + 8;  // padded rows
  static constexpr std::size_t tile_bytes = sizeof(T) * 64 * ld;
  // The members' index, mass, bias and score, a chunk at a time.
  static constexpr std::size_t meta_bytes = 16 * kMergeMetaCapacity;
  // Per-slot data: 8 words and an int64 per slot.
  static constexpr std::size_t slot_bytes = 64 * 4 * 10;
  // Partial sums of the sets that cross pieces: two per warp.
  static constexpr std::size_t partial_bytes = 2 * (kTileThreads / 32) * (2 * D * 4 + 4 * 4 + 2 * 4);
  // The survivors' own keys and values, then the rest.
  static constexpr std::size_t bytes = 2 * tile_bytes + meta_bytes + slot_bytes + partial_bytes;
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
template <class T, int D, class Layout>
__global__ void __launch_bounds__(kTileThreads, 2) merge_kernel(MergeParams<T, Layout> p) {
  using Smem = MergeSmem<T, D>;
  constexpr int LD = Smem::ld;
  constexpr int MAXM = kMergeMetaCapacity;
  constexpr int DL = D / 32;  // dimensions per lane: a warp merges one survivor at a time
  constexpr int U = 8;        // member rows a warp has in flight
  constexpr int CHUNKS = D * static_cast<int>(sizeof(T)) / 16;
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* kh = reinterpret_cast<T*>(smem_raw);  // [64][LD]: each survivor's own key
  T* kl = kh + 64 * LD;                    // [64][LD]: and its own value
  unsigned char* area = smem_raw + 2 * Smem::tile_bytes;  // the members' data
  int64_t* row_k = reinterpret_cast<int64_t*>(area + Smem::meta_bytes);  // 64 int64
  int* seg_b = reinterpret_cast<int*>(row_k + 64);
  int* seg_e = seg_b + 64;
  int* range = seg_e + 64;  // [4]: per-warp min begin, max end
  float* own_w = reinterpret_cast<float*>(range + 64);
  float* own_b = own_w + 64;
  float* own_s = own_b + 64;

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
    const int64_t ej = beg >= 0 ? seq.entry(j) : -1;
    row_k[tid] = ej;
    // The own row's mass, bias and score travel with the own rows (copies waited for later).
    const bool has = beg >= 0;
    cp_async4(own_w + tid, p.mass + (has ? off + j : 0), has);
    cp_async4(own_b + tid, p.kv.bias + (has ? ej : 0), has);
    cp_async4(own_s + tid, scores ? p.kv.scores + (has ? ej : 0) : p.kv.bias, has && scores);
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

  // In flight while the members' data is staged: the survivors' own keys and values.
  for (int i = tid; i < 64 * CHUNKS; i += blockDim.x) {
    const int sl = i / CHUNKS, q = i % CHUNKS;
    const int64_t ej = row_k[sl];
    const bool ok = ej >= 0;
    cp_async16(kh + sl * LD + q * 8, p.kv.keys + (ok ? ej * p.kv.key_stride + q * 8 : 0), ok);
    cp_async16(kl + sl * LD + q * 8, p.kv.values + (ok ? ej * p.kv.value_stride + q * 8 : 0), ok);
  }
  cp_async_commit();  // the own rows and their data, waited for before the pieces

  // The block's run of members is cut into pieces of up to PS members, one per
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
  float* part_k = reinterpret_cast<float*>(area + Smem::meta_bytes + Smem::slot_bytes);  // [2 * WARPS][D]
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
    // The rows in storage (the survivor's own).
    if (p.merge_keys) *reinterpret_cast<Lane*>(p.kv.keys + ej * p.kv.key_stride + lane * DL) = narrow(a.k);
    *reinterpret_cast<Lane*>(p.kv.values + ej * p.kv.value_stride + lane * DL) = narrow(a.v);
    if (lane == 0) {
      const float lc = a.mb + logf(a.lse);
      if (calibrate) {
        const int64_t g = off + k0 + sl;
        p.sets.max_bias[g] = a.mb;
        p.sets.log_count[g] = lc;
        p.sets.log_mass[g] = uniform ? kNegInf : logf(a.total);
      }
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
    // The members' entries now; their mass, bias and score by copies that fly while the first
    // member rows load.
    for (int m = cb + tid; m < ce; m += blockDim.x) {
      const int e = p.members[m];
      const int64_t row = seq.entry(e);
      meta_e[m - cb] = e;
      cp_async4(meta_w + (m - cb), p.mass + off + e, true);
      cp_async4(meta_b + (m - cb), p.kv.bias + row, true);
      cp_async4(meta_s + (m - cb), scores ? p.kv.scores + row : p.kv.bias, scores);
    }
    cp_async_commit();
    if (lane < 2) part_slot[warp * 2 + lane] = -1;
    __syncthreads();  // meta_e
    // Pieces as even as the chunk allows (a multiple of U members each; at most PS).
    const int ps = min(PS, static_cast<int>(ceil_div(ceil_div(ce - cb, WARPS), U)) * U);
    const int pb = min(ce, cb + warp * ps), pe = min(ce, pb + ps);
    Lane kr[U], vr[U];
    auto load_rows = [&](int m0) {
      const int cnt = min(U, pe - m0);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u < cnt) {
          const int64_t row = seq.entry(meta_e[m0 + u - cb]);
          vr[u] = lane_of(p.kv.values + row * p.kv.value_stride);
          if (p.merge_keys) kr[u] = lane_of(p.kv.keys + row * p.kv.key_stride);
        }
      }
    };
    if (pb < pe) load_rows(pb);  // in flight across the wait below
    cp_async_wait<0>();
    __syncthreads();  // the own rows, the members' data
    if (pb < pe) {
      int cur = 0;  // the survivor whose set holds member pb
      while (!(seg_b[cur] >= 0 && seg_b[cur] <= pb && pb < seg_e[cur])) ++cur;
      int cur_beg = seg_b[cur], cur_end = seg_e[cur];
      Sums a;
      clear(a);
      if (cur_beg == pb) add_own(a, cur);
      for (int m0 = pb; m0 < pe; m0 += U) {
        const int cnt = min(U, pe - m0);
        if (m0 != pb) load_rows(m0);
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
}

struct CalibrateParams {
  const int32_t* budgets;
  const int32_t* ws_off;
  const int32_t* seg_begin;  // >= 0 where slot k received a set
  const float* mass_part;    // [groups][total]: score_kernel<PASS 3>'s sums per row group
  int groups;
  int64_t total;
  SetStats sets;
  BiasMode bias;
};

/// grid (ceil(max_budget / 256), S), 256 threads, after the compaction (slot k in row k): the bias
/// of every merged slot from its set's mass and the stored merged key's mass under the window.
template <class T, class Layout>
__global__ void calibrate_bias_kernel(CalibrateParams p, LayerKV<T, Layout> kv) {
  const int s = blockIdx.y;
  const int k = static_cast<int>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int B = p.budgets[s];
  if (k >= B) return;
  const int64_t g = p.ws_off[s] + k;
  if (p.seg_begin[g] < 0) return;  // no set: the entry keeps its bias
  float sum = 0.0f;
  for (int rg = 0; rg < p.groups; ++rg) sum += p.mass_part[rg * p.total + g];  // a fixed order
  const float merged_mass = sum > 0.0f ? logf(sum) : kNegInf;
  const float set_mass = p.sets.log_mass[g], log_count = p.sets.log_count[g], max_bias = p.sets.max_bias[g];
  const bool defined = set_mass != kNegInf && merged_mass != kNegInf;
  float b = defined ? set_mass - merged_mass : log_count;
  if (p.bias == BiasMode::bounded) b = b < max_bias ? max_bias : (log_count < b ? log_count : b);
  kv.bias[kv.layout.seq(s).entry(k)] = b;
}

}  // namespace simcalkv::cuda::detail
