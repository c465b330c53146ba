// simcalkv: the surface a host calls, the KVCachePolicy concept, and the checks every request
// passes before a policy reads it.
//
// A policy compresses one layer: all its KV heads, to a budget, given the observation window.
// It works in two phases. plan() reads the cache and writes only workspace memory: it validates,
// scores, selects and computes merged entries (stages.hpp), one head per task on the host's
// executor, and returns a LayerPlan (plan.hpp). Applying the plan to the host's layout
// (layouts/*.hpp) rewrites the cache after checking the plan fits it, and cannot fail half-way.
// So a compression that throws leaves every head of the layer exactly as it was (the strong
// guarantee), and since each task writes only its own head's plan, results do not depend on the
// thread count. compress() is plan() followed by applying to compact per-head buffers.
#pragma once

#include "simcalkv/budget.hpp"
#include "simcalkv/error.hpp"
#include "simcalkv/executor.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/plan.hpp"
#include "simcalkv/protection.hpp"
#include "simcalkv/scratch.hpp"
#include "simcalkv/window.hpp"

#include <algorithm>
#include <concepts>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace simcalkv {

/// One layer to compress. `heads` are the layer's KV heads; the group size G is
/// window.num_query_heads / heads.size().
template <StorageElement T>
struct LayerRequest {
  std::span<HeadView<T>> heads;
  WindowView window;
  Budget budget = Budget::keep_fraction(1.0);  // per head (the layer's total is heads * budget)
  int layer = 0;                               // for per-layer budget schedules
  int num_layers = 1;
  const Executor* executor = nullptr;          // nullptr: sequential
  bool check_finite = true;                    // scan keys and values for NaN/Inf first
  /// One kept set for all heads of the layer, selected by the heads' mean selection score (the
  /// host's heads share cells, as llama.cpp's do, or the method selects per layer, as TOVA's
  /// paper does). Merged rows and biases stay per head. Needs equal head lengths and budgets.
  bool shared_selection = false;
  /// false: the per-head budgets given are already this layer's, and the policy's layer schedule
  /// (PyramidKV, PyramidInfer, LayerScheduled) is not applied again; a decode driver re-compressing
  /// a layer to the budgets its first compression chose sets it. Per-head reallocation (AdaKV)
  /// still runs, within the layer's total.
  bool schedule_budgets = true;
  /// false: the per-head budgets given are final, and a reallocating composition (AdaKV) selects
  /// with them instead of moving budget between the heads of this request. A layer whose KV heads
  /// are split over ranks sets it after reallocating over every rank's heads (tensor_parallel.hpp).
  bool reallocate_budgets = true;
  /// The index of heads[0] in the whole layer, when the layer's KV heads are split over ranks and
  /// this request holds one rank's: a method whose rule depends on the head's identity (CaM's
  /// draws) then gives each head what it gets in one process.
  std::size_t first_kv_head = 0;
  /// The model's per-layer attention statistics, one per layer, which the host computes for every
  /// layer before it compresses any (layer_statistic() in policies/d2o.hpp) when the policy's
  /// wants_layer_statistics() says so: D2O's density budgets. Empty: none; such a policy then
  /// gives every layer its base budget.
  std::span<const double> layer_statistics{};
  /// The host's rotary embedding base (rope_theta of a Llama/Qwen/Mistral config), for policies
  /// that undo or extrapolate RoPE (ExpectedAttention); 0: not given.
  double rope_theta = 0.0;

  [[nodiscard]] int group_size() const noexcept {
    return heads.empty() ? 0 : window.num_query_heads / static_cast<int>(heads.size());
  }
  [[nodiscard]] const Executor& exec() const noexcept { return executor ? *executor : sequential_executor(); }
};

/// The concept a host programs against. A policy is a small value type configured by a plain
/// options struct; compress() is const (no mutable state) and deterministic.
template <class P, class T>
concept KVCachePolicy = StorageElement<T> && requires(const P& policy, const LayerRequest<T>& request, Workspace& ws) {
  { policy.compress(request, ws) } -> std::same_as<CompressionStats>;
  { policy.name() } -> std::convertible_to<std::string_view>;
};

/// A policy that can compress a layer with a budget per KV head.
template <class P, class T>
concept PerHeadBudgetPolicy = KVCachePolicy<P, T> &&
    requires(const P& policy, const LayerRequest<T>& request, Workspace& ws, std::span<const std::size_t> budgets) {
      { policy.compress_with_budgets(request, ws, budgets) } -> std::same_as<CompressionStats>;
    };

/// A policy whose plan a host can apply to a layout of its own (every policy of the library).
template <class P, class T>
concept PlanningPolicy = PerHeadBudgetPolicy<P, T> &&
    requires(const P& policy, const LayerRequest<T>& request, Workspace& ws, std::span<const std::size_t> budgets) {
      { policy.plan(request, ws) } -> std::same_as<LayerPlan>;
      { policy.plan_with_budgets(request, ws, budgets) } -> std::same_as<LayerPlan>;
    };

/// Per-head budgets of a request under a uniform allocation.
template <StorageElement T>
std::vector<std::size_t> uniform_head_budgets(const LayerRequest<T>& request) {
  std::vector<std::size_t> budgets(request.heads.size());
  for (std::size_t h = 0; h < budgets.size(); ++h) budgets[h] = request.budget.for_length(request.heads[h].length);
  return budgets;
}

