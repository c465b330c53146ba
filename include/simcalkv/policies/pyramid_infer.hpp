// simcalkv: PyramidInfer (Yang et al., "PyramidInfer: Pyramid KV Cache Compression for
// High-throughput LLM Inference", ACL Findings 2024), an eviction baseline.
//
// The rule:
//  - Budget by layer: the keep ratio shrinks geometrically with depth, LayerSchedule::geometric
//    (decay 0.9, the paper's prefill decay ratio): layer l's unprotected budget is proportional to
//    decay^l, scaled so the model keeps the same total as a uniform budget (see allocation.hpp).
//    compress() applies it to request.budget for request.layer of request.num_layers;
//    compress_with_budgets() applies it to the given per-head budgets.
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

#include "simcalkv/allocation.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policy.hpp"
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

class PyramidInfer : public UniformBudgets<PyramidInfer> {
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

  /// `base` are the heads' budgets before the geometric layer schedule.
  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> base) const {
    detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
                    "PyramidInfer: needs an observation window (the recent queries)");
    detail::require(base.size() == request.heads.size(), ErrorCode::invalid_argument, "PyramidInfer: ", base.size(),
                    " budgets for ", request.heads.size(), " heads");
    const Protection p = protection(request.window);
    const LayerSchedule schedule = LayerSchedule::geometric(options_.decay);
    std::vector<std::size_t> budgets(base.size());
    for (std::size_t h = 0; h < base.size(); ++h) {
      const std::size_t n = request.heads[h].length;
      budgets[h] = layer_budget(schedule, request.layer, request.num_layers, base[h], n, p.count(n));
    }
    const int group = request.group_size();
    return run_compression(request, workspace, name(), budgets, p,
                           [&](std::size_t h, const HeadView<T>& head, std::size_t budget, HeadScratch& s) {
                             plan_head(head, static_cast<int>(h), group, budget, p, request.window, s);
                           });
  }

  /// Plans one head into s.plan; leaves the selection score in s.similarity.
  template <StorageElement T>
  void plan_head(const HeadView<T>& head, int kv_head, int group, std::size_t budget, const Protection& protection,
                 const WindowView& window, HeadScratch& s) const {
    const std::size_t n = head.length;
    kernels::load_keys(head, s);
    kernels::score_window(head, window, kv_head, group, s);
    // Rows are (g, t) with r = g * W + t; row r's probabilities are s.probs[r] / s.row_sum[r].
    const auto W = static_cast<std::size_t>(window.num_tokens);
    const std::size_t R = s.row_positions.size();
    s.similarity.assign(n, 0.0f);
    for (std::size_t r = 0; r < R; ++r) {
      if (s.row_sum[r] <= 0.0f) continue;
      const std::size_t t = r % W;
      const double step = W > 1 ? static_cast<double>(t) / static_cast<double>(W - 1) : 0.0;
      const auto weight = static_cast<float>(1.0 + (options_.distance_weight - 1.0) * step);
      kernels::axpy(weight / (s.row_sum[r] * static_cast<float>(R)), s.probs.data() + r * n, s.similarity.data(), n);
    }
    kernels::select_top(s.similarity.data(), n, budget, protection, s.indices, s.indices2);
    s.plan.set_keep(s.indices, n);
    s.plan.evicted = n - s.indices.size();
  }

  /// PyramidInferOptions from a registry option string: sinks, recent, decay, distance_weight.
  static PyramidInferOptions read_options(PolicyOptions& o) {
    PyramidInferOptions options;
    options.sink_tokens = static_cast<std::size_t>(o.get_int("sinks", static_cast<long long>(options.sink_tokens)));
    options.recent_tokens = static_cast<int>(o.get_int("recent", options.recent_tokens, -1, 1LL << 30));
    options.decay = o.get_double("decay", options.decay, 1e-6, 1.0);
    options.distance_weight = o.get_double("distance_weight", options.distance_weight, 1e-6, 1e6);
    return options;
  }

 private:
  PyramidInferOptions options_;
};

}  // namespace simcalkv
