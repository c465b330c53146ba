// simcalkv: LerpKV, SlerpKV and NlerpKV, the research harness's interpolation-merging baselines.
//
// The rule, per head and per call:
//  1. Keep set: the protected entries plus the highest window-attention scorers, up to the budget.
//  2. Each removed entry goes to its most cosine-similar kept key; with a `threshold`, one whose
//     best similarity is below it is evicted instead. The research code searches every kept key
//     (quadratic in the context); by default we search the 64 kept entries nearest in position on
//     each side, as SimCalKV does (search=exact for the code's rule).
//  3. A kept entry c and the entries e_1 < e_2 < ... (position order) that go to it are folded in
//     one at a time, starting from c itself: with W the mass folded so far (W = w_c at first) and
//     w = the window mass of an entry, w_j = sum_q exp(s_j(q) - m_q) (its bias included),
//         t = w_e / (W + w_e),  k <- interp(k, k_e, t),  v <- interp(v, v_e, t),  W <- W + w_e
//     (if every mass so far underflowed, t = 1 / (members so far + 1): a running plain average).
//     Keys and values are interpolated alike. The result takes c's slot and position.
//  4. No bias: c's logit bias is left as it was; its accumulated score, when the head has a score
//     buffer, becomes the sum over the set.
// interp is one of (a toward b by t, |.| the Euclidean norm):
//  - linear (LerpKV):      (1 - t) a + t b. Folding is then exactly the mass-weighted average.
//  - spherical (SlerpKV):  the direction turns along the great circle from a/|a| to b/|b| by the
//    fraction t of the angle between them, and the norm is interpolated linearly,
//    (1 - t)|a| + t|b|, as in the research code (slerp of directions, lerp of magnitudes). Written
//    as cos(t theta) u_a + sin(t theta) p with p the unit component of u_b orthogonal to u_a and
//    theta = atan2(|.|, cos): stable at every angle. When the orthogonal part vanishes (below
//    1e-6): nearly parallel vectors use the normalised linear blend of the directions (equal to
//    slerp to third order in theta); antiparallel ones, where the great circle is not defined,
//    turn through a fixed perpendicular (basis vector of a's smallest component, made orthogonal
//    to a), so the result keeps the interpolated norm instead of collapsing towards zero.
//    A zero vector has no direction: linear interpolation is used.
//  - normalised linear (NlerpKV): the linear blend rescaled to the norm (1 - t)|a| + t|b|; where
//    the blend cancels out (antiparallel, below 1e-6 of that norm) it falls back to spherical.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/similarity.hpp"
#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/policies/match.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

enum class Interpolation { linear, spherical, normalized_linear };

namespace kernels {

/// out = interp(a, b, t) (see the file comment); `out` may alias `a` or `b`. Arithmetic in double.
inline void interpolate(Interpolation mode, const float* a, const float* b, float t_in, float* out,
                        std::size_t d) noexcept {
  const double t = t_in;
  double aa = 0.0, bb = 0.0, ab = 0.0;
  for (std::size_t i = 0; i < d; ++i) {
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
    ab += static_cast<double>(a[i]) * b[i];
  }
  const double na = std::sqrt(aa), nb = std::sqrt(bb);
  // out = A a + B b + C e_k, with the scalars worked out first so that out may alias an input.
  double A = 1.0 - t, B = t, C = 0.0;
  std::size_t k = 0;
  constexpr double eps = 1e-6;
  if (mode != Interpolation::linear && na > 0.0 && nb > 0.0) {
    const double norm = (1.0 - t) * na + t * nb;
    bool spherical = mode == Interpolation::spherical;
    if (!spherical) {
      const double blend2 = (1.0 - t) * (1.0 - t) * aa + 2.0 * t * (1.0 - t) * ab + t * t * bb;
      const double blend = std::sqrt(std::max(blend2, 0.0));
      if (blend > eps * norm) {
        A = (1.0 - t) * norm / blend;
        B = t * norm / blend;
      } else {
        spherical = true;
      }
    }
    if (spherical) {
      const double c = std::clamp(ab / (na * nb), -1.0, 1.0);
      // |u_b - c u_a|^2 = 1 - c^2 for unit vectors; computed that way it cannot go negative.
      const double s = std::sqrt(std::max(0.0, (1.0 - c) * (1.0 + c)));
      if (s > eps) {
        const double theta = std::atan2(s, c);
        const double ct = std::cos(t * theta), st = std::sin(t * theta);
        // norm * (ct u_a + st (u_b - c u_a) / s)
        A = norm * (ct - st * c / s) / na;
        B = norm * st / (s * nb);
      } else if (c > 0.0 || d < 2) {
        // Parallel (or one dimension, no perpendicular exists): normalised blend of the directions.
        const double alpha = (1.0 - t) / na, beta = t / nb;
        const double blend2 = (1.0 - t) * (1.0 - t) + 2.0 * t * (1.0 - t) * c + t * t;
        const double blend = std::sqrt(std::max(blend2, 0.0));
        if (blend > eps) {
          A = norm * alpha / blend;
          B = norm * beta / blend;
        }  // else (d == 1, antiparallel, t = 1/2): keep the plain linear blend
      } else {
        // Antiparallel: turn through the perpendicular p = (e_k - a_k u_a) / |.|, k = argmin |a_i|.
        for (std::size_t i = 1; i < d; ++i)
          if (std::abs(a[i]) < std::abs(a[k])) k = i;
        const double uk = a[k] / na;
        const double pn = std::sqrt(std::max(1.0 - uk * uk, 0.0));
        const double theta = std::numbers::pi;
        const double ct = std::cos(t * theta), st = std::sin(t * theta);
        // norm * (ct u_a + st (e_k - uk u_a) / pn)
        A = norm * (ct - st * uk / pn) / na;
        B = 0.0;
        C = norm * st / pn;
      }
    }
  }
  for (std::size_t i = 0; i < d; ++i) {
    double x = A * a[i] + B * b[i];
    if (i == k) x += C;
    out[i] = static_cast<float>(x);
  }
}

}  // namespace kernels

