// simcalkv CUDA: compressing one layer of a batch on the GPU (the CPU policies' compress()).
//
//   CompressShape shape{...};                                 // sizes and upper bounds
//   std::size_t bytes = compress_workspace_bytes<bf16>(shape, config);
//   cudaMalloc(&workspace, bytes);                            // once; reuse for every layer
//   compress_layer(kv, window, config, BudgetRule{BudgetKind::keep_fraction, 0.25}, nullptr,
//                  shape, workspace, bytes, stream);          // asynchronous, no allocation
//
// Every sequence of the layer (request x KV head, see layout.cuh) is compressed at once:
// StreamingLLM (selection by recency), SnapKV (window scores, pooled, top-B) or SimCalKV
// (SnapKV's selection, local or exact similarity assignment, mass-weighted merge, calibrated
// bias), optionally with AdaKV's cross-head budgets inside each request. Results match the CPU
// policies of the same options (see tests/cuda). Afterwards lengths[s] is the sequence's budget
// and its first lengths[s] rows hold the survivors in position order.
//
// The plan: compress_layer decides a LayerPlanView (simcalkv/plan_view.hpp, the type the CPU's
// plans flatten to): kept sets in its workspace, merged rows written into the survivors' own rows,
// then compacts by it with the kernel apply_plan (apply.cuh) uses. Pass `plan_out` to record it
// (kept sets, and for every merged slot its row as stored: key, value, bias, score) so the host
// can compare it with the CPU policy's LayerPlan (unflatten() turns it back into one) or replay it.
//
// Differences from the CPU API: the GPU validates nothing (the host checks shapes, finiteness and
// ascending positions as the CPU policies do), and budgets are clamped to [protected, length]
// instead of rejected. Sizes on the host are upper bounds only: lengths live in device memory,
// so the host never waits for the device.
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/compact.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/cuda/merge.cuh"
#include "simcalkv/cuda/scoring.cuh"
#include "simcalkv/cuda/select.cuh"
#include "simcalkv/cuda/similarity.cuh"
#include "simcalkv/plan_view.hpp"

#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cmath>

