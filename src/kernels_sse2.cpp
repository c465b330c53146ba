// simcalkv kernel variant: SSE2, the x86-64 baseline. Compile with -march=x86-64 (CMake: simcalkv::dispatch).
#include "simcalkv/kernels/table.hpp"

#if !XSIMD_WITH_SSE2 || XSIMD_WITH_AVX
#error "src/kernels_sse2.cpp must be compiled for baseline x86-64 (-march=x86-64), without AVX"
#endif

SIMCALKV_DEFINE_KERNEL_VARIANT(sse2, xsimd::sse2)
