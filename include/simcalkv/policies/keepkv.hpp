// simcalkv: KeepKV (Tian et al., "KeepKV: Achieving Periodic Lossless KV Cache Compression for
// Efficient LLM Inference", arXiv 2504.09936 / AAAI 2026), a merging baseline.
//
// The rule, per head and per call:
//  1. Scores: an exponential moving average of the window's attention, queries taken in order
//     (KeepKV Eq. 8 with bias correction): with window queries t = 0..W-1 (oldest first) and
//     a_j(t) the attention of entry j under query t, averaged over the G query heads of the group,
//         s_j = sum_t (1 - alpha) alpha^(W-1-t) a_j(t) / (1 - alpha^W).
//     One query (W = 1) gives that query's attention, so the policy runs at every decode step.
//  2. Keep set: the protected entries plus the highest-scoring others, up to the budget.
//  3. Each removed entry goes to its most cosine-similar kept key; it merges there when that
//     similarity is at least the threshold T (paper default 0.8), otherwise it is evicted.
//  4. Electoral votes: an entry standing for p tokens carries the logit bias log p (a fresh token
//     has p = 1, bias 0), so it weighs like p copies. A merged entry's votes add up:
//         b' = log sum_i exp(b_i)                       (log of the summed votes)
//     and its key and value are mass-weighted, w_i = s_i, which already includes exp(b_i) = p_i
//     because the scores are taken with the biases (the paper's w = p * s):
//         k' = sum_i w_i k_i / sum_i w_i,   v' = sum_i w_i v_i / sum_i w_i.
//
// Departure from the paper, on purpose: ZIP-Merging also rescales k' (by ln(mean score) over the
// w-weighted mean of ln s_i) so that one query's logit of k' is exact. That factor is fitted to a
// single step, divides by a weighted mean of log scores that vanishes as scores approach 1, and
// docs/algorithms.md specifies the mass-weighted key; the votes already restore the set's weight.
// Sources of the defaults: T = 0.8 (paper §4.1, "we set the merging threshold T to 0.8"; also
// the authors' code, sketch_similarity_threshold = 0.8). The EMA factor alpha is not stated in
// the paper's main text; alpha = 0.9 is our choice (an effective memory of about ten queries,
// inside the default 32-query window). Search is exact, as the paper's cosine matrix is.
#pragma once

#include "simcalkv/kernels/merge.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/similarity.hpp"
#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/policies/match.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <cmath>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct KeepKVOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: as many as the window has queries
  /// Cosine similarity a removed entry needs with its best kept key to merge (paper: T = 0.8).
  float similarity_threshold = 0.8f;
  /// EMA factor over the window's queries, in [0, 1): 0 scores by the newest query alone.
  float ema_alpha = 0.9f;
  SimilaritySearch search = SimilaritySearch::exact;
  std::size_t search_radius = 64;  // for SimilaritySearch::local
};

namespace detail {

/// KeepKV's bias-corrected EMA of the window attention (file comment, step 1) into `out` [n].
/// Needs score_window to have run on `s` (its probabilities and row sums).
inline void keepkv_ema_scores(const HeadScratch& s, std::size_t n, int group, int window_tokens, float alpha,
                              std::vector<float>& out) {
  out.assign(n, 0.0f);
  if (window_tokens <= 0 || group <= 0 || n == 0) return;
  const auto W = static_cast<std::size_t>(window_tokens);
  const double a = alpha;
  const double correction = 1.0 - std::pow(a, static_cast<double>(W));
  for (std::size_t t = 0; t < W; ++t) {
    const double c = (1.0 - a) * std::pow(a, static_cast<double>(W - 1 - t)) / correction;
    if (c == 0.0) continue;
    for (int g = 0; g < group; ++g) {
      const std::size_t r = static_cast<std::size_t>(g) * W + t;
      if (!(s.row_sum[r] > 0.0f)) continue;  // the query sees no entry
      const double scale = c / (static_cast<double>(group) * static_cast<double>(s.row_sum[r]));
      kernels::axpy(static_cast<float>(scale), s.probs.data() + r * n, out.data(), n);
    }
  }
}

}  // namespace detail

class KeepKV : public StagedPolicy<KeepKV> {
 public:
  KeepKV() = default;
  explicit KeepKV(const KeepKVOptions& options) : options_(options) {
    detail::require(std::isfinite(options.ema_alpha) && options.ema_alpha >= 0.0f && options.ema_alpha < 1.0f,
                    ErrorCode::invalid_argument, "KeepKV: EMA factor must be in [0, 1), got ", options.ema_alpha);
    detail::require(!std::isnan(options.similarity_threshold), ErrorCode::invalid_argument,
                    "KeepKV: similarity threshold is NaN");
    detail::require(options.search_radius > 0, ErrorCode::invalid_argument, "KeepKV: search radius must be positive");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "KeepKV"; }
  [[nodiscard]] const KeepKVOptions& options() const noexcept { return options_; }

  static constexpr bool needs_window = true;

  /// Score: the bias-corrected EMA of the window attention; the merge weights are the same scores.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    detail::keepkv_ema_scores(s, ctx.head.length, ctx.group, ctx.window.num_tokens, options_.ema_alpha,
                              s.selection_score);
    s.mass = s.selection_score;  // merge weights w = p * s: the EMA scores, votes included through the bias
  }

  /// Match (nearest kept key above the threshold) and Merge (log-count bias).
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    match_removed(static_cast<std::size_t>(ctx.head.head_dim), options_.search, options_.search_radius, s);
    drop_matches_below(options_.similarity_threshold, s.matching);
    kernels::merge_into_plan(ctx.head, s, s.selection, s.matching, kernels::MergeOptions{BiasMode::log_count, true},
                             s.plan);
  }

  /// KeepKVOptions from a registry option string: sinks, recent, threshold, ema, search, radius.
  static KeepKVOptions read_options(PolicyOptions& o) {
    KeepKVOptions k;
    read_protection(o, k);
    k.similarity_threshold = static_cast<float>(o.get_double("threshold", k.similarity_threshold, -INFINITY, 1.0));
    k.ema_alpha = static_cast<float>(o.get_double("ema", k.ema_alpha, 0.0, 0.999999));
    read_search(o, k);
    return k;
  }

 private:
  KeepKVOptions options_;
};

}  // namespace simcalkv
