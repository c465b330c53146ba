// simcalkv: mass-weighted merging of removed entries into survivors, and the merged bias.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/options.hpp"
#include "simcalkv/scratch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace simcalkv {

namespace kernels {

struct MergeOptions {
  BiasMode bias = BiasMode::bounded;
  bool merge_keys = true;  // false: the survivor keeps its own key, only values are averaged
};

/// The Merge stage of the mass-weighted policies: fills `plan` for the selection's survivors;
/// removed entry c with matching.target[c] >= 0 merges into that kept slot with weight s.mass (its
/// mass under the window, bias included); target -1 is evicted. Needs load_keys and score_window
/// to have run on `s`.
template <StorageElement T>
void merge_into_plan(const HeadView<T>& head, const HeadScratch& s, const Selection& selection,
                     const Matching& matching, const MergeOptions& options, HeadPlan& plan) {
  const std::vector<std::uint32_t>& keep = selection.keep;
  const std::vector<std::uint32_t>& candidates = selection.removed;
  const std::vector<std::int32_t>& slot = matching.target;
  const auto d = static_cast<std::size_t>(head.head_dim);
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  plan.set_keep(keep, head.length);

  // Rows for the survivors that receive anything, created in slot order.
  for (std::size_t c = 0; c < candidates.size(); ++c)
    if (slot[c] >= 0 && plan.row_of_slot[static_cast<std::size_t>(slot[c])] < 0)
      plan.row_of_slot[static_cast<std::size_t>(slot[c])] = 0;  // mark
  std::vector<float> total;  // per row: sum of weights
  std::vector<float> max_bias, lse_bias_sum;  // per row: log sum exp of member biases, shifted
  std::size_t rows = 0;
  for (std::size_t k = 0; k < keep.size(); ++k)
    if (plan.row_of_slot[k] == 0) ++rows, plan.row_of_slot[k] = -2;
  total.assign(rows, 0.0f);
  max_bias.assign(rows, neg_inf);
  lse_bias_sum.assign(rows, 0.0f);
  std::vector<float> value(d);

  const std::uint8_t updates = static_cast<std::uint8_t>(
      (options.merge_keys ? HeadPlan::key : 0) | HeadPlan::value | HeadPlan::bias | HeadPlan::score);
  for (std::size_t k = 0; k < keep.size(); ++k) {
    if (plan.row_of_slot[k] != -2) continue;
    const std::uint32_t j = keep[k];
    const std::size_t r = plan.add_row(k, updates, head.head_dim);
    const float w = s.mass[j];
    total[r] = w;
    float* key_row = plan.row_keys.data() + r * d;
    float* value_row = plan.row_values.data() + r * d;
    head.load_value(j, value.data());
    for (std::size_t i = 0; i < d; ++i) {
      key_row[i] = w * s.keys[j * d + i];
      value_row[i] = w * value[i];
    }
    plan.row_score[r] = head.scores ? head.scores[j] : 0.0f;
  }
  // Bias log-sum-exp, shifted by each row's running max bias.
  auto add_bias = [&](std::size_t r, float b) {
    if (b == neg_inf) return;
    if (b > max_bias[r]) {
      lse_bias_sum[r] = lse_bias_sum[r] * std::exp(max_bias[r] - b) + 1.0f;
      max_bias[r] = b;
    } else {
      lse_bias_sum[r] += std::exp(b - max_bias[r]);
    }
  };
  for (std::size_t k = 0; k < keep.size(); ++k)
    if (plan.row_of_slot[k] >= 0) add_bias(static_cast<std::size_t>(plan.row_of_slot[k]), head.bias[keep[k]]);

  for (std::size_t c = 0; c < candidates.size(); ++c) {
    if (slot[c] < 0) {
      ++plan.evicted;
      continue;
    }
    ++plan.merged;
    const std::uint32_t e = candidates[c];
    const auto r = static_cast<std::size_t>(plan.row_of_slot[static_cast<std::size_t>(slot[c])]);
    const float w = s.mass[e];
    total[r] += w;
    head.load_value(e, value.data());
    kernels::axpy(w, s.keys.data() + static_cast<std::size_t>(e) * d, plan.row_keys.data() + r * d, d);
    kernels::axpy(w, value.data(), plan.row_values.data() + r * d, d);
    add_bias(r, head.bias[e]);
    if (head.scores) plan.row_score[r] += head.scores[e];
  }

  // Sets whose whole mass underflowed (entries the window never looks at) fall back to a plain
  // average, so they still hold a meaningful key and value.
  std::vector<char> uniform(rows, 0);
  for (std::size_t r = 0; r < rows; ++r) uniform[r] = !(total[r] > 1e-30f);
  if (std::find(uniform.begin(), uniform.end(), 1) != uniform.end()) {
    for (std::size_t k = 0; k < keep.size(); ++k) {
      const auto row = plan.row_of_slot[k];
      if (row < 0 || !uniform[static_cast<std::size_t>(row)]) continue;
      const auto r = static_cast<std::size_t>(row);
      head.load_value(keep[k], value.data());
      std::copy_n(s.keys.data() + static_cast<std::size_t>(keep[k]) * d, d, plan.row_keys.data() + r * d);
      std::copy_n(value.data(), d, plan.row_values.data() + r * d);
      total[r] = 1.0f;
    }
    for (std::size_t c = 0; c < candidates.size(); ++c) {
      if (slot[c] < 0) continue;
      const auto r = static_cast<std::size_t>(plan.row_of_slot[static_cast<std::size_t>(slot[c])]);
      if (!uniform[r]) continue;
      head.load_value(candidates[c], value.data());
      kernels::axpy(1.0f, s.keys.data() + static_cast<std::size_t>(candidates[c]) * d, plan.row_keys.data() + r * d, d);
      kernels::axpy(1.0f, value.data(), plan.row_values.data() + r * d, d);
      total[r] += 1.0f;
    }
  }

  std::vector<Position> row_position(rows);
  std::vector<T> stored(d);  // a merged key in the storage type
  for (std::size_t k = 0; k < keep.size(); ++k) {
    const auto row = plan.row_of_slot[k];
    if (row < 0) continue;
    const auto r = static_cast<std::size_t>(row);
    float* key_row = plan.row_keys.data() + r * d;
    const float inv = 1.0f / total[r];
    kernels::scale(inv, key_row, d);
    kernels::scale(inv, plan.row_values.data() + r * d, d);
    if (options.merge_keys) {
      // The cache holds the merged key in its storage type, and decode attention reads that: the
      // calibration below fits the stored key, so it is exact for what attention sees.
      if constexpr (!std::is_same_v<T, float>) {
        store_strided(key_row, stored.data(), 1, d);
        load_row(stored.data(), key_row, d);
      }
    } else {
      std::copy_n(s.keys.data() + static_cast<std::size_t>(keep[k]) * d, d, key_row);
    }

    const float log_count = max_bias[r] + std::log(lse_bias_sum[r]);
    plan.row_bias[r] = log_count;  // the calibrated modes replace it below
    row_position[r] = head.positions[keep[k]];
  }
  if (options.bias == BiasMode::none) std::fill(plan.row_bias.begin(), plan.row_bias.end(), 0.0f);
  if (options.bias != BiasMode::calibrated && options.bias != BiasMode::bounded) return;

  // Calibration: every merged key against every window query in one product, [rows][R], then
  // each row's log mass under the window.
  const std::size_t R = s.row_positions.size();
  thread_local std::vector<float> dots;  // per-thread scratch, grown on demand
  dots.resize(rows * R);
  if (rows > 0 && R > 0) gemm_nt(plan.row_keys.data(), rows, s.queries.data(), R, d, dots.data(), R);
  for (std::size_t r = 0; r < rows; ++r) {
    const float log_count = plan.row_bias[r];
    const float set_mass = uniform[r] ? neg_inf : std::log(total[r]);
    const float merged_mass = log_window_mass_of_dots(dots.data() + r * R, row_position[r], s);
    const bool defined = set_mass != neg_inf && merged_mass != neg_inf;
    float bias = defined ? set_mass - merged_mass : log_count;
    // max_bias[r] is the largest member bias: merging never lowers the survivor's own weight.
    if (options.bias == BiasMode::bounded) bias = std::clamp(bias, max_bias[r], log_count);
    plan.row_bias[r] = bias;
  }
}

}  // namespace kernels
}  // namespace simcalkv
