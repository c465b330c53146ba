// simcalkv kernel variant: AVX-512 (F, CD, DQ, BW, VL: Skylake-SP and later). Compile with
// -march=x86-64 -mavx512f -mavx512cd -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -mf16c
// (CMake: simcalkv::dispatch).
#include "simcalkv/kernels/table.hpp"

#if !XSIMD_WITH_AVX512BW
#error "src/kernels_avx512.cpp must be compiled with -mavx512f -mavx512cd -mavx512dq -mavx512bw -mavx512vl"
#endif

SIMCALKV_DEFINE_KERNEL_VARIANT(avx512, xsimd::avx512bw)
