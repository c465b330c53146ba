// simcalkv: PyramidInfer (Yang et al., "PyramidInfer: Pyramid KV Cache Compression for
// High-throughput LLM Inference", ACL Findings 2024), an eviction baseline.
//
// The rule:
//  - Budget by layer: the keep ratio shrinks geometrically with depth, LayerSchedule::geometric
//    (decay 0.9, the paper's prefill decay ratio): layer l's unprotected budget is proportional to
//    decay^l, scaled so the model keeps the same total as a uniform budget (see budget_schedule.hpp).
//    Its schedule() applies it to the per-head budgets for request.layer of request.num_layers.
//  - Selection by recent attention ("recent attention consistency"): an entry's score is its
//    attention from the recent queries (the window), averaged over the G query heads of the group
//    and weighted by recency: window token t of W gets weight linspace(1, distance_weight)[t]
//    (distance_weight 1.2 as in the authors' code), so later queries count more. The protected
//    entries plus the top scorers are kept.
//  - Protection: the recent tokens themselves (the window, recent = W) and the first 4 tokens (the
//    authors' code keeps streamingllm_sink_len = 4 sinks).
// Run once after prefill, or by DecodeDriver during decoding (the paper compresses in both). Ties
// go to the earlier entry; kept entries are moved, never rewritten.
#pragma once

#include "simcalkv/budget_schedule.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <cmath>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct PyramidInferOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;        // -1: the window's length
  double decay = 0.9;            // per-layer keep-ratio decay of the geometric schedule
  double distance_weight = 1.2;  // weight of the newest window query relative to the oldest
};

class PyramidInfer : public StagedPolicy<PyramidInfer> {
 public:
  PyramidInfer() = default;
  explicit PyramidInfer(const PyramidInferOptions& options) : options_(options) {
    LayerSchedule::geometric(options.decay).validate();
    detail::require(std::isfinite(options.distance_weight) && options.distance_weight > 0.0,
                    ErrorCode::invalid_argument, "PyramidInfer: distance_weight must be positive, got ",
                    options.distance_weight);
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument,
                    "PyramidInfer: recent must be -1 or more");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "PyramidInfer"; }
  [[nodiscard]] const PyramidInferOptions& options() const noexcept { return options_; }
  [[nodiscard]] Protection protection(const WindowView& window) const noexcept {
    return make_protection(options_.sink_tokens, options_.recent_tokens, window.num_tokens);
  }

  template <StorageElement T>
  void check_request(const LayerRequest<T>& request) const {
    detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
                    "PyramidInfer: needs an observation window (the recent queries)");
  }

  /// Budgets: the geometric layer schedule applied to each head's base budget.
  template <StorageElement T>
  std::vector<std::size_t> schedule(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    return scheduled_budgets(LayerSchedule::geometric(options_.decay), request, base,
                             protection(request.window));
  }

  /// Score: window attention weighted by recency, linspace(1, distance_weight) over the window.
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

  /// PyramidInferOptions from a registry option string: sinks, recent, decay, distance_weight.
  static PyramidInferOptions read_options(PolicyOptions& o) {
    PyramidInferOptions options;
    read_protection(o, options);
    options.decay = o.get_double("decay", options.decay, 1e-6, 1.0);
    options.distance_weight = o.get_double("distance_weight", options.distance_weight, 1e-6, 1e6);
    return options;
  }

 private:
  PyramidInferOptions options_;
};

}  // namespace simcalkv
