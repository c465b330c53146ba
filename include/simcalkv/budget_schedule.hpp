// simcalkv: layer budget schedules: how a per-head base budget B varies with depth, keeping the
// model's total (num_layers * B) exactly. Uniform; PyramidKV's linear pyramid; PyramidInfer's
// geometric decay; D2O's density-based weights. `layer_budgets` / `layer_budget` compute them;
// policies apply them in their schedule() stage (policies/layer_scheduled.hpp puts one in front
// of any policy).
//
// Every schedule keeps each head within [protected entries, length]; heads then really hold
// different numbers of entries, and the layouts free the rest.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/protection.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

namespace simcalkv {

enum class ScheduleKind {
  uniform,    // every layer keeps B
  pyramid,    // PyramidKV: budgets fall linearly with depth
  geometric,  // each layer keeps `decay` times the layer below
  compound_cosine,  // PyramidInfer's code: per-layer keep ratios from 1 down to `decay` on a cosine, compounded
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
  static LayerSchedule compound_cosine(double decay = 0.9) {
    LayerSchedule s;
    s.kind = ScheduleKind::compound_cosine;
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
    require((kind != ScheduleKind::geometric && kind != ScheduleKind::compound_cosine) ||
                (std::isfinite(decay) && decay > 0.0 && decay <= 1.0),
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
    case ScheduleKind::compound_cosine: return "compound_cosine";
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
    case ScheduleKind::compound_cosine: {
      std::vector<double> w(L);
      double held = 1.0;  // prod_{i<l} r_i
      for (std::size_t l = 0; l < L; ++l) {
        w[l] = held;
        const double angle = std::numbers::pi * static_cast<double>(l) / static_cast<double>(L);
        held *= schedule.decay + (1.0 - schedule.decay) * (std::cos(angle) + 1.0) / 2.0;
      }
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


/// Each head's budget for request.layer of request.num_layers under `schedule`, from its base
/// budget (`Request` is a LayerRequest).
template <class Request>
std::vector<std::size_t> scheduled_budgets(const LayerSchedule& schedule, const Request& request,
                                           std::span<const std::size_t> base, const Protection& protection) {
  std::vector<std::size_t> out(base.size());
  for (std::size_t h = 0; h < base.size(); ++h) {
    const std::size_t n = request.heads[h].length;
    out[h] = layer_budget(schedule, request.layer, request.num_layers, base[h], n, protection.count(n));
  }
  return out;
}

}  // namespace simcalkv
