// simcalkv: attention over one KV head with the per-entry logit bias.
//
// out_r = sum_j softmax_j(scale * q_r . k_j + bias_j) v_j for each query row r, computed with an
// online softmax in float over tiles of entries. All rows share one read of each tile of K and V,
// so the G query heads of a GQA group cost one pass over the cache. With AVX2 and FMA, contiguous
// keys and values and head_dim a multiple of 16 take a register-blocked path (attend_rows_fast);
// anything else the portable one.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/simd.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <type_traits>
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

/// The portable path: any strides, any head_dim, any build target.
template <StorageElement T>
void attend_rows_generic(const HeadView<T>& head, const AttentionRows& rows, const AttentionOptions& options) {
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

#if defined(__AVX2__) && defined(__FMA__)
namespace detail_attention {

/// 16 consecutive storage elements widened to two float vectors in "storage order": elements
/// 0..7 and 8..15 for float and half; for bfloat16 the even and the odd elements, because a bf16
/// pair in a 32-bit lane becomes two floats by one shift and one mask. Queries and accumulators
/// are kept in the same order, so dot products and sums need no shuffles; only the output is
/// put back in natural order.
template <class T>
struct Block16 {
  static constexpr bool available = false;
};
template <>
struct Block16<float> {
  static constexpr bool available = true;
  static constexpr bool interleaved = false;
  static void load(const float* p, __m256& a, __m256& b) noexcept {
    a = _mm256_loadu_ps(p);
    b = _mm256_loadu_ps(p + 8);
  }
};
template <>
struct Block16<bfloat16> {
  static constexpr bool available = true;
  static constexpr bool interleaved = true;
  static void load(const bfloat16* p, __m256& a, __m256& b) noexcept {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    a = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    b = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
};
#if defined(__F16C__)
template <>
struct Block16<half> {
  static constexpr bool available = true;
  static constexpr bool interleaved = false;
  static void load(const half* p, __m256& a, __m256& b) noexcept {
    a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  }
};
#endif

/// Sums of each of 8 vectors, as one vector (element k = sum of v[k]).
inline __m256 hsum8(const __m256* v) noexcept {
  const __m256 h01 = _mm256_hadd_ps(v[0], v[1]);
  const __m256 h23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 h45 = _mm256_hadd_ps(v[4], v[5]);
  const __m256 h67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 h0123 = _mm256_hadd_ps(h01, h23);  // [s0 s1 s2 s3 | s0' s1' s2' s3'] (low and high halves)
  const __m256 h4567 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

inline float hsum(__m256 v) noexcept {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/// Per-thread scratch, grown on demand: no allocation per call once warm.
inline std::vector<float>& scratch_floats() {
  thread_local std::vector<float> buffer;
  return buffer;
}
inline std::vector<float>& scratch_logits() {
  thread_local std::vector<float> buffer;
  return buffer;
}

/// One tile of entries [j0, j0 + m) for NR query rows (storage-order queries q, pre-scaled):
/// logits, online-softmax update, and the probability-weighted values added into acc.
/// Prefetches the cache lines of `bytes` bytes at p.
inline void prefetch_row(const void* p, std::size_t bytes) noexcept {
  const char* c = static_cast<const char*>(p);
  for (std::size_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

template <class T, int NR>
inline void attend_tile(const HeadView<T>& head, std::size_t j0, std::size_t m, const float* q, const Position* limits,
                        float* acc, float* running_max, float* running_sum, float* logits, std::size_t tile,
                        float* all_logits, std::size_t all_stride, bool prefetch) noexcept {
  using B = Block16<T>;
  constexpr int NE = 2;  // entries per step of the logit loop: NR * NE accumulators
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const auto d = static_cast<std::size_t>(head.head_dim);

  const std::size_t row_bytes = d * sizeof(T);
  // Logits: NR rows x NE entries per step, each key block loaded once for all rows. The first row
  // group of a tile also prefetches the tile's values (the value loop below reads them in
  // columns, which the hardware prefetcher does not follow) and the next tile's keys.
  for (std::size_t t = 0; t < m; t += NE) {
    const T* kp[NE];
    for (int e = 0; e < NE; ++e) kp[e] = head.key(j0 + std::min(t + static_cast<std::size_t>(e), m - 1));
    if (prefetch) {
      for (int e = 0; e < NE && t + static_cast<std::size_t>(e) < m; ++e) {
        const std::size_t j = j0 + t + static_cast<std::size_t>(e);
        prefetch_row(head.value(j), row_bytes);
        if (j + tile < head.length) prefetch_row(head.key(j + tile), row_bytes);
      }
    }
    __m256 sums[NR * NE];
    for (auto& s : sums) s = _mm256_setzero_ps();
    for (std::size_t b = 0; b < d; b += 16) {
      __m256 k0[NE], k1[NE];
      for (int e = 0; e < NE; ++e) B::load(kp[e] + b, k0[e], k1[e]);
      for (int r = 0; r < NR; ++r) {
        const __m256 q0 = _mm256_loadu_ps(q + static_cast<std::size_t>(r) * d + b);
        const __m256 q1 = _mm256_loadu_ps(q + static_cast<std::size_t>(r) * d + b + 8);
        for (int e = 0; e < NE; ++e) sums[r * NE + e] = _mm256_fmadd_ps(q1, k1[e], _mm256_fmadd_ps(q0, k0[e], sums[r * NE + e]));
      }
    }
    float dots[8];
    if constexpr (NR * NE == 8) {
      _mm256_storeu_ps(dots, hsum8(sums));
    } else {
      for (int k = 0; k < NR * NE; ++k) dots[k] = hsum(sums[k]);
    }
    for (int e = 0; e < NE && t + static_cast<std::size_t>(e) < m; ++e) {
      const std::size_t j = j0 + t + static_cast<std::size_t>(e);
      for (int r = 0; r < NR; ++r) {
        const bool visible = !limits || head.positions[j] <= limits[r];
        logits[static_cast<std::size_t>(r) * tile + t + static_cast<std::size_t>(e)] =
            visible ? dots[r * NE + e] + head.bias[j] : neg_inf;
      }
    }
  }
  if (all_logits)
    for (int r = 0; r < NR; ++r)
      std::copy_n(logits + static_cast<std::size_t>(r) * tile, m, all_logits + static_cast<std::size_t>(r) * all_stride + j0);

  // Online softmax: logits become exp(logit - running max).
  bool any = false;
  for (int r = 0; r < NR; ++r) {
    float* lr = logits + static_cast<std::size_t>(r) * tile;
    const float tile_max = max_of(lr, m);
    if (tile_max == neg_inf) {
      std::fill(lr, lr + m, 0.0f);
      continue;
    }
    any = true;
    const float new_max = std::max(running_max[r], tile_max);
    if (running_max[r] != neg_inf && new_max != running_max[r]) {
      const float rescale = std::exp(running_max[r] - new_max);
      running_sum[r] *= rescale;
      kernels::scale(rescale, acc + static_cast<std::size_t>(r) * d, d);
    }
    running_max[r] = new_max;
    running_sum[r] += exp_shifted_sum(lr, new_max, m);
  }
  if (!any) return;

  // Values: per block of 16 dims, NR x 2 accumulators stay in registers over the tile.
  for (std::size_t b = 0; b < d; b += 16) {
    __m256 a0[NR], a1[NR];
    for (int r = 0; r < NR; ++r) {
      a0[r] = _mm256_loadu_ps(acc + static_cast<std::size_t>(r) * d + b);
      a1[r] = _mm256_loadu_ps(acc + static_cast<std::size_t>(r) * d + b + 8);
    }
    for (std::size_t t = 0; t < m; ++t) {
      __m256 v0, v1;
      B::load(head.value(j0 + t) + b, v0, v1);
      for (int r = 0; r < NR; ++r) {
        const __m256 p = _mm256_broadcast_ss(logits + static_cast<std::size_t>(r) * tile + t);
        a0[r] = _mm256_fmadd_ps(p, v0, a0[r]);
        a1[r] = _mm256_fmadd_ps(p, v1, a1[r]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      _mm256_storeu_ps(acc + static_cast<std::size_t>(r) * d + b, a0[r]);
      _mm256_storeu_ps(acc + static_cast<std::size_t>(r) * d + b + 8, a1[r]);
    }
  }
}

}  // namespace detail_attention

/// AVX2 path for contiguous keys and values, head_dim a multiple of 16, float/half/bf16 storage.
/// Tiles of entries outside, groups of up to 4 query rows inside: each tile of K and V is read
/// from memory once for all rows, 16-bit storage is widened in registers, and the accumulators
/// of a row group stay in registers across the tile.
template <StorageElement T>
void attend_rows_fast(const HeadView<T>& head, const AttentionRows& rows, const AttentionOptions& options) {
  using namespace detail_attention;
  constexpr std::size_t tile = 32;
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const auto d = static_cast<std::size_t>(head.head_dim);
  const auto R = static_cast<std::size_t>(rows.count);
  const std::size_t n = head.length;
  const float scale = options.scale != 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(d));

  std::vector<float>& scratch = scratch_floats();
  scratch.resize(R * d + R * d + 2 * R + 4 * tile);
  float* q = scratch.data();       // [R][d] pre-scaled, storage order
  float* acc = q + R * d;          // [R][d] storage order
  float* running_max = acc + R * d;
  float* running_sum = running_max + R;
  float* logits = running_sum + R;  // [4][tile]
  for (std::size_t r = 0; r < R; ++r) {
    const float* src = rows.queries + static_cast<std::ptrdiff_t>(r) * rows.query_stride;
    float* dst = q + r * d;
    if constexpr (Block16<T>::interleaved) {
      for (std::size_t b = 0; b < d; b += 16)
        for (std::size_t k = 0; k < 8; ++k) {
          dst[b + k] = scale * src[b + 2 * k];
          dst[b + 8 + k] = scale * src[b + 2 * k + 1];
        }
    } else {
      for (std::size_t i = 0; i < d; ++i) dst[i] = scale * src[i];
    }
  }
  std::fill(acc, acc + R * d, 0.0f);
  std::fill(running_max, running_max + R, neg_inf);
  std::fill(running_sum, running_sum + R, 0.0f);

  float* all_logits = nullptr;
  if (options.accumulate_scores) {
    std::vector<float>& buffer = scratch_logits();
    buffer.resize(R * n);
    all_logits = buffer.data();
  }

  for (std::size_t j0 = 0; j0 < n; j0 += tile) {
    const std::size_t m = std::min(tile, n - j0);
    std::size_t r = 0;
    auto group = [&](auto rows_in_group) {
      constexpr int NR = decltype(rows_in_group)::value;
      attend_tile<T, NR>(head, j0, m, q + r * d, rows.positions ? rows.positions + r : nullptr, acc + r * d,
                         running_max + r, running_sum + r, logits, tile, all_logits ? all_logits + r * n : nullptr, n,
                         r == 0);
      r += NR;
    };
    while (r + 4 <= R) group(std::integral_constant<int, 4>{});
    if (r + 2 <= R) group(std::integral_constant<int, 2>{});
    if (r < R) group(std::integral_constant<int, 1>{});
  }

  for (std::size_t r = 0; r < R; ++r) {
    float* out = rows.out + static_cast<std::ptrdiff_t>(r) * rows.out_stride;
    const float inv = running_sum[r] > 0.0f ? 1.0f / running_sum[r] : 0.0f;
    const float* a = acc + r * d;
    if constexpr (Block16<T>::interleaved) {
      for (std::size_t b = 0; b < d; b += 16)
        for (std::size_t k = 0; k < 8; ++k) {
          out[b + 2 * k] = a[b + k] * inv;
          out[b + 2 * k + 1] = a[b + 8 + k] * inv;
        }
    } else {
      for (std::size_t i = 0; i < d; ++i) out[i] = a[i] * inv;
    }
  }

  if (options.accumulate_scores) {
    const float row_weight = 1.0f / static_cast<float>(R);
    for (std::size_t r = 0; r < R; ++r) {
      if (running_sum[r] <= 0.0f) continue;
      const float* lr = all_logits + r * n;
      const float norm = row_weight / running_sum[r];
      for (std::size_t j = 0; j < n; ++j)
        if (lr[j] != neg_inf) head.scores[j] += std::exp(lr[j] - running_max[r]) * norm;
    }
  }
}
#endif  // __AVX2__ && __FMA__

/// out_r = softmax(scale * q_r . K + bias) V for every row (see the file comment).
template <StorageElement T>
void attend_rows(const HeadView<T>& head, const AttentionRows& rows, const AttentionOptions& options) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (detail_attention::Block16<T>::available) {
    if (head.head_dim % 16 == 0 && head.keys_contiguous() && head.values_contiguous())
      return attend_rows_fast(head, rows, options);
  }
#endif
  attend_rows_generic(head, rows, options);
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
