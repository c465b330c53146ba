// simcalkv: the surface a host calls (the KVCachePolicy concept) and the plan/commit driver every
// policy runs through.
//
// A policy compresses one layer: all its KV heads, to a budget, given the observation window.
// Work happens in two phases. Planning reads the cache and writes only workspace memory: it
// validates, scores, selects and computes merged entries, one head per task on the host's
// executor. Committing rewrites the heads in place and cannot fail. So a compression that throws
// leaves every head of the layer exactly as it was (the strong guarantee), and since each task
// writes only its own head's plan, results do not depend on the thread count.
#pragma once

#include "simcalkv/budget.hpp"
#include "simcalkv/error.hpp"
#include "simcalkv/executor.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/window.hpp"

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv {

/// What one call did to one layer, summed over its heads.
struct CompressionStats {
  std::size_t entries_before = 0;
  std::size_t entries_after = 0;
  std::size_t merged = 0;   // entries folded into a surviving entry
  std::size_t evicted = 0;  // entries dropped without a trace

  CompressionStats& operator+=(const CompressionStats& o) noexcept {
    entries_before += o.entries_before;
    entries_after += o.entries_after;
    merged += o.merged;
    evicted += o.evicted;
    return *this;
  }
};

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

  [[nodiscard]] int group_size() const noexcept {
    return heads.empty() ? 0 : window.num_query_heads / static_cast<int>(heads.size());
  }
  [[nodiscard]] const Executor& exec() const noexcept { return executor ? *executor : sequential_executor(); }
};

/// The outcome of planning one head: which entries survive (ascending indices, in slot order)
/// and what the rewritten ones hold. Rows are float; storage narrowing happens at commit.
struct HeadPlan {
  enum Update : std::uint8_t { key = 1, value = 2, bias = 4, score = 8 };

  std::vector<std::uint32_t> keep;
  std::vector<std::int32_t> row_of_slot;  // per kept slot: -1 (untouched) or a row below
  std::vector<std::uint8_t> row_updates;  // per row: Update bits
  std::vector<float> row_keys;            // [rows][head_dim]
  std::vector<float> row_values;          // [rows][head_dim]
  std::vector<float> row_bias;            // [rows]
  std::vector<float> row_score;           // [rows]
  std::size_t merged = 0;
  std::size_t evicted = 0;
  bool identity = true;  // nothing changes

  void reset() {
    keep.clear();
    row_of_slot.clear();
    row_updates.clear();
    row_keys.clear();
    row_values.clear();
    row_bias.clear();
    row_score.clear();
    merged = evicted = 0;
    identity = true;
  }
  /// Keeps `survivors` (ascending) with no rewritten rows yet.
  void set_keep(std::span<const std::uint32_t> survivors, std::size_t length) {
    keep.assign(survivors.begin(), survivors.end());
    row_of_slot.assign(keep.size(), -1);
    identity = keep.size() == length;
  }
  /// Starts a rewritten row for kept slot `slot`; returns the row index.
  std::size_t add_row(std::size_t slot, std::uint8_t updates, int head_dim) {
    const auto row = row_updates.size();
    row_of_slot[slot] = static_cast<std::int32_t>(row);
    row_updates.push_back(updates);
    row_keys.resize(row_keys.size() + static_cast<std::size_t>(head_dim));
    row_values.resize(row_values.size() + static_cast<std::size_t>(head_dim));
    row_bias.push_back(0.0f);
    row_score.push_back(0.0f);
    identity = false;
    return row;
  }
};

/// Scratch memory of one head, grown on demand and kept across calls.
struct HeadScratch {
  std::vector<float> keys;        // [n][d] keys widened to float
  std::vector<float> inv_norms;   // [n]
  std::vector<float> queries;     // [R][d] window queries, pre-scaled
  std::vector<Position> row_positions;  // [R]
  std::vector<float> probs;       // [R][n] exp(logit - row max)
  std::vector<float> row_max;     // [R]
  std::vector<float> row_sum;     // [R]
  std::vector<float> score;       // [n]
  std::vector<float> mass;        // [n] sum over rows of exp(logit - row max)
  std::vector<float> floats;      // general purpose
  std::vector<std::uint32_t> indices;
  std::vector<std::uint32_t> indices2;
  std::vector<std::int32_t> assignment;
  std::vector<float> similarity;
  HeadPlan plan;
};

