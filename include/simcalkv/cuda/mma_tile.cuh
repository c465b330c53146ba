// simcalkv CUDA: dot products of 16-bit rows on the tensor cores, float accumulation: a 64 x 64
// tile through WMMA and shared memory (bias calibration), and warp-level mma.sync fragments whose
// products stay in registers (window scoring, similarity search).
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

// ---------------------------------------------------------------------------------------------
// Warp-level tensor-core fragments (mma.sync m16n8k16, float accumulation), for kernels that keep
// their products in registers instead of passing them through shared memory. Lane l holds rows
// g = l / 4 and g + 8 and columns 2 * (l % 4), + 1 of a 16 x 8 accumulator tile, as the PTX ISA
// lays them out.

/// d += a * b for one m16n8k16 tile.
template <class T>
__device__ __forceinline__ void mma_m16n8k16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

/// Four 8 x 8 matrices of 16-bit elements from shared memory; lane l gives the address of row
/// l % 8 of matrix l / 8 and receives one 32-bit word of each matrix.
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

/// The same, transposed: lane l receives one word of each matrix's transpose (the B fragments of
/// a row-major K x N operand, e.g. the V rows of P V).
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

/// The A fragments (16 rows x D, row-major 16-bit, row stride ld) of one m-tile, all k-steps,
/// loaded straight from global or shared memory.
template <class T, int D>
struct WarpRowsA {
  uint32_t f[D / 16][4];
  __device__ __forceinline__ void load(const T* rows, int64_t ld) {
    const int g = (threadIdx.x & 31) >> 2;
    load_rows(rows + g * ld, rows + (g + 8) * ld);
  }
  /// The same from gathered rows: row_g is this lane's row g, row_g8 its row g + 8.
  __device__ __forceinline__ void load_rows(const T* row_g, const T* row_g8) {
    const int t4 = threadIdx.x & 3;
    const T* r0 = row_g + t4 * 2;
    const T* r8 = row_g8 + t4 * 2;
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      f[k][0] = *reinterpret_cast<const uint32_t*>(r0 + k * 16);
      f[k][1] = *reinterpret_cast<const uint32_t*>(r8 + k * 16);
      f[k][2] = *reinterpret_cast<const uint32_t*>(r0 + k * 16 + 8);
      f[k][3] = *reinterpret_cast<const uint32_t*>(r8 + k * 16 + 8);
    }
  }
};

/// acc[mt][nb] = A * B^T for B = NB * 8 rows of D elements in padded shared memory (row stride ld
/// elements, 16-byte aligned rows): one ldmatrix.x4 per n-block and pair of k-steps, shared by the
/// MT m-tiles of A (and its lo terms when NA == 2).
template <class T, int D, int MT, int NA, int NB>
__device__ __forceinline__ void warp_mma_rows(float (*acc)[NB][4], const WarpRowsA<T, D> (*a)[MT], const T* b,
                                              int ld) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) acc[mt][nb][0] = acc[mt][nb][1] = acc[mt][nb][2] = acc[mt][nb][3] = 0.0f;
  const int lane = threadIdx.x & 31;
  const T* base = b + (lane & 7) * ld + (lane >> 3) * 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk += 2) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      uint32_t r[4];
      ldsm_x4(r, base + nb * 8 * ld + kk * 16);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int t = 0; t < NA; ++t) {
          mma_m16n8k16<T>(acc[mt][nb], a[t][mt].f[kk], r[0], r[1]);
          mma_m16n8k16<T>(acc[mt][nb], a[t][mt].f[kk + 1], r[2], r[3]);
        }
      }
    }
  }
}

/// Copies ROWS rows of D elements (16-byte chunks) from global rows given by row_ptr(r) into
/// shared memory rows of stride ld, zero-filling rows r >= valid, with cp.async (the caller
/// commits and waits). All THREADS threads of the block take part, each with the same chunk of
/// every (THREADS / chunks)-th row: the passes unroll and the chunk's offset is computed once (a
/// loop over i = tid, tid + THREADS, ... cost about 40 instructions per copy).
template <class T, int D, int ROWS, int THREADS, class RowPtr>
__device__ __forceinline__ void load_rows_async(T* smem, int ld, int valid, RowPtr row_ptr, const T* fallback) {
  constexpr int kChunks = D * static_cast<int>(sizeof(T)) / 16;
  constexpr int kElems = 16 / static_cast<int>(sizeof(T));
  static_assert(THREADS % kChunks == 0 && (ROWS * kChunks) % THREADS == 0, "whole passes over the rows");
  constexpr int kRowsPerPass = THREADS / kChunks;
  const int q = static_cast<int>(threadIdx.x) % kChunks, r0 = static_cast<int>(threadIdx.x) / kChunks;
#pragma unroll
  for (int pass = 0; pass < ROWS / kRowsPerPass; ++pass) {
    const int r = r0 + pass * kRowsPerPass;
    const bool ok = r < valid;
    const T* src = ok ? row_ptr(r) + q * kElems : fallback;
    cp_async16(smem + r * ld + q * kElems, src, ok);
  }
}

}  // namespace simcalkv::cuda::detail
