// simcalkv kernel variant: NEON on AArch64 (every AArch64 CPU has it). CMake: simcalkv::dispatch.
#include "simcalkv/kernels/table.hpp"

#if !XSIMD_WITH_NEON64
#error "src/kernels_neon64.cpp is for AArch64"
#endif

SIMCALKV_DEFINE_KERNEL_VARIANT(neon64, xsimd::neon64)
