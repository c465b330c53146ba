// simcalkv: budget allocation, separate from selection.
//
// A budget says how many entries a KV head keeps. Allocators decide it per layer and per head and
// then hand per-head budgets to a selecting policy's compress_with_budgets:
//
//  - layer schedules: how a per-head base budget B varies with depth, keeping the model's total
//    (num_layers * B) exactly: uniform; PyramidKV's linear pyramid; PyramidInfer's geometric decay;
//    D2O's density-based weights. `layer_budgets` / `layer_budget` compute them; `LayerScheduled<P>`
//    applies one to a policy.
//  - `AdaKV<P>`: inside one layer, heads get unequal budgets from their window scores.
//  - `PyramidKV`: the linear schedule with SnapKV's selection.
//
// The budget convention of compress_with_budgets: the budgets are the per-head budgets the policy
// starts from. A leaf policy (SnapKV, H2O, ...) keeps exactly that many; an allocator transforms
// them (a schedule rescales each head's budget for the layer, AdaKV redistributes their sum over
// the heads) and passes the result on. So LayerScheduled<AdaKV<SnapKV>> is AdaKV's "Ada-Pyramid":
// the layer's budget from the schedule, split over the heads adaptively.
//
// Every allocation keeps each head within [protected entries, length]; heads then really hold
// different numbers of entries (HeadView lengths), and KVCache::shrink_to_fit frees the rest.
#pragma once

#include "simcalkv/budget.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policies/snapkv.hpp"
#include "simcalkv/policy.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace simcalkv {

// ---------------------------------------------------------------------------------------------
// Per-head budgets as a capability

/// A policy that can compress a layer with a budget per KV head.
template <class P, class T>
concept PerHeadBudgetPolicy = KVCachePolicy<P, T> &&
    requires(const P& policy, const LayerRequest<T>& request, Workspace& ws, std::span<const std::size_t> budgets) {
      { policy.compress_with_budgets(request, ws, budgets) } -> std::same_as<CompressionStats>;
    };