/// Reusable memory for compressing layers; one per host thread that calls policies.
class Workspace {
 public:
  HeadScratch& head(std::size_t index) {
    while (heads_.size() <= index) heads_.emplace_back();
    return heads_[index];
  }
  void prepare(std::size_t num_heads) { head(num_heads ? num_heads - 1 : 0); }
  /// Bytes currently reserved by the scratch buffers.
  [[nodiscard]] std::size_t reserved_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& s : heads_)
      total += (s.keys.capacity() + s.inv_norms.capacity() + s.queries.capacity() + s.probs.capacity() +
                s.row_max.capacity() + s.row_sum.capacity() + s.score.capacity() + s.mass.capacity() +
                s.floats.capacity() + s.similarity.capacity() + s.plan.row_keys.capacity() +
                s.plan.row_values.capacity()) * sizeof(float);
    return total;
  }

 private:
  std::deque<HeadScratch> heads_;  // deque: references stay valid as it grows
};

/// The concept a host programs against. A policy is a small value type configured by a plain
/// options struct; compress() is const (no mutable state) and deterministic.
template <class P, class T>
concept KVCachePolicy = StorageElement<T> && requires(const P& policy, const LayerRequest<T>& request, Workspace& ws) {
  { policy.compress(request, ws) } -> std::same_as<CompressionStats>;
  { policy.name() } -> std::convertible_to<std::string_view>;
};

/// Entries a policy never removes: the first `sinks` and the last `recent`.
struct Protection {
  std::size_t sinks = 4;
  std::size_t recent = 32;
  [[nodiscard]] std::size_t count(std::size_t n) const noexcept { return std::min(n, sinks + recent); }
  [[nodiscard]] bool protects(std::size_t j, std::size_t n) const noexcept {
    return j < sinks || j + recent >= n;
  }
};

/// Protected entries for a request: sinks, and `recent` (or the window length when negative).
inline Protection make_protection(std::size_t sinks, int recent, int window_tokens) {
  return Protection{sinks, static_cast<std::size_t>(recent >= 0 ? recent : window_tokens)};
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

/// Applies a finished plan. noexcept: everything that could fail happened while planning.
template <StorageElement T>
void commit_plan(HeadView<T>& head, const HeadPlan& plan) noexcept {
  if (plan.identity) return;
  const auto d = static_cast<std::size_t>(head.head_dim);
  // Row-major keys and values move as whole rows (bit for bit, as move_entry does).
  const bool rows = head.keys_contiguous() && head.values_contiguous();
  for (std::size_t slot = 0; slot < plan.keep.size(); ++slot) {
    const std::size_t from = plan.keep[slot];  // keep is ascending, so slot <= source: safe in place
    if (rows && from != slot) {
      // Distinct entries never overlap (validate_layout); T is trivially copyable.
      std::memcpy(static_cast<void*>(head.key(slot)), static_cast<const void*>(head.key(from)), d * sizeof(T));
      std::memcpy(static_cast<void*>(head.value(slot)), static_cast<const void*>(head.value(from)), d * sizeof(T));
      head.bias[slot] = head.bias[from];
      head.positions[slot] = head.positions[from];
      if (head.scores) head.scores[slot] = head.scores[from];
    } else {
      head.move_entry(from, slot);
    }
    const auto row = plan.row_of_slot[slot];
    if (row < 0) continue;
    const auto r = static_cast<std::size_t>(row);
    const auto updates = plan.row_updates[r];
    if (updates & HeadPlan::key) head.store_key(slot, plan.row_keys.data() + r * d);
    if (updates & HeadPlan::value) head.store_value(slot, plan.row_values.data() + r * d);
    if (updates & HeadPlan::bias) head.bias[slot] = plan.row_bias[r];
    if ((updates & HeadPlan::score) && head.scores) head.scores[slot] = plan.row_score[r];
  }
  head.length = plan.keep.size();
}

}  // namespace detail

/// Per-head budgets of a request under a uniform allocation, validated against protection.
template <StorageElement T>
std::vector<std::size_t> uniform_head_budgets(const LayerRequest<T>& request) {
  std::vector<std::size_t> budgets(request.heads.size());
  for (std::size_t h = 0; h < budgets.size(); ++h) budgets[h] = request.budget.for_length(request.heads[h].length);
  return budgets;
}

