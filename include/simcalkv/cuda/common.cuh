// simcalkv CUDA: shared definitions for the header-only kernels (storage types, options, small
// device helpers). Everything under include/simcalkv/cuda/ works on caller-owned device memory:
// kernels never allocate, and the scratch they need comes from a workspace whose size the caller
// asks for first (see compress.cuh and attention.cuh).
//
// These headers need only the CUDA toolkit (CUDA 12 or later, C++17 or later, sm_80 or newer for
// the bf16 tensor-core paths); they do not include the CPU library or Eigen.
#pragma once

#include "simcalkv/options.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <type_traits>

namespace simcalkv::cuda {

using bf16 = __nv_bfloat16;
using fp16 = __half;

/// Storage element types of the CUDA kernels: bfloat16 and IEEE half. Arithmetic is float.
template <class T>
inline constexpr bool is_storage_v = std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;

// ---------------------------------------------------------------------------------------------
// Options, mirroring the CPU policies (same names and semantics, see include/simcalkv/policies)

// The option enums are the CPU's own (simcalkv/options.hpp), not copies.
/// The per-head compression rule.
using Method = ::simcalkv::KernelMethod;
using Pooling = ::simcalkv::Pooling;
using Search = ::simcalkv::SimilaritySearch;
using BiasMode = ::simcalkv::BiasMode;
/// How many entries a sequence keeps: the same rule as simcalkv::Budget::for_length.
using BudgetKind = ::simcalkv::BudgetKind;

struct BudgetRule {
  BudgetKind kind = BudgetKind::keep_fraction;
  double value = 1.0;
};

/// A policy, as plain data. Defaults are the CPU defaults of the matching policy class.
struct PolicyConfig {
  Method method = Method::simcalkv;
  int sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length
  Pooling pooling = Pooling::none;  // SnapKV's CPU default is max with kernel 7: use snapkv_config()
  int pool_kernel = 7;
  Search search = Search::local;
  int search_radius = 64;
  float similarity_threshold = -__builtin_huge_valf();  // -inf: merge everything
  BiasMode bias = BiasMode::bounded;
  bool merge_keys = true;
  bool adakv = false;     // AdaKV's cross-head budgets inside each request (of this shard)
  double adakv_alpha = 0.2;
};

inline PolicyConfig streaming_llm_config() {
  PolicyConfig c;
  c.method = Method::streaming_llm;
  return c;
}
inline PolicyConfig snapkv_config() {
  PolicyConfig c;
  c.method = Method::snapkv;
  c.pooling = Pooling::max;
  c.pool_kernel = 7;
  return c;
}
inline PolicyConfig simcalkv_config() { return PolicyConfig{}; }

// ---------------------------------------------------------------------------------------------
// Errors

/// Returns the first error of a chain of CUDA calls.
#define SIMCALKV_CUDA_TRY(expr)                        \
  do {                                                 \
    const cudaError_t simcalkv_err_ = (expr);          \
    if (simcalkv_err_ != cudaSuccess) return simcalkv_err_; \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Device helpers

namespace detail {

inline constexpr float kNegInf = -__builtin_huge_valf();
inline constexpr float kLog2e = 1.4426950408889634f;  // exponentials in base 2: e^x = 2^(x log2 e)
inline constexpr float kLn2 = 0.6931471805599453f;

template <class T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<bf16>(bf16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_float<fp16>(fp16 x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_float<float>(float x) {
  return x;
}

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ fp16 from_float<fp16>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}

/// Widens two 16-bit elements packed in a 32-bit word (element 0 in the low half).
template <class T>
__device__ __forceinline__ float2 unpack2(uint32_t w);
template <>
__device__ __forceinline__ float2 unpack2<bf16>(uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}
template <>
__device__ __forceinline__ float2 unpack2<fp16>(uint32_t w) {
  __half2 h;
  memcpy(&h, &w, sizeof(h));
  return __half22float2(h);
}

/// Widens 8 contiguous 16-bit elements held in a uint4.
template <class T>
__device__ __forceinline__ void unpack8(const uint4& v, float* out) {
  const float2 a = unpack2<T>(v.x), b = unpack2<T>(v.y), c = unpack2<T>(v.z), d = unpack2<T>(v.w);
  out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
  out[4] = c.x, out[5] = c.y, out[6] = d.x, out[7] = d.y;
}

/// Two floats as a packed pair of 16-bit elements (x in the low half), and the rounding residuals.
template <class T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (std::is_same_v<T, bf16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
template <class T>
__device__ __forceinline__ void split2(float x, float y, uint32_t& hi, uint32_t& lo) {
  hi = pack2<T>(x, y);
  const float2 h = unpack2<T>(hi);
  lo = pack2<T>(x - h.x, y - h.y);
}

/// Float bits mapped to an unsigned key with the same order (larger float, larger key).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// exp(a - b) that is 0 when a is -inf (also when b is -inf too).
__device__ __forceinline__ float exp_diff(float a, float b) { return a == kNegInf ? 0.0f : expf(a - b); }

/// exp_diff with the fast exponential (a few ulps; for sums of many terms).
__device__ __forceinline__ float fast_exp_diff(float a, float b) { return a == kNegInf ? 0.0f : __expf(a - b); }

/// 2^x in one MUFU instruction (ex2.approx: about 2 ulp; 2^-inf = 0; subnormal results flush to 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/// Combines two (max, sum of exp(x - max)) pairs.
__device__ __forceinline__ void lse_combine(float& m, float& l, float m2, float l2) {
  const float mm = fmaxf(m, m2);
  if (mm == kNegInf) return;
  l = l * exp_diff(m, mm) + l2 * exp_diff(m2, mm);
  m = mm;
}

// cp.async: asynchronous global -> shared copies (sm_80+). With pred false the destination is
// zero-filled and nothing is read.
/// L2_PREFETCH: bytes the L2 fetches around each copy (256, 128 or 0). Decode streams whole rows
/// and measured faster with 128 (H200, 8k tokens per head: 0.514 against 0.525 ms; 0 was slower).
template <int L2_PREFETCH = 256>
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  static_assert(L2_PREFETCH == 256 || L2_PREFETCH == 128 || L2_PREFETCH == 0, "L2 prefetch of 256, 128 or 0 bytes");
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = pred ? 16 : 0;
  if constexpr (L2_PREFETCH == 256)
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
  else if constexpr (L2_PREFETCH == 128)
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
  else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__host__ __device__ constexpr std::size_t align_up(std::size_t x, std::size_t a) { return (x + a - 1) / a * a; }
__host__ __device__ constexpr long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

/// Acquire / release accesses of a flag in global memory (GPU scope).
__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void store_release(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

/// Resident blocks per SM of `kernel` with `smem` bytes of dynamic shared memory on the current
/// device, its shared-memory limit raised first; asked once per kernel and device (Tag: the
/// kernel's instance).
template <class Tag, class Kernel>
cudaError_t kernel_occupancy(Kernel kernel, std::size_t smem, int threads, int* blocks) {
  int device = 0;
  SIMCALKV_CUDA_TRY(cudaGetDevice(&device));
  constexpr int kCached = 16;
  static std::mutex mutex;
  static int cache[kCached] = {};
  if (device >= 0 && device < kCached) {
    std::lock_guard<std::mutex> lock(mutex);
    if (cache[device] > 0) {
      *blocks = cache[device];
      return cudaSuccess;
    }
  }
  if (smem > 48 * 1024)
    SIMCALKV_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int x = 0;
  SIMCALKV_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&x, kernel, threads, smem));
  x = std::max(1, x);
  if (device >= 0 && device < kCached) {
    std::lock_guard<std::mutex> lock(mutex);
    cache[device] = x;
  }
  *blocks = x;
  return cudaSuccess;
}

/// Carves aligned sub-buffers out of one caller-owned workspace (or, with base == nullptr,
/// only adds up the bytes they need).
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <class U>
  U* take(std::size_t count) {
    offset_ = align_up(offset_, 256);
    U* p = base_ ? reinterpret_cast<U*>(base_ + offset_) : nullptr;
    offset_ += count * sizeof(U);
    return p;
  }
  [[nodiscard]] std::size_t bytes() const { return align_up(offset_, 256); }

 private:
  char* base_;
  std::size_t offset_ = 0;
};

}  // namespace detail
}  // namespace simcalkv::cuda
