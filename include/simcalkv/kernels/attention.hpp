// simcalkv: attention over one KV head with the per-entry logit bias.
//
// out_r = sum_j softmax_j(scale * q_r . k_j + bias_j) v_j for each query row r, computed with an
// online softmax in float over tiles of entries. All rows share one read of each tile of K and V,
// so the G query heads of a GQA group cost one pass over the cache.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/simd.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

namespace simcalkv {

struct AttentionOptions {
  /// Logit scale; 0 means 1/sqrt(head_dim).
  float scale = 0.0f;
  /// Add each entry's probability, averaged over the query rows, to head.scores (which must be
  /// set). H2O-style accumulated scores and decode-time policies read it.
  bool accumulate_scores = false;
};

namespace kernels {

/// Query rows for one head: row r at queries + r * query_stride (dims contiguous). If positions is
/// set, row r sees only entries with positions[j] <= positions[r] (causal); otherwise all entries.
struct AttentionRows {
  const float* queries = nullptr;
  std::ptrdiff_t query_stride = 0;
  const Position* positions = nullptr;
  int count = 0;
  float* out = nullptr;
  std::ptrdiff_t out_stride = 0;
};

template <StorageElement T>
void attend_rows(const HeadView<T>& head, const AttentionRows& rows, const AttentionOptions& options) {
  constexpr std::size_t tile = 32;
  const auto d = static_cast<std::size_t>(head.head_dim);
  const auto R = static_cast<std::size_t>(rows.count);
  const std::size_t n = head.length;
  const float scale = options.scale != 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(d));
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();

  std::vector<float> scratch(2 * tile * d + R * tile + 2 * R + R * d);
  float* key_tile = scratch.data();
  float* value_tile = key_tile + tile * d;
  float* logits = value_tile + tile * d;  // [R][tile]
  float* running_max = logits + R * tile;
  float* running_sum = running_max + R;
  float* acc = running_sum + R;  // [R][d]
  std::fill(running_max, running_max + R, neg_inf);
  std::fill(running_sum, running_sum + R, 0.0f);
  std::fill(acc, acc + R * d, 0.0f);

  // Accumulating scores needs the final normaliser, so keep every logit for a second pass.
  std::vector<float> all_logits(options.accumulate_scores ? R * n : 0);

  const bool direct_keys = std::is_same_v<T, float> && head.keys_contiguous();
  const bool direct_values = std::is_same_v<T, float> && head.values_contiguous();

  for (std::size_t j0 = 0; j0 < n; j0 += tile) {
    const std::size_t m = std::min(tile, n - j0);
    const float* k_rows[tile];
    for (std::size_t t = 0; t < m; ++t) {
      if (direct_keys) {
        k_rows[t] = reinterpret_cast<const float*>(head.key(j0 + t));
      } else {
        head.load_key(j0 + t, key_tile + t * d);
        k_rows[t] = key_tile + t * d;
      }
    }
    for (std::size_t r = 0; r < R; ++r) {
      const float* q = rows.queries + static_cast<std::ptrdiff_t>(r) * rows.query_stride;
      float* lr = logits + r * tile;
      for (std::size_t t = 0; t < m; ++t) {
        const bool visible = !rows.positions || head.positions[j0 + t] <= rows.positions[r];
        lr[t] = visible ? scale * dot(q, k_rows[t], d) + head.bias[j0 + t] : neg_inf;
      }
      if (!all_logits.empty()) std::copy(lr, lr + m, all_logits.data() + r * n + j0);
      const float tile_max = max_of(lr, m);
      if (tile_max == neg_inf) {
        std::fill(lr, lr + m, 0.0f);
        continue;
      }
      const float new_max = std::max(running_max[r], tile_max);
      if (running_max[r] != neg_inf && new_max != running_max[r]) {
        const float rescale = std::exp(running_max[r] - new_max);
        running_sum[r] *= rescale;
        kernels::scale(rescale, acc + r * d, d);
      }
      running_max[r] = new_max;
      running_sum[r] += exp_shifted_sum(lr, new_max, m);
    }
    for (std::size_t t = 0; t < m; ++t) {
      const float* v;
      if (direct_values) {
        v = reinterpret_cast<const float*>(head.value(j0 + t));
      } else {
        head.load_value(j0 + t, value_tile + t * d);
        v = value_tile + t * d;
      }
      for (std::size_t r = 0; r < R; ++r) {
        const float p = logits[r * tile + t];
        if (p != 0.0f) axpy(p, v, acc + r * d, d);
      }
    }
  }