namespace detail {

/// The entries `policy` never removes under `window`: its protection() if it has one, else its
/// options' sink_tokens / recent_tokens (recent -1: the window's length), else none.
template <class P>
Protection protection_of(const P& policy, const WindowView& window) {
  if constexpr (requires { { policy.protection(window) } -> std::convertible_to<Protection>; }) {
    return policy.protection(window);
  } else if constexpr (requires { policy.options().sink_tokens; policy.options().recent_tokens; }) {
    return make_protection(static_cast<std::size_t>(policy.options().sink_tokens),
                           static_cast<int>(policy.options().recent_tokens), window.num_tokens);
  } else {
    return Protection{0, 0};
  }
}

/// The pooling a policy's selection score uses (none if it has no such options).
template <class P>
std::pair<kernels::Pooling, int> pooling_of(const P& policy) {
  if constexpr (requires { policy.options().pooling; policy.options().pool_kernel; }) {
    return {policy.options().pooling, static_cast<int>(policy.options().pool_kernel)};
  } else {
    return {kernels::Pooling::none, 1};
  }
}

/// Compresses with per-head budgets, through compress_with_budgets when the policy has it;
/// otherwise the budgets must all be equal and become request.budget.
template <class P, StorageElement T>
CompressionStats compress_per_head(const P& policy, const LayerRequest<T>& request, Workspace& workspace,
                                   std::span<const std::size_t> budgets) {
  if constexpr (PerHeadBudgetPolicy<P, T>) {
    return policy.compress_with_budgets(request, workspace, budgets);
  } else {
    if (budgets.empty()) return policy.compress(request, workspace);
    for (std::size_t h = 1; h < budgets.size(); ++h)
      require(budgets[h] == budgets[0], ErrorCode::invalid_argument, policy.name(),
              ": takes no per-head budgets, but KV head ", h, " was given ", budgets[h], " and KV head 0 ",
              budgets[0]);
    LayerRequest<T> uniform = request;
    uniform.budget = Budget::entries(budgets[0]);
    return policy.compress(uniform, workspace);
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Layer schedules

enum class ScheduleKind {
  uniform,    // every layer keeps B
  pyramid,    // PyramidKV: budgets fall linearly with depth
  geometric,  // PyramidInfer: each layer keeps `decay` times the layer below
  density,    // D2O: budgets weighted by exp(-statistic) from the host's per-layer attention statistic
};

/// How a per-head base budget varies with depth. Every schedule keeps the total exactly
/// (sum over layers == num_layers * base) and each layer within [protected, length].
///
/// All of them act on the unprotected part C = B - P (P = the protected entries, the window and
/// sinks), as the papers act on the budget beyond the observation window:
///  - pyramid (PyramidKV, beta = 20 as in the paper): the top layer keeps C / beta, the bottom
///    layer 2C - C / beta, the layers between are linearly interpolated, so the mean is C. When the
///    bottom layer would exceed the head's length n - P, it is capped there and the top layer gets
///    2C - (n - P) instead, as in the authors' code. The authors' integer step
///    (max - min) // (L - 1) drifts from the total by a few entries; we interpolate exactly and
///    round by largest remainder so the total is exact.
///  - geometric (PyramidInfer, decay = 0.9, its prefill decay ratio): layer l's share is
///    proportional to decay^l (PyramidInfer keeps `decay` of the context at each layer, so the
///    kept fraction compounds with depth), scaled to the uniform total.
///  - density (D2O): layer l's share is proportional to exp(-s_l), softmax(-s) over layers as in
///    D2O's code, where s_l is its attention-variance statistic (d2o_layer_statistic computes it
///    from a window; high variance = sparse attention = smaller cache).
/// A share that would exceed n - P is capped and the excess is spread over the other layers in
/// proportion to their weights (D2O clamps each layer's ratio to at most 1 likewise, without
/// redistributing); integer budgets come from largest-remainder rounding (ties to lower layers).
struct LayerSchedule {
  ScheduleKind kind = ScheduleKind::uniform;
  double beta = 20.0;
  double decay = 0.9;
  std::vector<double> layer_statistic;  // density: one value per layer

  static LayerSchedule uniform() { return {}; }
  static LayerSchedule pyramid(double beta = 20.0) {
    LayerSchedule s;
    s.kind = ScheduleKind::pyramid;
    s.beta = beta;
    return s;
  }
  static LayerSchedule geometric(double decay = 0.9) {
    LayerSchedule s;
    s.kind = ScheduleKind::geometric;
    s.decay = decay;
    return s;
  }
  static LayerSchedule density(std::vector<double> statistic) {
    LayerSchedule s;
    s.kind = ScheduleKind::density;
    s.layer_statistic = std::move(statistic);
    return s;
  }

  /// Throws on parameters no schedule can use.
  void validate() const {
    using detail::require;
    require(kind != ScheduleKind::pyramid || (std::isfinite(beta) && beta >= 1.0), ErrorCode::invalid_argument,
            "layer schedule: pyramid beta must be at least 1, got ", beta);
    require(kind != ScheduleKind::geometric || (std::isfinite(decay) && decay > 0.0 && decay <= 1.0),
            ErrorCode::invalid_argument, "layer schedule: geometric decay must be in (0, 1], got ", decay);
    if (kind == ScheduleKind::density)
      for (std::size_t l = 0; l < layer_statistic.size(); ++l)
        require(std::isfinite(layer_statistic[l]), ErrorCode::invalid_argument,
                "layer schedule: density statistic of layer ", l, " is NaN or Inf");
  }
};

inline const char* schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::uniform: return "uniform";
    case ScheduleKind::pyramid: return "pyramid";
    case ScheduleKind::geometric: return "geometric";
    case ScheduleKind::density: return "density";
  }
  return "?";
}

namespace detail {

/// Shares min(cap, lambda * w_l) summing to `total` (<= size * cap): water-filling.
inline std::vector<double> water_fill(std::span<const double> weights, double total, double cap) {
  const std::size_t L = weights.size();
  std::vector<double> x(L, 0.0);
  std::vector<char> capped(L, 0);
  for (;;) {
    double free_total = total, free_weight = 0.0;
    std::size_t free_count = 0;
    for (std::size_t l = 0; l < L; ++l) {
      if (capped[l]) {
        free_total -= cap;
      } else {
        free_weight += weights[l];
        ++free_count;
      }
    }
    if (free_count == 0) break;
    bool changed = false;
    for (std::size_t l = 0; l < L; ++l) {
      if (capped[l]) continue;
      // Zero total weight (underflowed weights) spreads evenly.
      x[l] = free_weight > 0.0 ? free_total * weights[l] / free_weight : free_total / static_cast<double>(free_count);
      if (x[l] > cap) capped[l] = 1, changed = true;
    }
    if (!changed) break;
  }
  for (std::size_t l = 0; l < L; ++l)
    if (capped[l]) x[l] = cap;
  return x;
}

/// Integers within [0, cap] summing exactly to `total`, nearest to x (largest remainder; ties go
/// to the lower index). Needs sum(x) ~= total <= size * cap.
inline std::vector<std::size_t> round_to_total(std::span<const double> x, std::size_t total, std::size_t cap) {
  const std::size_t L = x.size();
  std::vector<std::size_t> out(L);
  std::vector<double> frac(L);
  long long remaining = static_cast<long long>(total);
  for (std::size_t l = 0; l < L; ++l) {
    const double v = std::clamp(x[l], 0.0, static_cast<double>(cap));
    const double f = std::floor(v + 1e-9);
    out[l] = std::min(cap, static_cast<std::size_t>(f));
    frac[l] = v - f;
    remaining -= static_cast<long long>(out[l]);
  }
  std::vector<std::size_t> order(L);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return frac[a] > frac[b]; });
  while (remaining > 0) {
    bool moved = false;
    for (std::size_t l : order)
      if (remaining > 0 && out[l] < cap) ++out[l], --remaining, moved = true;
    if (!moved) break;
  }
  while (remaining < 0) {
    bool moved = false;
    for (auto it = order.rbegin(); it != order.rend(); ++it)
      if (remaining < 0 && out[*it] > 0) --out[*it], ++remaining, moved = true;
    if (!moved) break;
  }
  return out;
}

}  // namespace detail