struct InterpolationKVOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: as many as the window has queries
  /// Removed entries whose best cosine similarity is below this are evicted instead of merged.
  float similarity_threshold = -std::numeric_limits<float>::infinity();
  SimilaritySearch search = SimilaritySearch::local;  // exact: the research code's full search
  std::size_t search_radius = 64;  // for SimilaritySearch::local
};

/// LerpKV, SlerpKV and NlerpKV: one class, the interpolation a template argument.
template <Interpolation Mode>
class InterpolationKV : public WindowScored<InterpolationKV<Mode>> {
 public:
  InterpolationKV() = default;
  explicit InterpolationKV(const InterpolationKVOptions& options) : options_(options) {
    detail::require(!std::isnan(options.similarity_threshold), ErrorCode::invalid_argument, name(),
                    ": similarity threshold is NaN");
    detail::require(options.search_radius > 0, ErrorCode::invalid_argument, name(),
                    ": search radius must be positive");
  }

  [[nodiscard]] std::string_view name() const noexcept {
    if constexpr (Mode == Interpolation::linear) return "LerpKV";
    else if constexpr (Mode == Interpolation::spherical) return "SlerpKV";
    else return "NlerpKV";
  }
  [[nodiscard]] const InterpolationKVOptions& options() const noexcept { return options_; }

  /// Match (nearest kept key above the threshold) and Merge (interpolation in position order).
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const auto d = static_cast<std::size_t>(head.head_dim);
    const std::size_t n = head.length;
    match_removed(d, options_.search, options_.search_radius, s);
    drop_matches_below(options_.similarity_threshold, s.matching);
    const auto& keep = s.selection.keep;
    const auto& removed = s.selection.removed;
    const auto& target = s.matching.target;

    HeadPlan& plan = s.plan;
    plan.set_keep(keep, n);
    for (std::size_t c = 0; c < removed.size(); ++c)
      if (target[c] >= 0) plan.row_of_slot[static_cast<std::size_t>(target[c])] = -2;  // receives
    std::vector<double> folded;        // per row: mass folded so far
    std::vector<std::size_t> members;  // per row: entries folded so far
    for (std::size_t k = 0; k < keep.size(); ++k) {
      if (plan.row_of_slot[k] != -2) continue;
      plan.row_of_slot[k] = -1;
      const std::size_t r = plan.add_row(k, HeadPlan::key | HeadPlan::value | HeadPlan::score, head.head_dim);
      const std::uint32_t j = keep[k];
      std::copy_n(s.keys.data() + static_cast<std::size_t>(j) * d, d, plan.row_keys.data() + r * d);
      head.load_value(j, plan.row_values.data() + r * d);
      plan.row_bias[r] = head.bias[j];
      plan.row_score[r] = head.scores ? head.scores[j] : 0.0f;
      folded.push_back(s.mass[j]);
      members.push_back(1);
    }
    std::vector<float> value(d);
    for (std::size_t c = 0; c < removed.size(); ++c) {  // ascending positions
      if (target[c] < 0) {
        ++plan.evicted;
        continue;
      }
      ++plan.merged;
      const std::uint32_t e = removed[c];
      const auto r = static_cast<std::size_t>(plan.row_of_slot[static_cast<std::size_t>(target[c])]);
      const double w = s.mass[e];
      const double total = folded[r] + w;
      const double t = total > 1e-30 ? w / total : 1.0 / static_cast<double>(members[r] + 1);
      folded[r] = total;
      ++members[r];
      head.load_value(e, value.data());
      float* key_row = plan.row_keys.data() + r * d;
      float* value_row = plan.row_values.data() + r * d;
      kernels::interpolate(Mode, key_row, s.keys.data() + static_cast<std::size_t>(e) * d, static_cast<float>(t),
                           key_row, d);
      kernels::interpolate(Mode, value_row, value.data(), static_cast<float>(t), value_row, d);
      if (head.scores) plan.row_score[r] += head.scores[e];
    }
  }

  /// Options from a registry option string: sinks, recent, threshold, search, radius.
  static InterpolationKVOptions read_options(PolicyOptions& o) {
    InterpolationKVOptions k;
    read_protection(o, k);
    k.similarity_threshold = static_cast<float>(o.get_double("threshold", k.similarity_threshold, -1.0, 1.0));
    read_search(o, k);
    return k;
  }

 private:
  InterpolationKVOptions options_;
};

using LerpKV = InterpolationKV<Interpolation::linear>;
using SlerpKV = InterpolationKV<Interpolation::spherical>;
using NlerpKV = InterpolationKV<Interpolation::normalized_linear>;

}  // namespace simcalkv
