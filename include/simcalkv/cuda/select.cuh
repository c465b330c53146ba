// simcalkv CUDA: choosing the surviving entries of every sequence of a layer at once.
//
//  - selection_scores_kernel: each entry's selection score (window score summed over the row
//    groups of the scoring kernel, optionally pooled; or recency for StreamingLLM) as an
//    order-preserving 32-bit key, 0 for protected entries (the first `sinks` and last `recent`).
//  - adakv_floor_kernel / adakv_joint_kernel: AdaKV's per-head budgets inside each request
//    (the rule of simcalkv::AdaKV::allocate: every head first reserves its own top
//    ceil(alpha * (B_h - P_h)) entries, the rest of the layer's budget goes to the highest
//    remaining scores across the request's heads, ties to the lower head, then the earlier entry).
//  - select_kernel: the protected entries plus the (budget - protected) highest keys, ties to the
//    earlier entry (kernels::select_top); writes the survivors in ascending order, followed by the
//    removed entries (the merge candidates) in ascending order.
//
// Top-k uses a block-wide radix select (four 8-bit digits of the key) and, only when the k-th key
// is tied with keys that are not all taken, a block scan in index order to take the earliest ties.
#pragma once

#include "simcalkv/cuda/common.cuh"

#include <cub/block/block_scan.cuh>

namespace simcalkv::cuda::detail {

/// Keep the keys > threshold, and the first `ties` (lowest index) of the `equal` keys == threshold.
struct TopK {
  uint32_t threshold;
  int ties;
  int equal;
};

/// The k largest of keys[0..m) (k <= m). All threads of the block call it; hist is 256 ints of
/// shared memory, scratch 4 ints.
__device__ inline TopK block_top_k(const uint32_t* keys, int m, int k, int* hist, int* scratch) {
  if (k <= 0) return TopK{0xffffffffu, 0, 0};
  uint32_t prefix = 0, mask = 0;
  int remaining = k;
  int equal = 0;
  const int lane = threadIdx.x & 31;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
      const uint32_t key = keys[i];
      if ((key & mask) == prefix) {
        const int bin = static_cast<int>((key >> shift) & 255u);
        const unsigned peers = __match_any_sync(__activemask(), bin);
        if (lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Bins in descending order: lane l holds bins 255 - 8l .. 248 - 8l.
      int counts[8];
      int local = 0;
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        counts[t] = hist[255 - (8 * lane + t)];
        local += counts[t];
      }
      int inclusive = local;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += v;
      }
      const int exclusive = inclusive - local;
      if (exclusive < remaining && inclusive >= remaining) {
        int acc = exclusive;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          if (acc + counts[t] >= remaining) {
            scratch[0] = 255 - (8 * lane + t);
            scratch[1] = remaining - acc;
            scratch[2] = counts[t];
            break;
          }
          acc += counts[t];
        }
      }
    }
    __syncthreads();
    const int bin = scratch[0];
    remaining = scratch[1];
    equal = scratch[2];
    prefix |= static_cast<uint32_t>(bin) << shift;
    mask |= 255u << shift;
    __syncthreads();  // scratch and hist are rewritten by the next digit
  }
  return TopK{prefix, remaining, equal};
}

struct SelectionParams {
  const int32_t* lengths;   // [S]
  const int32_t* ws_off;    // [S + 1]
  const float* score_part;  // [groups][total]: window score partial sums (null: recency)
  const float* mass_part;   // [groups][total]
  int groups;
  int64_t total;            // stride between the partial arrays
  float* mass;              // [total] out: mass under the window
  uint32_t* sel_key;        // [total] out: selection key, 0 for protected entries
  uint32_t* alloc_key;      // [total] out, optional: AdaKV's allocation key (prefix pooling)
  int sinks;
  int recent;
  Pooling pooling;
  int pool_kernel;
  bool pool_whole;          // pool over the whole sequence (SimCalKV) instead of before `recent` (SnapKV)
};

__device__ __forceinline__ bool is_protected(int j, int n, int sinks, int recent) {
  return j < sinks || j + recent >= n;
}

__device__ __forceinline__ float raw_score(const SelectionParams& p, int64_t at) {
  float v = 0.0f;
  for (int g = 0; g < p.groups; ++g) v += p.score_part[g * p.total + at];
  return v;
}

/// Pooling over [0, len) as kernels::pool_scores does (max, or the zero-padded average).
__device__ __forceinline__ float pooled_score(const SelectionParams& p, int64_t off, int j, int len) {
  const int half = p.pool_kernel / 2;
  const int lo = max(0, j - half), hi = min(len - 1, j + half);
  if (p.pooling == Pooling::max) {
    float acc = raw_score(p, off + lo);
    for (int i = lo; i <= hi; ++i) acc = fmaxf(acc, raw_score(p, off + i));
    return acc;
  }
  float acc = 0.0f;
  for (int i = lo; i <= hi; ++i) acc += raw_score(p, off + i);
  return acc / static_cast<float>(p.pool_kernel);
}

