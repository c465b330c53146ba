// simcalkv CUDA: mass-weighted merging and the merged entry's bias (kernels/merge.hpp on the GPU).
//
// After the assignment, a radix sort by survivor lists each survivor's set in candidate order;
// segments_kernel records where each set starts and ends, member_ranges_kernel where each
// sequence's candidates start. merge_kernel (one warp task per 128 sorted candidates of a
// sequence) then rewrites every survivor that received candidates, in place, in its own
// (pre-compaction) row:
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
// Sums run in candidate order, as on the CPU (a set that crosses tasks is summed per task, and the
// parts are added in task order), so a merge repeats bit for bit.
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"

#include <type_traits>

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

inline constexpr int kMergeTask = 128;   // sorted members per warp task
inline constexpr int kMergeWarps = 4;    // tasks per block
inline constexpr int kMergeItems = 2 * kMergeTask;  // the members and the own rows of the sets they start

/// Partial sums of the sets that cross task boundaries: per task, slot 2t for the set it
/// continues (head) and 2t + 1 for the set it starts and leaves unfinished (tail).
struct MergePartials {
  float* k;         // [2 * tasks][D]
  float* v;         // [2 * tasks][D]
  float4* f;        // [2 * tasks]: mass, score, max bias, shifted sum of exp(bias - max)
  uint32_t* key;    // [2 * tasks]: the set's global survivor id
  int32_t* spans;   // [2 * tasks]: a head that covers the whole task (its set goes on)
  int32_t* tail;    // [tasks]: whether the task left a tail
};

/// Tasks of a sequence of length n (an upper bound: it has at most n - B merged candidates).
__host__ __device__ inline int merge_tasks(int n) { return static_cast<int>(ceil_div(n, kMergeTask)); }

template <class T, class Layout>
struct MergeParams {
  LayerKV<T, Layout> kv;
  const int32_t* ws_off;     // [S + 1]
  const int32_t* order;      // [total]: slot k of sequence s at order[ws_off[s] + k]
  const float* mass;         // [total]
  const int32_t* seg_begin;  // [total], by global survivor id
  const int32_t* seg_end;
  const uint32_t* keys;      // sorted global survivor ids, the sentinel past the merged candidates
  const int32_t* members;    // the candidates' entries, in that order
  const int32_t* seq_first;  // [S + 1]: where each sequence's merged candidates begin in them
  const int32_t* task_off;   // [S]: the first task of each sequence (partial sums are per task)
  BiasMode bias;
  bool merge_keys;
  SetStats sets;             // written for the calibrated and bounded biases
  MergePartials part;
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

/// A warp's running sums of one set, DL = D / 32 dimensions per lane.
template <class T, int D>
struct SetSums {
  static constexpr int DL = D / 32;
  using Lane = std::conditional_t<DL == 4, uint2, uint32_t>;  // a lane's DL 16-bit elements
  float k[DL], v[DL];
  float total, score, mb, lse;  // mass, accumulated score, log-sum-exp of the biases (max, sum)

  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int d = 0; d < DL; ++d) k[d] = v[d] = 0.0f;
    total = 0.0f, score = 0.0f, mb = kNegInf, lse = 0.0f;
  }
  static __device__ __forceinline__ Lane load(const T* row) {
    return *reinterpret_cast<const Lane*>(row + (threadIdx.x & 31) * DL);
  }
  static __device__ __forceinline__ void widen(const Lane& raw, float* out) {
    if constexpr (DL == 4) {
      const float2 a = unpack2<T>(raw.x), b = unpack2<T>(raw.y);
      out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
    } else {
      const float2 a = unpack2<T>(raw);
      out[0] = a.x, out[1] = a.y;
    }
  }
  static __device__ __forceinline__ void store(T* row, const float* in) {
    Lane raw;
    if constexpr (DL == 4) raw = make_uint2(pack2<T>(in[0], in[1]), pack2<T>(in[2], in[3]));
    else raw = pack2<T>(in[0], in[1]);
    *reinterpret_cast<Lane*>(row + (threadIdx.x & 31) * DL) = raw;
  }
  /// Adds a row of weight w (its key only when keys are merged).
  __device__ __forceinline__ void add(const Lane& kr, const Lane& vr, float w, float b, float sc, bool keys) {
    float x[DL];
    widen(vr, x);
#pragma unroll
    for (int d = 0; d < DL; ++d) v[d] = fmaf(w, x[d], v[d]);
    if (keys) {
      widen(kr, x);
#pragma unroll
      for (int d = 0; d < DL; ++d) k[d] = fmaf(w, x[d], k[d]);
    }
    total += w;
    add_bias(mb, lse, b);
    score += sc;
  }
  __device__ __forceinline__ void save(const MergePartials& part, int64_t idx, uint32_t key, bool spans) const {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int d = 0; d < DL; ++d) {
      part.k[idx * D + lane * DL + d] = k[d];
      part.v[idx * D + lane * DL + d] = v[d];
    }
    if (lane == 0) {
      part.f[idx] = make_float4(total, score, mb, lse);
      part.key[idx] = key;
      part.spans[idx] = spans;
    }
  }
  __device__ __forceinline__ void add_saved(const MergePartials& part, int64_t idx) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int d = 0; d < DL; ++d) {
      k[d] += part.k[idx * D + lane * DL + d];
      v[d] += part.v[idx * D + lane * DL + d];
    }
    const float4 f = part.f[idx];
    total += f.x;
    score += f.y;
    lse_combine(mb, lse, f.z, f.w);
  }
};