/// The per-head budget of every layer (protected entries included) for heads of `length` entries,
/// `protected_count` of them protected, whose uniform budget is `base`. See LayerSchedule.
inline std::vector<std::size_t> layer_budgets(const LayerSchedule& schedule, int num_layers, std::size_t base,
                                              std::size_t length, std::size_t protected_count) {
  using detail::require;
  schedule.validate();
  require(num_layers > 0, ErrorCode::invalid_argument, "layer schedule: num_layers must be positive, got ", num_layers);
  require(base <= length, ErrorCode::budget_out_of_range, "layer schedule: budget ", base, " exceeds the length ",
          length);
  require(protected_count <= base, ErrorCode::budget_out_of_range, "layer schedule: budget ", base,
          " is below the ", protected_count, " protected entries");
  const auto L = static_cast<std::size_t>(num_layers);
  const std::size_t C = base - protected_count;
  const std::size_t available = length - protected_count;
  std::vector<double> x(L, static_cast<double>(C));
  switch (schedule.kind) {
    case ScheduleKind::uniform:
      break;
    case ScheduleKind::pyramid: {
      if (L == 1) break;
      double lo = static_cast<double>(C) / schedule.beta;
      double hi = 2.0 * static_cast<double>(C) - lo;
      if (hi > static_cast<double>(available)) {
        hi = static_cast<double>(available);
        lo = 2.0 * static_cast<double>(C) - hi;
      }
      for (std::size_t l = 0; l < L; ++l)
        x[l] = hi - (hi - lo) * static_cast<double>(l) / static_cast<double>(L - 1);
      break;
    }
    case ScheduleKind::geometric: {
      std::vector<double> w(L);
      for (std::size_t l = 0; l < L; ++l) w[l] = std::pow(schedule.decay, static_cast<double>(l));
      x = detail::water_fill(w, static_cast<double>(L * C), static_cast<double>(available));
      break;
    }
    case ScheduleKind::density: {
      require(schedule.layer_statistic.size() == L, ErrorCode::invalid_argument, "layer schedule: density needs ",
              L, " per-layer statistics, got ", schedule.layer_statistic.size());
      const double lowest = *std::min_element(schedule.layer_statistic.begin(), schedule.layer_statistic.end());
      std::vector<double> w(L);
      for (std::size_t l = 0; l < L; ++l) w[l] = std::exp(-(schedule.layer_statistic[l] - lowest));
      x = detail::water_fill(w, static_cast<double>(L * C), static_cast<double>(available));
      break;
    }
  }
  auto extra = detail::round_to_total(x, L * C, available);
  for (auto& e : extra) e += protected_count;
  return extra;
}