  for (std::size_t r = 0; r < R; ++r) {
    float* out = rows.out + static_cast<std::ptrdiff_t>(r) * rows.out_stride;
    const float inv = running_sum[r] > 0.0f ? 1.0f / running_sum[r] : 0.0f;
    for (std::size_t i = 0; i < d; ++i) out[i] = acc[r * d + i] * inv;
  }

  if (options.accumulate_scores) {
    const float row_weight = 1.0f / static_cast<float>(R);
    for (std::size_t r = 0; r < R; ++r) {
      if (running_sum[r] <= 0.0f) continue;
      const float* lr = all_logits.data() + r * n;
      const float norm = row_weight / running_sum[r];
      for (std::size_t j = 0; j < n; ++j)
        if (lr[j] != neg_inf) head.scores[j] += std::exp(lr[j] - running_max[r]) * norm;
    }
  }
}

}  // namespace kernels

namespace detail {
inline void check_queries(std::span<const float> queries, std::size_t expected, const char* what) {
  require(queries.size() == expected, ErrorCode::invalid_argument, what, ": expected ", expected,
          " query floats, got ", queries.size());
  require(all_finite(queries.data(), queries.size()), ErrorCode::non_finite, what,
          ": queries contain NaN or Inf");
}
}  // namespace detail

/// Decode attention: the G query heads of one token (queries [G][head_dim]) over every entry of
/// `head`; writes out [G][head_dim].
template <StorageElement T>
void decode_attention(const HeadView<T>& head, std::span<const float> queries, int num_query_heads,
                      std::span<float> out, const AttentionOptions& options = {}) {
  detail::validate_layout(head, "decode_attention");
  detail::require(num_query_heads > 0, ErrorCode::invalid_argument,
                  "decode_attention: num_query_heads must be positive");
  const auto rows_floats = static_cast<std::size_t>(num_query_heads) * static_cast<std::size_t>(head.head_dim);
  detail::check_queries(queries, rows_floats, "decode_attention");
  detail::require(out.size() == rows_floats, ErrorCode::invalid_argument, "decode_attention: out has ",
                  out.size(), " floats, expected ", rows_floats);
  detail::require(!options.accumulate_scores || head.scores, ErrorCode::invalid_argument,
                  "decode_attention: accumulate_scores needs a score buffer in the head view");
  kernels::AttentionRows rows{queries.data(), head.head_dim, nullptr, num_query_heads, out.data(), head.head_dim};
  kernels::attend_rows(head, rows, options);
}

/// Block attention for chunked prefill after compression: queries [G][m][head_dim] of m tokens at
/// `query_positions` [m]; query token t sees entries with position <= query_positions[t] (so the
/// block's own keys must already be appended). Writes out [G][m][head_dim].
template <StorageElement T>
void block_attention(const HeadView<T>& head, std::span<const float> queries, int num_query_heads,
                     std::span<const Position> query_positions, std::span<float> out,
                     const AttentionOptions& options = {}) {
  detail::validate_layout(head, "block_attention");
  detail::require(num_query_heads > 0, ErrorCode::invalid_argument,
                  "block_attention: num_query_heads must be positive");
  const std::size_t m = query_positions.size();
  const auto total = static_cast<std::size_t>(num_query_heads) * m * static_cast<std::size_t>(head.head_dim);
  detail::check_queries(queries, total, "block_attention");
  detail::require(out.size() == total, ErrorCode::invalid_argument, "block_attention: out has ", out.size(),
                  " floats, expected ", total);
  detail::require(!options.accumulate_scores || head.scores, ErrorCode::invalid_argument,
                  "block_attention: accumulate_scores needs a score buffer in the head view");
  // Rows are (head, token) pairs; each row needs its own position, so expand the positions.
  std::vector<Position> row_positions(static_cast<std::size_t>(num_query_heads) * m);
  for (int g = 0; g < num_query_heads; ++g)
    std::copy(query_positions.begin(), query_positions.end(), row_positions.begin() + static_cast<std::ptrdiff_t>(g * m));
  kernels::AttentionRows rows{queries.data(), head.head_dim, row_positions.data(),
                              static_cast<int>(row_positions.size()), out.data(), head.head_dim};
  kernels::attend_rows(head, rows, options);
}

}  // namespace simcalkv