/// Writes survivor g's merged row (own row own_row) from its complete sums; lane 0 writes the
/// set's data for the calibration, or the bias of the other modes, and the accumulated score.
template <class T, int D, class Layout>
__device__ void finish_set(const MergeParams<T, Layout>& p, int s, uint32_t g, int64_t own_row, SetSums<T, D>& a) {
  using Sums = SetSums<T, D>;
  constexpr int DL = Sums::DL;
  const int lane = threadIdx.x & 31;
  const bool uniform = !(a.total > 1e-30f);
  if (uniform) {  // the set's mass underflowed: plain average (rare; from global memory)
    const auto seq = p.kv.layout.seq(s);
    Sums::widen(Sums::load(p.kv.keys + own_row * p.kv.key_stride), a.k);
    Sums::widen(Sums::load(p.kv.values + own_row * p.kv.value_stride), a.v);
    a.total = 1.0f;
    for (int m = p.seg_begin[g]; m < p.seg_end[g]; ++m) {
      const int64_t row = seq.entry(p.members[m]);
      float x[DL], y[DL];
      Sums::widen(Sums::load(p.kv.values + row * p.kv.value_stride), y);
      Sums::widen(Sums::load(p.kv.keys + row * p.kv.key_stride), x);
#pragma unroll
      for (int d = 0; d < DL; ++d) {
        a.v[d] += y[d];
        a.k[d] += x[d];
      }
      a.total += 1.0f;
    }
  }
  const float inv = 1.0f / a.total;
#pragma unroll
  for (int d = 0; d < DL; ++d) a.k[d] *= inv, a.v[d] *= inv;
  if (p.merge_keys) Sums::store(p.kv.keys + own_row * p.kv.key_stride, a.k);
  Sums::store(p.kv.values + own_row * p.kv.value_stride, a.v);
  if (lane == 0) {
    const float lc = a.mb + logf(a.lse);
    if (p.bias == BiasMode::calibrated || p.bias == BiasMode::bounded) {
      p.sets.max_bias[g] = a.mb;
      p.sets.log_count[g] = lc;
      p.sets.log_mass[g] = uniform ? kNegInf : logf(a.total);
    }
    if (p.bias == BiasMode::log_count) p.kv.bias[own_row] = lc;
    if (p.bias == BiasMode::none) p.kv.bias[own_row] = 0.0f;
    if (p.kv.scores) p.kv.scores[own_row] = a.score;
  }
}

