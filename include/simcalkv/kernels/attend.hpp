// simcalkv: attention of query rows over one KV head with the per-entry bias (architecture code).
//
// out_r = sum_j softmax_j(scale * q_r . k_j + bias_j) v_j, with an online softmax in float over
// tiles of entries; all rows share one read of each tile of K and V, so the G query heads of a GQA
// group cost one pass over the cache.
//
// Contiguous keys and values with head_dim a multiple of 2L (L lanes) take the register-blocked
// path: dimensions in blocks of 2L, widened in registers from float, half or bfloat16, in "storage
// order" (for bfloat16 the even elements, then the odd ones: a bf16 pair in a 32-bit lane becomes
// two floats by one shift and one mask); queries and accumulators are kept in the same order, so dot
// products and sums need no shuffles, and only the output is put back in natural order. Anything
// else takes the portable path (any strides, any head_dim). Every function is a template on A.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/simd.hpp"

#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace simcalkv {

struct AttentionOptions {
  /// Logit scale; 0 means 1/sqrt(head_dim).
  float scale = 0.0f;
  /// Add each entry's probability, weighted by score_row_weight per query row, to head.scores
  /// (which must be set). H2O-style accumulated scores and decode-time policies read it.
  bool accumulate_scores = false;
  /// Weight of one row's probabilities in head.scores; 0 means 1 / rows (the mean over the rows).
  /// block_attention sets 1 / G, so a block of m tokens adds the sum over its tokens of the
  /// group-mean probability, as m decode steps would (H2O's accumulated attention).
  float score_row_weight = 0.0f;
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

namespace simd {

inline constexpr std::size_t attend_tile = 32;

/// Floats of scratch attend<A, T> needs (the caller owns it, so architecture code allocates nothing).
inline constexpr std::size_t attend_scratch_floats(std::size_t rows, std::size_t n, std::size_t d,
                                                   bool accumulate) noexcept {
  return 2 * attend_tile * d + rows * attend_tile + 2 * rows + 2 * rows * d + (accumulate ? rows * n : 0);
}

template <class A, class T>
inline const std::uint16_t* bits_of(const T* p) noexcept {
  return reinterpret_cast<const std::uint16_t*>(p);
}

/// Element i of a strided row, widened.
template <class A, class T>
inline float element(const T* p) noexcept {
  if constexpr (std::is_same_v<T, float>) return *p;
  else if constexpr (std::is_same_v<T, bfloat16>) return shim::bf16_bits_to_float<A>(*bits_of<A>(p));
  else return shim::half_bits_to_float<A>(*bits_of<A>(p));
}

/// Widens d elements at p (stride `stride`) into dst.
template <class A, class T>
inline void widen(const T* p, std::ptrdiff_t stride, float* dst, std::size_t d) noexcept {
  if (stride == 1) {
    if constexpr (std::is_same_v<T, float>) {
      for (std::size_t i = 0; i < d; ++i) dst[i] = p[i];
    } else if constexpr (std::is_same_v<T, bfloat16>) {
      widen_bf16<A>(bits_of<A>(p), dst, d);
    } else {
      widen_half<A>(bits_of<A>(p), dst, d);
    }
    return;
  }
  for (std::size_t i = 0; i < d; ++i) dst[i] = element<A>(p + static_cast<std::ptrdiff_t>(i) * stride);
}

/// 2L consecutive storage elements as two float vectors in storage order (see the file comment).
template <class A, class T>
inline void load_block(const T* p, fbatch_t<A>& lo, fbatch_t<A>& hi) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  if constexpr (std::is_same_v<T, float>) {
    lo = B::load_unaligned(p);
    hi = B::load_unaligned(p + L);
  } else if constexpr (std::is_same_v<T, bfloat16>) {
    using U = ubatch_t<A>;
    const U x = U::load_unaligned(reinterpret_cast<const std::uint32_t*>(p));
    lo = xsimd::bitwise_cast<B>(x << 16);
    hi = xsimd::bitwise_cast<B>(x & U(0xffff0000u));
  } else {
    lo = shim::load_half<A>(bits_of<A>(p));
    hi = shim::load_half<A>(bits_of<A>(p) + L);
  }
}

template <class T>
inline constexpr bool storage_interleaved = std::is_same_v<T, bfloat16>;

/// The online-softmax state of R rows, in caller scratch.
struct SoftmaxState {
  float* acc;          // [R][d]
  float* running_max;  // [R]
  float* running_sum;  // [R]
};

/// Online-softmax update of row r with m fresh logits in lr (which become probabilities);
/// returns false when the whole tile is masked.
template <class A>
inline bool softmax_update(float* lr, std::size_t m, float* acc_row, float& running_max, float& running_sum,
                           std::size_t d) noexcept {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const float tile_max = max_of<A>(lr, m);
  if (tile_max == neg_inf) {
    for (std::size_t t = 0; t < m; ++t) lr[t] = 0.0f;
    return false;
  }
  const float new_max = running_max > tile_max ? running_max : tile_max;
  if (running_max != neg_inf && new_max != running_max) {
    const float rescale = std::exp(running_max - new_max);
    running_sum *= rescale;
    scale<A>(rescale, acc_row, d);
  }
  running_max = new_max;
  running_sum += exp_shifted_sum<A>(lr, new_max, m);
  return true;
}

/// One tile of entries [j0, j0 + m) for NR query rows (storage-order queries q, pre-scaled).
template <class A, class T, int NR>
inline void attend_tile_blocked(const HeadView<T>& head, std::size_t j0, std::size_t m, const float* q,
                                const Position* limits, float* acc, float* running_max, float* running_sum,
                                float* logits, float* all_logits, std::size_t all_stride, bool prefetch) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  // NR * NE accumulators: a multiple of L when NR is 4, so all sums reduce in one haddp.
  constexpr int NE = NR == 4 && L >= 4 ? static_cast<int>(L / 4) : 2;
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  constexpr std::size_t tile = attend_tile;
  const auto d = static_cast<std::size_t>(head.head_dim);
  const std::size_t row_bytes = d * sizeof(T);
  auto key = [&](std::size_t j) { return head.keys + static_cast<std::ptrdiff_t>(j) * head.key_token_stride; };
  auto value = [&](std::size_t j) { return head.values + static_cast<std::ptrdiff_t>(j) * head.value_token_stride; };