/// One layer's per-head budget under `schedule` (see layer_budgets).
inline std::size_t layer_budget(const LayerSchedule& schedule, int layer, int num_layers, std::size_t base,
                                std::size_t length, std::size_t protected_count) {
  detail::require(num_layers > 0 && layer >= 0 && layer < num_layers, ErrorCode::invalid_argument,
                  "layer schedule: layer ", layer, " is outside [0, ", num_layers, ")");
  if (schedule.kind == ScheduleKind::uniform) {
    schedule.validate();
    detail::require(base <= length && protected_count <= base, ErrorCode::budget_out_of_range,
                    "layer schedule: budget ", base, " is outside [", protected_count, ", ", length, "]");
    return base;
  }
  return layer_budgets(schedule, num_layers, base, length, protected_count)[static_cast<std::size_t>(layer)];
}

/// D2O's per-layer attention statistic, from the observation window instead of the full prefill
/// attention: for each KV head, the (unbiased) variance over entries of the window attention's
/// column sums (its W*G queries, GQA-aggregated), min-max normalised across the layer's KV heads
/// ((v - min) / (max - min + 1e-6), as D2O's code does across heads), then averaged. In [0, 1);
/// high means sparse attention. Note the normalisation makes it 0 for a single KV head. Compute it
/// per layer after prefill and pass the values to LayerSchedule::density. Reads only.
template <StorageElement T>
double d2o_layer_statistic(const LayerRequest<T>& request, Workspace& workspace) {
  using detail::require;
  require(!request.heads.empty(), ErrorCode::invalid_argument, "d2o_layer_statistic: the layer has no KV heads");
  require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
          "d2o_layer_statistic: needs an observation window");
  const int d = request.heads[0].head_dim;
  for (std::size_t h = 0; h < request.heads.size(); ++h) {
    detail::validate_layout(request.heads[h], "d2o_layer_statistic: KV head " + std::to_string(h));
    require(request.heads[h].head_dim == d, ErrorCode::invalid_argument, "d2o_layer_statistic: KV head ", h,
            ": head_dim ", request.heads[h].head_dim, " differs from head 0's ", d);
  }
  detail::validate_window(request.window, d, request.heads.size());
  workspace.prepare(request.heads.size());
  std::vector<double> variance(request.heads.size(), 0.0);
  const int group = request.group_size();
  request.exec().parallel_for(request.heads.size(), [&](std::size_t h) {
    const HeadView<T>& head = request.heads[h];
    HeadScratch& s = workspace.head(h);
    detail::validate_head_contents(head, "d2o_layer_statistic: KV head " + std::to_string(h), request.check_finite,
                                   s.floats);
    const std::size_t n = head.length;
    if (n < 2) return;
    kernels::load_keys(head, s);
    kernels::score_window(head, request.window, static_cast<int>(h), group, s);
    const double rows = static_cast<double>(s.row_positions.size());
    double mean = 0.0;
    for (std::size_t j = 0; j < n; ++j) mean += rows * s.score[j];
    mean /= static_cast<double>(n);
    double sum = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
      const double c = rows * s.score[j] - mean;
      sum += c * c;
    }
    variance[h] = sum / static_cast<double>(n - 1);
  });
  const auto [lo, hi] = std::minmax_element(variance.begin(), variance.end());
  const double low = *lo, span = *hi - *lo + 1e-6;
  double total = 0.0;
  for (double v : variance) total += (v - low) / span;
  return total / static_cast<double>(variance.size());
}

// ---------------------------------------------------------------------------------------------
// LayerScheduled: a layer schedule in front of any policy

template <class Policy>
class LayerScheduled {
 public:
  LayerScheduled(Policy inner, LayerSchedule schedule) : inner_(std::move(inner)), schedule_(std::move(schedule)) {
    schedule_.validate();
  }

  [[nodiscard]] std::string_view name() const noexcept { return inner_.name(); }
  [[nodiscard]] const Policy& inner() const noexcept { return inner_; }
  [[nodiscard]] const LayerSchedule& schedule() const noexcept { return schedule_; }

  /// Each head's budget for request.layer of request.num_layers, from its base budget.
  template <StorageElement T>
  std::vector<std::size_t> head_budgets(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    detail::require(base.size() == request.heads.size(), ErrorCode::invalid_argument, name(), ": ", base.size(),
                    " budgets for ", request.heads.size(), " heads");
    const Protection protection = detail::protection_of(inner_, request.window);
    std::vector<std::size_t> out(base.size());
    for (std::size_t h = 0; h < base.size(); ++h) {
      const std::size_t n = request.heads[h].length;
      out[h] = layer_budget(schedule_, request.layer, request.num_layers, base[h], n, protection.count(n));
    }
    return out;
  }