/// grid (ceil(tasks per sequence / 4), S), 4 warps per block: task k of sequence s merges its
/// sorted candidates [k P, k P + P) (P = 128), one task per warp. Every warp runs on its own (no
/// block barrier), and all tasks are the same size however the candidates pile onto survivors.
/// Tasks are cut per sequence, so a sequence's result does not depend on the others (a shard
/// gives what the whole layer gives). A task lists its items in shared memory: each set that starts
/// in it contributes its survivor's own row first, then its members in candidate order (the CPU's
/// order). It loads the items' rows U at a time (their loads in flight together) and adds them, DL
/// dimensions per lane. A set inside the task is finished there; a set that crosses a task
/// boundary leaves partial sums, added in task order by merge_combine_kernel (a fixed order: a
/// merge repeats bit for bit).
template <class T, int D, class Layout>
__global__ void __launch_bounds__(kMergeWarps * 32) merge_kernel(MergeParams<T, Layout> p) {
  using Sums = SetSums<T, D>;
  using Lane = typename Sums::Lane;
  constexpr int P = kMergeTask, Q = P / 32, U = 8;
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  __shared__ int64_t item_row[kMergeWarps][kMergeItems];
  __shared__ float item_w[kMergeWarps][kMergeItems];
  __shared__ float item_b[kMergeWarps][kMergeItems];
  __shared__ float item_s[kMergeWarps][kMergeItems];
  __shared__ uint32_t item_key[kMergeWarps][kMergeItems];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int s = blockIdx.y;
  const int k = blockIdx.x * kMergeWarps + warp;
  const int64_t seq_begin = p.seq_first[s], seq_end = p.seq_first[s + 1];
  const int64_t a0 = seq_begin + static_cast<int64_t>(k) * P;
  if (a0 >= seq_end) return;
  const int64_t b0 = min(seq_end, a0 + P);
  const int64_t t = p.task_off[s] + k;
  const int64_t off = p.ws_off[s];
  const auto seq = p.kv.layout.seq(s);
  const bool scores = p.kv.scores != nullptr;
  constexpr uint32_t none = 0xffffffffu;  // no set (survivor ids stay below the sort's sentinel)

  uint32_t key[Q];
  int entry[Q];
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    const int64_t i = a0 + q * 32 + lane;
    key[q] = i < b0 ? p.keys[i] : none;
    entry[q] = i < b0 ? p.members[i] : 0;
  }
  const uint32_t before = a0 > seq_begin ? p.keys[a0 - 1] : none;  // the first set began earlier if equal
  const uint32_t after = b0 < seq_end ? p.keys[b0] : none;        // the last set goes on if equal
  const uint32_t first = __shfl_sync(0xffffffffu, key[0], 0);

  // Each member's row and data; the own row and data of each set that starts here; the items'
  // places (a member's place counts the set starts up to it).
  int placed = 0;  // set starts so far
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    const bool valid = key[q] != none;
    uint32_t prev = __shfl_up_sync(0xffffffffu, key[q], 1);
    const uint32_t last_of_previous = __shfl_sync(0xffffffffu, q > 0 ? key[q > 0 ? q - 1 : 0] : before, 31);
    if (lane == 0) prev = last_of_previous;
    const bool starts = valid && prev != key[q];
    const unsigned start_mask = __ballot_sync(0xffffffffu, starts);
    const int place = placed + q * 32 + lane + __popc(start_mask & ((2u << lane) - 1u));
    if (valid) {
      const int64_t row = seq.entry(entry[q]);
      item_row[warp][place] = row;
      item_w[warp][place] = p.mass[off + entry[q]];
      item_b[warp][place] = p.kv.bias[row];
      item_s[warp][place] = scores ? p.kv.scores[row] : 0.0f;
      item_key[warp][place] = key[q];
      if (starts) {
        const int j = p.order[key[q]];
        const int64_t own = seq.entry(j);
        item_row[warp][place - 1] = own;
        item_w[warp][place - 1] = p.mass[off + j];
        item_b[warp][place - 1] = p.kv.bias[own];
        item_s[warp][place - 1] = scores ? p.kv.scores[own] : 0.0f;
        item_key[warp][place - 1] = key[q];
      }
    }
    placed += __popc(start_mask);
  }
  const int items = placed + static_cast<int>(b0 - a0);
  __syncwarp();

  Sums acc;
  acc.clear();
  uint32_t cur = before == first ? first : none;  // the set being summed
  bool cur_head = cur != none;                    // it began in an earlier task
  int64_t cur_row = -1;                           // its own row (sets that start here)
  for (int i0 = 0; i0 < items; i0 += U) {
    Lane kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i0 + u < items) {
        const int64_t row = item_row[warp][i0 + u];
        vr[u] = Sums::load(p.kv.values + row * p.kv.value_stride);
        if (p.merge_keys) kr[u] = Sums::load(p.kv.keys + row * p.kv.key_stride);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u;
      if (i >= items) break;
      const uint32_t g = item_key[warp][i];
      if (g != cur) {  // a set starts here, with its own row
        if (cur != none) {
          if (cur_head) acc.save(p.part, 2 * t, cur, false);
          else finish_set<T, D>(p, s, cur, cur_row, acc);
        }
        cur = g, cur_head = false, cur_row = item_row[warp][i];
        acc.clear();
      }
      acc.add(kr[u], vr[u], item_w[warp][i], item_b[warp][i], item_s[warp][i], p.merge_keys);
    }
  }
  int tail = 0;
  if (after == cur) {  // the last set goes on past this task
    if (cur_head) acc.save(p.part, 2 * t, cur, true);
    else acc.save(p.part, 2 * t + 1, cur, false), tail = 1;
  } else if (cur_head) {
    acc.save(p.part, 2 * t, cur, false);
  } else {
    finish_set<T, D>(p, s, cur, cur_row, acc);
  }
  if (lane == 0) p.part.tail[t] = tail;
}

