// simcalkv: KVMerger (Wang et al., "Model Tells You Where to Merge: Adaptive KV Cache Merging for
// LLMs on Long-Context Tasks", arXiv 2407.08454), a merging baseline.
//
// The paper: merging sets are runs of consecutive tokens whose keys stay similar (cosine of
// neighbouring keys at least a threshold, found greedily along the sequence); the tokens with the
// top attention scores are kept as they are; each set collapses into one state around its pivot,
// the member with the highest attention, with Gaussian-kernel weights
//     g_i = exp(-||k_i - k_p||^2 / (2 sigma^2)),   k' = sum_i g_i k_i / sum_i g_i,  v' likewise,
// and no logit bias. The budget is reached there by choosing the similarity threshold per layer
// (the number of sets plus the kept tokens is the cache size).
//
// Here the budget is a hard input, so the roles are turned around, per head and per call:
//  1. Keep set: the protected entries plus the highest window-attention scorers, up to the budget
//     (exactly `budget` entries, as every policy of the library).
//  2. Runs: maximal runs of consecutive entries (in position order, kept and removed alike) in
//     which each neighbouring pair's keys have cosine similarity >= threshold.
//  3. A run holding several kept entries is cut between each two of them at the weakest link (the
//     neighbouring pair of least similarity; the first one on ties), which is where single-linkage
//     clustering along the sequence would separate them. So every merging set is consecutive and
//     holds at most one kept entry.
//  4. A set with a kept entry merges into it: the removed members' keys and values fold in with the
//     Gaussian weights around the pivot p = the set's highest-scoring member (earliest on ties;
//     that is the kept entry unless the kept one is protected and scores lower), and the result
//     takes the kept entry's slot and position. A set with no kept entry is evicted.
//  5. No bias: the surviving entry's logit bias is left as it was. Its accumulated score (when the
//     head has a score buffer) becomes the sum over the set.
// sigma: by default adaptive per set, sigma = sum_i ||k_i - k_p|| / (sqrt(2) |S|) (so 2 sigma^2 is
// the squared mean distance to the pivot), our reading of the paper's set-size-normalised sigma; a
// positive `sigma` option fixes it. The paper tunes the threshold per layer to hit its budgets and
// states no single value; 0.8 is our default.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct KVMergerOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: as many as the window has queries
  /// Neighbouring keys with at least this cosine similarity belong to the same merging set.
  float similarity_threshold = 0.8f;
  /// Gaussian kernel width; 0: adaptive per set (see the file comment).
  float sigma = 0.0f;
};

class KVMerger : public WindowScored<KVMerger> {
 public:
  KVMerger() = default;
  explicit KVMerger(const KVMergerOptions& options) : options_(options) {
    detail::require(!std::isnan(options.similarity_threshold), ErrorCode::invalid_argument,
                    "KVMerger: similarity threshold is NaN");
    detail::require(std::isfinite(options.sigma) && options.sigma >= 0.0f, ErrorCode::invalid_argument,
                    "KVMerger: sigma must be finite and >= 0 (0: adaptive), got ", options.sigma);
  }

  [[nodiscard]] std::string_view name() const noexcept { return "KVMerger"; }
  [[nodiscard]] const KVMergerOptions& options() const noexcept { return options_; }

  /// Merge: consecutive runs of similar keys fold into their kept member, Gaussian-weighted
  /// around the run's best-scored entry.
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const auto d = static_cast<std::size_t>(head.head_dim);
    const std::size_t n = head.length;
    const auto& keep = s.selection.keep;
    HeadPlan& plan = s.plan;
    plan.set_keep(keep, n);

    // slot_of[j]: j's slot if kept, else -1.
    std::vector<std::int32_t> slot_of(n, -1);
    for (std::size_t k = 0; k < keep.size(); ++k) slot_of[keep[k]] = static_cast<std::int32_t>(k);
    // link[j]: cosine similarity of the keys of j and j + 1.
    std::vector<float> link(n > 0 ? n - 1 : 0, 0.0f);
    for (std::size_t j = 0; j + 1 < n; ++j)
      link[j] = kernels::dot(s.keys.data() + j * d, s.keys.data() + (j + 1) * d, d) * s.inv_norms[j] *
                s.inv_norms[j + 1];