  template <StorageElement T>
  CompressionStats compress(const LayerRequest<T>& request, Workspace& workspace) const {
    const auto base = uniform_head_budgets(request);
    return compress_with_budgets(request, workspace, base);
  }

  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> base) const {
    const auto budgets = head_budgets(request, base);
    return detail::compress_per_head(inner_, request, workspace, budgets);
  }

 private:
  Policy inner_;
  LayerSchedule schedule_;
};

// ---------------------------------------------------------------------------------------------
// AdaKV: adaptive per-head budgets inside a layer

struct AdaKVOptions {
  double alpha = 0.2;  // floor: every head keeps at least alpha of its own (unprotected) budget
};

/// AdaKV (Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation", 2024)
/// in front of a policy that takes per-head budgets.
///
/// The rule, for one layer with per-head budgets B_h (protected entries P_h included) and
/// K = sum_h (B_h - P_h): score every head's unprotected entries by window attention, pooled as
/// the inner policy pools its selection score (SnapKV: max, kernel 7; SimCalKV: none), the scores
/// of all heads being comparable (each row of attention sums to 1). Each head first reserves its
/// own top ceil(alpha * (B_h - P_h)) entries (the floor, AdaKV's safeguard); the other
/// K - sum(floors) slots go to the highest remaining scores across all heads jointly (ties: lower
/// head, then earlier entry). Head h's budget is P_h + its reserved + its joint picks, so the
/// budgets sum exactly to the layer's and every head keeps at least P_h + ceil(alpha (B_h - P_h))
/// >= alpha * B_h. The inner policy then compresses with those budgets (SnapKV keeps exactly the
/// jointly selected entries). AdaKV's code instead rounds count_h (1 - alpha) + alpha B per head,
/// which does not always sum to the layer budget. Default alpha = 0.2 (AdaKV's floor_alpha).
template <class Policy>
class AdaKV {
 public:
  explicit AdaKV(Policy inner = Policy{}, const AdaKVOptions& options = {})
      : inner_(std::move(inner)), options_(options), name_("AdaKV+" + std::string(inner_.name())) {
    detail::require(std::isfinite(options.alpha) && options.alpha >= 0.0 && options.alpha <= 1.0,
                    ErrorCode::invalid_argument, "AdaKV: alpha must be in [0, 1], got ", options.alpha);
  }

  [[nodiscard]] std::string_view name() const noexcept { return name_; }
  [[nodiscard]] const Policy& inner() const noexcept { return inner_; }
  [[nodiscard]] const AdaKVOptions& options() const noexcept { return options_; }
  [[nodiscard]] Protection protection(const WindowView& window) const { return detail::protection_of(inner_, window); }

