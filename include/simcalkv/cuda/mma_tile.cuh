// simcalkv CUDA: one 64 x 64 tile of dot products on the tensor cores (WMMA, 16-bit inputs,
// float accumulation), shared by window scoring, similarity search and bias calibration.
//
// C[r][c] = sum_i A[r][i] * B[c][i] over i < D, for 64 rows of A and 64 rows of B held in shared
// memory (row strides lda / ldb elements, multiples of 8; 32-byte aligned rows). A float operand
// is carried as two 16-bit terms, hi + lo (lo = the rounding error of hi), which gives about 16
// significant bits: NA / NB say how many terms A / B have, and every product but lo * lo is
// accumulated. The block has exactly 8 warps; warp w computes rows 16 * (w / 2) .. + 16 and
// columns 32 * (w % 2) .. + 32.
#pragma once

#include "simcalkv/cuda/common.cuh"

#include <mma.h>

namespace simcalkv::cuda::detail {

inline constexpr int kTileThreads = 256;

template <class T, int D, int NA, int NB>
__device__ __forceinline__ void mma_tile_64x64(const T* a_hi, const T* a_lo, int lda, const T* b_hi, const T* b_lo,
                                               int ldb, float* c, int ldc) {
  using namespace nvcuda;
  static_assert(D % 16 == 0, "head_dim must be a multiple of 16");
  const int warp = threadIdx.x >> 5;
  const int rt = warp >> 1;
  const int ct = (warp & 1) * 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
#pragma unroll 2
  for (int k = 0; k < D; k += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> ah, al;
    wmma::load_matrix_sync(ah, a_hi + rt * 16 * lda + k, lda);
    if constexpr (NA == 2) wmma::load_matrix_sync(al, a_lo + rt * 16 * lda + k, lda);
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bh;
      wmma::load_matrix_sync(bh, b_hi + (ct + t) * 16 * ldb + k, ldb);
      wmma::mma_sync(acc[t], ah, bh, acc[t]);
      if constexpr (NA == 2) wmma::mma_sync(acc[t], al, bh, acc[t]);
      if constexpr (NB == 2) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bl;
        wmma::load_matrix_sync(bl, b_lo + (ct + t) * 16 * ldb + k, ldb);
        wmma::mma_sync(acc[t], ah, bl, acc[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < 2; ++t)
    wmma::store_matrix_sync(c + rt * 16 * ldc + (ct + t) * 16, acc[t], ldc, wmma::mem_row_major);
}

/// The A operand of a warp's row tile (rows 16 * (warp / 2) .. + 16 of a 64-row block), held in
/// registers across many B tiles. `hi` / `lo` may point to global or shared memory.
template <class T, int D, int NA>
struct AFragments {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major> f[NA][D / 16];

  __device__ __forceinline__ void load(const T* hi, const T* lo, int lda) {
    const int rt = (threadIdx.x >> 5) >> 1;
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      nvcuda::wmma::load_matrix_sync(f[0][k], hi + rt * 16 * lda + k * 16, lda);
      if constexpr (NA == 2) nvcuda::wmma::load_matrix_sync(f[1][k], lo + rt * 16 * lda + k * 16, lda);
    }
  }
};

/// mma_tile_64x64 with the A operand already in registers (B single-term).
template <class T, int D, int NA>
__device__ __forceinline__ void mma_tile_64x64(const AFragments<T, D, NA>& a, const T* b, int ldb, float* c, int ldc) {
  using namespace nvcuda;
  const int warp = threadIdx.x >> 5;
  const int rt = warp >> 1;
  const int ct = (warp & 1) * 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
#pragma unroll
  for (int k = 0; k < D / 16; ++k) {
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bh;
      wmma::load_matrix_sync(bh, b + (ct + t) * 16 * ldb + k * 16, ldb);
      wmma::mma_sync(acc[t], a.f[0][k], bh, acc[t]);
      if constexpr (NA == 2) wmma::mma_sync(acc[t], a.f[1][k], bh, acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < 2; ++t)
    wmma::store_matrix_sync(c + rt * 16 * ldc + (ct + t) * 16, acc[t], ldc, wmma::mem_row_major);
}

/// Copies `rows` rows of D elements (16-byte chunks) from global rows given by row_ptr(r) into
/// shared memory rows of stride ld, zero-filling rows r >= valid, with cp.async (the caller
/// commits and waits). All threads of the block take part.
template <class T, int D, class RowPtr>
__device__ __forceinline__ void load_rows_async(T* smem, int ld, int rows, int valid, RowPtr row_ptr,
                                                const T* fallback) {
  constexpr int chunks = D * static_cast<int>(sizeof(T)) / 16;
  for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
    const int r = i / chunks, q = i % chunks;
    const bool ok = r < valid;
    const T* src = ok ? row_ptr(r) : fallback;
    cp_async16(smem + r * ld + q * (16 / static_cast<int>(sizeof(T))), src + (ok ? q * (16 / static_cast<int>(sizeof(T))) : 0),
               ok);
  }
}

}  // namespace simcalkv::cuda::detail
