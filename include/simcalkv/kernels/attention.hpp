// simcalkv: attention over one KV head with the per-entry logit bias: the public entry points.
//
// out_r = sum_j softmax_j(scale * q_r . k_j + bias_j) v_j for each query row r, computed with an
// online softmax in float over tiles of entries; the kernels (kernels/attend.hpp) run for the
// architecture dispatch.hpp chose.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/attend.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/kernels/dispatch.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

namespace simcalkv {
namespace kernels {

/// out_r = softmax(scale * q_r . K + bias) V for every row over the entries of `segments` in
/// order (one head, or the pages of one), on the active kernel table.
template <StorageElement T>
void attend_rows(std::span<const HeadView<T>> segments, const AttentionRows& rows, const AttentionOptions& options,
                 const KernelTable& table = active()) {
  std::size_t n = 0;
  for (const auto& s : segments) n += s.length;
  if (segments.empty()) return;
  // Per-thread scratch, grown on demand: no allocation per call once warm.
  thread_local std::vector<float> scratch;
  scratch.resize(simd::attend_scratch_floats(static_cast<std::size_t>(rows.count), n,
                                             static_cast<std::size_t>(segments[0].head_dim), options.accumulate_scores));
  if constexpr (std::is_same_v<T, float>) table.attend_f32(segments.data(), segments.size(), rows, options, scratch.data());
  else if constexpr (std::is_same_v<T, half>) table.attend_f16(segments.data(), segments.size(), rows, options, scratch.data());
  else table.attend_bf16(segments.data(), segments.size(), rows, options, scratch.data());
}
template <StorageElement T>
void attend_rows(const HeadView<T>& head, const AttentionRows& rows, const AttentionOptions& options,
                 const KernelTable& table = active()) {
  attend_rows(std::span<const HeadView<T>>(&head, 1), rows, options, table);
}

}  // namespace kernels

namespace detail {
inline void check_queries(std::span<const float> queries, std::size_t expected, const char* what) {
  require(queries.size() == expected, ErrorCode::invalid_argument, what, ": expected ", expected,
          " query floats, got ", queries.size());
  require(all_finite(queries.data(), queries.size()), ErrorCode::non_finite, what,
          ": queries contain NaN or Inf");
}

/// The segments (one head, or the pages of one) attention reads: valid, with one head_dim, and a
/// score buffer wherever scores are accumulated.
template <StorageElement T>
void check_segments(std::span<const HeadView<T>> segments, const AttentionOptions& options, const char* what) {
  require(!segments.empty(), ErrorCode::invalid_argument, what, ": no entries (no segments)");
  for (const auto& head : segments) {
    validate_layout(head, what);
    require(head.head_dim == segments[0].head_dim, ErrorCode::invalid_argument, what, ": segments differ in head_dim");
    require(!options.accumulate_scores || head.scores, ErrorCode::invalid_argument, what,
            ": accumulate_scores needs a score buffer in the head view");
  }
}
}  // namespace detail

/// Decode attention: the G query heads of one token (queries [G][head_dim]) over every entry of
/// `segments`, taken in order (one head, or the pages of a paged head); writes out [G][head_dim].
template <StorageElement T>
void decode_attention(std::span<const HeadView<T>> segments, std::span<const float> queries, int num_query_heads,
                      std::span<float> out, const AttentionOptions& options = {}) {
  detail::check_segments(segments, options, "decode_attention");
  const int d = segments[0].head_dim;
  detail::require(num_query_heads > 0, ErrorCode::invalid_argument,
                  "decode_attention: num_query_heads must be positive");
  const auto rows_floats = static_cast<std::size_t>(num_query_heads) * static_cast<std::size_t>(d);
  detail::check_queries(queries, rows_floats, "decode_attention");
  detail::require(out.size() == rows_floats, ErrorCode::invalid_argument, "decode_attention: out has ",
                  out.size(), " floats, expected ", rows_floats);
  kernels::AttentionRows rows{queries.data(), d, nullptr, num_query_heads, out.data(), d};
  kernels::attend_rows(segments, rows, options);
}
template <StorageElement T>
void decode_attention(const HeadView<T>& head, std::span<const float> queries, int num_query_heads,
                      std::span<float> out, const AttentionOptions& options = {}) {
  decode_attention(std::span<const HeadView<T>>(&head, 1), queries, num_query_heads, out, options);
}

/// Block attention for chunked prefill after compression: queries [G][m][head_dim] of m tokens at
/// `query_positions` [m]; query token t sees entries with position <= query_positions[t] (so the
/// block's own keys must already be appended). Writes out [G][m][head_dim].
template <StorageElement T>
void block_attention(std::span<const HeadView<T>> segments, std::span<const float> queries, int num_query_heads,
                     std::span<const Position> query_positions, std::span<float> out,
                     const AttentionOptions& options = {}) {
  detail::check_segments(segments, options, "block_attention");
  const int d = segments[0].head_dim;
  detail::require(num_query_heads > 0, ErrorCode::invalid_argument,
                  "block_attention: num_query_heads must be positive");
  const std::size_t m = query_positions.size();
  const auto total = static_cast<std::size_t>(num_query_heads) * m * static_cast<std::size_t>(d);
  detail::check_queries(queries, total, "block_attention");
  detail::require(out.size() == total, ErrorCode::invalid_argument, "block_attention: out has ", out.size(),
                  " floats, expected ", total);
  // Rows are (head, token) pairs; each row needs its own position, so expand the positions.
  std::vector<Position> row_positions(static_cast<std::size_t>(num_query_heads) * m);
  for (int g = 0; g < num_query_heads; ++g)
    std::copy(query_positions.begin(), query_positions.end(), row_positions.begin() + static_cast<std::ptrdiff_t>(g * m));
  kernels::AttentionRows rows{queries.data(), d, row_positions.data(), static_cast<int>(row_positions.size()),
                              out.data(), d};
  // Accumulated scores: each token adds its group-mean probability, as a decode step does (the
  // default, the mean over all G * m rows, would count a block of m tokens as one).
  AttentionOptions per_token = options;
  if (per_token.score_row_weight <= 0.0f) per_token.score_row_weight = 1.0f / static_cast<float>(num_query_heads);
  kernels::attend_rows(segments, rows, per_token);
}
template <StorageElement T>
void block_attention(const HeadView<T>& head, std::span<const float> queries, int num_query_heads,
                     std::span<const Position> query_positions, std::span<float> out,
                     const AttentionOptions& options = {}) {
  block_attention(std::span<const HeadView<T>>(&head, 1), queries, num_query_heads, query_positions, out, options);
}

}  // namespace simcalkv