  for (std::size_t t = 0; t < m; t += NE) {
    const T* kp[NE];
    SIMCALKV_UNROLL
    for (int e = 0; e < NE; ++e) kp[e] = key(j0 + (t + static_cast<std::size_t>(e) < m ? t + static_cast<std::size_t>(e) : m - 1));
    if (prefetch) {
      // The first row group of a tile prefetches the tile's values (read in columns below, which
      // the hardware prefetcher does not follow) and the next tile's keys.
      for (int e = 0; e < NE && t + static_cast<std::size_t>(e) < m; ++e) {
        const std::size_t j = j0 + t + static_cast<std::size_t>(e);
        const char* vp = reinterpret_cast<const char*>(value(j));
        for (std::size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(vp + o);
        if (j + tile < head.length) {
          const char* np = reinterpret_cast<const char*>(key(j + tile));
          for (std::size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(np + o);
        }
      }
    }
    B sums[NR * NE];
    for (auto& s : sums) s = B(0.0f);
    for (std::size_t b = 0; b < d; b += 2 * L) {
      B k0[NE], k1[NE];
      SIMCALKV_UNROLL
      for (int e = 0; e < NE; ++e) load_block<A>(kp[e] + b, k0[e], k1[e]);
      SIMCALKV_UNROLL
      for (int r = 0; r < NR; ++r) {
        const B q0 = B::load_unaligned(q + static_cast<std::size_t>(r) * d + b);
        const B q1 = B::load_unaligned(q + static_cast<std::size_t>(r) * d + b + L);
        SIMCALKV_UNROLL
        for (int e = 0; e < NE; ++e) sums[r * NE + e] = xsimd::fma(q1, k1[e], xsimd::fma(q0, k0[e], sums[r * NE + e]));
      }
    }
    alignas(64) float dots[NR * NE];
    if constexpr ((NR * NE) % L == 0) {
      for (std::size_t x = 0; x < static_cast<std::size_t>(NR * NE); x += L) shim::hadd_rows<A>(sums + x).store_aligned(dots + x);
    } else {
      SIMCALKV_UNROLL
      for (int x = 0; x < NR * NE; ++x) dots[x] = xsimd::hadd(sums[x]);
    }
    for (int e = 0; e < NE && t + static_cast<std::size_t>(e) < m; ++e) {
      const std::size_t j = j0 + t + static_cast<std::size_t>(e);
      SIMCALKV_UNROLL
      for (int r = 0; r < NR; ++r) {
        const bool visible = !limits || head.positions[j] <= limits[r];
        logits[static_cast<std::size_t>(r) * tile + t + static_cast<std::size_t>(e)] =
            visible ? dots[r * NE + e] + head.bias[j] : neg_inf;
      }
    }
  }
  if (all_logits)
    SIMCALKV_UNROLL
    for (int r = 0; r < NR; ++r)
      for (std::size_t t = 0; t < m; ++t)
        all_logits[static_cast<std::size_t>(r) * all_stride + j0 + t] = logits[static_cast<std::size_t>(r) * tile + t];

  bool any = false;
  SIMCALKV_UNROLL
  for (int r = 0; r < NR; ++r)
    any |= softmax_update<A>(logits + static_cast<std::size_t>(r) * tile, m, acc + static_cast<std::size_t>(r) * d,
                             running_max[r], running_sum[r], d);
  if (!any) return;

  // Values: per block of 2L dims, NR x 2 accumulators stay in registers over the tile.
  for (std::size_t b = 0; b < d; b += 2 * L) {
    B a0[NR], a1[NR];
    SIMCALKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      a0[r] = B::load_unaligned(acc + static_cast<std::size_t>(r) * d + b);
      a1[r] = B::load_unaligned(acc + static_cast<std::size_t>(r) * d + b + L);
    }
    for (std::size_t t = 0; t < m; ++t) {
      B v0, v1;
      load_block<A>(value(j0 + t) + b, v0, v1);
      SIMCALKV_UNROLL
      for (int r = 0; r < NR; ++r) {
        const B p(logits[static_cast<std::size_t>(r) * tile + t]);
        a0[r] = xsimd::fma(p, v0, a0[r]);
        a1[r] = xsimd::fma(p, v1, a1[r]);
      }
    }
    SIMCALKV_UNROLL
    for (int r = 0; r < NR; ++r) {
      a0[r].store_unaligned(acc + static_cast<std::size_t>(r) * d + b);
      a1[r].store_unaligned(acc + static_cast<std::size_t>(r) * d + b + L);
    }
  }
}

/// out_r = softmax(scale * q_r . K + bias) V for every row over the entries of `segments` taken
/// in order (one HeadView, or the pages of a paged sequence: one online softmax runs across them,
/// so pages whose lengths are multiples of attend_tile give the bits of one packed head);
/// optionally adds each entry's mean probability over the rows to its segment's scores.
/// `scratch` holds attend_scratch_floats(rows, total entries, d, accumulate) floats.
template <class A, class T>
inline void attend(const HeadView<T>* segments, std::size_t num_segments, const AttentionRows& rows,
                   const AttentionOptions& options, float* scratch) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  constexpr std::size_t tile = attend_tile;
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  if (num_segments == 0) return;
  const auto d = static_cast<std::size_t>(segments[0].head_dim);
  const auto R = static_cast<std::size_t>(rows.count);
  std::size_t n = 0;
  bool blocked = d % (2 * L) == 0;
  for (std::size_t g = 0; g < num_segments; ++g) {
    n += segments[g].length;
    blocked = blocked && segments[g].key_dim_stride == 1 && segments[g].value_dim_stride == 1;
  }
  const float scale_factor = options.scale != 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(d));

  float* key_tile = scratch;                  // [tile][d]
  float* value_tile = key_tile + tile * d;    // [tile][d]
  float* logits = value_tile + tile * d;      // [R][tile]
  float* running_max = logits + R * tile;     // [R]
  float* running_sum = running_max + R;       // [R]
  float* q = running_sum + R;                 // [R][d] pre-scaled (storage order when blocked)
  float* acc = q + R * d;                     // [R][d]
  float* all_logits = options.accumulate_scores ? acc + R * d : nullptr;  // [R][n]
  for (std::size_t r = 0; r < R; ++r) {
    running_max[r] = neg_inf;
    running_sum[r] = 0.0f;
    const float* src = rows.queries + static_cast<std::ptrdiff_t>(r) * rows.query_stride;
    float* dst = q + r * d;
    if (blocked && storage_interleaved<T>) {
      for (std::size_t b = 0; b < d; b += 2 * L)
        SIMCALKV_UNROLL
        for (std::size_t k = 0; k < L; ++k) {
          dst[b + k] = scale_factor * src[b + 2 * k];
          dst[b + L + k] = scale_factor * src[b + 2 * k + 1];
        }
    } else {
      for (std::size_t i = 0; i < d; ++i) dst[i] = scale_factor * src[i];
    }
    for (std::size_t i = 0; i < d; ++i) acc[r * d + i] = 0.0f;
  }

  for (std::size_t g = 0, base = 0; g < num_segments; base += segments[g].length, ++g) {
    const HeadView<T>& head = segments[g];
    const std::size_t length = head.length;
    for (std::size_t j0 = 0; j0 < length; j0 += tile) {
      const std::size_t m = tile < length - j0 ? tile : length - j0;
      if (blocked) {
        std::size_t r = 0;
        auto group = [&](auto rows_in_group) {
          constexpr int NR = decltype(rows_in_group)::value;
          attend_tile_blocked<A, T, NR>(head, j0, m, q + r * d, rows.positions ? rows.positions + r : nullptr,
                                        acc + r * d, running_max + r, running_sum + r, logits,
                                        all_logits ? all_logits + r * n + base : nullptr, n, r == 0);
          r += NR;
        };
        while (r + 4 <= R) group(std::integral_constant<int, 4>{});
        if (r + 2 <= R) group(std::integral_constant<int, 2>{});
        if (r < R) group(std::integral_constant<int, 1>{});
        continue;
      }
      // Portable path: widen the tile's keys, one dot product per (row, entry).
      for (std::size_t t = 0; t < m; ++t)
        widen<A>(head.keys + static_cast<std::ptrdiff_t>(j0 + t) * head.key_token_stride, head.key_dim_stride,
                 key_tile + t * d, d);
      for (std::size_t r = 0; r < R; ++r) {
        float* lr = logits + r * tile;
        for (std::size_t t = 0; t < m; ++t) {
          const bool visible = !rows.positions || head.positions[j0 + t] <= rows.positions[r];
          lr[t] = visible ? dot<A>(q + r * d, key_tile + t * d, d) + head.bias[j0 + t] : neg_inf;
        }
        if (all_logits)
          for (std::size_t t = 0; t < m; ++t) all_logits[r * n + base + j0 + t] = lr[t];
        softmax_update<A>(lr, m, acc + r * d, running_max[r], running_sum[r], d);
      }
      for (std::size_t t = 0; t < m; ++t) {
        widen<A>(head.values + static_cast<std::ptrdiff_t>(j0 + t) * head.value_token_stride, head.value_dim_stride,
                 value_tile + t * d, d);
        for (std::size_t r = 0; r < R; ++r) {
          const float p = logits[r * tile + t];
          if (p != 0.0f) axpy<A>(p, value_tile + t * d, acc + r * d, d);
        }
      }
    }
  }

  for (std::size_t r = 0; r < R; ++r) {
    float* out = rows.out + static_cast<std::ptrdiff_t>(r) * rows.out_stride;
    const float inv = running_sum[r] > 0.0f ? 1.0f / running_sum[r] : 0.0f;
    const float* a = acc + r * d;
    if (blocked && storage_interleaved<T>) {
      for (std::size_t b = 0; b < d; b += 2 * L)
        SIMCALKV_UNROLL
        for (std::size_t k = 0; k < L; ++k) {
          out[b + 2 * k] = a[b + k] * inv;
          out[b + 2 * k + 1] = a[b + L + k] * inv;
        }
    } else {
      for (std::size_t i = 0; i < d; ++i) out[i] = a[i] * inv;
    }
  }

  if (all_logits) {
    const float row_weight = options.score_row_weight > 0.0f ? options.score_row_weight : 1.0f / static_cast<float>(R);
    for (std::size_t r = 0; r < R; ++r) {
      if (running_sum[r] <= 0.0f) continue;
      const float* lr = all_logits + r * n;
      const float norm = row_weight / running_sum[r];
      for (std::size_t g = 0, base = 0; g < num_segments; base += segments[g].length, ++g)
        for (std::size_t j = 0; j < segments[g].length; ++j)
          if (lr[base + j] != neg_inf) segments[g].scores[j] += std::exp(lr[base + j] - running_max[r]) * norm;
    }
  }
}

}  // namespace simd
}  // namespace kernels
}  // namespace simcalkv
