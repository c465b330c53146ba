// simcalkv: SimCalKV, similarity-aware merging with bias calibration (the flagship policy).
//
// Per head: score entries by window attention (GQA group aggregated, bias included), keep the
// protected entries and the top scorers up to the budget, send every other entry to its most
// cosine-similar survivor, merge each set with mass weights, and give the merged entry a logit
// bias so it keeps the set's share of attention. See docs/algorithms.md.
#pragma once

#include "simcalkv/kernels/merge.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/similarity.hpp"
#include "simcalkv/policies/match.hpp"
#include "simcalkv/stages.hpp"

#include <limits>
#include <string_view>

namespace simcalkv {

struct SimCalKVOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: as many as the window has queries
  kernels::Pooling pooling = kernels::Pooling::none;
  int pool_kernel = 7;
  SimilaritySearch search = SimilaritySearch::local;
  std::size_t search_radius = 64;
  /// Candidates whose best cosine similarity is below this are evicted instead of merged.
  float similarity_threshold = -std::numeric_limits<float>::infinity();
  BiasMode bias = BiasMode::bounded;
  bool merge_keys = true;
};

class SimCalKV : public StagedPolicy<SimCalKV> {
 public:
  SimCalKV() = default;
  explicit SimCalKV(const SimCalKVOptions& options) : options_(options) {
    detail::require(options.search_radius > 0, ErrorCode::invalid_argument, "SimCalKV: search radius must be positive");
    detail::require(options.pool_kernel > 0, ErrorCode::invalid_argument, "SimCalKV: pool kernel must be positive");
    detail::require(!std::isnan(options.similarity_threshold), ErrorCode::invalid_argument,
                    "SimCalKV: similarity threshold is NaN");
  }

  static constexpr bool needs_window = true;
  [[nodiscard]] std::string_view name() const noexcept { return "SimCalKV"; }
  [[nodiscard]] const SimCalKVOptions& options() const noexcept { return options_; }

  /// Score: window attention, pooled if asked. Leaves keys, probabilities and masses in s.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    s.selection_score.resize(ctx.head.length);
    if (options_.pooling != kernels::Pooling::none)
      kernels::pool_scores(s.score.data(), s.selection_score.data(), ctx.head.length, options_.pooling,
                           options_.pool_kernel);
    else
      std::copy(s.score.begin(), s.score.end(), s.selection_score.begin());
  }

  /// Match (nearest kept key) and Merge (mass-weighted, calibrated bias).
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    match_removed(static_cast<std::size_t>(ctx.head.head_dim), options_.search, options_.search_radius, s);
    drop_matches_below(options_.similarity_threshold, s.matching);
    kernels::merge_into_plan(ctx.head, s, s.selection, s.matching,
                             kernels::MergeOptions{options_.bias, options_.merge_keys}, s.plan);
  }

 private:
  SimCalKVOptions options_;
};

}  // namespace simcalkv