namespace simcalkv::cuda {

/// Sizes of a compression call, known on the host. max_length and total_length are upper bounds
/// of lengths[s] and of their sum (e.g. the capacities).
struct CompressShape {
  int num_seqs = 0;       // requests x KV heads (of this shard)
  int num_kv_heads = 1;   // KV heads per request (of this shard)
  int head_dim = 128;     // 64 or 128
  int window_tokens = 0;  // W
  int group = 1;          // G: query heads per KV head
  int max_length = 0;
  int64_t total_length = 0;
};

/// What a compression did to one sequence (optional output, device memory).
struct SeqStats {
  int32_t before;
  int32_t after;
  int32_t merged;
  int32_t evicted;
};

namespace detail {

/// Optional per-stage timing for benchmarks: when set, compress_layer calls mark(stage, stream)
/// after each stage of the pipeline (the hook records events; nothing is synchronised).
struct StageHook {
  virtual void mark(const char* stage, cudaStream_t stream) = 0;
  virtual ~StageHook() = default;
};
inline StageHook*& stage_hook() {
  static StageHook* hook = nullptr;
  return hook;
}

inline int device_sm_count() {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms;
}

inline int protected_recent(const PolicyConfig& c, int window_tokens) {
  if (c.method == Method::streaming_llm) return 0;
  return c.recent_tokens >= 0 ? c.recent_tokens : window_tokens;
}

template <class Kernel>
cudaError_t allow_smem(Kernel kernel, std::size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

/// One score kernel instance (its occupancy is cached per instance).
template <class T, int D, int NA, int PASS>
struct ScoreKernelTag {};

/// Blocks of score_kernel<PASS> resident per SM on the current device (registers and shared
/// memory decide it), asked once per device; 1 if the query fails.
template <class T, int D, int NA, int PASS>
int score_blocks_per_sm() {
  int blocks = 1;
  if (kernel_occupancy<ScoreKernelTag<T, D, NA, PASS>>(score_kernel<T, D, NA, PASS, RaggedLayout>,
                                                       ScoreSmem<T, D>::bytes, kScoreThreads, &blocks) != cudaSuccess)
    blocks = 1;
  return blocks;
}

template <class T, int NA, int PASS>
int score_blocks_per_sm(int head_dim) {
  return head_dim == 64 ? score_blocks_per_sm<T, 64, NA, PASS>() : score_blocks_per_sm<T, 128, NA, PASS>();
}

/// Splits of each sequence's `tiles` key tiles for the score kernels: the count that minimises a
/// model of the time. Blocks run in waves of `slots` (SMs x resident blocks), and every wave, the
/// last one too, costs as much as a full one: waves x (tiles per block + a block's fixed cost).
/// (A fixed target of blocks left the last of four waves a quarter full for 256 sequences.)
inline int score_splits(long long blocks_per_split, long long tiles, long long slots) {
  constexpr long long kBlockCostTiles = 2;  // pipeline fill and epilogue
  tiles = std::max(1LL, tiles);
  slots = std::max(1LL, slots);
  blocks_per_split = std::max(1LL, blocks_per_split);
  int best = 1;
  long long best_cost = LLONG_MAX;
  for (long long x = 1; x <= tiles; ++x) {
    const long long per = ceil_div(tiles, x);
    if (ceil_div(tiles, per) != x) continue;  // the same cut as fewer splits
    const long long cost = ceil_div(blocks_per_split * x, slots) * (per + kBlockCostTiles);
    if (cost < best_cost) best = static_cast<int>(x), best_cost = cost;  // ties: fewer splits
  }
  return best;
}

/// The planning derived from a shape (identical when sizing and when running).
struct CompressPlan {
  int rows = 0, rows_padded = 0, groups = 0;
  int tiles = 0, splits = 1, tiles_per_split = 1;
  int chunks_per_seq = 1;
  int end_bit = 1;
  uint32_t sentinel = 1;
  bool scored = false, merged = false, calibrated = false, adakv = false, alloc_key = false, split_queries = false;
  int smem_keys = 0;
  std::size_t sort_temp = 0;
};

template <class T, class Q>
CompressPlan make_plan(const CompressShape& shape, const PolicyConfig& c) {
  CompressPlan p;
  p.scored = c.method != Method::streaming_llm;
  p.merged = c.method == Method::simcalkv;
  p.calibrated = p.merged && (c.bias == BiasMode::calibrated || c.bias == BiasMode::bounded);
  p.adakv = c.adakv && p.scored;
  p.alloc_key = p.adakv && c.method == Method::simcalkv && c.pooling != Pooling::none && c.pool_kernel > 1;
  p.split_queries = std::is_same_v<Q, float>;
  p.rows = shape.group * shape.window_tokens;
  p.rows_padded = static_cast<int>(ceil_div(p.rows, kWindowRowAlign) * kWindowRowAlign);
  p.groups = p.rows_padded / (p.split_queries ? kScoreRows<2> : kScoreRows<1>);
  p.tiles = static_cast<int>(ceil_div(shape.max_length, kEntriesPerTile));
  if (p.scored) {
    constexpr int NA = std::is_same_v<Q, float> ? 2 : 1;
    const long long slots = static_cast<long long>(device_sm_count()) * score_blocks_per_sm<T, NA, 1>(shape.head_dim);
    p.splits = score_splits(static_cast<long long>(shape.num_seqs) * std::max(1, p.groups), p.tiles, slots);
  }
  p.tiles_per_split = std::max(1, static_cast<int>(ceil_div(p.tiles, p.splits)));
  p.splits = std::max(1, static_cast<int>(ceil_div(p.tiles, p.tiles_per_split)));
  p.chunks_per_seq = std::max(1, static_cast<int>(ceil_div(shape.max_length, kCompactChunk)));
  p.end_bit = 1;
  while (p.end_bit < 32 && (1ull << p.end_bit) - 1 < static_cast<unsigned long long>(shape.total_length)) ++p.end_bit;
  p.sentinel = static_cast<uint32_t>((1ull << p.end_bit) - 1);
  p.smem_keys = shape.max_length <= 40960 ? shape.max_length : 0;
  if (p.merged) {
    cub::DeviceRadixSort::SortPairs(nullptr, p.sort_temp, static_cast<const uint32_t*>(nullptr),
                                    static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                    static_cast<int32_t*>(nullptr), static_cast<int64_t>(shape.total_length), 0,
                                    p.end_bit);
  }
  return p;
}

/// Pointers into the workspace.
template <class T>
struct CompressBuffers {
  int32_t* ws_off;     // [S + 1]
  int32_t* budgets;    // [S]
  int32_t* evicted;    // [S]
  T* q_hi;             // [S][Rp][D]
  T* q_lo;
  int32_t* row_pos;    // [S][Rp]
  float2* stats;       // [S][Rp][splits]
  float* row_max;      // [S][Rp]
  float* row_inv;
  float* score_part;   // [groups][total]
  float* mass_part;
  float* mass;         // [total]
  float* inv_norm;
  uint32_t* sel_key;
  uint32_t* alloc_key;
  uint32_t* pool_key;
  int32_t* floor_count;  // [S]
  int32_t* extra_left;
  int32_t* order;      // [total]
  uint32_t* keys_in;   // [total]
  uint32_t* keys_out;
  int32_t* vals_in;
  int32_t* vals_out;
  int32_t* seg_begin;
  int32_t* seg_end;
  SetStats sets;       // [total] each
  MergePartials part;  // per merge task
  int32_t* task_off;   // [S]: each sequence's first merge task
  int32_t* seq_first;  // [S + 1]: where each sequence's merged candidates begin in the sorted ones
  void* sort_temp;
  unsigned* ticket;
  int* flags;          // [S * chunks]
};

template <class T>
CompressBuffers<T> carve(Carver& w, const CompressShape& shape, const CompressPlan& plan) {
  const std::size_t S = static_cast<std::size_t>(shape.num_seqs);
  const std::size_t N = static_cast<std::size_t>(shape.total_length);
  const std::size_t D = static_cast<std::size_t>(shape.head_dim);
  const std::size_t R = static_cast<std::size_t>(plan.rows_padded);
  CompressBuffers<T> b{};
  b.ws_off = w.take<int32_t>(S + 1);
  b.budgets = w.take<int32_t>(S);
  b.evicted = w.take<int32_t>(S);
  b.order = w.take<int32_t>(N);
  b.sel_key = w.take<uint32_t>(N);
  b.ticket = w.take<unsigned>(S);
  b.flags = w.take<int>(S * static_cast<std::size_t>(plan.chunks_per_seq));
  if (plan.scored) {
    b.q_hi = w.take<T>(S * R * D);
    b.q_lo = plan.split_queries ? w.take<T>(S * R * D) : nullptr;
    b.row_pos = w.take<int32_t>(S * R);
    b.stats = w.take<float2>(S * R * static_cast<std::size_t>(plan.splits));
    b.row_max = w.take<float>(S * R);
    b.row_inv = w.take<float>(S * R);
    b.score_part = w.take<float>(static_cast<std::size_t>(plan.groups) * N);
    b.mass_part = w.take<float>(static_cast<std::size_t>(plan.groups) * N);
    b.mass = w.take<float>(N);
  }
  if (plan.adakv) {
    b.alloc_key = plan.alloc_key ? w.take<uint32_t>(N) : nullptr;
    b.pool_key = w.take<uint32_t>(N);
    b.floor_count = w.take<int32_t>(S);
    b.extra_left = w.take<int32_t>(S);
  }
  if (plan.merged) {
    b.inv_norm = w.take<float>(N);
    b.keys_in = w.take<uint32_t>(N);
    b.keys_out = w.take<uint32_t>(N);
    b.vals_in = w.take<int32_t>(N);
    b.vals_out = w.take<int32_t>(N);
    b.seg_begin = w.take<int32_t>(N);
    b.seg_end = w.take<int32_t>(N);
    if (plan.calibrated) b.sets = SetStats{w.take<float>(N), w.take<float>(N), w.take<float>(N)};
    // Merge tasks: ceil(n_s / P) per sequence, at most N / P + S in all.
    const std::size_t tasks = N / kMergeTask + S;
    b.task_off = w.take<int32_t>(S);
    b.seq_first = w.take<int32_t>(S + 1);
    b.part.k = w.take<float>(2 * tasks * D);
    b.part.v = w.take<float>(2 * tasks * D);
    b.part.f = w.take<float4>(2 * tasks);
    b.part.key = w.take<uint32_t>(2 * tasks);
    b.part.spans = w.take<int32_t>(2 * tasks);
    b.part.tail = w.take<int32_t>(tasks);
    b.sort_temp = w.take<unsigned char>(plan.sort_temp);
  }
  return b;
}

struct PlanKernelParams {
  const int32_t* lengths;
  int num_seqs;
  BudgetRule rule;
  const int32_t* explicit_budgets;
  int sinks;
  int recent;
  int32_t* ws_off;
  int32_t* budgets;
  int32_t* task_off;  // optional: each sequence's first merge task
};

__host__ __device__ inline int budget_for(const BudgetRule& rule, int n) {
  switch (rule.kind) {
    case BudgetKind::entries: return static_cast<int>(rule.value);
    case BudgetKind::keep_fraction: return static_cast<int>(llround(rule.value * static_cast<double>(n)));
    case BudgetKind::compress_ratio: return static_cast<int>(llround((1.0 - rule.value) * static_cast<double>(n)));
  }
  return n;
}

/// One block of 1024 threads: workspace offsets (a scan of the lengths) and per-sequence budgets.
__global__ void __launch_bounds__(1024) plan_kernel(PlanKernelParams p) {
  using Scan = cub::BlockScan<int, 1024>;
  __shared__ typename Scan::TempStorage temp;
  int base = 0, task_base = 0;
  for (int s0 = 0; s0 < p.num_seqs; s0 += 1024) {
    const int s = s0 + static_cast<int>(threadIdx.x);
    const int n = s < p.num_seqs ? p.lengths[s] : 0;
    int offset, aggregate;
    Scan(temp).ExclusiveSum(n, offset, aggregate);
    __syncthreads();
    if (p.task_off) {
      int first_task, tasks;
      Scan(temp).ExclusiveSum(merge_tasks(n), first_task, tasks);
      __syncthreads();
      if (s < p.num_seqs) p.task_off[s] = task_base + first_task;
      task_base += tasks;
    }
    if (s < p.num_seqs) {
      p.ws_off[s] = base + offset;
      const int P = min(n, p.sinks + p.recent);
      const int B = p.explicit_budgets ? p.explicit_budgets[s] : budget_for(p.rule, n);
      p.budgets[s] = min(n, max(P, B));
    }
    base += aggregate;
  }
  if (threadIdx.x == 0) p.ws_off[p.num_seqs] = base;
}

struct FinishParams {
  int32_t* lengths;
  const int32_t* budgets;
  const int32_t* evicted;  // null: every removed entry is evicted
  int num_seqs;
  SeqStats* stats;
};

__global__ void finish_kernel(FinishParams p) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= p.num_seqs) return;
  const int n = p.lengths[s], B = p.budgets[s];
  if (p.stats) {
    const int removed = n - B;
    const int evicted = p.evicted ? p.evicted[s] : removed;
    p.stats[s] = SeqStats{n, B, removed - evicted, evicted};
  }
  p.lengths[s] = B;
}

template <class T, class Layout>
struct RecordParams {
  LayerKV<T, Layout> kv;
  LayerPlanView plan;       // what compress_layer decided (kept sets at the workspace offsets)
  const int32_t* seg_begin;  // >= 0 where slot k received a set; null: nothing was merged
  uint8_t updates;          // the bits of a merged row
  LayerPlanBuffers out;
};

/// grid (ceil(max_budget / 8), S), 256 threads, after the compaction and the calibration: a warp
/// per kept slot copies the decision (and a merged slot's row, widened to float) into the caller's
/// plan buffers, at the same slot index as the workspace's.
template <class T, class Layout>
__global__ void __launch_bounds__(256) record_plan_kernel(RecordParams<T, Layout> p) {
  const int s = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k = static_cast<int>(blockIdx.x) * 8 + warp;
  const int B = p.plan.kept[s];
  const int64_t g = static_cast<int64_t>(p.plan.first_slot[s]) + k;
  if (blockIdx.x == 0 && threadIdx.x == 0) p.out.first_slot[s] = p.plan.first_slot[s], p.out.kept[s] = B;
  if (k >= B) return;
  const bool merged = p.seg_begin && p.seg_begin[g] >= 0;
  if (lane == 0) {
    p.out.keep[g] = p.plan.keep[g];
    p.out.row_of_slot[g] = merged ? static_cast<int32_t>(g) : -1;
  }
  if (!merged) return;
  const int64_t e = p.kv.layout.seq(s).entry(k);
  const int64_t d = p.kv.head_dim;
  for (int i = lane; i < d; i += 32) {
    p.out.row_keys[g * d + i] = to_float(p.kv.keys[e * p.kv.key_stride + i]);
    p.out.row_values[g * d + i] = to_float(p.kv.values[e * p.kv.value_stride + i]);
  }
  if (lane == 0) {
    p.out.row_updates[g] = p.updates;
    p.out.row_bias[g] = p.kv.bias[e];
    p.out.row_score[g] = p.kv.scores ? p.kv.scores[e] : 0.0f;
  }
}

template <class T, class Q, int D, class Layout>
cudaError_t compress_layer_impl(const LayerKV<T, Layout>& kv, const WindowArgs<Q>& window, const PolicyConfig& cfg,
                                const BudgetRule& rule, const int32_t* explicit_budgets, const CompressShape& shape,
                                void* workspace, std::size_t workspace_bytes, cudaStream_t stream,
                                SeqStats* stats, const LayerPlanBuffers* plan_out) {
  constexpr int NA = std::is_same_v<Q, float> ? 2 : 1;
  const CompressPlan plan = make_plan<T, Q>(shape, cfg);
  Carver carver(workspace);
  const CompressBuffers<T> b = carve<T>(carver, shape, plan);
  if (carver.bytes() > workspace_bytes) return cudaErrorInvalidValue;
  const int S = shape.num_seqs;
  if (S == 0) return cudaSuccess;
  const int recent = protected_recent(cfg, shape.window_tokens);
  const int sinks = cfg.sink_tokens;
  const int max_len = shape.max_length;
  const int64_t N = shape.total_length;

  // The largest budget any sequence can get, known on the host (budget_for is monotonic in the
  // length): the merge and compaction grids need no blocks past it. Explicit or AdaKV budgets can
  // reach the length.
  int max_budget = max_len;
  if (!explicit_budgets && !plan.adakv)
    max_budget = std::clamp(std::max(budget_for(rule, max_len), sinks + recent), 0, std::max(max_len, 0));
  const unsigned budget_chunks = static_cast<unsigned>(ceil_div(std::max(max_budget, 1), 64));

  plan_kernel<<<1, 1024, 0, stream>>>(PlanKernelParams{kv.lengths, S, rule, explicit_budgets, sinks, recent, b.ws_off,
                                                      b.budgets, plan.merged ? b.task_off : nullptr});
  SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("plan", stream);

  // What every score pass reads: the layer and the window rows.
  ScoreParams<T, Layout> window_score_params{};
  window_score_params.kv = kv;
  window_score_params.ws_off = b.ws_off;
  window_score_params.q_hi = b.q_hi;
  window_score_params.q_lo = b.q_lo;
  window_score_params.row_pos = b.row_pos;
  window_score_params.rows = plan.rows;
  window_score_params.rows_padded = plan.rows_padded;
  window_score_params.scale = 1.0f / std::sqrt(static_cast<float>(D));

  if (plan.scored) {
    PrepParams<T, Q> pp{window, shape.num_kv_heads, S, plan.rows, plan.rows_padded, b.q_hi, b.q_lo, b.row_pos};
    window_prep_kernel<T, Q, D><<<dim3(S, plan.rows_padded / 8), 256, 0, stream>>>(pp);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("window prep", stream);
    ScoreParams<T, Layout> sp = window_score_params;
    sp.splits = plan.splits;
    sp.tiles_per_split = plan.tiles_per_split;
    sp.stats = b.stats;
    sp.row_max = b.row_max;
    sp.row_inv = b.row_inv;
    sp.score_part = b.score_part;
    sp.mass_part = b.mass_part;
    sp.total = N;
    sp.inv_norm = plan.merged ? b.inv_norm : nullptr;
    const std::size_t smem = ScoreSmem<T, D>::bytes;
    const dim3 grid(plan.splits, plan.groups, S);
    SIMCALKV_CUDA_TRY(allow_smem(score_kernel<T, D, NA, 1, Layout>, smem));
    SIMCALKV_CUDA_TRY(allow_smem(score_kernel<T, D, NA, 2, Layout>, smem));
    score_kernel<T, D, NA, 1, Layout><<<grid, kScoreThreads, smem, stream>>>(sp);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("scores pass 1", stream);
    const int64_t rows_total = static_cast<int64_t>(S) * plan.rows_padded;
    row_stats_kernel<<<static_cast<unsigned>(ceil_div(rows_total, 256)), 256, 0, stream>>>(
        RowStatsParams{b.stats, plan.splits, plan.rows, plan.rows_padded, S, b.row_max, b.row_inv});
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("row stats", stream);
    score_kernel<T, D, NA, 2, Layout><<<grid, kScoreThreads, smem, stream>>>(sp);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("scores pass 2", stream);
  }

  SelectionParams selp{};
  selp.lengths = kv.lengths;
  selp.ws_off = b.ws_off;
  selp.score_part = plan.scored ? b.score_part : nullptr;
  selp.mass_part = b.mass_part;
  selp.groups = plan.groups;
  selp.total = N;
  selp.mass = b.mass;
  selp.sel_key = b.sel_key;
  selp.alloc_key = b.alloc_key;
  selp.sinks = sinks;
  selp.recent = recent;
  selp.pooling = cfg.pooling;
  selp.pool_kernel = cfg.pool_kernel;
  selp.pool_whole = cfg.method == Method::simcalkv;
  selection_scores_kernel<<<dim3(static_cast<unsigned>(ceil_div(max_len, 256)), S), 256, 0, stream>>>(selp);
  SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("selection scores", stream);

  constexpr int kSelectThreads = 512, kSelectItems = 8;
  if (plan.adakv) {
    AdaKVParams ap{};
    ap.lengths = kv.lengths;
    ap.ws_off = b.ws_off;
    ap.budgets = b.budgets;
    ap.key = plan.alloc_key ? b.alloc_key : b.sel_key;
    ap.pool_key = b.pool_key;
    ap.floor_count = b.floor_count;
    ap.extra_left = b.extra_left;
    ap.num_kv_heads = shape.num_kv_heads;
    ap.sinks = sinks;
    ap.recent = recent;
    ap.alpha = cfg.adakv_alpha;
    adakv_floor_kernel<kSelectThreads, kSelectItems><<<S, kSelectThreads, 0, stream>>>(ap);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
    adakv_joint_kernel<1024><<<S / shape.num_kv_heads, 1024, 0, stream>>>(ap);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("adakv budgets", stream);
  }

  {
    SelectParams sp{kv.lengths, b.ws_off, b.budgets, b.sel_key, b.order, sinks, recent, plan.smem_keys};
    const std::size_t smem = static_cast<std::size_t>(plan.smem_keys) * sizeof(uint32_t);
    SIMCALKV_CUDA_TRY(allow_smem(select_kernel<kSelectThreads, kSelectItems>, smem));
    select_kernel<kSelectThreads, kSelectItems><<<S, kSelectThreads, smem, stream>>>(sp);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("select", stream);
  }

  if (plan.merged) {
    const unsigned fill_blocks = static_cast<unsigned>(std::min<long long>(4096, ceil_div(N, 256)));
    fill_keys_kernel<<<fill_blocks, 256, 0, stream>>>(b.keys_in, N, plan.sentinel);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
    SIMCALKV_CUDA_TRY(cudaMemsetAsync(b.evicted, 0, sizeof(int32_t) * S, stream));
    AssignParams<T, Layout> ap{kv,     b.ws_off,          b.budgets,   b.order,     b.inv_norm, cfg.search,
                               cfg.search_radius, cfg.similarity_threshold, b.keys_in, b.vals_in, b.evicted};
    const std::size_t smem = AssignSmem<T, D>::bytes;
    SIMCALKV_CUDA_TRY(allow_smem(assign_kernel<T, D, Layout>, smem));
    assign_kernel<T, D, Layout>
        <<<dim3(static_cast<unsigned>(ceil_div(max_len, kAssignRows)), S), kAssignThreads, smem, stream>>>(ap);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("assign", stream);
    std::size_t temp = plan.sort_temp;
    SIMCALKV_CUDA_TRY(cub::DeviceRadixSort::SortPairs(b.sort_temp, temp, b.keys_in, b.keys_out, b.vals_in, b.vals_out,
                                                      N, 0, plan.end_bit, stream));
  if (StageHook* h = stage_hook()) h->mark("sort", stream);
    SIMCALKV_CUDA_TRY(cudaMemsetAsync(b.seg_begin, 0xff, sizeof(int32_t) * static_cast<std::size_t>(N), stream));
    segments_kernel<<<fill_blocks, 256, 0, stream>>>(b.keys_out, N, plan.sentinel, b.seg_begin, b.seg_end);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
    MergeParams<T, Layout> mp{};
    mp.kv = kv;
    mp.ws_off = b.ws_off;
    mp.order = b.order;
    mp.mass = b.mass;
    mp.seg_begin = b.seg_begin;
    mp.seg_end = b.seg_end;
    mp.keys = b.keys_out;
    mp.members = b.vals_out;
    mp.seq_first = b.seq_first;
    mp.task_off = b.task_off;
    mp.bias = cfg.bias;
    mp.merge_keys = cfg.merge_keys;
    mp.sets = b.sets;
    mp.part = b.part;
    member_ranges_kernel<<<static_cast<unsigned>(ceil_div(S + 1, 256)), 256, 0, stream>>>(b.keys_out, N, b.ws_off, S,
                                                                                          b.seq_first);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
    const dim3 merge_grid(static_cast<unsigned>(ceil_div(merge_tasks(max_len), kMergeWarps)), S);
    merge_kernel<T, D, Layout><<<merge_grid, kMergeWarps * 32, 0, stream>>>(mp);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
    merge_combine_kernel<T, D, Layout><<<merge_grid, kMergeWarps * 32, 0, stream>>>(mp);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("merge", stream);
  }

  SIMCALKV_CUDA_TRY(cudaMemsetAsync(b.ticket, 0, sizeof(unsigned) * S, stream));
  SIMCALKV_CUDA_TRY(
      cudaMemsetAsync(b.flags, 0, sizeof(int) * static_cast<std::size_t>(S) * plan.chunks_per_seq, stream));
  // The layer's plan, as the CPU's plans flatten to: kept sets at the workspace offsets.
  LayerPlanView decided{};
  decided.num_seqs = S;
  decided.head_dim = D;
  decided.first_slot = b.ws_off;
  decided.kept = b.budgets;
  decided.keep = b.order;
  CompactParams<T, Layout> cp{kv, decided, plan.chunks_per_seq, b.ticket, b.flags};
  static_assert(kCompactChunk == 64, "one compaction block per 64 budget slots");
  compact_kernel<T, D, Layout><<<dim3(std::min<unsigned>(budget_chunks, plan.chunks_per_seq), S), 256, 0, stream>>>(cp);
  SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("compact", stream);

  if (plan.calibrated) {
    // The merged keys' masses under the window, now that slot k sits in row k (before
    // finish_kernel: pass 3 tells compressed sequences by budgets[s] < lengths[s]).
    ScoreParams<T, Layout> sp = window_score_params;
    const long long budget_tiles = ceil_div(std::max(max_budget, 1), kEntriesPerTile);
    const long long slots = static_cast<long long>(device_sm_count()) * score_blocks_per_sm<T, NA, 3>(D);
    const int splits = score_splits(static_cast<long long>(S) * plan.groups, budget_tiles, slots);
    sp.tiles_per_split = static_cast<int>(ceil_div(budget_tiles, splits));
    sp.splits = static_cast<int>(ceil_div(budget_tiles, sp.tiles_per_split));
    sp.row_max = b.row_max;
    sp.row_inv = b.row_inv;
    sp.mass_part = b.mass_part;  // free since the selection
    sp.score_part = b.score_part;
    sp.total = N;
    sp.budgets = b.budgets;
    const std::size_t smem = ScoreSmem<T, D>::bytes;
    SIMCALKV_CUDA_TRY(allow_smem(score_kernel<T, D, NA, 3, Layout>, smem));
    score_kernel<T, D, NA, 3, Layout><<<dim3(sp.splits, plan.groups, S), kScoreThreads, smem, stream>>>(sp);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
    const CalibrateParams cal{b.budgets, b.ws_off, b.seg_begin, b.mass_part, plan.groups, N, b.sets, cfg.bias};
    calibrate_bias_kernel<T, Layout>
        <<<dim3(static_cast<unsigned>(ceil_div(std::max(max_budget, 1), 256)), S), 256, 0, stream>>>(cal, kv);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
    if (StageHook* h = stage_hook()) h->mark("calibrate", stream);
  }
  if (plan_out) {
    const uint8_t updates = static_cast<uint8_t>((cfg.merge_keys ? update_key : 0) | update_value | update_bias |
                                                 update_score);
    record_plan_kernel<T, Layout><<<dim3(static_cast<unsigned>(ceil_div(std::max(max_budget, 1), 8)), S), 256, 0,
                                    stream>>>(
        RecordParams<T, Layout>{kv, decided, plan.merged ? b.seg_begin : nullptr, updates, *plan_out});
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  }
  finish_kernel<<<static_cast<unsigned>(ceil_div(S, 256)), 256, 0, stream>>>(
      FinishParams{kv.lengths, b.budgets, plan.merged ? b.evicted : nullptr, S, stats});
  SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (StageHook* h = stage_hook()) h->mark("finish", stream);
  return cudaSuccess;
}

}  // namespace detail

