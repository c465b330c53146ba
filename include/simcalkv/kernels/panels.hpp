// simcalkv: rows packed in panels for register-blocked products, and the product C = A B^T over them.
//
// A panel holds L = fbatch_t<A>::size rows of B dimension-major: element i of row l at
// panel[i * L + l], zeros past the last row. One vector load then gives one dimension of L rows, so
// the micro-kernel broadcasts an element of A and multiplies it into L outputs at once, with no
// horizontal sums. Architecture code: every function is a template on A.
#pragma once

#include "simcalkv/kernels/simd.hpp"

#include <cstddef>
#include <cstdint>

namespace simcalkv::kernels::simd {

/// Packs rows[0..m) (m <= L, each of k floats) into one panel of L * k floats.
template <class A>
inline void pack_panel(const float* const* rows, std::size_t m, std::size_t k, float* panel) noexcept {
  constexpr std::size_t L = fbatch_t<A>::size;
  if constexpr (shim::has_transpose8x8<A> && L % 8 == 0) {
    if (m == L && k % 8 == 0) {
      for (std::size_t g = 0; g < L; g += 8)
        for (std::size_t i = 0; i < k; i += 8) shim::transpose8x8<A>(rows + g, i, panel + i * L + g, L);
      return;
    }
  }
  for (std::size_t l = 0; l < L; ++l) {
    const float* src = l < m ? rows[l] : nullptr;
    for (std::size_t i = 0; i < k; ++i) panel[i * L + l] = src ? src[i] : 0.0f;
  }
}

/// acc[r * NP + t] = sum_i a[r][i] * panel_t[i][.] for MR rows of A and NP panels.
template <class A, int NP, int MR = 4>
inline void panel_products(const float* const* a, const float* const* panels, std::size_t k, fbatch_t<A>* acc) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  SIMCALKV_UNROLL
  for (int x = 0; x < MR * NP; ++x) acc[x] = B(0.0f);
  for (std::size_t i = 0; i < k; ++i) {
    B pv[NP];
    SIMCALKV_UNROLL
    for (int t = 0; t < NP; ++t) {
      pv[t] = B::load_unaligned(panels[t] + i * L);
      shim::pin<A>(pv[t]);
    }
    SIMCALKV_UNROLL
    for (int r = 0; r < MR; ++r) {
      const B c(a[r][i]);
      SIMCALKV_UNROLL
      for (int t = 0; t < NP; ++t) acc[r * NP + t] = xsimd::fma(c, pv[t], acc[r * NP + t]);
    }
  }
}

/// Arguments of gemm_nt: C[m][n] = A[m][k] B[n][k]^T, all row-major and contiguous (C with row
/// stride ldc). `pack` is scratch for gemm_pack_floats(L, k) floats.
struct GemmArgs {
  const float* a = nullptr;
  std::size_t m = 0;
  const float* b = nullptr;
  std::size_t n = 0;
  std::size_t k = 0;
  float* c = nullptr;
  std::size_t ldc = 0;
  float* pack = nullptr;
};

/// Panels packed at a time: a block of B small enough to stay in L2 while every row of A passes.
inline constexpr std::size_t gemm_block_panels = 12;
inline constexpr std::size_t gemm_pack_floats(std::size_t lanes, std::size_t k) noexcept {
  return gemm_block_panels * lanes * k;
}

template <class A>
inline void gemm_nt(const GemmArgs& g) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  // Rows of A per micro-tile: MR x 3 accumulators, 3 panel vectors and a broadcast fit the registers.
  constexpr int MR = shim::vector_registers<A> >= 32 ? 8 : 4;
  const std::size_t k = g.k;
  const std::size_t total_panels = (g.n + L - 1) / L;
  for (std::size_t p0 = 0; p0 < total_panels; p0 += gemm_block_panels) {
    const std::size_t np = std::min(gemm_block_panels, total_panels - p0);
    for (std::size_t p = 0; p < np; ++p) {
      const std::size_t j0 = (p0 + p) * L;
      const std::size_t m = std::min(L, g.n - j0);
      const float* rows[L];
      for (std::size_t l = 0; l < L; ++l) rows[l] = g.b + (j0 + std::min(l, m - 1)) * k;
      pack_panel<A>(rows, m, k, g.pack + p * L * k);
    }
    for (std::size_t r0 = 0; r0 < g.m; r0 += MR) {
      const std::size_t rows_here = std::min<std::size_t>(MR, g.m - r0);
      const float* a[MR];
      for (std::size_t r = 0; r < static_cast<std::size_t>(MR); ++r) a[r] = g.a + (r0 + std::min(r, rows_here - 1)) * k;
      auto step = [&](auto np_constant, std::size_t p) {
        constexpr int NP = decltype(np_constant)::value;
        const float* panels[NP];
        SIMCALKV_UNROLL
        for (int t = 0; t < NP; ++t) panels[t] = g.pack + (p + static_cast<std::size_t>(t)) * L * k;
        B acc[MR * NP];
        panel_products<A, NP, MR>(a, panels, k, acc);
        for (std::size_t r = 0; r < rows_here; ++r)
          SIMCALKV_UNROLL
          for (int t = 0; t < NP; ++t) {
            const std::size_t j0 = (p0 + p + static_cast<std::size_t>(t)) * L;
            float* out = g.c + (r0 + r) * g.ldc + j0;
            if (j0 + L <= g.n) {
              acc[r * NP + static_cast<std::size_t>(t)].store_unaligned(out);
            } else {
              alignas(64) float tmp[L];
              acc[r * NP + static_cast<std::size_t>(t)].store_aligned(tmp);
              for (std::size_t l = 0; j0 + l < g.n; ++l) out[l] = tmp[l];
            }
          }
      };
      std::size_t p = 0;
      for (; p + 3 <= np; p += 3) step(std::integral_constant<int, 3>{}, p);
      if (p + 2 <= np) {
        step(std::integral_constant<int, 2>{}, p);
        p += 2;
      }
      if (p < np) step(std::integral_constant<int, 1>{}, p);
    }
  }
}

}  // namespace simcalkv::kernels::simd
