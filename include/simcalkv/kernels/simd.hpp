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

inline float squared_norm(const float* x, std::size_t n) noexcept { return dot(x, x, n); }

}  // namespace simcalkv::kernels
