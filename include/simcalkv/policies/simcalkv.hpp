// simcalkv: SimCalKV, similarity-aware merging with bias calibration (the flagship policy).
//
// Per head: score entries by window attention (GQA group aggregated, bias included), keep the
// protected entries and the top scorers up to the budget, send every other entry to its most
// cosine-similar survivor, merge each set with mass weights, and give the merged entry a logit
// bias so it keeps the set's share of attention. See ALGORITHMS.md.
#pragma once

#include "simcalkv/kernels/merge.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/similarity.hpp"
#include "simcalkv/policies/match.hpp"
#include "simcalkv/policy.hpp"

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

class SimCalKV : public UniformBudgets<SimCalKV> {
 public:
  SimCalKV() = default;
  explicit SimCalKV(const SimCalKVOptions& options) : options_(options) {
    detail::require(options.search_radius > 0, ErrorCode::invalid_argument, "SimCalKV: search radius must be positive");
    detail::require(options.pool_kernel > 0, ErrorCode::invalid_argument, "SimCalKV: pool kernel must be positive");
    detail::require(!std::isnan(options.similarity_threshold), ErrorCode::invalid_argument,
                    "SimCalKV: similarity threshold is NaN");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "SimCalKV"; }
  [[nodiscard]] const SimCalKVOptions& options() const noexcept { return options_; }

  /// For budget allocators (AdaKV) that give heads different budgets.
  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> budgets) const {
    return compress_heads_with_window(*this, request, workspace, budgets, options_.sink_tokens, options_.recent_tokens);
  }

  /// Plans one head into s.plan; public so per-head allocators and tools can reuse it.
  template <StorageElement T>
  void plan_head(const HeadView<T>& head, int kv_head, int group, std::size_t budget, const Protection& protection,
                 const WindowView& window, HeadScratch& s) const {
    kernels::load_keys(head, s);
    kernels::score_window(head, window, kv_head, group, s);
    const float* selection_score = s.score.data();
    if (options_.pooling != kernels::Pooling::none) {
      s.similarity.resize(head.length);
      kernels::pool_scores(s.score.data(), s.similarity.data(), head.length, options_.pooling, options_.pool_kernel);
      selection_score = s.similarity.data();
    }
    select_and_match(selection_score, head.length, static_cast<std::size_t>(head.head_dim), budget, protection,
                     options_.search, options_.search_radius, s);
    for (std::size_t c = 0; c < s.assignment.size(); ++c)
      if (s.similarity[c] < options_.similarity_threshold) s.assignment[c] = -1;
    kernels::merge_into_plan(head, s, s.indices, s.indices2, s.assignment,
                             kernels::MergeOptions{options_.bias, options_.merge_keys}, s.plan);
  }

 private:
  SimCalKVOptions options_;
};

}  // namespace simcalkv
