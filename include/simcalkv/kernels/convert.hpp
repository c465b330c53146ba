// simcalkv: widening storage rows to float and narrowing them back, through the dispatched kernels.
#pragma once

#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/numeric.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace simcalkv {

/// Widens `count` contiguous elements to float.
template <StorageElement T>
inline void load_row(const T* src, float* dst, std::size_t count) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    if (count) std::memcpy(dst, src, count * sizeof(float));
  } else if constexpr (std::is_same_v<T, half>) {
    kernels::active().widen_half(reinterpret_cast<const std::uint16_t*>(src), dst, count);
  } else {
    kernels::active().widen_bf16(reinterpret_cast<const std::uint16_t*>(src), dst, count);
  }
}

/// Widens `count` elements spaced `stride` apart.
template <StorageElement T>
inline void load_strided(const T* src, std::ptrdiff_t stride, float* dst, std::size_t count) noexcept {
  if (stride == 1) return load_row(src, dst, count);
  for (std::size_t i = 0; i < count; ++i) dst[i] = to_float(src[static_cast<std::ptrdiff_t>(i) * stride]);
}

/// Narrows `count` floats into elements spaced `stride` apart (round to nearest even, as Eigen's
/// conversions; NaN stays NaN).
template <StorageElement T>
inline void store_strided(const float* src, T* dst, std::ptrdiff_t stride, std::size_t count) noexcept {
  if (stride == 1) {
    std::size_t done = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (count) std::memcpy(dst, src, count * sizeof(float));
      return;
    } else if constexpr (std::is_same_v<T, half>) {
      done = kernels::active().narrow_half(src, reinterpret_cast<std::uint16_t*>(dst), count);
    } else {
      done = kernels::active().narrow_bf16(src, reinterpret_cast<std::uint16_t*>(dst), count);
    }
    for (std::size_t i = done; i < count; ++i) dst[i] = from_float<T>(src[i]);  // from a NaN on
    return;
  }
  for (std::size_t i = 0; i < count; ++i) dst[static_cast<std::ptrdiff_t>(i) * stride] = from_float<T>(src[i]);
}

/// Whether `count` contiguous elements are all finite (no NaN or Inf), read in their storage type.
template <StorageElement T>
inline bool all_finite_elements(const T* src, std::size_t count) noexcept {
  if constexpr (std::is_same_v<T, float>) return kernels::active().finite_f32(src, count);
  else if constexpr (std::is_same_v<T, half>)
    return kernels::active().finite_bits16(reinterpret_cast<const std::uint16_t*>(src), count, 0x7c00u);
  else return kernels::active().finite_bits16(reinterpret_cast<const std::uint16_t*>(src), count, 0x7f80u);
}

namespace detail {
template <class T>
struct RowIO {
  static void load(const T* src, std::ptrdiff_t stride, float* dst, std::size_t count) noexcept {
    load_strided(src, stride, dst, count);
  }
  static void store(const float* src, T* dst, std::ptrdiff_t stride, std::size_t count) noexcept {
    store_strided(src, dst, stride, count);
  }
};
}  // namespace detail

}  // namespace simcalkv
