// simcalkv: compression during decoding.
//
// Decoding appends one token (or a block) per step to every layer, so a compressed cache grows
// again. DecodeDriver keeps it near a budget. The host calls it for a layer after appending the
// step's keys and values (and after that step's attention, if it accumulates H2O scores with
// AttentionOptions::accumulate_scores):
//
//     cache.append(layer, 1, k, v);                          // or the host's own buffers
//     decode_attention(..., {.accumulate_scores = true});    // the host's attention
//     driver.step(layer, cache.layer(layer), q, position, workspace);
//
// step() records the token's queries (all query heads) in a ring buffer of the last W tokens of
// that layer, and when any KV head holds more than its budget + slack entries it compresses the
// layer back to the budget with the policy, the recorded queries serving as the observation
// window. A head's budget is the driver's budget until the first compression, then the length the
// policy left it with (which differs from the budget under per-layer schedules, PyramidKV and
// PyramidInfer, and per head under AdaKV): later compressions pass those budgets with
// LayerRequest::schedule_budgets = false, so a layer schedule applies once and the layer then
// stays at its scheduled budget, while AdaKV redistributes within the layer's total each time. So
// slack 0 evicts one entry per step (H2O's and TOVA's greedy per-step rule); a larger slack
// compresses every slack+1 steps and amortises the cost. Seed the ring with the prompt's last W
// queries (record_block) so the first compressions see a full window.
//
// Budget: a fixed entry count (Budget::entries), or a fraction of the prompt (keep_fraction or
// compress_ratio), fixed at the layer's first check from its longest head (the prompt length, when
// the host starts calling right after prefill). Heads shorter than the budget keep what they have.
//
// Positions are the tokens' own (the host's, e.g. KVCache::next_position()), never slot indices,
// and merged entries keep merging correctly across rounds: their bias carries their mass.
// Compression runs through the policy, so it has the policy's validation and strong guarantee;
// results do not depend on the executor's thread count. Calls for different layers may run
// concurrently; calls for one layer must not.
//
// Policy: any KVCachePolicy (AnyPolicy by default). A policy with compress_with_budgets (every
// policy of the library, AnyPolicy included) gets per-head budgets: the budget, or the head's
// length if shorter, the shortfall going to heads with room so the layer's total stays
// num_kv_heads * budget; one without gets request.budget = Budget::entries(budget) and so needs
// every head to hold at least the budget when the layer is compressed.
#pragma once

#include "simcalkv/any_policy.hpp"
#include "simcalkv/budget.hpp"
#include "simcalkv/error.hpp"
#include "simcalkv/executor.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/numeric.hpp"
#include "simcalkv/paged_cache.hpp"
#include "simcalkv/policy.hpp"
#include "simcalkv/window.hpp"

#include <algorithm>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace simcalkv {

struct DecodeOptions {
  Budget budget = Budget::entries(1024);  // per KV head
  std::size_t slack = 0;                  // compress when a head exceeds budget + slack
  int window = 32;                        // W: recent query tokens kept per layer
  bool check_finite = true;               // passed to the policy (scan keys and values)
  double rope_theta = 0.0;                // the host's rotary base (LayerRequest::rope_theta); 0: not given
};

template <class Policy = AnyPolicy>
class DecodeDriver {
 public:
  DecodeDriver(Policy policy, int num_layers, int num_query_heads, int head_dim, const DecodeOptions& options = {})
      : policy_(std::move(policy)), num_layers_(num_layers), num_query_heads_(num_query_heads), head_dim_(head_dim),
        options_(options) {
    using detail::require;
    require(num_layers > 0 && num_query_heads > 0 && head_dim > 0, ErrorCode::invalid_argument,
            "DecodeDriver: layers, query heads and head_dim must be positive (got ", num_layers, ", ",
            num_query_heads, ", ", head_dim, ")");
    require(options.window > 0, ErrorCode::invalid_argument, "DecodeDriver: window must be positive, got ",
            options.window);
    layers_.resize(static_cast<std::size_t>(num_layers));
    for (auto& L : layers_) {
      L.ring.assign(token_floats() * static_cast<std::size_t>(options.window), 0.0f);
      L.ring_positions.assign(static_cast<std::size_t>(options.window), 0);
    }
  }

  [[nodiscard]] const Policy& policy() const noexcept { return policy_; }
  [[nodiscard]] const DecodeOptions& options() const noexcept { return options_; }
  [[nodiscard]] int num_layers() const noexcept { return num_layers_; }

