// simcalkv: the kernel table, one per architecture: the hot kernels as function pointers.
//
// kernel_table<A> points at the instantiations of the architecture code (simd.hpp, panels.hpp,
// local_search.hpp, attend.hpp) for A. dispatch.hpp picks one table at run time; the kernels are
// compiled for an architecture only in a translation unit built for it (the including TU's own
// arch in header-only use, or the variants of src/ with SIMCALKV_DISPATCH).
#pragma once

#include "simcalkv/kernels/attend.hpp"
#include "simcalkv/kernels/local_search.hpp"
#include "simcalkv/kernels/panels.hpp"
#include "simcalkv/kernels/simd.hpp"

#include <cstddef>
#include <cstdint>

namespace simcalkv::kernels {

struct KernelTable {
  const char* arch;        // xsimd's name of the architecture ("sse2", "fma3+avx2", "avx512bw", "arm64+neon")
  unsigned version;        // xsimd's ordering: higher is better
  std::size_t lanes;       // floats per vector
  float (*dot)(const float*, const float*, std::size_t) noexcept;
  void (*axpy)(float, const float*, float*, std::size_t) noexcept;
  void (*axpy2)(float, float, const float*, float*, float*, std::size_t) noexcept;
  void (*scale)(float, float*, std::size_t) noexcept;
  float (*max_of)(const float*, std::size_t) noexcept;
  float (*exp_shifted_sum)(float*, float, std::size_t) noexcept;
  void (*dot8)(const float* const*, const float*, std::size_t, float*) noexcept;
  void (*widen_half)(const std::uint16_t*, float*, std::size_t) noexcept;
  void (*widen_bf16)(const std::uint16_t*, float*, std::size_t) noexcept;
  std::size_t (*narrow_half)(const float*, std::uint16_t*, std::size_t) noexcept;
  std::size_t (*narrow_bf16)(const float*, std::uint16_t*, std::size_t) noexcept;
  bool (*finite_f32)(const float*, std::size_t) noexcept;
  bool (*finite_bits16)(const std::uint16_t*, std::size_t, std::uint16_t) noexcept;
  void (*gemm_nt)(const simd::GemmArgs&) noexcept;
  std::size_t (*local_search)(const simd::LocalSearchArgs&) noexcept;
  void (*attend_f32)(const HeadView<float>*, std::size_t, const AttentionRows&, const AttentionOptions&,
                      float*) noexcept;
  void (*attend_f16)(const HeadView<half>*, std::size_t, const AttentionRows&, const AttentionOptions&,
                      float*) noexcept;
  void (*attend_bf16)(const HeadView<bfloat16>*, std::size_t, const AttentionRows&, const AttentionOptions&,
                      float*) noexcept;
};

template <class A>
inline constexpr KernelTable kernel_table{
    A::name(),
    A::version(),
    fbatch_t<A>::size,
    &simd::dot<A>,
    &simd::axpy<A>,
    &simd::axpy2<A>,
    &simd::scale<A>,
    &simd::max_of<A>,
    &simd::exp_shifted_sum<A>,
    &simd::dot8<A>,
    &simd::widen_half<A>,
    &simd::widen_bf16<A>,
    &simd::narrow_half<A>,
    &simd::narrow_bf16<A>,
    &simd::finite_f32<A>,
    &simd::finite_bits16<A>,
    &simd::gemm_nt<A>,
    &simd::local_search<A>,
    &simd::attend<A, float>,
    &simd::attend<A, half>,
    &simd::attend<A, bfloat16>,
};

}  // namespace simcalkv::kernels

/// Defines the entry point of one compiled variant, `const KernelTable& kernel_table_<tag>()`
/// (src/kernels_<tag>.cpp does this, in a translation unit compiled for the architecture).
#define SIMCALKV_DEFINE_KERNEL_VARIANT(tag, arch)                                              \
  namespace simcalkv::kernels::variants {                                                        \
  const KernelTable& kernel_table_##tag() noexcept { return ::simcalkv::kernels::kernel_table<arch>; } \
  }
