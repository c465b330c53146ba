// simcalkv: storage element types and their conversion to float.
//
// Storage is float, IEEE half or bfloat16; arithmetic is always float. The 16-bit types are
// Eigen's (Eigen::half, Eigen::bfloat16): a well-kept implementation with round-to-nearest-even.
#pragma once

#include <Eigen/Core>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace simcalkv {

using half = Eigen::half;
using bfloat16 = Eigen::bfloat16;

/// The element types a cache may store.
template <class T>
concept StorageElement =
    std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

template <StorageElement T>
inline constexpr const char* element_name() {
  if constexpr (std::is_same_v<T, float>) return "f32";
  else if constexpr (std::is_same_v<T, half>) return "f16";
  else return "bf16";
}

template <StorageElement T>
inline float to_float(T x) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, bfloat16>) {
    // bf16 is the top half of a float: widening is a shift.
    const auto bits = static_cast<std::uint32_t>(std::bit_cast<std::uint16_t>(x)) << 16;
    return std::bit_cast<float>(bits);
  } else {
    return static_cast<float>(x);
  }
}

template <StorageElement T>
inline T from_float(float x) noexcept {
  if constexpr (std::is_same_v<T, float>) return x;
  else return T(x);
}

/// Widens `count` contiguous elements to float. The 16-bit paths use F16C / AVX2 when the
/// translation unit is built for them and fall back to scalar code otherwise.
template <StorageElement T>
inline void load_row(const T* src, float* dst, std::size_t count) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, count * sizeof(float));
  } else {
    std::size_t i = 0;
#if defined(__F16C__)
    if constexpr (std::is_same_v<T, half>) {
      for (; i + 8 <= count; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
      }
    }
#endif
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, bfloat16>) {
      for (; i + 8 <= count; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        const __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(wide));
      }
    }
#endif
    for (; i < count; ++i) dst[i] = to_float(src[i]);
  }
}

/// Widens `count` elements spaced `stride` apart.
template <StorageElement T>
inline void load_strided(const T* src, std::ptrdiff_t stride, float* dst, std::size_t count) noexcept {
  if (stride == 1) return load_row(src, dst, count);
  for (std::size_t i = 0; i < count; ++i) dst[i] = to_float(src[static_cast<std::ptrdiff_t>(i) * stride]);
}

/// Narrows `count` floats into elements spaced `stride` apart (round to nearest even, as Eigen's
/// conversions: NaN stays NaN). Contiguous 16-bit rows use AVX2 / F16C when compiled in.
template <StorageElement T>
inline void store_strided(const float* src, T* dst, std::ptrdiff_t stride, std::size_t count) noexcept {
  if (stride == 1) {
    std::size_t i = 0;
    if constexpr (std::is_same_v<T, float>) {
      std::memcpy(dst, src, count * sizeof(float));
      return;
    }
#if defined(__F16C__)
    if constexpr (std::is_same_v<T, half>) {
      for (; i + 8 <= count; i += 8) {
        const __m256 x = _mm256_loadu_ps(src + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) break;  // NaN: the scalar path
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
      }
    }
#endif
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, bfloat16>) {
      const __m256i ones = _mm256_set1_epi32(1);
      const __m256i bias = _mm256_set1_epi32(0x7fff);
      for (; i + 8 <= count; i += 8) {
        const __m256 x = _mm256_loadu_ps(src + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) break;  // NaN: the scalar path
        const __m256i bits = _mm256_castps_si256(x);
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), ones);
        const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(bias, lsb)), 16);
        const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), packed);
      }
    }
#endif
    for (; i < count; ++i) dst[i] = from_float<T>(src[i]);
    return;
  }
  for (std::size_t i = 0; i < count; ++i) dst[static_cast<std::ptrdiff_t>(i) * stride] = from_float<T>(src[i]);
}

inline bool all_finite(const float* x, std::size_t count) noexcept {
  // A float is NaN or Inf when its exponent bits are all ones; adding one exponent unit then
  // carries into the sign bit. Integer operations only, so the loop vectorises.
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    bad |= (bits & 0x7f800000u) + 0x00800000u;
  }
  return (bad & 0x80000000u) == 0;
}

}  // namespace simcalkv
