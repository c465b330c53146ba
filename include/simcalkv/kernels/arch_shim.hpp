// simcalkv: the few per-architecture operations xsimd 8.1 does not provide, and the only file of the
// CPU library with raw intrinsics.
//
// Everything else is written once on xsimd::batch<T, A>. Each operation here has one portable
// definition (scalar or plain xsimd) and specialisations for the architectures that have an
// instruction for it: IEEE half <-> float (F16C, AVX-512F, NEON), bfloat16 <-> float widening and
// narrowing (AVX2, AVX-512, SSE2, NEON), an 8 x 8 float transpose (AVX) and the register pin that
// keeps the compiler from folding a vector load into every use.
//
// An operation for architecture A is only instantiated in a translation unit compiled for A, so the
// intrinsics behind each `if constexpr` are available wherever they are used. Functions are
// templates on A: instantiations for different architectures never share a symbol.
#pragma once

#include "simcalkv/detail/simd_headers.hpp"

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define SIMCALKV_X86 1
#else
#define SIMCALKV_X86 0
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
#define SIMCALKV_NEON 1
#else
#define SIMCALKV_NEON 0
#endif

/// Fully unrolls the loop that follows (constant trip count over register-blocked accumulators), so
/// the accumulators live in registers at -O2 too, where GCC would otherwise keep them in memory.
#if defined(__clang__)
#define SIMCALKV_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SIMCALKV_UNROLL _Pragma("GCC unroll 64")
#else
#define SIMCALKV_UNROLL
#endif

