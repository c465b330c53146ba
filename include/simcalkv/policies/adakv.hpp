// simcalkv: AdaKV, adaptive per-head budgets inside a layer, in front of any policy.
#pragma once

#include "simcalkv/stages.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace simcalkv {

struct AdaKVOptions {
  double alpha = 0.2;  // floor: every head keeps at least alpha of its own (unprotected) budget
};

/// AdaKV (Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation", 2024)
/// in front of a policy that takes per-head budgets.
///
/// The rule, for one layer with per-head budgets B_h (protected entries P_h included) and
/// K = sum_h (B_h - P_h): rank every head's unprotected entries by the inner policy's own selection
/// score (its Score stage, run once: SnapKV's pooled window attention, SimCalKV's raw one, H2O's
/// accumulated attention), the scores of all heads being comparable (each row of attention sums
/// to 1). Each head first reserves its
/// own top ceil(alpha * (B_h - P_h)) entries (the floor, AdaKV's safeguard); the other
/// K - sum(floors) slots go to the highest remaining scores across all heads jointly (ties: lower
/// head, then earlier entry). Head h's budget is P_h + its reserved + its joint picks, so the
/// budgets sum exactly to the layer's and every head keeps at least P_h + ceil(alpha (B_h - P_h))
/// >= alpha * B_h. The inner policy then compresses with those budgets (SnapKV keeps exactly the
/// jointly selected entries). AdaKV's code instead rounds count_h (1 - alpha) + alpha B per head,
/// which does not always sum to the layer budget. Default alpha = 0.2 (AdaKV's floor_alpha).
template <class Policy>
class AdaKV : public ForwardingStages<AdaKV<Policy>, Policy> {
 public:
  explicit AdaKV(Policy inner = Policy{}, const AdaKVOptions& options = {})
      : inner_(std::move(inner)), options_(options), name_("AdaKV+" + std::string(inner_.name())) {
    detail::require(std::isfinite(options.alpha) && options.alpha >= 0.0 && options.alpha <= 1.0,
                    ErrorCode::invalid_argument, "AdaKV: alpha must be in [0, 1], got ", options.alpha);
  }

  [[nodiscard]] std::string_view name() const noexcept { return name_; }
  [[nodiscard]] const Policy& inner() const noexcept { return inner_; }
  [[nodiscard]] const AdaKVOptions& options() const noexcept { return options_; }

  template <StorageElement T>
  std::vector<std::size_t> schedule(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    return stage::schedule(inner_, request, base);
  }

  /// The budget stage after scoring: the inner policy's budgets (`base`), redistributed over the
  /// heads by their scores (see the class comment).
  template <StorageElement T>
  std::vector<std::size_t> reallocate(const LayerRequest<T>& request, std::span<const std::span<const float>> scores,
                                      std::span<const std::size_t> base, const Protection& protection) const {
    std::vector<std::size_t> inner_budgets(base.begin(), base.end());
    if constexpr (stage::Reallocates<Policy, T>) inner_budgets = inner_.reallocate(request, scores, base, protection);
    std::vector<std::size_t> lengths(request.heads.size());
    for (std::size_t h = 0; h < lengths.size(); ++h) lengths[h] = request.heads[h].length;
    return reallocate_heads(lengths, scores, inner_budgets, protection);
  }

  /// The same reallocation over the heads of a whole layer gathered from several ranks
  /// (tensor_parallel.hpp): every rank that calls it with the same LayerScores gets the same
  /// budgets, those of a single process holding every head. `window` gives the protection.
  [[nodiscard]] std::vector<std::size_t> reallocate_scores(const LayerScores& layer, const WindowView& window) const {
    const auto scores = layer.per_head(name_);
    return reallocate_heads(layer.lengths, scores, layer.budgets, stage::protection(*this, window));
  }

 private:
  /// The rule of the class comment, for heads given by their lengths.
  [[nodiscard]] std::vector<std::size_t> reallocate_heads(std::span<const std::size_t> lengths,
                                                          std::span<const std::span<const float>> scores,
                                                          std::span<const std::size_t> inner_budgets,
                                                          const Protection& protection) const {
    const std::size_t H = lengths.size();
    struct Candidate {
      float score;
      std::uint32_t head;
      std::uint32_t index;
    };
    auto better = [](const Candidate& a, const Candidate& b) {
      if (a.score != b.score) return a.score > b.score;
      return a.head != b.head ? a.head < b.head : a.index < b.index;
    };
    std::vector<std::size_t> budgets(H);
    std::vector<Candidate> pool, ranked;
    std::size_t slots = 0;  // K minus the floors
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t n = lengths[h];
      const std::size_t protected_count = protection.count(n);
      detail::require(inner_budgets[h] >= protected_count && inner_budgets[h] <= n, ErrorCode::budget_out_of_range,
                      name_, ": KV head ", h, ": budget ", inner_budgets[h], " is outside [", protected_count, ", ",
                      n, "]");
      const std::size_t extra = inner_budgets[h] - protected_count;
      ranked.clear();
      for (std::size_t j = 0; j < n; ++j)
        if (!protection.protects(j, n))
          ranked.push_back({scores[h][j], static_cast<std::uint32_t>(h), static_cast<std::uint32_t>(j)});
      const auto floor = std::min(
          ranked.size(), static_cast<std::size_t>(std::ceil(options_.alpha * static_cast<double>(extra) - 1e-9)));
      std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(floor), ranked.end(), better);
      pool.insert(pool.end(), ranked.begin() + static_cast<std::ptrdiff_t>(floor), ranked.end());
      budgets[h] = protected_count + floor;
      slots += extra - floor;
    }
    slots = std::min(slots, pool.size());
    if (slots < pool.size())
      std::nth_element(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(slots), pool.end(), better);
    for (std::size_t k = 0; k < slots; ++k) ++budgets[pool[k].head];
    return budgets;
  }


 public:
  /// The per-head budgets AdaKV gives the layer (plans the layer; reads only).
  template <StorageElement T>
  std::vector<std::size_t> allocate(const LayerRequest<T>& request, Workspace& workspace,
                                    std::span<const std::size_t> base) const {
    const LayerPlan plan = this->plan_with_budgets(request, workspace, base);
    std::vector<std::size_t> budgets(plan.heads.size());
    for (std::size_t h = 0; h < budgets.size(); ++h) budgets[h] = plan.kept(h);
    return budgets;
  }

 private:
  Policy inner_;
  AdaKVOptions options_;
  std::string name_;
};

}  // namespace simcalkv
