// simcalkv: the vector headers (intrinsics, xsimd, Eigen), included once, first.
//
// GCC 12.2's AVX-512 intrinsics start from _mm512_undefined_*(), and every inlined use of them warns
// "'__Y' may be used uninitialized" under -Wall (GCC bug 105593, fixed in 12.3). The warning is
// classified by the location of the intrinsic, so silencing it around the first inclusion of these
// headers silences exactly those warnings and nothing in the including program's own code.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
#include <arm_neon.h>
#endif
#include <xsimd/xsimd.hpp>
#include <Eigen/Core>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