namespace simcalkv::kernels {

template <class A>
using fbatch_t = xsimd::batch<float, A>;
template <class A>
using ubatch_t = xsimd::batch<std::uint32_t, A>;

namespace shim {

template <class A>
inline constexpr bool is_avx512 = XSIMD_WITH_AVX512F && std::is_base_of_v<xsimd::avx512f, A>;
template <class A>
inline constexpr bool is_avx2 = XSIMD_WITH_AVX2 && std::is_base_of_v<xsimd::avx2, A> && !is_avx512<A>;
template <class A>
inline constexpr bool is_avx = XSIMD_WITH_AVX && std::is_base_of_v<xsimd::avx, A> && !is_avx512<A>;
template <class A>
inline constexpr bool is_sse2 = XSIMD_WITH_SSE2 && std::is_base_of_v<xsimd::sse2, A> && !is_avx<A> && !is_avx512<A>;
template <class A>
inline constexpr bool is_neon64 = XSIMD_WITH_NEON64 && std::is_base_of_v<xsimd::neon64, A>;

/// Vector registers the architecture has: register-blocked kernels size their tiles by it.
template <class A>
inline constexpr int vector_registers = is_avx512<A> || is_neon64<A> ? 32 : 16;

// F16C is a separate CPUID bit; every AVX2 CPU has it, and the avx2 variant is built with -mf16c.
#if defined(__F16C__)
inline constexpr bool has_f16c = true;
#else
inline constexpr bool has_f16c = false;
#endif

/// IEEE half bits -> float, exact (subnormals, Inf and NaN included).
template <class A>
inline float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

/// float -> IEEE half bits, round to nearest even; NaN stays a quiet NaN.
template <class A>
inline std::uint16_t float_to_half_bits(float f) noexcept {
  const auto x = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to Inf
  if (abs < 0x38800000u) {  // subnormal half (or zero): add 0.5 in float to round at the right bit
    const float shifted = std::bit_cast<float>(abs) + 0.5f;
    return static_cast<std::uint16_t>(sign | (std::bit_cast<std::uint32_t>(shifted) - 0x3f000000u));
  }
  const std::uint32_t odd = (abs >> 13) & 1u;
  const std::uint32_t rounded = abs + 0xc8000fffu + odd;  // rebias exponent by -112 and round
  return static_cast<std::uint16_t>(sign | (rounded >> 13));
}

/// bfloat16 bits -> float: the top half of a float.
template <class A>
inline float bf16_bits_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float -> bfloat16 bits, round to nearest even (the caller keeps NaN away).
template <class A>
inline std::uint16_t float_to_bf16_bits(float f) noexcept {
  const auto x = std::bit_cast<std::uint32_t>(f);
  return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/// Loads fbatch_t<A>::size halves and widens them.
template <class A>
inline fbatch_t<A> load_half(const std::uint16_t* p) noexcept {
#if SIMCALKV_X86
  if constexpr (is_avx512<A>) {
    // The masked form: GCC 12 warns about the plain one's undefined pass-through operand.
    return _mm512_mask_cvtph_ps(_mm512_setzero_ps(), static_cast<__mmask16>(0xffff), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else if constexpr (is_avx<A> && has_f16c) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (is_sse2<A> && has_f16c) {
    return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
#endif
#if SIMCALKV_NEON
  if constexpr (is_neon64<A>) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
#endif
  constexpr std::size_t L = fbatch_t<A>::size;
  alignas(64) float tmp[L];
  for (std::size_t l = 0; l < L; ++l) tmp[l] = half_bits_to_float<A>(p[l]);
  return fbatch_t<A>::load_aligned(tmp);
}

/// Narrows and stores fbatch_t<A>::size floats as halves (round to nearest even). No NaN in x.
template <class A>
inline void store_half(fbatch_t<A> x, std::uint16_t* p) noexcept {
#if SIMCALKV_X86
  if constexpr (is_avx512<A>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    return;
  } else if constexpr (is_avx<A> && has_f16c) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    return;
  } else if constexpr (is_sse2<A> && has_f16c) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    return;
  }
#endif
#if SIMCALKV_NEON
  if constexpr (is_neon64<A>) {
    vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(x)));  // FPCR's default: round to nearest even
    return;
  }
#endif
  constexpr std::size_t L = fbatch_t<A>::size;
  alignas(64) float tmp[L];
  x.store_aligned(tmp);
  for (std::size_t l = 0; l < L; ++l) p[l] = float_to_half_bits<A>(tmp[l]);
}

/// Loads fbatch_t<A>::size bfloat16 values and widens them (natural order).
template <class A>
inline fbatch_t<A> load_bf16(const std::uint16_t* p) noexcept {
#if SIMCALKV_X86
  if constexpr (is_avx512<A>) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  } else if constexpr (is_avx2<A>) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  } else if constexpr (is_sse2<A>) {
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
#endif
#if SIMCALKV_NEON
  if constexpr (is_neon64<A>) return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
#endif
  constexpr std::size_t L = fbatch_t<A>::size;
  alignas(64) float tmp[L];
  for (std::size_t l = 0; l < L; ++l) tmp[l] = bf16_bits_to_float<A>(p[l]);
  return fbatch_t<A>::load_aligned(tmp);
}

/// Stores the low 16 bits of each lane of `v` (values below 2^16) as fbatch_t<A>::size uint16.
template <class A>
inline void store_low16(ubatch_t<A> v, std::uint16_t* p) noexcept {
#if SIMCALKV_X86
  if constexpr (is_avx512<A>) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(v));
    return;
  } else if constexpr (is_avx2<A>) {
    const __m256i x = v;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1)));
    return;
  } else if constexpr (is_sse2<A>) {
    // SSE2 packs only with signed saturation: sign-extend the 16-bit values first, then it is exact.
    const __m128i s = _mm_srai_epi32(_mm_slli_epi32(v, 16), 16);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi32(s, s));
    return;
  }
#endif
#if SIMCALKV_NEON
  if constexpr (is_neon64<A>) {
    vst1_u16(p, vmovn_u32(v));
    return;
  }
#endif
  constexpr std::size_t L = fbatch_t<A>::size;
  alignas(64) std::uint32_t tmp[L];
  v.store_aligned(tmp);
  for (std::size_t l = 0; l < L; ++l) p[l] = static_cast<std::uint16_t>(tmp[l]);
}

/// Whether transpose8x8 has a register implementation for A (else callers copy element-wise).
template <class A>
inline constexpr bool has_transpose8x8 = (is_avx<A> || is_avx512<A>) && SIMCALKV_X86;

