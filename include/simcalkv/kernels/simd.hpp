// simcalkv: the vector primitives the kernels are built from, written once on xsimd::batch<float, A>.
//
// Every function is a template on the architecture A (xsimd::sse2, xsimd::fma3<xsimd::avx2>,
// xsimd::avx512bw, xsimd::neon64, ...) and correct for any lane count, with a scalar tail. Nothing
// here is called directly by policies: they call the dispatched entry points of dispatch.hpp,
// which run these for the architecture chosen at run time.
#pragma once

#include "simcalkv/kernels/arch_shim.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <limits>

namespace simcalkv::kernels::simd {

/// sum_i a[i] * b[i]
template <class A>
inline float dot(const float* a, const float* b, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  B acc0(0.0f), acc1(0.0f);
  std::size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    acc0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), acc0);
    acc1 = xsimd::fma(B::load_unaligned(a + i + L), B::load_unaligned(b + i + L), acc1);
  }
  for (; i + L <= n; i += L) acc0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), acc0);
  float sum = xsimd::hadd(acc0 + acc1);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

/// y += alpha * x
template <class A>
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  const B a(alpha);
  std::size_t i = 0;
  for (; i + L <= n; i += L) xsimd::fma(a, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
  for (; i < n; ++i) y[i] += alpha * x[i];
}

/// y += alpha * x and z += beta * x in one pass over x (the same arithmetic as two axpy calls).
template <class A>
inline void axpy2(float alpha, float beta, const float* x, float* y, float* z, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  const B a(alpha), b(beta);
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    const B xv = B::load_unaligned(x + i);
    xsimd::fma(a, xv, B::load_unaligned(y + i)).store_unaligned(y + i);
    xsimd::fma(b, xv, B::load_unaligned(z + i)).store_unaligned(z + i);
  }
  for (std::size_t k = i; k < n; ++k) y[k] += alpha * x[k];
  for (std::size_t k = i; k < n; ++k) z[k] += beta * x[k];
}

/// y *= alpha
template <class A>
inline void scale(float alpha, float* y, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  const B a(alpha);
  std::size_t i = 0;
  for (; i + L <= n; i += L) (a * B::load_unaligned(y + i)).store_unaligned(y + i);
  for (; i < n; ++i) y[i] *= alpha;
}

/// max_i x[i]; -inf for n == 0
template <class A>
inline float max_of(const float* x, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  B m(-std::numeric_limits<float>::infinity());
  std::size_t i = 0;
  for (; i + L <= n; i += L) m = xsimd::max(m, B::load_unaligned(x + i));
  alignas(64) float tmp[L];
  m.store_aligned(tmp);
  float best = tmp[0];
  for (std::size_t l = 1; l < L; ++l) best = tmp[l] > best ? tmp[l] : best;
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  return best;
}

/// x[i] = exp(x[i] - shift); returns the sum. exp(-inf) is 0, so masked logits drop out. The tail
/// goes through the vector exp too (padded), so every element is rounded the same way.
template <class A>
inline float exp_shifted_sum(float* x, float shift, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  const B s(shift);
  B acc(0.0f);
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    const B e = xsimd::exp(B::load_unaligned(x + i) - s);
    e.store_unaligned(x + i);
    acc += e;
  }
  if (i < n) {
    alignas(64) float tmp[L];
    for (std::size_t l = 0; l < L; ++l) tmp[l] = i + l < n ? x[i + l] : -std::numeric_limits<float>::infinity();
    const B e = xsimd::exp(B::load_aligned(tmp) - s);
    e.store_aligned(tmp);
    acc += e;
    for (std::size_t l = 0; i + l < n; ++l) x[i + l] = tmp[l];
  }
  return xsimd::hadd(acc);
}

/// out[r] = sum_i rows[r][i] * x[i] for r < 8: eight dot products sharing each load of x, eight
/// accumulators in registers. Sums differ from dot() in the last bits only.
template <class A>
inline void dot8(const float* const* rows, const float* x, std::size_t n, float* out) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  B acc[8];
  for (auto& v : acc) v = B(0.0f);
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    const B xv = B::load_unaligned(x + i);
    SIMCALKV_UNROLL
    for (int r = 0; r < 8; ++r) acc[r] = xsimd::fma(B::load_unaligned(rows[r] + i), xv, acc[r]);
  }
  if constexpr (L == 8) {
    shim::hadd_rows<A>(acc).store_unaligned(out);
  } else {
    SIMCALKV_UNROLL
    for (int r = 0; r < 8; ++r) out[r] = xsimd::hadd(acc[r]);
  }
  for (; i < n; ++i)
    SIMCALKV_UNROLL
    for (int r = 0; r < 8; ++r) out[r] += rows[r][i] * x[i];
}