    std::vector<float> row(d), value(d);
    std::vector<float> distance;
    auto merge_set = [&](std::size_t lo, std::size_t hi, std::int32_t slot) {  // entries [lo, hi]
      if (slot < 0) {
        plan.evicted += hi - lo + 1;
        return;
      }
      if (hi == lo) return;
      plan.merged += hi - lo;
      std::size_t pivot = lo;
      for (std::size_t j = lo + 1; j <= hi; ++j)
        if (s.score[j] > s.score[pivot]) pivot = j;
      const float* kp = s.keys.data() + pivot * d;
      distance.resize(hi - lo + 1);  // squared distances to the pivot
      double distance_sum = 0.0;
      for (std::size_t j = lo; j <= hi; ++j) {
        const float* kj = s.keys.data() + j * d;
        double sq = 0.0;
        for (std::size_t i = 0; i < d; ++i) sq += static_cast<double>(kj[i] - kp[i]) * (kj[i] - kp[i]);
        distance[j - lo] = static_cast<float>(sq);
        distance_sum += std::sqrt(sq);
      }
      const double sigma = options_.sigma > 0.0f ? options_.sigma
                                                 : distance_sum / (std::sqrt(2.0) * static_cast<double>(hi - lo + 1));
      const auto k = static_cast<std::size_t>(slot);
      const std::size_t r = plan.add_row(k, HeadPlan::key | HeadPlan::value | HeadPlan::score, head.head_dim);
      float* key_row = plan.row_keys.data() + r * d;
      float* value_row = plan.row_values.data() + r * d;
      double total = 0.0;
      float score = 0.0f;
      for (std::size_t j = lo; j <= hi; ++j) {
        // sigma == 0 only when every member's key equals the pivot's: all weights are 1.
        const double g = sigma > 0.0 ? std::exp(-static_cast<double>(distance[j - lo]) / (2.0 * sigma * sigma)) : 1.0;
        total += g;
        head.load_value(j, value.data());
        kernels::axpy(static_cast<float>(g), s.keys.data() + j * d, key_row, d);
        kernels::axpy(static_cast<float>(g), value.data(), value_row, d);
        if (head.scores) score += head.scores[j];
      }
      const auto inv = static_cast<float>(1.0 / total);  // total >= g_pivot = 1
      kernels::scale(inv, key_row, d);
      kernels::scale(inv, value_row, d);
      plan.row_bias[r] = head.bias[keep[k]];
      plan.row_score[r] = head.scores ? score : 0.0f;
    };

    std::size_t lo = 0;
    while (lo < n) {
      std::size_t hi = lo;  // the run is [lo, hi]
      while (hi + 1 < n && link[hi] >= options_.similarity_threshold) ++hi;
      // Split at the weakest link between each two kept entries of the run.
      std::size_t start = lo;
      std::int32_t slot = -1;
      std::size_t last_kept = 0;
      for (std::size_t j = lo; j <= hi; ++j) {
        if (slot_of[j] < 0) continue;
        if (slot >= 0) {
          std::size_t cut = last_kept;
          for (std::size_t c = last_kept + 1; c < j; ++c)
            if (link[c] < link[cut]) cut = c;
          merge_set(start, cut, slot);
          start = cut + 1;
        }
        slot = slot_of[j];
        last_kept = j;
      }
      merge_set(start, hi, slot);
      lo = hi + 1;
    }
  }

  /// KVMergerOptions from a registry option string: sinks, recent, threshold, sigma.
  static KVMergerOptions read_options(PolicyOptions& o) {
    KVMergerOptions k;
    read_protection(o, k);
    k.similarity_threshold = static_cast<float>(o.get_double("threshold", k.similarity_threshold, -1.0, 1.0));
    k.sigma = static_cast<float>(o.get_double("sigma", k.sigma, 0.0));
    return k;
  }

 private:
  KVMergerOptions options_;
};

}  // namespace simcalkv
