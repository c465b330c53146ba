// simcalkv: storage element types and their conversion to float.
//
// Storage is float, IEEE half or bfloat16; arithmetic is always float. The 16-bit types are
// Eigen's (Eigen::half, Eigen::bfloat16): a well-kept implementation with round-to-nearest-even.
// Rows are widened and narrowed by the dispatched kernels of kernels/convert.hpp.
#pragma once

#include "simcalkv/detail/simd_headers.hpp"

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>


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
