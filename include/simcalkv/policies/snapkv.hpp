// simcalkv: SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation",
// 2024), an eviction baseline.
//
// The rule, per head: score every entry by its mean attention under the observation window (the
// last W queries of each of the G query heads of the group, causal, bias included), smooth the
// scores by 1-D pooling over neighbouring positions (the clustering step; kernel 7, max pooling by
// default, as AdaKV's SnapKV runs it), and keep the protected entries plus the top scorers up to
// the budget. Pooling covers only the prefix before the recent entries, as the paper pools
// attn[..., -W:, :-W]. The window's own entries are the recent ones and are always kept (recent =
// W by default); ALGORITHMS.md's four sinks are protected too (set sinks=0 for the paper's rule,
// under which they survive anyway on their scores). Ties go to the earlier entry. Kept entries are
// moved, never rewritten.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policy.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct SnapKVOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length (SnapKV keeps its observation window)
  kernels::Pooling pooling = kernels::Pooling::max;
  int pool_kernel = 7;
};

namespace detail {

/// SnapKV's selection score: window scores (s.score) pooled over the entries before the `recent`
/// most recent ones, which keep their raw scores. Writes out[0..n).
inline void pooled_prefix_scores(const std::vector<float>& score, std::size_t n, std::size_t recent,
                                 kernels::Pooling pooling, int kernel, std::vector<float>& out) {
  out.resize(n);
  const std::size_t prefix = n - std::min(n, recent);
  kernels::pool_scores(score.data(), out.data(), prefix, pooling, kernel);
  std::copy(score.begin() + static_cast<std::ptrdiff_t>(prefix), score.begin() + static_cast<std::ptrdiff_t>(n),
            out.begin() + static_cast<std::ptrdiff_t>(prefix));
}

inline kernels::Pooling read_pooling(PolicyOptions& o, kernels::Pooling fallback) {
  const char* names[] = {"none", "max", "avg"};
  const auto value = o.get_choice("pooling", names[static_cast<int>(fallback)], {"none", "max", "avg"});
  return value == "max" ? kernels::Pooling::max : value == "avg" ? kernels::Pooling::avg : kernels::Pooling::none;
}

}  // namespace detail

class SnapKV : public UniformBudgets<SnapKV> {
 public:
  SnapKV() = default;
  explicit SnapKV(const SnapKVOptions& options) : options_(options) {
    detail::require(options.pool_kernel > 0, ErrorCode::invalid_argument, "SnapKV: pool kernel must be positive");
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument, "SnapKV: recent must be -1 or more");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "SnapKV"; }
  [[nodiscard]] const SnapKVOptions& options() const noexcept { return options_; }
  [[nodiscard]] Protection protection(const WindowView& window) const noexcept {
    return make_protection(options_.sink_tokens, options_.recent_tokens, window.num_tokens);
  }

  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> budgets) const {
    return compress_as(name(), request, workspace, budgets);
  }

  /// compress_with_budgets under another policy name (PyramidKV runs SnapKV's selection).
  template <StorageElement T>
  CompressionStats compress_as(std::string_view policy, const LayerRequest<T>& request, Workspace& workspace,
                               std::span<const std::size_t> budgets) const {
    detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument, policy,
                    ": needs an observation window (no window queries given)");
    const Protection p = protection(request.window);
    const int group = request.group_size();
    return run_compression(request, workspace, policy, budgets, p,
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
    detail::pooled_prefix_scores(s.score, n, protection.recent, options_.pooling, options_.pool_kernel, s.similarity);
    kernels::select_top(s.similarity.data(), n, budget, protection, s.indices, s.indices2);
    s.plan.set_keep(s.indices, n);
    s.plan.evicted = n - s.indices.size();
  }

  /// SnapKVOptions from a registry option string: sinks, recent, pooling, pool_kernel.
  static SnapKVOptions read_options(PolicyOptions& o) {
    SnapKVOptions options;
    options.sink_tokens = static_cast<std::size_t>(o.get_int("sinks", static_cast<long long>(options.sink_tokens)));
    options.recent_tokens = static_cast<int>(o.get_int("recent", options.recent_tokens, -1, 1LL << 30));
    options.pooling = detail::read_pooling(o, options.pooling);
    options.pool_kernel = static_cast<int>(o.get_int("pool_kernel", options.pool_kernel, 1, 1025));
    return options;
  }

 private:
  SnapKVOptions options_;
};

}  // namespace simcalkv
