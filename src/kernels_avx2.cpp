// simcalkv kernel variant: AVX2 with FMA and F16C. Compile with -march=x86-64 -mavx2 -mfma -mf16c
// (CMake: simcalkv::dispatch).
#include "simcalkv/kernels/table.hpp"

#if !XSIMD_WITH_FMA3_AVX2 || !defined(__F16C__) || XSIMD_WITH_AVX512F
#error "src/kernels_avx2.cpp must be compiled with -mavx2 -mfma -mf16c and without AVX-512"
#endif

SIMCALKV_DEFINE_KERNEL_VARIANT(avx2, xsimd::fma3<xsimd::avx2>)