/// grid (ceil(max_len / 256), S), 256 threads.
__global__ void selection_scores_kernel(SelectionParams p) {
  const int s = blockIdx.y;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int n = p.lengths[s];
  if (j >= n) return;
  const int64_t off = p.ws_off[s];
  const bool prot = is_protected(j, n, p.sinks, p.recent);
  if (p.score_part == nullptr) {  // StreamingLLM: the most recent entries score highest
    p.sel_key[off + j] = prot ? 0u : order_key(static_cast<float>(j));
    return;
  }
  float mass = 0.0f;
  for (int g = 0; g < p.groups; ++g) mass += p.mass_part[g * p.total + off + j];
  p.mass[off + j] = mass;
  const float raw = raw_score(p, off + j);
  const bool pooled = p.pooling != Pooling::none && p.pool_kernel > 1;
  const int prefix = n - min(n, p.recent);
  float sel = raw;
  if (pooled && (p.pool_whole || j < prefix)) sel = pooled_score(p, off, j, p.pool_whole ? n : prefix);
  p.sel_key[off + j] = prot ? 0u : order_key(sel);
  if (p.alloc_key) {
    const float a = pooled && j < prefix ? pooled_score(p, off, j, prefix) : raw;
    p.alloc_key[off + j] = prot ? 0u : order_key(a);
  }
}

struct SelectParams {
  const int32_t* lengths;
  const int32_t* ws_off;
  const int32_t* budgets;   // [S], already within [protected, length]
  const uint32_t* sel_key;  // [total]
  int32_t* order;           // [total] out: survivors ascending, then candidates ascending
  int sinks;
  int recent;
  int smem_keys;            // keys staged in shared memory when n <= smem_keys
};

/// Marks, in index order, the entries of a sequence that survive a TopK and calls
/// emit(j, kept, rank) with rank = number of kept entries before j. THREADS * ITEMS per round.
template <int THREADS, int ITEMS, class Protects, class Emit>
__device__ __forceinline__ void ordered_pass(const uint32_t* keys, int n, const TopK& top, Protects protects,
                                             Emit emit) {
  using Scan = cub::BlockScan<int, THREADS>;
  __shared__ typename Scan::TempStorage temp;
  const bool scan_ties = top.ties > 0 && top.ties < top.equal;
  int tie_base = 0, keep_base = 0;
  for (int base = 0; base < n; base += THREADS * ITEMS) {
    int tie[ITEMS], kept[ITEMS], rank[ITEMS];
    uint32_t key[ITEMS];
    bool prot[ITEMS];
#pragma unroll
    for (int t = 0; t < ITEMS; ++t) {
      const int j = base + threadIdx.x * ITEMS + t;
      key[t] = j < n ? keys[j] : 0u;
      prot[t] = j < n && protects(j);
      tie[t] = (j < n && !prot[t] && key[t] == top.threshold && top.ties > 0) ? 1 : 0;
    }
    if (scan_ties) {
      int aggregate;
      Scan(temp).ExclusiveSum(tie, rank, aggregate);
      __syncthreads();
#pragma unroll
      for (int t = 0; t < ITEMS; ++t) tie[t] = tie[t] && (tie_base + rank[t] < top.ties);
      tie_base += aggregate;
    }
#pragma unroll
    for (int t = 0; t < ITEMS; ++t) {
      const int j = base + threadIdx.x * ITEMS + t;
      kept[t] = (j < n && (prot[t] || (top.ties >= 0 && key[t] > top.threshold && key[t] != 0u) || tie[t])) ? 1 : 0;
    }
    int aggregate;
    Scan(temp).ExclusiveSum(kept, rank, aggregate);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < ITEMS; ++t) {
      const int j = base + threadIdx.x * ITEMS + t;
      if (j < n) emit(j, kept[t] != 0, keep_base + rank[t]);
    }
    keep_base += aggregate;
  }
}

/// One block per sequence.
template <int THREADS, int ITEMS>
__global__ void __launch_bounds__(THREADS) select_kernel(SelectParams p) {
  extern __shared__ uint32_t staged[];
  __shared__ int hist[256];
  __shared__ int scratch[4];
  const int s = blockIdx.x;
  const int n = p.lengths[s];
  const int64_t off = p.ws_off[s];
  const int B = p.budgets[s];
  if (B >= n) {
    for (int j = threadIdx.x; j < n; j += THREADS) p.order[off + j] = j;
    return;
  }
  const uint32_t* keys = p.sel_key + off;
  if (n <= p.smem_keys) {
    for (int j = threadIdx.x; j < n; j += THREADS) staged[j] = keys[j];
    __syncthreads();
    keys = staged;
  }
  const int P = min(n, p.sinks + p.recent);
  const TopK top = block_top_k(keys, n, B - P, hist, scratch);
  const int sinks = p.sinks, recent = p.recent;
  int32_t* order = p.order + off;
  ordered_pass<THREADS, ITEMS>(
      keys, n, top, [=](int j) { return is_protected(j, n, sinks, recent); },
      [=](int j, bool kept, int rank) {
        if (kept) order[rank] = j;
        else order[B + (j - rank)] = j;
      });
}