  /// Records one token's queries, [num_query_heads][head_dim] (post-RoPE), at `position`.
  /// Positions must increase from call to call.
  void record(int layer, std::span<const float> queries, Position position) {
    record_tokens(layer, queries, std::span<const Position>(&position, 1), /*tokens_inner=*/false);
  }

  /// Takes the heads' current lengths as the budgets a policy chose, for a layer the host has
  /// already compressed (after prefill): the driver then keeps the layer there, its schedule and
  /// allocation applied once, instead of letting it regrow to the budget first.
  void adopt_budgets(int layer, std::span<const std::size_t> lengths) {
    LayerState& L = state(layer);
    detail::require(!lengths.empty(), ErrorCode::invalid_argument, "DecodeDriver: layer ", layer, " has no KV heads");
    if (!L.budget_fixed) {
      const std::size_t longest = *std::max_element(lengths.begin(), lengths.end());
      L.budget = options_.budget.kind() == Budget::Kind::entries ? options_.budget.count()
                                                                  : options_.budget.for_length(longest);
      L.budget_fixed = true;
    }
    L.head_budgets.assign(lengths.begin(), lengths.end());
    L.allocated = true;
  }

  /// Records m tokens' queries laid out [num_query_heads][m][head_dim] (a trace window's layout),
  /// at ascending `positions` [m]; e.g. the prompt's last W queries after prefill.
  void record_block(int layer, std::span<const float> queries, std::span<const Position> positions) {
    record_tokens(layer, queries, positions, /*tokens_inner=*/true);
  }

  /// Compresses the layer back to the budget if a head exceeds budget + slack; returns what was
  /// done (all zero when nothing was).
  template <StorageElement T>
  CompressionStats maybe_compress(int layer, std::span<HeadView<T>> heads, Workspace& workspace,
                                  const Executor* executor = nullptr) {
    std::vector<std::size_t> lengths(heads.size());
    for (std::size_t h = 0; h < heads.size(); ++h) lengths[h] = heads[h].length;
    const auto budgets = due_budgets(layer, lengths);
    if (budgets.empty()) return {};
    LayerRequest<T> request = request_for<T>(layer, executor);
    request.heads = heads;
    CompressionStats stats;
    if constexpr (PerHeadBudgetPolicy<Policy, T>) {
      stats = policy_.compress_with_budgets(request, workspace, budgets);
    } else {
      const std::size_t budget = state(layer).budget;
      for (std::size_t h = 0; h < heads.size(); ++h)
        detail::require(heads[h].length >= budget, ErrorCode::invalid_argument, "DecodeDriver: layer ", layer,
                        ", KV head ", h, " holds ", heads[h].length, " entries, fewer than the budget ", budget, "; ",
                        policy_.name(), " takes no per-head budgets here (use a policy type with compress_with_budgets)");
      stats = policy_.compress(request, workspace);
    }
    for (std::size_t h = 0; h < heads.size(); ++h) lengths[h] = heads[h].length;
    compressed(layer, lengths);
    return stats;
  }

  /// maybe_compress() for a layer of a PagedKVCache: the same budgets and plan, applied through
  /// the block tables; freed pages go back to the cache's free list.
  template <StorageElement T>
    requires PlanningPolicy<Policy, T>
  CompressionStats maybe_compress(int layer, PagedKVCache<T>& cache, Workspace& workspace,
                                  const Executor* executor = nullptr) {
    PagedLayer<T>& paged = cache.layer(layer);
    std::vector<std::size_t> lengths(paged.lengths, paged.lengths + paged.num_seqs);
    const auto budgets = due_budgets(layer, lengths);
    if (budgets.empty()) return {};
    LayerRequest<T> request = request_for<T>(layer, executor);
    auto& views = stage_paged(paged, staging<T>());
    request.heads = views;
    LayerPlan plan = policy_.plan_with_budgets(request, workspace, budgets);
    const PagedApplyResult result = apply_plan(plan, paged);
    workspace.recycle(std::move(plan));
    cache.release(layer, result.freed_pages);
    lengths.assign(paged.lengths, paged.lengths + paged.num_seqs);
    compressed(layer, lengths);
    return result.stats;
  }

  /// record() then maybe_compress(): the call to make after each decoded token.
  template <StorageElement T>
  CompressionStats step(int layer, std::span<HeadView<T>> heads, std::span<const float> queries, Position position,
                        Workspace& workspace, const Executor* executor = nullptr) {
    record(layer, queries, position);
    return maybe_compress(layer, heads, workspace, executor);
  }

