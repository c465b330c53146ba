// simcalkv: kvpress's MergingPress (NVIDIA/kvpress, kvpress/presses/merging_press.py): merge-on-evict
// around any scoring policy, as "Merging+<policy>" (Merging+SnapKV is kvpress's
// MergingPress(press=SnapKVPress(...))).
//
// The inner policy scores and selects, unchanged. Then, per KV head, each removed entry e goes to
// the kept entry c of highest cosine similarity u_e between keys; with u_e >= threshold (0) it
// lends c its value with the weight
//     w_e = max(u_e, 0) * |v_e| / (|v_e| + |v_c| + 1e-6),
// and every kept value that received anything becomes
//     v_c' = (v_c + sum_e w_e v_e) / (1 + sum_e w_e).
// Keys, biases and positions stay (keys untouched keep RoPE exact), so the bias-aware attention
// sees the same logits as after plain eviction; only the values carry the evicted entries.
// Departures, on purpose: kvpress compares every removed key with every kept one (quadratic in
// the context); by default we search the 64 kept entries nearest in position on each side, as
// SimCalKV and the other merging policies do (search=exact for kvpress's rule). kvpress's
// merge_fraction (merge only the most similar fraction) is not offered: its default, 1, is the rule
// here. The inner policy's own finish (H2O's seeded scores) runs first.
#pragma once

#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/policies/match.hpp"
#include "simcalkv/stages.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace simcalkv {

struct ValueMergingOptions {
  float similarity_threshold = 0.0f;                   // kvpress's similarity_threshold
  SimilaritySearch search = SimilaritySearch::local;   // exact: kvpress's full cosine matrix
  std::size_t search_radius = 64;
};

template <class Policy>
class ValueMerging : public ForwardingStages<ValueMerging<Policy>, Policy> {
 public:
  explicit ValueMerging(Policy inner = Policy{}, const ValueMergingOptions& options = {})
      : inner_(std::move(inner)), options_(options), name_("Merging+" + std::string(inner_.name())) {
    detail::require(std::isfinite(options.similarity_threshold) && options.similarity_threshold >= -1.0f &&
                        options.similarity_threshold <= 1.0f,
                    ErrorCode::invalid_argument, "Merging: threshold must be in [-1, 1], got ",
                    options.similarity_threshold);
    detail::require(options.search_radius > 0, ErrorCode::invalid_argument, "Merging: search radius must be positive");
  }

  [[nodiscard]] std::string_view name() const noexcept { return name_; }
  [[nodiscard]] const Policy& inner() const noexcept { return inner_; }
  [[nodiscard]] const ValueMergingOptions& options() const noexcept { return options_; }

  /// The inner policy's finish, then the removed values folded into their most similar survivors.
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    stage::finish(inner_, ctx, s);
    const auto& head = ctx.head;
    const auto d = static_cast<std::size_t>(head.head_dim);
    const auto& keep = s.selection.keep;
    const auto& removed = s.selection.removed;
    HeadPlan& plan = s.plan;
    if (removed.empty() || keep.empty()) return;
    kernels::load_keys(head, s);  // the Score stage of a key-free or score-buffer policy may not have
    match_removed(d, options_.search, options_.search_radius, s);

    std::vector<float> value(d), kept_value(d);
    std::vector<double> weight_sum(keep.size(), 0.0);
    std::size_t merged = 0;
    for (std::size_t c = 0; c < removed.size(); ++c) {
      const std::int32_t slot = s.matching.target[c];
      const float u = s.matching.similarity[c];
      if (slot < 0 || !(u >= options_.similarity_threshold)) continue;
      const auto k = static_cast<std::size_t>(slot);
      head.load_value(removed[c], value.data());
      head.load_value(keep[k], kept_value.data());
      const double ne = std::sqrt(static_cast<double>(kernels::squared_norm(value.data(), d)));
      const double nc = std::sqrt(static_cast<double>(kernels::squared_norm(kept_value.data(), d)));
      const double w = std::max(0.0, static_cast<double>(u)) * ne / (ne + nc + 1e-6);
      if (!(w > 0.0)) continue;
      if (plan.row_of_slot[k] < 0) {
        const std::size_t r = plan.add_row(k, HeadPlan::value, head.head_dim);
        std::copy(kept_value.begin(), kept_value.end(), plan.row_values.begin() + static_cast<std::ptrdiff_t>(r * d));
      }
      const auto r = static_cast<std::size_t>(plan.row_of_slot[k]);
      kernels::axpy(static_cast<float>(w), value.data(), plan.row_values.data() + r * d, d);
      weight_sum[k] += w;
      ++merged;
    }
    for (std::size_t k = 0; k < keep.size(); ++k) {
      if (plan.row_of_slot[k] < 0 || weight_sum[k] <= 0.0) continue;
      const auto r = static_cast<std::size_t>(plan.row_of_slot[k]);
      kernels::scale(static_cast<float>(1.0 / (1.0 + weight_sum[k])), plan.row_values.data() + r * d, d);
    }
    plan.merged = merged;
    plan.evicted = removed.size() - merged;
  }

  /// ValueMergingOptions from a registry option string: threshold, search, radius (the inner
  /// policy reads the rest).
  static ValueMergingOptions read_options(PolicyOptions& o) {
    ValueMergingOptions m;
    m.similarity_threshold = static_cast<float>(o.get_double("threshold", m.similarity_threshold, -1.0, 1.0));
    read_search(o, m);
    return m;
  }

 private:
  Policy inner_;
  ValueMergingOptions options_;
  std::string name_;
};

}  // namespace simcalkv
