// simcalkv: KeepKV (Tian et al., "KeepKV: Achieving Periodic Lossless KV Cache Compression for
// Efficient LLM Inference", arXiv 2504.09936 / AAAI 2026), a merging baseline.
//
// The rule, per head and per call, as the authors' code runs it (kkvcache/KeepKV,
// modify_llama_oursk.py in utils_hh, KV_update):
//  1. Scores, without the votes: a_j(t) is entry j's attention under window query t with the
//     vote bias left out (the code scores with exp(q.k / sqrt(d)), before adding log(count)),
//     averaged over the G query heads of the group. The selection score weighs the W queries by
//     recency, linspace(1, distance_weight) oldest to newest (distance_weight 1.2):
//         s_j = sum_t lin_t a_j(t).
//     So merging never raises an entry's own retention: the votes stay out of the selection.
//  2. Keep set: the protected entries plus the highest-scoring others, up to the budget.
//  3. Each removed entry goes to its most cosine-similar kept key; it merges there when that
//     similarity is at least the threshold T (0.8), otherwise it is evicted.
//  4. Electoral votes: an entry standing for p tokens carries the logit bias log p (a fresh
//     token has p = 1, bias 0). Merged, the votes add (b' = log sum_i exp(b_i)), and key and
//     value are averaged with weights w_i = p_i * m_i, m_i the mean of a_i(t) over the window
//     queries that can see entry i (the code's window mean times its recent-entry correction
//     R / (R - i) for the i-th of the R recent entries, which fewer queries see):
//         k' = sum_i w_i k_i / sum_i w_i,   v' = sum_i w_i v_i / sum_i w_i.
// Departures, on purpose: the code's rows are unnormalised exp(q.k / sqrt(d)); we normalise each
// query's row over the entries it sees (a softmax without the votes), so one query's scale does
// not outweigh the others'. The code's recent span is a ratio of the prompt scored by as many
// recent queries; here the recent span is the observation window (recent = W) and its W queries
// score. ZIP-Merging's rescaling of k' (fitted to one query) is not applied: the votes restore
// the set's weight. Defaults: T = 0.8 (sketch_similarity_threshold), distance_weight 1.2
// (pyramidinfer_distance_weight), 4 sinks (pyramidinfer_sink_len). Search: the code compares
// every removed key with every kept one (a full cosine matrix, quadratic in the context); by
// default we search the 64 kept entries nearest in position on each side, as SimCalKV does
// (docs/algorithms.md: neighbouring keys are the most alike), which keeps compression linear;
// search=exact gives the code's matrix.
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
  /// Weight of the newest window query relative to the oldest in the selection score.
  float distance_weight = 1.2f;
  SimilaritySearch search = SimilaritySearch::local;  // exact: the code's full cosine matrix
  std::size_t search_radius = 64;  // for SimilaritySearch::local
};

namespace detail {

/// KeepKV's scores (file comment, steps 1 and 4) from score_window's rows in `s`: `selection`
/// the recency-weighted attention without the votes, `weight` the merge weights p_j * m_j.
template <StorageElement T>
void keepkv_scores(const HeadView<T>& head, const HeadScratch& s, int group, int window_tokens, float distance_weight,
                   std::vector<float>& selection, std::vector<float>& weight) {
  const std::size_t n = head.length;
  selection.assign(n, 0.0f);
  weight.assign(n, 0.0f);
  if (window_tokens <= 0 || group <= 0 || n == 0) return;
  const auto W = static_cast<std::size_t>(window_tokens);
  std::vector<float> unbias(n);  // exp(-b_j): the votes out of the logits
  for (std::size_t j = 0; j < n; ++j) unbias[j] = std::exp(-head.bias[j]);
  std::vector<double> mean(n, 0.0);
  std::vector<float> row(n);
  for (std::size_t r = 0; r < s.row_positions.size(); ++r) {
    const float* p = s.probs.data() + r * n;
    double z = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
      row[j] = p[j] * unbias[j];
      z += row[j];
    }
    if (!(z > 0.0)) continue;  // the query sees no entry
    const std::size_t t = r % W;
    const double lin = W > 1 ? 1.0 + (distance_weight - 1.0) * static_cast<double>(t) / static_cast<double>(W - 1) : 1.0;
    const double unit = 1.0 / (static_cast<double>(group) * z);
    kernels::axpy(static_cast<float>(lin * unit), row.data(), selection.data(), n);
    for (std::size_t j = 0; j < n; ++j) mean[j] += unit * row[j];
  }
  // m_j: the mean over the window tokens that see entry j; times p_j = exp(b_j).
  for (std::size_t j = 0; j < n; ++j) {
    std::size_t seen = 0;
    for (std::size_t t = 0; t < W; ++t) seen += s.row_positions[t] >= head.positions[j] ? 1 : 0;
    weight[j] = seen ? static_cast<float>(mean[j] / static_cast<double>(seen) / unbias[j]) : 0.0f;
  }
}

}  // namespace detail

class KeepKV : public StagedPolicy<KeepKV> {
 public:
  KeepKV() = default;
  explicit KeepKV(const KeepKVOptions& options) : options_(options) {
    detail::require(std::isfinite(options.distance_weight) && options.distance_weight > 0.0f,
                    ErrorCode::invalid_argument, "KeepKV: distance_weight must be positive, got ",
                    options.distance_weight);
    detail::require(!std::isnan(options.similarity_threshold), ErrorCode::invalid_argument,
                    "KeepKV: similarity threshold is NaN");
    detail::require(options.search_radius > 0, ErrorCode::invalid_argument, "KeepKV: search radius must be positive");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "KeepKV"; }
  [[nodiscard]] const KeepKVOptions& options() const noexcept { return options_; }

  static constexpr bool needs_window = true;

  /// Score: recency-weighted window attention without the votes; the merge weights (votes times
  /// the window mean) go to s.mass for the Merge stage.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    std::vector<float> weight;
    detail::keepkv_scores(ctx.head, s, ctx.group, ctx.window.num_tokens, options_.distance_weight, s.selection_score,
                          weight);
    s.mass.swap(weight);
  }

  /// Match (nearest kept key above the threshold) and Merge (log-count bias).
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    match_removed(static_cast<std::size_t>(ctx.head.head_dim), options_.search, options_.search_radius, s);
    drop_matches_below(options_.similarity_threshold, s.matching);
    kernels::merge_into_plan(ctx.head, s, s.selection, s.matching, kernels::MergeOptions{BiasMode::log_count, true},
                             s.plan);
  }

  /// KeepKVOptions from a registry option string: sinks, recent, threshold, distance_weight, search, radius.
  static KeepKVOptions read_options(PolicyOptions& o) {
    KeepKVOptions k;
    read_protection(o, k);
    k.similarity_threshold = static_cast<float>(o.get_double("threshold", k.similarity_threshold, -INFINITY, 1.0));
    k.distance_weight = static_cast<float>(o.get_double("distance_weight", k.distance_weight, 1e-6, 1e6));
    read_search(o, k);
    return k;
  }

 private:
  KeepKVOptions options_;
};

}  // namespace simcalkv