  /// The recorded queries as an observation window, oldest first; valid until the next call for
  /// this layer.
  WindowView window(int layer) {
    LayerState& L = state(layer);
    const auto W = static_cast<std::size_t>(options_.window);
    const auto count = static_cast<std::size_t>(L.count);
    const auto d = static_cast<std::size_t>(head_dim_);
    L.linear.resize(static_cast<std::size_t>(num_query_heads_) * count * d);
    L.linear_positions.resize(count);
    const std::size_t oldest = (L.next + W - count) % W;
    for (std::size_t t = 0; t < count; ++t) {
      const std::size_t slot = (oldest + t) % W;
      L.linear_positions[t] = L.ring_positions[slot];
      for (int h = 0; h < num_query_heads_; ++h) {
        const float* src = L.ring.data() + slot * token_floats() + static_cast<std::size_t>(h) * d;
        std::copy_n(src, d, L.linear.data() + (static_cast<std::size_t>(h) * count + t) * d);
      }
    }
    return make_window_view(count ? L.linear.data() : nullptr, count ? L.linear_positions.data() : nullptr,
                            num_query_heads_, static_cast<int>(count), head_dim_);
  }

  /// The layer's per-head budget (0 until fixed by the first check).
  [[nodiscard]] std::size_t budget(int layer) const { return state(layer).budget; }
  /// What KV head `kv_head` of the layer may hold before the next compression, less the slack:
  /// its length after the last compression (the policy's per-layer / per-head choice), else the
  /// budget.
  [[nodiscard]] std::size_t head_budget(int layer, int kv_head) const {
    const LayerState& L = state(layer);
    const auto h = static_cast<std::size_t>(kv_head);
    return h < L.head_budgets.size() ? L.head_budgets[h] : L.budget;
  }
  /// Sets a layer's budget explicitly (instead of fixing it at the first check).
  void set_budget(int layer, std::size_t entries) {
    LayerState& L = state(layer);
    L.budget = entries;
    L.budget_fixed = true;
    L.head_budgets.clear();
  }
  /// How many times the layer has been compressed.
  [[nodiscard]] std::size_t compressions(int layer) const { return state(layer).compressions; }
  /// Query tokens currently recorded for the layer (at most the window).
  [[nodiscard]] int recorded(int layer) const { return state(layer).count; }

  /// Forgets every layer's queries, budget and counters (a new sequence).
  void reset() {
    for (auto& L : layers_) {
      L.next = 0;
      L.count = 0;
      L.budget = 0;
      L.budget_fixed = false;
      L.compressions = 0;
      L.has_last = false;
      L.head_budgets.clear();
    }
  }

