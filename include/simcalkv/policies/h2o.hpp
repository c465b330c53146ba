// simcalkv: H2O (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
// Large Language Models", NeurIPS 2023), an eviction baseline.
//
// The rule, per head with budget B: keep the R most recent entries and the B - R "heavy hitters",
// the entries with the largest accumulated attention a_j (the sum, over every query seen so far,
// of the entry's softmax probability, averaged over the G query heads of the group). It is greedy:
// run after every decode step (e.g. by DecodeDriver with zero slack) it evicts the one entry with
// the smallest a_j outside the recent part. Defaults follow the paper: R = B / 2 (its equal
// heavy-hitter and recent budgets), and ALGORITHMS.md's four sinks are protected (sinks=0 gives
// the paper's rule exactly; the first tokens are heavy hitters anyway).
//
// Where a_j comes from:
//  - head.scores, when the head has a score buffer holding anything nonzero. The host accumulates
//    it during decode (decode_attention with AttentionOptions::accumulate_scores) and, ideally,
//    during prefill.
//  - otherwise (no buffer, or all zeros, e.g. right after prefill) the observation window's
//    attention: a_j = sum over the W window queries of the mean over the group of softmax_j, i.e.
//    the accumulated attention of those W queries. With seed_scores (default) the kept entries'
//    head.scores are then set to these values, so accumulation continues from the prefill's
//    evidence. That write happens after the (failure-free) commit and touches only the scores;
//    keys, values, biases and positions of kept entries are moved bit for bit.
// A head with neither source is an error. Ties go to the earlier entry.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/policy.hpp"
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

class H2O : public UniformBudgets<H2O> {
 public:
  H2O() = default;
  explicit H2O(const H2OOptions& options) : options_(options) {
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument, "H2O: recent must be -1 or more");
  }

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

  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> budgets) const {
    const int group = request.group_size();
    std::vector<char> seeded(request.heads.size(), 0);
    const auto stats = run_compression(
        request, workspace, name(), budgets, protection(request.window),
        [&](std::size_t h, const HeadView<T>& head, std::size_t budget, HeadScratch& s) {
          seeded[h] = plan_head(head, static_cast<int>(h), group, budget, request.window, s) ? 1 : 0;
        });
    // Committed: give the kept entries the window's accumulated attention (cannot fail).
    for (std::size_t h = 0; h < request.heads.size(); ++h) {
      if (!seeded[h]) continue;
      const HeadView<T>& head = request.heads[h];
      const HeadScratch& s = workspace.head(h);
      for (std::size_t slot = 0; slot < s.plan.keep.size(); ++slot) head.scores[slot] = s.similarity[s.plan.keep[slot]];
    }
    return stats;
  }

  /// Plans one head into s.plan. Returns true when the scores came from the window and should be
  /// seeded into head.scores (s.similarity holds them, by original index).
  template <StorageElement T>
  bool plan_head(const HeadView<T>& head, int kv_head, int group, std::size_t budget, const WindowView& window,
                 HeadScratch& s) const {
    const std::size_t n = head.length;
    const float* score = nullptr;
    bool from_window = false;
    if (head.scores && std::any_of(head.scores, head.scores + n, [](float a) { return a != 0.0f; })) {
      for (std::size_t j = 0; j < n; ++j)
        detail::require(std::isfinite(head.scores[j]), ErrorCode::non_finite, name(), ": KV head ", kv_head,
                        ": accumulated score of entry ", j, " is NaN or Inf");
      score = head.scores;
    } else {
      detail::require(window.num_tokens > 0, ErrorCode::invalid_argument, name(), ": KV head ", kv_head,
                      " has no accumulated scores (", head.scores ? "all zero" : "no score buffer",
                      ") and there is no observation window to fall back on");
      kernels::load_keys(head, s);
      kernels::score_window(head, window, kv_head, group, s);
      // s.score is the mean over the W*G rows; W times it is the sum over the W window tokens of
      // the group-mean probability, the unit decode-time accumulation adds in.
      s.similarity.assign(s.score.begin(), s.score.end());
      kernels::scale(static_cast<float>(window.num_tokens), s.similarity.data(), n);
      score = s.similarity.data();
      from_window = true;
    }
    const Protection p{options_.sink_tokens, recent_for(budget, n)};
    kernels::select_top(score, n, budget, p, s.indices, s.indices2);
    s.plan.set_keep(s.indices, n);
    s.plan.evicted = n - s.indices.size();
    return from_window && options_.seed_scores && head.scores;
  }

  /// H2OOptions from a registry option string: sinks, recent, seed_scores.
  static H2OOptions read_options(PolicyOptions& o) {
    H2OOptions options;
    options.sink_tokens = static_cast<std::size_t>(o.get_int("sinks", static_cast<long long>(options.sink_tokens)));
    options.recent_tokens = static_cast<int>(o.get_int("recent", options.recent_tokens, -1, 1LL << 30));
    options.seed_scores = o.get_bool("seed_scores", options.seed_scores);
    return options;
  }

 private:
  H2OOptions options_;
};

}  // namespace simcalkv