/// out[k * out_stride + l] = rows[l][offset + k] for k, l < 8: eight rows of eight floats turned
/// into eight columns, in registers.
template <class A>
inline void transpose8x8(const float* const* rows, std::size_t offset, float* out, std::size_t out_stride) noexcept {
#if SIMCALKV_X86
  if constexpr (has_transpose8x8<A>) {
    const __m256 t0 = _mm256_loadu_ps(rows[0] + offset), t1 = _mm256_loadu_ps(rows[1] + offset);
    const __m256 t2 = _mm256_loadu_ps(rows[2] + offset), t3 = _mm256_loadu_ps(rows[3] + offset);
    const __m256 t4 = _mm256_loadu_ps(rows[4] + offset), t5 = _mm256_loadu_ps(rows[5] + offset);
    const __m256 t6 = _mm256_loadu_ps(rows[6] + offset), t7 = _mm256_loadu_ps(rows[7] + offset);
    const __m256 u0 = _mm256_unpacklo_ps(t0, t1), u1 = _mm256_unpackhi_ps(t0, t1);
    const __m256 u2 = _mm256_unpacklo_ps(t2, t3), u3 = _mm256_unpackhi_ps(t2, t3);
    const __m256 u4 = _mm256_unpacklo_ps(t4, t5), u5 = _mm256_unpackhi_ps(t4, t5);
    const __m256 u6 = _mm256_unpacklo_ps(t6, t7), u7 = _mm256_unpackhi_ps(t6, t7);
    const __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE);
    const __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE);
    const __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE);
    const __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
    _mm256_storeu_ps(out + 0 * out_stride, _mm256_permute2f128_ps(v0, v4, 0x20));
    _mm256_storeu_ps(out + 1 * out_stride, _mm256_permute2f128_ps(v1, v5, 0x20));
    _mm256_storeu_ps(out + 2 * out_stride, _mm256_permute2f128_ps(v2, v6, 0x20));
    _mm256_storeu_ps(out + 3 * out_stride, _mm256_permute2f128_ps(v3, v7, 0x20));
    _mm256_storeu_ps(out + 4 * out_stride, _mm256_permute2f128_ps(v0, v4, 0x31));
    _mm256_storeu_ps(out + 5 * out_stride, _mm256_permute2f128_ps(v1, v5, 0x31));
    _mm256_storeu_ps(out + 6 * out_stride, _mm256_permute2f128_ps(v2, v6, 0x31));
    _mm256_storeu_ps(out + 7 * out_stride, _mm256_permute2f128_ps(v3, v7, 0x31));
    return;
  }
#endif
  for (std::size_t k = 0; k < 8; ++k)
    for (std::size_t l = 0; l < 8; ++l) out[k * out_stride + l] = rows[l][offset + k];
}

/// Element r of the result is the sum of the lanes of rows[r], for r < L (xsimd::haddp, whose
/// AVX-512 version in xsimd 8.1 permutes the result: lanes 2-5 and 10-13 come out swapped).
template <class A>
inline fbatch_t<A> hadd_rows(const fbatch_t<A>* rows) noexcept {
#if SIMCALKV_X86
  if constexpr (is_avx512<A>) {
    auto eight = [](const fbatch_t<A>* r) {
      __m256 h[8];
      for (int k = 0; k < 8; ++k) {
        const __m512 v = r[k];
        h[k] = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
      }
      const __m256 h01 = _mm256_hadd_ps(h[0], h[1]), h23 = _mm256_hadd_ps(h[2], h[3]);
      const __m256 h45 = _mm256_hadd_ps(h[4], h[5]), h67 = _mm256_hadd_ps(h[6], h[7]);
      const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
      return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
    };
    return _mm512_insertf32x8(_mm512_castps256_ps512(eight(rows)), eight(rows + 8), 1);
  }
#endif
  return xsimd::haddp(rows);
}

/// Keeps a vector in a register: stops the compiler from folding its load into every use, which
/// would multiply the loads of a register-blocked micro-kernel.
template <class A>
inline void pin(fbatch_t<A>& x) noexcept {
#if defined(__GNUC__) && SIMCALKV_X86
  if constexpr (is_avx512<A>) {
    __m512 r = x;
    __asm__("" : "+v"(r));
    x = r;
  } else if constexpr (is_avx<A>) {
    __m256 r = x;
    __asm__("" : "+x"(r));
    x = r;
  } else if constexpr (is_sse2<A>) {
    __m128 r = x;
    __asm__("" : "+x"(r));
    x = r;
  }
#elif defined(__GNUC__) && SIMCALKV_NEON
  if constexpr (is_neon64<A>) {
    float32x4_t r = x;
    __asm__("" : "+w"(r));
    x = r;
  }
#else
  (void)x;
#endif
}

}  // namespace shim
}  // namespace simcalkv::kernels