struct AdaKVParams {
  const int32_t* lengths;
  const int32_t* ws_off;
  int32_t* budgets;         // [S] in: uniform base budgets; out: AdaKV's budgets
  const uint32_t* key;      // [total] allocation keys (0 for protected)
  uint32_t* pool_key;       // [total] out of the floor kernel: keys outside every head's floor
  int32_t* floor_count;     // [S]
  int32_t* extra_left;      // [S]: (B - P) - floor
  int num_kv_heads;
  int sinks;
  int recent;
  double alpha;
};

/// Each head's floor: its own top ceil(alpha * (B - P)) entries. One block per sequence.
template <int THREADS, int ITEMS>
__global__ void __launch_bounds__(THREADS) adakv_floor_kernel(AdaKVParams p) {
  __shared__ int hist[256];
  __shared__ int scratch[4];
  const int s = blockIdx.x;
  const int n = p.lengths[s];
  const int64_t off = p.ws_off[s];
  const int P = min(n, p.sinks + p.recent);
  const int unprotected = n - P;
  const int extra = p.budgets[s] - P;
  const int floor = min(unprotected, static_cast<int>(ceil(p.alpha * static_cast<double>(extra) - 1e-9)));
  const uint32_t* keys = p.key + off;
  const TopK top = block_top_k(keys, n, floor, hist, scratch);
  uint32_t* pool = p.pool_key + off;
  const int sinks = p.sinks, recent = p.recent;
  ordered_pass<THREADS, ITEMS>(
      keys, n, top, [=](int j) { return is_protected(j, n, sinks, recent); },
      [=](int j, bool kept, int) { pool[j] = kept ? 0u : keys[j]; });
  if (threadIdx.x == 0) {
    p.floor_count[s] = floor;
    p.extra_left[s] = extra - floor;
  }
}

/// The joint pick across the heads of request blockIdx.x; writes their budgets.
template <int THREADS>
__global__ void __launch_bounds__(THREADS) adakv_joint_kernel(AdaKVParams p) {
  __shared__ int hist[256];
  __shared__ int scratch[4];
  __shared__ int greater[64], equal[64];
  const int H = p.num_kv_heads;
  const int s0 = blockIdx.x * H;
  const int64_t begin = p.ws_off[s0], end = p.ws_off[s0 + H];
  int slots = 0, pool_size = 0;
  for (int h = 0; h < H; ++h) {
    const int n = p.lengths[s0 + h];
    slots += p.extra_left[s0 + h];
    pool_size += n - min(n, p.sinks + p.recent) - p.floor_count[s0 + h];
  }
  const int k = min(slots, pool_size);
  const uint32_t* keys = p.pool_key + begin;
  const TopK top = block_top_k(keys, static_cast<int>(end - begin), k, hist, scratch);
  for (int h0 = 0; h0 < H; h0 += 64) {
    for (int i = threadIdx.x; i < 64; i += THREADS) greater[i] = equal[i] = 0;
    __syncthreads();
    for (int h = h0; h < min(H, h0 + 64); ++h) {
      const int64_t a = p.ws_off[s0 + h] - begin, b = p.ws_off[s0 + h + 1] - begin;
      int gt = 0, eq = 0;
      for (int64_t i = a + threadIdx.x; i < b; i += THREADS) {
        const uint32_t key = keys[i];
        gt += (k > 0 && key > top.threshold) ? 1 : 0;
        eq += (k > 0 && key == top.threshold) ? 1 : 0;
      }
      if (gt) atomicAdd(&greater[h - h0], gt);
      if (eq) atomicAdd(&equal[h - h0], eq);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int ties = top.ties;
      if (h0 > 0) ties = scratch[3];
      for (int h = h0; h < min(H, h0 + 64); ++h) {
        const int n = p.lengths[s0 + h];
        const int take = min(equal[h - h0], ties);
        ties -= take;
        p.budgets[s0 + h] = min(n, p.sinks + p.recent) + p.floor_count[s0 + h] + greater[h - h0] + take;
      }
      scratch[3] = ties;
    }
    __syncthreads();
  }
}

}  // namespace simcalkv::cuda::detail