 private:
  /// The per-head budgets to compress layer `layer` to now, or none when no head is over its
  /// budget + slack. Each head starts from the budget; a head holding fewer leaves its share to
  /// heads with room, so the layer keeps num_kv_heads * budget entries when it can (what per-head
  /// allocators split).
  std::vector<std::size_t> due_budgets(int layer, std::span<const std::size_t> lengths) {
    using detail::require;
    LayerState& L = state(layer);
    require(!lengths.empty(), ErrorCode::invalid_argument, "DecodeDriver: layer ", layer, " has no KV heads");
    const std::size_t longest = *std::max_element(lengths.begin(), lengths.end());
    if (!L.budget_fixed) {
      L.budget = options_.budget.kind() == Budget::Kind::entries ? options_.budget.count()
                                                                  : options_.budget.for_length(longest);
      L.budget_fixed = true;
    }
    const std::size_t H = lengths.size();
    if (L.head_budgets.size() != H) L.head_budgets.assign(H, L.budget);
    bool over = false;
    for (std::size_t h = 0; h < H; ++h) over = over || lengths[h] > L.head_budgets[h] + options_.slack;
    if (!over) return {};
    // Later compressions keep what the first one chose (its schedule and allocation), capped by
    // what a head holds; the first starts every head from the budget.
    const bool first = !L.allocated;
    std::vector<std::size_t> budgets(H);
    std::size_t deficit = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t target = first ? L.budget : L.head_budgets[h];
      budgets[h] = std::min(target, lengths[h]);
      deficit += target - budgets[h];
    }
    for (std::size_t h = 0; h < H && deficit > 0; ++h) {
      const std::size_t give = std::min(deficit, lengths[h] - budgets[h]);
      budgets[h] += give;
      deficit -= give;
    }
    return budgets;
  }
  template <StorageElement T>
  LayerRequest<T> request_for(int layer, const Executor* executor) {
    LayerRequest<T> request;
    request.window = window(layer);
    request.budget = Budget::entries(state(layer).budget);
    request.layer = layer;
    request.num_layers = num_layers_;
    request.executor = executor;
    request.check_finite = options_.check_finite;
    request.schedule_budgets = !state(layer).allocated;
    request.rope_theta = options_.rope_theta;
    return request;
  }
  /// After a compression: what the policy chose becomes each head's budget.
  void compressed(int layer, std::span<const std::size_t> lengths) {
    LayerState& L = state(layer);
    L.head_budgets.assign(lengths.begin(), lengths.end());
    L.allocated = true;
    ++L.compressions;
  }
  template <StorageElement T>
  Staging<T>& staging() {
    if constexpr (std::is_same_v<T, float>) return staging_f32_;
    else if constexpr (std::is_same_v<T, half>) return staging_f16_;
    else return staging_bf16_;
  }
  Staging<float> staging_f32_;
  Staging<half> staging_f16_;
  Staging<bfloat16> staging_bf16_;

  struct LayerState {
    std::vector<float> ring;  // [W][num_query_heads][head_dim]
    std::vector<Position> ring_positions;
    std::size_t next = 0;  // slot the next token goes to
    int count = 0;
    Position last = 0;
    bool has_last = false;
    std::vector<float> linear;  // window(): [num_query_heads][count][head_dim]
    std::vector<Position> linear_positions;
    std::size_t budget = 0;
    bool budget_fixed = false;
    std::vector<std::size_t> head_budgets;  // per KV head, after the last compression
    bool allocated = false;                  // head_budgets came from a policy (schedule applied)
    std::size_t compressions = 0;
  };

  [[nodiscard]] std::size_t token_floats() const noexcept {
    return static_cast<std::size_t>(num_query_heads_) * static_cast<std::size_t>(head_dim_);
  }

  LayerState& state(int layer) {
    detail::require(layer >= 0 && layer < num_layers_, ErrorCode::invalid_argument, "DecodeDriver: layer ", layer,
                    " out of range [0, ", num_layers_, ")");
    return layers_[static_cast<std::size_t>(layer)];
  }
  const LayerState& state(int layer) const { return const_cast<DecodeDriver*>(this)->state(layer); }

  /// Validates everything first, then records (so a bad call records nothing).
  void record_tokens(int layer, std::span<const float> queries, std::span<const Position> positions,
                     bool tokens_inner) {
    using detail::require;
    LayerState& L = state(layer);
    const std::size_t m = positions.size();
    const std::size_t d = static_cast<std::size_t>(head_dim_);
    require(queries.size() == m * token_floats(), ErrorCode::invalid_argument, "DecodeDriver: expected ",
            m * token_floats(), " query floats (", num_query_heads_, " heads x ", m, " tokens x ", head_dim_,
            "), got ", queries.size());
    require(all_finite(queries.data(), queries.size()), ErrorCode::non_finite,
            "DecodeDriver: queries contain NaN or Inf");
    for (std::size_t t = 0; t < m; ++t) {
      const bool ascending = t > 0 ? positions[t] > positions[t - 1] : (!L.has_last || positions[t] > L.last);
      require(ascending, ErrorCode::invalid_argument, "DecodeDriver: layer ", layer, ": query position ",
              positions[t], " does not follow ", t > 0 ? positions[t - 1] : L.last);
    }
    const auto W = static_cast<std::size_t>(options_.window);
    for (std::size_t t = m > W ? m - W : 0; t < m; ++t) {
      float* dst = L.ring.data() + L.next * token_floats();
      for (int h = 0; h < num_query_heads_; ++h) {
        const auto hh = static_cast<std::size_t>(h);
        const float* src = tokens_inner ? queries.data() + (hh * m + t) * d : queries.data() + (t * token_floats() + hh * d);
        std::copy_n(src, d, dst + hh * d);
      }
      L.ring_positions[L.next] = positions[t];
      L.next = (L.next + 1) % W;
      L.count = std::min(L.count + 1, options_.window);
    }
    if (m > 0) {
      L.last = positions[m - 1];
      L.has_last = true;
    }
  }

  Policy policy_;
  int num_layers_;
  int num_query_heads_;
  int head_dim_;
  DecodeOptions options_;
  std::vector<LayerState> layers_;
};

}  // namespace simcalkv