  template <StorageElement T>
  CompressionStats compress(const LayerRequest<T>& request, Workspace& workspace) const {
    const auto base = uniform_head_budgets(request);
    return compress_with_budgets(request, workspace, base);
  }

  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> base) const {
    static_assert(PerHeadBudgetPolicy<Policy, T>, "AdaKV needs an inner policy with compress_with_budgets");
    const auto budgets = allocate(request, workspace, base);
    LayerRequest<T> inner_request = request;
    inner_request.check_finite = false;  // allocate() has scanned keys and values
    return inner_.compress_with_budgets(inner_request, workspace, budgets);
  }

  /// The per-head budgets AdaKV gives the layer (validates the request; reads only).
  template <StorageElement T>
  std::vector<std::size_t> allocate(const LayerRequest<T>& request, Workspace& workspace,
                                    std::span<const std::size_t> base) const {
    using detail::require;
    const std::string& who = name_;
    const std::size_t H = request.heads.size();
    require(H > 0, ErrorCode::invalid_argument, who, ": the layer has no KV heads");
    require(base.size() == H, ErrorCode::invalid_argument, who, ": ", base.size(), " budgets for ", H, " heads");
    require(request.window.num_tokens > 0, ErrorCode::invalid_argument, who,
            ": needs an observation window to allocate budgets");
    const Protection protection = detail::protection_of(inner_, request.window);
    const int d = request.heads[0].head_dim;
    for (std::size_t h = 0; h < H; ++h) {
      const auto& head = request.heads[h];
      const std::string name = who + ": KV head " + std::to_string(h);
      detail::validate_layout(head, name);
      require(head.head_dim == d, ErrorCode::invalid_argument, name, ": head_dim ", head.head_dim,
              " differs from head 0's ", d);
      require(base[h] <= head.length, ErrorCode::budget_out_of_range, name, ": budget ", base[h],
              " exceeds the length ", head.length);
      require(base[h] >= protection.count(head.length), ErrorCode::budget_out_of_range, name, ": budget ", base[h],
              " is below the ", protection.count(head.length), " protected entries (", protection.sinks,
              " sinks + ", protection.recent, " recent)");
    }
    detail::validate_window(request.window, d, H);

    const auto pool_mode = detail::pooling_of(inner_);
    const kernels::Pooling pooling = pool_mode.first;
    const int kernel = pool_mode.second;
    workspace.prepare(H);
    std::vector<std::vector<float>> scores(H);
    const int group = request.group_size();
    request.exec().parallel_for(H, [&](std::size_t h) {
      const HeadView<T>& head = request.heads[h];
      HeadScratch& s = workspace.head(h);
      detail::validate_head_contents(head, who + ": KV head " + std::to_string(h), request.check_finite, s.floats);
      kernels::load_keys(head, s);
      kernels::score_window(head, request.window, static_cast<int>(h), group, s);
      detail::pooled_prefix_scores(s.score, head.length, protection.recent, pooling, kernel, scores[h]);
    });

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
      const std::size_t n = request.heads[h].length;
      const std::size_t protected_count = protection.count(n);
      const std::size_t extra = base[h] - protected_count;
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

 private:
  Policy inner_;
  AdaKVOptions options_;
  std::string name_;
};

// ---------------------------------------------------------------------------------------------
// PyramidKV: the linear pyramid schedule with SnapKV's selection

struct PyramidKVOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length
  kernels::Pooling pooling = kernels::Pooling::max;
  int pool_kernel = 7;
  double beta = 20.0;  // the top layer keeps 1/beta of the mean unprotected budget (the paper's 20)
};

/// PyramidKV (Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
/// Funneling", 2024): per-layer budgets from LayerSchedule::pyramid(beta) (request.layer of
/// request.num_layers; the same total as uniform), then SnapKV's selection in each head.
class PyramidKV {
 public:
  PyramidKV() : PyramidKV(PyramidKVOptions{}) {}
  explicit PyramidKV(const PyramidKVOptions& options)
      : options_(options), snap_(SnapKVOptions{options.sink_tokens, options.recent_tokens, options.pooling,
                                               options.pool_kernel}) {
    LayerSchedule::pyramid(options.beta).validate();
  }

  [[nodiscard]] std::string_view name() const noexcept { return "PyramidKV"; }
  [[nodiscard]] const PyramidKVOptions& options() const noexcept { return options_; }
  [[nodiscard]] Protection protection(const WindowView& window) const noexcept { return snap_.protection(window); }

  template <StorageElement T>
  CompressionStats compress(const LayerRequest<T>& request, Workspace& workspace) const {
    const auto base = uniform_head_budgets(request);
    return compress_with_budgets(request, workspace, base);
  }

  /// `base` are the heads' budgets before the layer schedule.
  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> base) const {
    const LayerScheduled<SnapKV> scheduled(snap_, LayerSchedule::pyramid(options_.beta));
    const auto budgets = scheduled.head_budgets(request, base);
    return snap_.compress_as(name(), request, workspace, budgets);
  }

  /// PyramidKVOptions from a registry option string: sinks, recent, pooling, pool_kernel, beta.
  static PyramidKVOptions read_options(PolicyOptions& o) {
    const SnapKVOptions snap = SnapKV::read_options(o);
    PyramidKVOptions options;
    options.sink_tokens = snap.sink_tokens;
    options.recent_tokens = snap.recent_tokens;
    options.pooling = snap.pooling;
    options.pool_kernel = snap.pool_kernel;
    options.beta = o.get_double("beta", options.beta, 1.0, 1e9);
    return options;
  }

 private:
  PyramidKVOptions options_;
  SnapKV snap_;
};

}  // namespace simcalkv