namespace detail {

template <StorageElement T>
void validate_head_contents(const HeadView<T>& h, const std::string& name, bool check_finite,
                            std::vector<float>& row) {
  for (std::size_t j = 1; j < h.length; ++j)
    require(h.positions[j - 1] < h.positions[j], ErrorCode::invalid_argument, name,
            ": positions must be strictly ascending, entry ", j, " has ", h.positions[j], " after ",
            h.positions[j - 1]);
  for (std::size_t j = 0; j < h.length; ++j)
    require(std::isfinite(h.bias[j]) || h.bias[j] == -std::numeric_limits<float>::infinity(),
            ErrorCode::non_finite, name, ": bias of entry ", j, " is NaN or +Inf");
  if (!check_finite) return;
  const auto d = static_cast<std::size_t>(h.head_dim);
  // Contiguous rows are checked in their storage type, a whole head at once when rows are packed
  // back to back; the per-entry scan only runs to name the entry when something is wrong.
  auto packed_finite = [&](const T* base, std::ptrdiff_t token_stride, std::ptrdiff_t dim_stride) {
    return dim_stride == 1 && token_stride == static_cast<std::ptrdiff_t>(d) &&
           (h.length == 0 || all_finite_elements(base, h.length * d));
  };
  auto first_bad = [&](bool keys) -> std::size_t {
    row.resize(d);
    for (std::size_t j = 0; j < h.length; ++j) {
      const bool contiguous = keys ? h.keys_contiguous() : h.values_contiguous();
      bool ok;
      if (contiguous) {
        ok = all_finite_elements(keys ? h.key(j) : h.value(j), d);
      } else {
        keys ? h.load_key(j, row.data()) : h.load_value(j, row.data());
        ok = all_finite(row.data(), d);
      }
      if (!ok) return j;
    }
    return h.length;
  };
  for (const bool keys : {true, false}) {
    if (keys ? packed_finite(h.keys, h.key_token_stride, h.key_dim_stride)
             : packed_finite(h.values, h.value_token_stride, h.value_dim_stride))
      continue;
    const std::size_t j = first_bad(keys);
    require(j == h.length, ErrorCode::non_finite, name, keys ? ": key of entry " : ": value of entry ", j,
            " contains NaN or Inf");
  }
}

/// Checks a request's heads and window (layout, head_dim, the budgets against the length and the
/// protected entries) before anything reads the entries. Names the policy and the head.
template <StorageElement T>
void validate_request(const LayerRequest<T>& request, const std::string& who, std::span<const std::size_t> budgets,
                      const Protection& protection) {
  require(!request.heads.empty(), ErrorCode::invalid_argument, who, ": the layer has no KV heads");
  require(budgets.size() == request.heads.size(), ErrorCode::invalid_argument, who, ": ", budgets.size(),
          " budgets for ", request.heads.size(), " heads");
  const int d = request.heads[0].head_dim;
  for (std::size_t h = 0; h < request.heads.size(); ++h) {
    const auto& head = request.heads[h];
    const std::string name = who + ": KV head " + std::to_string(h);
    validate_layout(head, name);
    require(head.head_dim == d, ErrorCode::invalid_argument, name, ": head_dim ", head.head_dim,
            " differs from head 0's ", d);
    require(budgets[h] <= head.length, ErrorCode::budget_out_of_range, name, ": budget ", budgets[h],
            " exceeds the length ", head.length);
    require(budgets[h] >= protection.count(head.length), ErrorCode::budget_out_of_range, name, ": budget ",
            budgets[h], " is below the ", protection.count(head.length), " protected entries (", protection.sinks,
            " sinks + ", protection.recent, " recent)");
  }
  validate_window(request.window, d, request.heads.size());
  validate_distinct_buffers(std::span<const HeadView<T>>(request.heads.data(), request.heads.size()), who);
  // The window's queries come after (or among) the cached tokens: a window wholly before the cache is
  // another sequence's, and its scores would be meaningless.
  if (request.window.num_tokens > 0) {
    const Position last = request.window.positions[request.window.num_tokens - 1];
    for (std::size_t h = 0; h < request.heads.size(); ++h)
      if (request.heads[h].length > 0)
        require(last >= request.heads[h].positions[0], ErrorCode::invalid_argument, who, ": the window's last query "
                "is at position ", last, ", before KV head ", h, "'s first entry (position ",
                request.heads[h].positions[0], "): the window and the cache are not one sequence");
  }
}

}  // namespace detail

/// Whether the policy selects by attention the host accumulates in head.scores over every query it
/// ran (`static constexpr bool reads_accumulated_scores = true`, H2O), looking through wrappers
/// (AdaKV, layer schedules) to the policy they wrap. A host then keeps score buffers and runs its
/// attention with AttentionOptions::accumulate_scores, in prefill and decode.
template <class P>
constexpr bool policy_reads_accumulated_scores() {
  if constexpr (requires { P::reads_accumulated_scores; })
    return P::reads_accumulated_scores;
  else if constexpr (requires(const P& p) { p.inner(); })
    return policy_reads_accumulated_scores<std::decay_t<decltype(std::declval<const P&>().inner())>>();
  else
    return false;
}

}  // namespace simcalkv