/// Same grid as merge_kernel: task k of sequence s finishes the set it left unfinished (tail),
/// adding the heads of the following tasks in order.
template <class T, int D, class Layout>
__global__ void __launch_bounds__(kMergeWarps * 32) merge_combine_kernel(MergeParams<T, Layout> p) {
  const int s = blockIdx.y;
  const int k = blockIdx.x * kMergeWarps + (threadIdx.x >> 5);
  if (p.seq_first[s] + static_cast<int64_t>(k) * kMergeTask >= p.seq_first[s + 1]) return;
  const int64_t t = p.task_off[s] + k;
  if (!p.part.tail[t]) return;
  SetSums<T, D> acc;
  acc.clear();
  acc.add_saved(p.part, 2 * t + 1);
  const uint32_t g = p.part.key[2 * t + 1];
  for (int64_t u = t + 1;; ++u) {
    acc.add_saved(p.part, 2 * u);
    if (!p.part.spans[2 * u]) break;
  }
  finish_set<T, D>(p, s, g, p.kv.layout.seq(s).entry(p.order[g]), acc);
}

/// seq_first[s] = the first position of the sorted survivor ids at or past ws_off[s] (s <= S):
/// where sequence s's merged candidates begin. One thread per sequence, a binary search each.
__global__ void member_ranges_kernel(const uint32_t* sorted, int64_t count, const int32_t* ws_off, int num_seqs,
                                     int32_t* seq_first) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s > num_seqs) return;
  const uint32_t g = static_cast<uint32_t>(ws_off[s]);
  int64_t lo = 0, hi = count;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (sorted[mid] < g) lo = mid + 1;
    else hi = mid;
  }
  seq_first[s] = static_cast<int32_t>(lo);
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
