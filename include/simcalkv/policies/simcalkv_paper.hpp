// simcalkv: SimCalKV-paper, the merging rule of the SimCalKV paper's own code
// (William-kaihhu/SimCalKV, task_evaluation/llama/merge_ours.py: divide_by_layer, merge_KV_unified,
// merge_by_token), beside our SimCalKV (policies/simcalkv.hpp), so the two can be compared.
//
// The rule, per KV head with budget B:
//  1. Score: each entry's attention summed over every prefill query (the code's column sums of
//     the head's n x n attention matrix), here head.scores as the host accumulates them (this
//     policy says reads_accumulated_scores, so the engine and the tools keep score buffers for
//     it). A head without accumulated scores falls back on the observation window's attention.
//  2. Select: the B highest scorers survive; nothing is protected (no sinks, no recent window).
//  3. Match: each removed entry e goes to the survivor c of highest cosine similarity, exact
//     search; it merges only when that similarity is above 0 (sim_thr = 0), else it is evicted.
//  4. Merge, for a survivor c receiving the set E_c:
//       key   k' = (mean_{e in E_c} k_e + k_c) / 2         (merge_by_token, the code's key rule)
//       value v' = (sum_e w_e v_e + w_c v_c) / (sum_e w_e + w_c),   w_i = exp(q_t . k_i / sqrt(d))
//       bias  b' = b_c + ln 2                                (the code's constant ln 2)
//     with q_t the newest prompt query.
// Where we depart from the code, on purpose (docs/algorithms.md, "SimCalKV-paper"):
//  - ln 2 is a logit bias of the merged entry. The code adds ln 2 to every component of the key
//    vector, which shifts the logit by ln 2 * sum(q) / sqrt(d) instead of ln 2.
//  - GQA: the code pairs KV head h with query head h. Here KV head h's scores and weights come
//    from its own group of G query heads: w_i sums exp(logit - max) over the group's newest
//    queries (kernels::score_window's masses), its scores are the group-mean probabilities.
//  - Positions: the merged entry keeps the survivor's original position (the code's harness
//    counts positions from the compressed length).
// Ties go to the earlier entry.
#pragma once

#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/policies/match.hpp"
#include "simcalkv/stages.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string_view>
#include <vector>

namespace simcalkv {

class SimCalKVPaper : public StagedPolicy<SimCalKVPaper> {
 public:
  /// Selects by head.scores, accumulated by the host over all its prefill queries.
  static constexpr bool reads_accumulated_scores = true;
  static constexpr bool needs_window = true;  // the newest query weighs the values
  [[nodiscard]] std::string_view name() const noexcept { return "SimCalKV-paper"; }
  [[nodiscard]] Protection protection(const WindowView&) const noexcept { return Protection{0, 0}; }

  /// Score: accumulated attention (head.scores), else the window's; the keys are widened for Match.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const std::size_t n = head.length;
    kernels::load_keys(head, s);
    if (head.scores && std::any_of(head.scores, head.scores + n, [](float a) { return a != 0.0f; })) {
      for (std::size_t j = 0; j < n; ++j)
        detail::require(std::isfinite(head.scores[j]), ErrorCode::non_finite, name(), ": KV head ", ctx.kv_head,
                        ": accumulated score of entry ", j, " is NaN or Inf");
      s.selection_score.assign(head.scores, head.scores + n);
      return;
    }
    kernels::score_window(head, ctx.window, ctx.kv_head, ctx.group, s);
    s.selection_score.assign(s.score.begin(), s.score.end());
  }

  /// Match (exact, cosine above 0) and Merge (the code's key rule, newest-query value weights, ln 2).
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const auto d = static_cast<std::size_t>(head.head_dim);
    match_removed(d, SimilaritySearch::exact, 1, s);
    auto& target = s.matching.target;
    for (std::size_t c = 0; c < target.size(); ++c)
      if (!(s.matching.similarity[c] > 0.0f)) target[c] = -1;
    // The value weights: masses under the newest query of the group (s.mass after this call).
    kernels::score_window(head, newest_query(ctx.window), ctx.kv_head, ctx.group, s);

    const auto& keep = s.selection.keep;
    const auto& removed = s.selection.removed;
    HeadPlan& plan = s.plan;
    plan.set_keep(keep, head.length);
    std::vector<std::size_t> count(keep.size(), 0);
    for (std::size_t c = 0; c < removed.size(); ++c)
      if (target[c] >= 0) ++count[static_cast<std::size_t>(target[c])];
    std::vector<float> value(d);
    std::vector<double> weight_sum;  // per row: w_c + sum of w_e
    for (std::size_t k = 0; k < keep.size(); ++k) {
      if (count[k] == 0) continue;
      const std::size_t r = plan.add_row(k, HeadPlan::key | HeadPlan::value | HeadPlan::bias, head.head_dim);
      const std::uint32_t j = keep[k];
      // Key: half the survivor's key now, half the mean of its set below.
      kernels::axpy(0.5f, s.keys.data() + static_cast<std::size_t>(j) * d, plan.row_keys.data() + r * d, d);
      head.load_value(j, value.data());
      kernels::axpy(s.mass[j], value.data(), plan.row_values.data() + r * d, d);
      weight_sum.push_back(s.mass[j]);
      plan.row_bias[r] = head.bias[j] + std::numbers::ln2_v<float>;
    }
    for (std::size_t c = 0; c < removed.size(); ++c) {
      if (target[c] < 0) {
        ++plan.evicted;
        continue;
      }
      ++plan.merged;
      const auto k = static_cast<std::size_t>(target[c]);
      const auto r = static_cast<std::size_t>(plan.row_of_slot[k]);
      const std::uint32_t e = removed[c];
      kernels::axpy(0.5f / static_cast<float>(count[k]), s.keys.data() + static_cast<std::size_t>(e) * d,
                    plan.row_keys.data() + r * d, d);
      head.load_value(e, value.data());
      kernels::axpy(s.mass[e], value.data(), plan.row_values.data() + r * d, d);
      weight_sum[r] += s.mass[e];
    }
    for (std::size_t r = 0; r < weight_sum.size(); ++r)
      kernels::scale(static_cast<float>(1.0 / std::max(weight_sum[r], 1e-30)), plan.row_values.data() + r * d, d);
  }
};

}  // namespace simcalkv
