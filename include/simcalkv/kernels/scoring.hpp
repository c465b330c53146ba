// simcalkv: window-attention scoring of one KV head, aggregated over its GQA group.
//
// The W*G window queries of the group attend to all n entries (causally, bias included) in one
// matrix product; from the probabilities come the SnapKV score of each entry (mean attention)
// and its mass under the window, w_j = sum_q exp(s_j(q) - m_q), which the merge weights use.
// Cost O(W G n d), memory O(W G n): never the n x n matrix of the research code.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/options.hpp"
#include "simcalkv/scratch.hpp"
#include "simcalkv/window.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace simcalkv::kernels {

/// Widens the head's keys into s.keys [n][d] and their inverse norms into s.inv_norms.
template <StorageElement T>
void load_keys(const HeadView<T>& head, HeadScratch& s) {
  const auto d = static_cast<std::size_t>(head.head_dim);
  const std::size_t n = head.length;
  s.keys.resize(n * d);
  s.inv_norms.resize(n);
  for (std::size_t j = 0; j < n; ++j) {
    float* k = s.keys.data() + j * d;
    head.load_key(j, k);
    const float norm2 = squared_norm(k, d);
    s.inv_norms[j] = norm2 > 0.0f ? 1.0f / std::sqrt(norm2) : 0.0f;
  }
}

/// Gathers the group's window queries, scaled by `scale`, into s.queries [R][d], R = G * W.
inline void gather_window_queries(const WindowView& window, int kv_head, int group, float scale, HeadScratch& s) {
  const auto d = static_cast<std::size_t>(window.head_dim);
  const auto W = static_cast<std::size_t>(window.num_tokens);
  const std::size_t R = static_cast<std::size_t>(group) * W;
  s.queries.resize(R * d);
  s.row_positions.resize(R);
  for (int g = 0; g < group; ++g)
    for (std::size_t t = 0; t < W; ++t) {
      const std::size_t r = static_cast<std::size_t>(g) * W + t;
      const float* q = window.query(kv_head * group + g, static_cast<int>(t));
      for (std::size_t i = 0; i < d; ++i) s.queries[r * d + i] = scale * q[i];
      s.row_positions[r] = window.positions[t];
    }
}

/// Scores every entry of `head` under the window (see file comment). Requires load_keys first.
/// Fills s.probs, s.row_max, s.row_sum, s.score (mean attention) and s.mass.
template <StorageElement T>
void score_window(const HeadView<T>& head, const WindowView& window, int kv_head, int group, HeadScratch& s) {
  const auto d = static_cast<std::size_t>(head.head_dim);
  const std::size_t n = head.length;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  gather_window_queries(window, kv_head, group, scale, s);
  const std::size_t R = s.row_positions.size();
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();

  s.probs.resize(R * n);
  s.row_max.assign(R, neg_inf);
  s.row_sum.assign(R, 0.0f);
  s.score.assign(n, 0.0f);
  s.mass.assign(n, 0.0f);
  if (R == 0 || n == 0) return;

  gemm_nt(s.queries.data(), R, s.keys.data(), n, d, s.probs.data(), n);  // logits [R][n]

  // One pass per row while it is in cache: bias and mask, max, exp, then the row's share of the
  // column sums. Rows are added in row order, a fixed summation order: results are reproducible.
  // Fresh entries have zero bias; adding zeros changes nothing, so it is skipped when all are.
  const bool any_bias = std::any_of(head.bias, head.bias + n, [](float b) { return b != 0.0f; });
  for (std::size_t r = 0; r < R; ++r) {
    float* row = s.probs.data() + r * n;
    const Position limit = s.row_positions[r];
    // Entries are in ascending position order, so the visible ones are a prefix.
    const auto visible = static_cast<std::size_t>(
        std::upper_bound(head.positions, head.positions + n, limit) - head.positions);
    if (any_bias)
      for (std::size_t j = 0; j < visible; ++j) row[j] += head.bias[j];
    std::fill(row + visible, row + n, neg_inf);
    s.row_max[r] = max_of(row, visible);
    if (s.row_max[r] == neg_inf) {
      std::fill(row, row + n, 0.0f);
      continue;
    }
    s.row_sum[r] = exp_shifted_sum(row, s.row_max[r], n);
    if (s.row_sum[r] <= 0.0f) continue;
    axpy2(1.0f, 1.0f / (s.row_sum[r] * static_cast<float>(R)), row, s.mass.data(), s.score.data(), n);
  }
}

/// log sum_{rows that see `position`} exp(dots[r] - m_r) with dots[r] = q_r . key (q_r pre-scaled):
/// the mass under the window of one entry with zero bias; -inf if no row sees it. Overwrites dots.
inline float log_window_mass_of_dots(float* dots, Position position, const HeadScratch& s) {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const std::size_t R = s.row_positions.size();
  float best = neg_inf;
  for (std::size_t r = 0; r < R; ++r) {
    const bool sees = s.row_positions[r] >= position && s.row_max[r] != neg_inf;
    dots[r] = sees ? dots[r] - s.row_max[r] : neg_inf;
    best = std::max(best, dots[r]);
  }
  if (best == neg_inf) return best;
  // exp(-inf) is 0, so rows that do not see the entry drop out of the sum.
  return best + std::log(exp_shifted_sum(dots, best, R));
}

using simcalkv::Pooling;  // options.hpp

/// 1-D pooling of scores over neighbouring entries (SnapKV's clustering of attention).
inline void pool_scores(const float* in, float* out, std::size_t n, Pooling mode, int kernel) {
  if (mode == Pooling::none || kernel <= 1) {
    std::copy(in, in + n, out);
    return;
  }
  const auto half = static_cast<std::ptrdiff_t>(kernel / 2);
  const auto len = static_cast<std::ptrdiff_t>(n);
  for (std::ptrdiff_t j = 0; j < len; ++j) {
    const std::ptrdiff_t lo = std::max<std::ptrdiff_t>(0, j - half), hi = std::min(len - 1, j + half);
    float acc = mode == Pooling::max ? in[lo] : 0.0f;
    for (std::ptrdiff_t i = lo; i <= hi; ++i) acc = mode == Pooling::max ? std::max(acc, in[i]) : acc + in[i];
    // Average over the full kernel, as a zero-padded avg_pool1d does.
    out[j] = mode == Pooling::max ? acc : acc / static_cast<float>(kernel);
  }
}

}  // namespace simcalkv::kernels