/// Workspace bytes for compress_layer with this shape and policy (T: storage, Q: query type).
template <class T, class Q = float>
std::size_t compress_workspace_bytes(const CompressShape& shape, const PolicyConfig& config) {
  const detail::CompressPlan plan = detail::make_plan<T, Q>(shape, config);
  detail::Carver carver(nullptr);
  detail::carve<T>(carver, shape, plan);
  return carver.bytes();
}

/// Compresses every sequence of one layer, asynchronously on `stream` (see the file comment).
/// Budgets: `explicit_budgets` (device, one per sequence) if given, else `rule` applied to each
/// sequence's length. Requires head_dim 64 or 128 and, unless the policy is StreamingLLM, a
/// window with at least one token. `stats` (device, optional) receives one SeqStats per sequence;
/// `plan_out` (device buffers of shape.total_length slots and rows, optional) the layer's plan.
template <class T, class Q, class Layout>
cudaError_t compress_layer(const LayerKV<T, Layout>& kv, const WindowArgs<Q>& window, const PolicyConfig& config,
                           const BudgetRule& rule, const int32_t* explicit_budgets, const CompressShape& shape,
                           void* workspace, std::size_t workspace_bytes, cudaStream_t stream = nullptr,
                           SeqStats* stats = nullptr, const LayerPlanBuffers* plan_out = nullptr) {
  static_assert(is_storage_v<T>, "storage must be bf16 or fp16");
  static_assert(std::is_same_v<Q, float> || std::is_same_v<Q, T>, "queries must be float or the storage type");
  if (config.method != Method::streaming_llm && (shape.window_tokens <= 0 || shape.group <= 0))
    return cudaErrorInvalidValue;
  if (shape.num_kv_heads <= 0 || shape.num_seqs % shape.num_kv_heads != 0) return cudaErrorInvalidValue;
  if (config.method == Method::simcalkv && config.search_radius <= 0) return cudaErrorInvalidValue;
  switch (shape.head_dim) {
    case 64:
      return detail::compress_layer_impl<T, Q, 64>(kv, window, config, rule, explicit_budgets, shape, workspace,
                                                  workspace_bytes, stream, stats, plan_out);
    case 128:
      return detail::compress_layer_impl<T, Q, 128>(kv, window, config, rule, explicit_budgets, shape, workspace,
                                                   workspace_bytes, stream, stats, plan_out);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace simcalkv::cuda
