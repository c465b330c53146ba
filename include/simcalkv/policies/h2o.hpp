// simcalkv: H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
// Large Language Models", NeurIPS 2023), an eviction baseline.
//
// The rule, per head with budget B: keep the R most recent entries and the B - R "heavy hitters",
// the entries with the largest accumulated attention a_j (the sum, over every query seen so far,
// of the entry's softmax probability, averaged over the G query heads of the group). It is greedy:
// run after every decode step (e.g. by DecodeDriver with zero slack) it evicts the one entry with
// the smallest a_j outside the recent part. Defaults follow the paper: R = B / 2 (its equal
// heavy-hitter and recent budgets), and docs/algorithms.md's four sinks are protected (sinks=0 gives
// the paper's rule exactly; the first tokens are heavy hitters anyway).
//
// Where a_j comes from:
//  - head.scores, when the head has a score buffer holding anything nonzero: the paper's rule. The
//    host accumulates it over every prefill query and every decode step (its attention with
//    AttentionOptions::accumulate_scores; block_attention weighs each token's group-mean
//    probability 1, as a decode step does). H2O says so (reads_accumulated_scores, and
//    AnyPolicy::reads_accumulated_scores), and the engine, simcalkv-eval and simcalkv-perplexity
//    keep score buffers for it.
//  - otherwise (no buffer, or all zeros: a host that keeps no scores) the observation window's
//    attention: a_j = sum over the W window queries of the mean over the group of softmax_j, i.e.
//    the accumulated attention of those W queries. With seed_scores (default) the kept entries'
//    head.scores are then set to these values, so accumulation continues from the prefill's
//    evidence. That write happens after the (failure-free) commit and touches only the scores;
//    keys, values, biases and positions of kept entries are moved bit for bit.
// A head with neither source is an error. Ties go to the earlier entry.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv {

struct H2OOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;   // R; -1: half of each head's budget (the paper's split)
  bool seed_scores = true;  // write window-derived scores into head.scores when falling back
};

class H2O : public StagedPolicy<H2O> {
 public:
  H2O() = default;
  explicit H2O(const H2OOptions& options) : options_(options) {
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument, "H2O: recent must be -1 or more");
  }

  /// Selects by head.scores, accumulated by the host over all its queries (see above).
  static constexpr bool reads_accumulated_scores = true;
  [[nodiscard]] std::string_view name() const noexcept { return "H2O"; }
  [[nodiscard]] const H2OOptions& options() const noexcept { return options_; }
  /// Entries every budget must keep: the sinks and a fixed recent count (a budget-relative recent
  /// part, the default, is carved out of each head's budget instead).
  [[nodiscard]] Protection protection(const WindowView& /*window*/) const noexcept {
    return Protection{options_.sink_tokens,
                      options_.recent_tokens >= 0 ? static_cast<std::size_t>(options_.recent_tokens) : 0};
  }
  /// The recent part R of a head whose budget is `budget` (never crowding out the sinks).
  [[nodiscard]] std::size_t recent_for(std::size_t budget, std::size_t length) const noexcept {
    const std::size_t r = options_.recent_tokens >= 0 ? static_cast<std::size_t>(options_.recent_tokens) : budget / 2;
    const std::size_t sinks = std::min({options_.sink_tokens, budget, length});
    return std::min(r, budget - sinks);
  }

  /// Protection at a given budget: the sinks and the budget's recent part.
  [[nodiscard]] Protection protection_for(const WindowView& /*window*/, std::size_t budget,
                                          std::size_t length) const noexcept {
    return Protection{options_.sink_tokens, recent_for(budget, length)};
  }

  /// Score: the accumulated attention in head.scores, or, when the cache has none yet, the
  /// window's attention summed over its W tokens (the unit decode-time accumulation adds in).
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const std::size_t n = head.length;
    if (has_accumulated(head)) {
      for (std::size_t j = 0; j < n; ++j)
        detail::require(std::isfinite(head.scores[j]), ErrorCode::non_finite, name(), ": KV head ", ctx.kv_head,
                        ": accumulated score of entry ", j, " is NaN or Inf");
      s.selection_score.assign(head.scores, head.scores + n);
      return;
    }
    detail::require(ctx.window.num_tokens > 0, ErrorCode::invalid_argument, name(), ": KV head ", ctx.kv_head,
                    " has no accumulated scores (", head.scores ? "all zero" : "no score buffer",
                    ") and there is no observation window to fall back on");
    kernels::load_keys(head, s);
    kernels::score_window(head, ctx.window, ctx.kv_head, ctx.group, s);
    // s.score is the mean over the W*G rows; W times it is the sum over the W window tokens of
    // the group-mean probability.
    s.selection_score.assign(s.score.begin(), s.score.end());
    kernels::scale(static_cast<float>(ctx.window.num_tokens), s.selection_score.data(), n);
  }

  /// Evicts; when the scores came from the window, the kept entries take them as their
  /// accumulated scores (seed_scores), so decoding accumulates from there.
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    s.plan.set_keep(s.selection.keep, ctx.head.length);
    s.plan.evicted = s.selection.removed.size();
    if (!options_.seed_scores || !ctx.head.scores || has_accumulated(ctx.head)) return;
    s.plan.slot_scores.resize(s.selection.keep.size());
    for (std::size_t k = 0; k < s.selection.keep.size(); ++k) s.plan.slot_scores[k] = s.selection_score[s.selection.keep[k]];
    s.plan.identity = false;
  }

  /// H2OOptions from a registry option string: sinks, recent, seed_scores.
  static H2OOptions read_options(PolicyOptions& o) {
    H2OOptions options;
    read_protection(o, options);
    options.seed_scores = o.get_bool("seed_scores", options.seed_scores);
    return options;
  }

 private:
  template <StorageElement T>
  static bool has_accumulated(const HeadView<T>& head) noexcept {
    return head.scores && std::any_of(head.scores, head.scores + head.length, [](float a) { return a != 0.0f; });
  }

  H2OOptions options_;
};

}  // namespace simcalkv
