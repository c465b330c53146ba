// simcalkv: the few vector primitives the kernels are built from, on xsimd's batch<float>.
//
// One code path; the architecture is xsimd's default for the translation unit (AVX2 when built
// with -march=native on such a CPU, SSE2 on a plain x86-64 build), with a scalar tail.
#pragma once

#include <xsimd/xsimd.hpp>

#include <cmath>
#include <cstddef>
#include <limits>

namespace simcalkv::kernels {

using fbatch = xsimd::batch<float>;
inline constexpr std::size_t lanes = fbatch::size;

/// sum_i a[i] * b[i]
inline float dot(const float* a, const float* b, std::size_t n) noexcept {
  fbatch acc0(0.0f), acc1(0.0f);
  std::size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    acc0 = xsimd::fma(fbatch::load_unaligned(a + i), fbatch::load_unaligned(b + i), acc0);
    acc1 = xsimd::fma(fbatch::load_unaligned(a + i + lanes), fbatch::load_unaligned(b + i + lanes), acc1);
  }
  for (; i + lanes <= n; i += lanes)
    acc0 = xsimd::fma(fbatch::load_unaligned(a + i), fbatch::load_unaligned(b + i), acc0);
  float sum = xsimd::hadd(acc0 + acc1);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

/// y += alpha * x
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
  const fbatch a(alpha);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes)
    xsimd::fma(a, fbatch::load_unaligned(x + i), fbatch::load_unaligned(y + i)).store_unaligned(y + i);
  for (; i < n; ++i) y[i] += alpha * x[i];
}

/// y += alpha * x and z += beta * x in one pass over x (the same arithmetic as two axpy calls).
inline void axpy2(float alpha, float beta, const float* x, float* y, float* z, std::size_t n) noexcept {
  const fbatch a(alpha), b(beta);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const fbatch xv = fbatch::load_unaligned(x + i);
    xsimd::fma(a, xv, fbatch::load_unaligned(y + i)).store_unaligned(y + i);
    xsimd::fma(b, xv, fbatch::load_unaligned(z + i)).store_unaligned(z + i);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
  for (std::size_t k = n - n % lanes; k < n; ++k) z[k] += beta * x[k];
}

/// y *= alpha
inline void scale(float alpha, float* y, std::size_t n) noexcept {
  const fbatch a(alpha);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) (a * fbatch::load_unaligned(y + i)).store_unaligned(y + i);
  for (; i < n; ++i) y[i] *= alpha;
}

/// max_i x[i]; -inf for n == 0
inline float max_of(const float* x, std::size_t n) noexcept {
  fbatch m(-std::numeric_limits<float>::infinity());
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) m = xsimd::max(m, fbatch::load_unaligned(x + i));
  alignas(64) float tmp[lanes];
  m.store_aligned(tmp);
  float best = tmp[0];
  for (std::size_t l = 1; l < lanes; ++l) best = std::max(best, tmp[l]);
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

/// x[i] = exp(x[i] - shift); returns the sum. exp(-inf) is 0, so masked logits drop out.
inline float exp_shifted_sum(float* x, float shift, std::size_t n) noexcept {
  const fbatch s(shift);
  fbatch acc(0.0f);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const fbatch e = xsimd::exp(fbatch::load_unaligned(x + i) - s);
    e.store_unaligned(x + i);
    acc += e;
  }
  float sum = xsimd::hadd(acc);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

/// Dot products of NA rows a[0..NA) with NB rows b[0..NB), all of length n:
/// out[ia * NB + ib] = sum_i a[ia][i] * b[ib][i]. NA * NB == 8: eight accumulators in registers,
/// each row of a and b loaded once per step for all its partners (a register-blocked GEMM
/// micro-kernel over gathered rows; no copies). Sums differ from dot() in the last bits only.
template <int NA, int NB>
inline void dot_block(const float* const* a, const float* const* b, std::size_t n, float* out) noexcept {
  static_assert(NA * NB == 8, "dot_block computes eight dot products");
  fbatch acc[8];
  for (auto& x : acc) x = fbatch(0.0f);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    fbatch bv[NB];
    for (int jb = 0; jb < NB; ++jb) bv[jb] = fbatch::load_unaligned(b[jb] + i);
    for (int ia = 0; ia < NA; ++ia) {
      const fbatch av = fbatch::load_unaligned(a[ia] + i);
      for (int jb = 0; jb < NB; ++jb) acc[ia * NB + jb] = xsimd::fma(av, bv[jb], acc[ia * NB + jb]);
    }
  }
  if constexpr (lanes == 8) {
    xsimd::haddp(acc).store_unaligned(out);
  } else {
    for (int k = 0; k < 8; ++k) out[k] = xsimd::hadd(acc[k]);
  }
  for (; i < n; ++i)
    for (int ia = 0; ia < NA; ++ia)
      for (int jb = 0; jb < NB; ++jb) out[ia * NB + jb] += a[ia][i] * b[jb][i];
}

inline float squared_norm(const float* x, std::size_t n) noexcept { return dot(x, x, n); }

}  // namespace simcalkv::kernels
