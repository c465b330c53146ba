// simcalkv: PyramidInfer (Yang et al., "PyramidInfer: Pyramid KV Cache Compression for
// High-throughput LLM Inference", ACL Findings 2024), an eviction baseline.
//
// The rule, as the authors' code (mutonix/pyramidinfer: modeling_llama_pyramidinfer.py in its models
// folder, with its llama3_8b.json config) runs its prefill stage:
//  - Budget by layer: layer i passes on r_i = 0.9 + 0.1 * (cos(pi i / L) + 1) / 2 of its context
//    to the next layer (prefill_decay_ratio 0.9, strategy "cosine"), so the kept fraction compounds
//    with depth: LayerSchedule::compound_cosine (budget_schedule.hpp), scaled to the uniform total
//    of the budget we are given (the authors' code has no budget; its total is what the decay
//    leaves). decay=D sets the ratio, schedule=geometric the older decay^l reading.
//  - One kept set for the whole layer: the code selects hidden states, so every head of the
//    layer keeps the same entries. The score is the attention of the recent queries averaged over
//    all query heads, each recent query t of W weighted by linspace(1, distance_weight)[t]
//    (distance_weight 1.2), then averaged over the queries.
//  - Protection: the first 4 entries (streamingllm_sink_len) and the most recent
//    floor(0.2 n) + 1 (prefill_recent_ratio 0.2, plus the current token), never evicted.
// Departures, on purpose:
//  - The recent queries that score are the host's observation window (the last W queries), not
//    the last 20% of the prompt: a host keeps W queries, not a fifth of the prompt's. Pass a
//    window of 0.2 n queries for the authors' scoring exactly.
//  - When the budget is below the protected 20% (compress ratios above 0.8), the recent span
//    shrinks to the budget less the sinks; the code never meets this case.
//  - select=head keeps a set per KV head (AdaKV+PyramidInfer always does: per-head budgets
//    exclude one shared set).
//  - The generation stage (gen_decay_ratio, compressing every 16 new tokens) is DecodeDriver's
//    recompression with this same rule.
// Ties go to the earlier entry; kept entries are moved, never rewritten.
#pragma once

#include "simcalkv/budget_schedule.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct PyramidInferOptions {
  std::size_t sink_tokens = 4;   // streamingllm_sink_len
  double recent_ratio = 0.2;     // prefill_recent_ratio: floor(ratio * n) + 1 recent entries kept
  double decay = 0.9;            // prefill_decay_ratio
  bool geometric = false;        // decay^l instead of the compounded cosine schedule
  double distance_weight = 1.2;  // weight of the newest window query relative to the oldest
  bool per_layer = true;         // one kept set for the layer (the code); false: one per KV head
};

class PyramidInfer : public StagedPolicy<PyramidInfer> {
 public:
  PyramidInfer() = default;
  explicit PyramidInfer(const PyramidInferOptions& options) : options_(options) {
    layer_schedule().validate();
    detail::require(std::isfinite(options.distance_weight) && options.distance_weight > 0.0,
                    ErrorCode::invalid_argument, "PyramidInfer: distance_weight must be positive, got ",
                    options.distance_weight);
    detail::require(std::isfinite(options.recent_ratio) && options.recent_ratio >= 0.0 && options.recent_ratio < 1.0,
                    ErrorCode::invalid_argument, "PyramidInfer: recent_ratio must be in [0, 1), got ",
                    options.recent_ratio);
  }

  [[nodiscard]] std::string_view name() const noexcept { return "PyramidInfer"; }
  [[nodiscard]] const PyramidInferOptions& options() const noexcept { return options_; }
  [[nodiscard]] LayerSchedule layer_schedule() const {
    return options_.geometric ? LayerSchedule::geometric(options_.decay) : LayerSchedule::compound_cosine(options_.decay);
  }
  [[nodiscard]] bool selects_per_layer() const noexcept { return options_.per_layer; }

  /// The recent entries a head of n entries protects: floor(recent_ratio * n) + 1.
  [[nodiscard]] std::size_t recent_for(std::size_t n) const noexcept {
    return std::min(n, static_cast<std::size_t>(std::floor(options_.recent_ratio * static_cast<double>(n))) + 1);
  }
  /// Without a length, only the sinks are certain (the recent span depends on n and the budget).
  [[nodiscard]] Protection protection(const WindowView&) const noexcept { return Protection{options_.sink_tokens, 0}; }
  /// The sinks and the recent 20%, cut to what a budget below them leaves.
  [[nodiscard]] Protection protection_for(const WindowView&, std::size_t budget, std::size_t n) const noexcept {
    const std::size_t room = budget - std::min(budget, options_.sink_tokens);
    return Protection{options_.sink_tokens, std::min(recent_for(n), room)};
  }

  template <StorageElement T>
  void check_request(const LayerRequest<T>& request) const {
    detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
                    "PyramidInfer: needs an observation window (the recent queries)");
  }

  /// Budgets: the layer schedule applied to each head's base budget, the head's sinks and recent
  /// span outside the scheduled part (the code decays the context before the recent span).
  template <StorageElement T>
  std::vector<std::size_t> schedule(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    const LayerSchedule s = layer_schedule();
    std::vector<std::size_t> out(base.size());
    for (std::size_t h = 0; h < base.size(); ++h) {
      const std::size_t n = request.heads[h].length;
      const std::size_t protected_count = protection_for(request.window, base[h], n).count(n);
      out[h] = layer_budget(s, request.layer, request.num_layers, base[h], n, protected_count);
    }
    return out;
  }

  /// Score: window attention weighted by recency, linspace(1, distance_weight) over the window,
  /// averaged over the group's query heads (the layer-wide selection then averages the KV heads).
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    const std::size_t n = ctx.head.length;
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    // Rows are (g, t) with r = g * W + t; row r's probabilities are s.probs[r] / s.row_sum[r].
    const auto W = static_cast<std::size_t>(ctx.window.num_tokens);
    const std::size_t R = s.row_positions.size();
    s.selection_score.assign(n, 0.0f);
    for (std::size_t r = 0; r < R; ++r) {
      if (s.row_sum[r] <= 0.0f) continue;
      const std::size_t t = r % W;
      const double step = W > 1 ? static_cast<double>(t) / static_cast<double>(W - 1) : 0.0;
      const auto weight = static_cast<float>(1.0 + (options_.distance_weight - 1.0) * step);
      kernels::axpy(weight / (s.row_sum[r] * static_cast<float>(R)), s.probs.data() + r * n,
                    s.selection_score.data(), n);
    }
  }

  /// PyramidInferOptions from a registry option string: sinks, recent_ratio, decay, schedule
  /// (cosine|geometric), distance_weight, select (layer|head).
  static PyramidInferOptions read_options(PolicyOptions& o) {
    PyramidInferOptions options;
    options.sink_tokens = static_cast<std::size_t>(o.get_int("sinks", static_cast<long long>(options.sink_tokens)));
    options.recent_ratio = o.get_double("recent_ratio", options.recent_ratio, 0.0, 0.999);
    options.decay = o.get_double("decay", options.decay, 1e-6, 1.0);
    options.geometric = o.get_choice("schedule", "cosine", {"cosine", "geometric"}) == "geometric";
    options.distance_weight = o.get_double("distance_weight", options.distance_weight, 1e-6, 1e6);
    options.per_layer = o.get_choice("select", "layer", {"layer", "head"}) == "layer";
    return options;
  }

 private:
  PyramidInferOptions options_;
};

}  // namespace simcalkv