/// Widens n contiguous halves (IEEE bits) to float.
template <class A>
inline void widen_half(const std::uint16_t* src, float* dst, std::size_t n) noexcept {
  constexpr std::size_t L = fbatch_t<A>::size;
  std::size_t i = 0;
  for (; i + L <= n; i += L) shim::load_half<A>(src + i).store_unaligned(dst + i);
  for (; i < n; ++i) dst[i] = shim::half_bits_to_float<A>(src[i]);
}

/// Widens n contiguous bfloat16 values to float.
template <class A>
inline void widen_bf16(const std::uint16_t* src, float* dst, std::size_t n) noexcept {
  constexpr std::size_t L = fbatch_t<A>::size;
  std::size_t i = 0;
  for (; i + L <= n; i += L) shim::load_bf16<A>(src + i).store_unaligned(dst + i);
  for (; i < n; ++i) dst[i] = shim::bf16_bits_to_float<A>(src[i]);
}

/// Narrows n floats to contiguous halves, round to nearest even. A block holding a NaN is left
/// for the caller: returns how many elements were written (a prefix).
template <class A>
inline std::size_t narrow_half(const float* src, std::uint16_t* dst, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    const B x = B::load_unaligned(src + i);
    if (xsimd::any(xsimd::isnan(x))) return i;
    shim::store_half<A>(x, dst + i);
  }
  for (; i < n; ++i) {
    if (std::isnan(src[i])) return i;
    dst[i] = shim::float_to_half_bits<A>(src[i]);
  }
  return n;
}

/// Narrows n floats to contiguous bfloat16, round to nearest even; stops at a NaN like narrow_half.
template <class A>
inline std::size_t narrow_bf16(const float* src, std::uint16_t* dst, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  using U = ubatch_t<A>;
  constexpr std::size_t L = B::size;
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    const B x = B::load_unaligned(src + i);
    if (xsimd::any(xsimd::isnan(x))) return i;
    const U bits = xsimd::bitwise_cast<U>(x);
    const U rounded = (bits + U(0x7fffu) + ((bits >> 16) & U(1u))) >> 16;
    shim::store_low16<A>(rounded, dst + i);
  }
  for (; i < n; ++i) {
    if (std::isnan(src[i])) return i;
    dst[i] = shim::float_to_bf16_bits<A>(src[i]);
  }
  return n;
}

/// Whether no element of n contiguous 16-bit floats is NaN or Inf: none has all of
/// `exponent_mask`'s bits set (0x7c00 for IEEE half, 0x7f80 for bfloat16). No widening.
template <class A>
inline bool finite_bits16(const std::uint16_t* x, std::size_t n, std::uint16_t exponent_mask) noexcept {
  using H = xsimd::batch<std::uint16_t, A>;
  constexpr std::size_t L = H::size;
  const H mask(exponent_mask);
  H bad(std::uint16_t{0});
  std::size_t i = 0;
  for (; i + L <= n; i += L) bad |= xsimd::select((H::load_unaligned(x + i) & mask) == mask, H(std::uint16_t{1}), H(std::uint16_t{0}));
  if (xsimd::any(bad != H(std::uint16_t{0}))) return false;
  for (; i < n; ++i)
    if ((x[i] & exponent_mask) == exponent_mask) return false;
  return true;
}

/// Whether no element of n contiguous floats is NaN or Inf: the exponent bits are never all ones.
template <class A>
inline bool finite_f32(const float* x, std::size_t n) noexcept {
  using B = fbatch_t<A>;
  using U = ubatch_t<A>;
  constexpr std::size_t L = B::size;
  const U mask(0x7f800000u);
  U bad(0u);
  std::size_t i = 0;
  for (; i + L <= n; i += L)
    bad |= xsimd::select((xsimd::bitwise_cast<U>(B::load_unaligned(x + i)) & mask) == mask, U(1u), U(0u));
  if (xsimd::any(bad != U(0u))) return false;
  for (; i < n; ++i)
    if ((std::bit_cast<std::uint32_t>(x[i]) & 0x7f800000u) == 0x7f800000u) return false;
  return true;
}

}  // namespace simcalkv::kernels::simd