/// The driver behind every policy: validates the request, plans each head on the executor
/// (planner(head_index, head, budget, scratch) fills scratch.plan), then commits all heads.
template <StorageElement T, class Planner>
CompressionStats run_compression(const LayerRequest<T>& request, Workspace& workspace, std::string_view policy,
                                 std::span<const std::size_t> budgets, const Protection& protection,
                                 Planner&& planner) {
  using detail::require;
  const std::string who(policy);
  require(!request.heads.empty(), ErrorCode::invalid_argument, who, ": the layer has no KV heads");
  require(budgets.size() == request.heads.size(), ErrorCode::invalid_argument, who, ": ", budgets.size(),
          " budgets for ", request.heads.size(), " heads");
  const int d = request.heads[0].head_dim;
  for (std::size_t h = 0; h < request.heads.size(); ++h) {
    const auto& head = request.heads[h];
    const std::string name = who + ": KV head " + std::to_string(h);
    detail::validate_layout(head, name);
    require(head.head_dim == d, ErrorCode::invalid_argument, name, ": head_dim ", head.head_dim,
            " differs from head 0's ", d);
    require(budgets[h] <= head.length, ErrorCode::budget_out_of_range, name, ": budget ", budgets[h],
            " exceeds the length ", head.length);
    require(budgets[h] >= protection.count(head.length), ErrorCode::budget_out_of_range, name, ": budget ",
            budgets[h], " is below the ", protection.count(head.length), " protected entries (",
            protection.sinks, " sinks + ", protection.recent, " recent)");
  }
  detail::validate_window(request.window, d, request.heads.size());

  workspace.prepare(request.heads.size());
  std::vector<HeadScratch*> scratch(request.heads.size());
  for (std::size_t h = 0; h < scratch.size(); ++h) scratch[h] = &workspace.head(h);

  request.exec().parallel_for(request.heads.size(), [&](std::size_t h) {
    HeadView<T>& head = request.heads[h];
    HeadScratch& s = *scratch[h];
    s.plan.reset();
    detail::validate_head_contents(head, who + ": KV head " + std::to_string(h), request.check_finite, s.floats);
    if (budgets[h] >= head.length) {
      s.plan.keep.resize(head.length);
      for (std::size_t j = 0; j < head.length; ++j) s.plan.keep[j] = static_cast<std::uint32_t>(j);
      s.plan.row_of_slot.assign(head.length, -1);
      return;
    }
    planner(h, head, budgets[h], s);
    const auto& plan = s.plan;
    require(plan.keep.size() == budgets[h], ErrorCode::invalid_argument, who, ": planned ", plan.keep.size(),
            " entries for a budget of ", budgets[h]);
    require(all_finite(plan.row_keys.data(), plan.row_keys.size()) &&
                all_finite(plan.row_values.data(), plan.row_values.size()) &&
                all_finite(plan.row_bias.data(), plan.row_bias.size()),
            ErrorCode::non_finite, who, ": KV head ", h, ": a merged entry came out NaN or Inf");
  });

  CompressionStats stats;
  for (std::size_t h = 0; h < request.heads.size(); ++h) {
    const auto& plan = scratch[h]->plan;
    stats.entries_before += request.heads[h].length;
    stats.entries_after += plan.keep.size();
    stats.merged += plan.merged;
    stats.evicted += plan.evicted;
  }
  // Committed on the calling thread: moving entries is cheap, and no executor can fail half-way.
  for (std::size_t h = 0; h < request.heads.size(); ++h) detail::commit_plan(request.heads[h], scratch[h]->plan);
  return stats;
}

/// Gives a policy `compress` (every head the same budget) from its `compress_with_budgets`, the
/// entry point per-head allocators such as AdaKV call.
template <class Derived>
class UniformBudgets {
 public:
  template <StorageElement T>
  CompressionStats compress(const LayerRequest<T>& request, Workspace& workspace) const {
    return static_cast<const Derived&>(*this).compress_with_budgets(request, workspace, uniform_head_budgets(request));
  }
};

/// `compress_with_budgets` of a policy that plans each head on its own from the observation window
/// with sink + recent protection: policy.plan_head(head, kv_head, group, budget, protection, window,
/// scratch), or with the layer index first when the policy's plan depends on it.
template <class Policy, StorageElement T>
CompressionStats compress_heads_with_window(const Policy& policy, const LayerRequest<T>& request,
                                            Workspace& workspace, std::span<const std::size_t> budgets,
                                            std::size_t sink_tokens, int recent_tokens) {
  detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument, policy.name(),
                  ": needs an observation window (no window queries given)");
  const Protection protection = make_protection(sink_tokens, recent_tokens, request.window.num_tokens);
  const int group = request.group_size();
  return run_compression(request, workspace, policy.name(), budgets, protection,
                         [&](std::size_t h, const HeadView<T>& head, std::size_t budget, HeadScratch& s) {
                           const int kv_head = static_cast<int>(h);
                           if constexpr (requires {
                                           policy.plan_head(head, request.layer, kv_head, group, budget, protection,
                                                            request.window, s);
                                         })
                             policy.plan_head(head, request.layer, kv_head, group, budget, protection,
                                              request.window, s);
                           else
                             policy.plan_head(head, kv_head, group, budget, protection, request.window, s);
                         });
}

}  // namespace simcalkv
