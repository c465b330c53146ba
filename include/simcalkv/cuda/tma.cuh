// simcalkv CUDA: Hopper tensor-memory-accelerator (TMA) copies of row tiles, for decode attention
// over the ragged layout.
//
// A tensor map describes rows of 16-bit elements (head_dim wide, `stride` elements apart) to the
// TMA unit; one instruction then copies a box of 64 rows x 64 elements (128 bytes per row) into
// shared memory, swizzled so that the 16-byte chunk c of row r lands at chunk c ^ (r % 8) of its
// 128-byte line: ldmatrix reads eight rows of one column without bank conflicts. The copy
// completes on an mbarrier armed with the bytes it brings. Against 16-byte cp.async copies the
// threads issue nothing per row (the copies of a tile are four instructions of one thread), which
// is what lets a block of decode stream at the rate of plain loads.
//
// The map is encoded on the host for each call (cuTensorMapEncodeTiled, found through the runtime,
// so nothing links libcuda) and passed as a __grid_constant__ kernel parameter.
#pragma once

#include "simcalkv/cuda/common.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdint>

namespace simcalkv::cuda::detail {

inline constexpr int kTmaBoxRows = 64;   // rows per box
inline constexpr int kTmaBoxElems = 64;  // 16-bit elements per box row: 128 bytes, the swizzle span

/// Byte offset of 16-byte chunk c of row r in a swizzled tile of kTmaBoxRows rows (boxes of 64
/// elements side by side: chunk c is in box c / 8).
__host__ __device__ __forceinline__ int tma_tile_offset(int r, int c) {
  return (c >> 3) * (kTmaBoxRows * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}

/// cuTensorMapEncodeTiled of the installed driver, looked up once (null where there is none).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encoder = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encoder;
}

/// A map over rows of `width` elements of T (bf16 or fp16), `stride` elements apart, starting at
/// `base`, read in swizzled boxes of 64 x 64. The row count is left open (2^31 - 1): the caller
/// copies only boxes whose rows all exist. False where the driver refuses the map (alignment).
template <class T>
bool encode_row_map(CUtensorMap* map, const T* base, int width, int64_t stride) {
  static_assert(is_storage_v<T>, "16-bit storage");
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || width % kTmaBoxElems != 0) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(width), static_cast<cuuint64_t>(INT32_MAX)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride) * sizeof(T)};
  const cuuint32_t box[2] = {kTmaBoxElems, kTmaBoxRows};
  const cuuint32_t steps[2] = {1, 1};
  const CUtensorMapDataType type =
      std::is_same_v<T, bf16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return encode(map, type, 2, const_cast<T*>(base), dims, strides, box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Device side: mbarriers and the copy (sm_90 and newer; empty below, never launched there).

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
#endif
}
/// Makes initialised mbarriers visible to the TMA unit.
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "TMA_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra TMA_WAIT;\n"
      "}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
#endif
}
/// One box at element column x, row y of the map into shared memory (1024-byte aligned).
__device__ __forceinline__ void tma_load_box(void* smem, const CUtensorMap* map, int x, int y, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_u32(smem)),
      "l"(map), "r"(x), "r"(y), "r"(smem_u32(bar))
      : "memory");
#endif
}

}  // namespace simcalkv::cuda::detail
