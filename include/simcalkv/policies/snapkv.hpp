// simcalkv: SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation",
// 2024), an eviction baseline.
//
// The rule, per head: score every entry by its mean attention under the observation window (the
// last W queries of each of the G query heads of the group, causal, bias included), smooth the
// scores by 1-D pooling over neighbouring positions (the clustering step; kernel 7, max pooling by
// default, as AdaKV's SnapKV runs it), and keep the protected entries plus the top scorers up to
// the budget. Pooling covers only the prefix before the recent entries, as the paper pools
// attn[..., -W:, :-W]. The window's own entries are the recent ones and are always kept (recent =
// W by default); docs/algorithms.md's four sinks are protected too (set sinks=0 for the paper's rule,
// under which they survive anyway on their scores). Ties go to the earlier entry. Kept entries are
// moved, never rewritten.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/stages.hpp"
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

class SnapKV : public StagedPolicy<SnapKV> {
 public:
  SnapKV() = default;
  explicit SnapKV(const SnapKVOptions& options) : options_(options) {
    detail::require(options.pool_kernel > 0, ErrorCode::invalid_argument, "SnapKV: pool kernel must be positive");
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument, "SnapKV: recent must be -1 or more");
  }

  static constexpr bool needs_window = true;
  [[nodiscard]] std::string_view name() const noexcept { return "SnapKV"; }
  [[nodiscard]] const SnapKVOptions& options() const noexcept { return options_; }
  [[nodiscard]] Protection protection(const WindowView& window) const noexcept {
    return make_protection(options_.sink_tokens, options_.recent_tokens, window.num_tokens);
  }

  /// Score: window attention, pooled over the entries before the recent ones. Eviction only:
  /// kept entries are moved, never rewritten.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    detail::pooled_prefix_scores(s.score, ctx.head.length, protection(ctx.window).recent, options_.pooling,
                                 options_.pool_kernel, s.selection_score);
  }

  /// SnapKVOptions from a registry option string: sinks, recent, pooling, pool_kernel.
  static SnapKVOptions read_options(PolicyOptions& o) {
    SnapKVOptions options;
    read_protection(o, options);
    options.pooling = detail::read_pooling(o, options.pooling);
    options.pool_kernel = static_cast<int>(o.get_int("pool_kernel", options.pool_kernel, 1, 1025));
    return options;
  }

 private:
  SnapKVOptions options_;
};

}  // namespace simcalkv
