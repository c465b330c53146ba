// simcalkv CUDA: split-KV decode attention over a compressed layer, with the per-entry bias
// (kernels/attention.hpp's decode_attention on the GPU).
//
// For every sequence s (request b, KV head h) and each of its G query heads g:
//
//     out[b][h * G + g] = softmax_j(scale * q . k_j + bias_j) V   over j < lengths[s],
//
// in float from 16-bit storage. The G query heads of a group are served from one read of K and
// V. Each sequence's entries are split over `splits` blocks (split-KV, as FlashInfer and
// FlashDecoding do); a block streams its part through shared memory with cp.async, four stages of
// 32 entries deep, and keeps an online softmax per query head; a second kernel combines the
// splits. Works over the ragged and the paged layouts.
//
//   DecodeShape shape{num_seqs, num_kv_heads, head_dim, group, max_length};
//   std::size_t bytes = decode_workspace_bytes(shape);
//   decode_attention(kv, q, q_strides, out, out_strides, shape, workspace, bytes, stream);
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"

#include <algorithm>
#include <cmath>

namespace simcalkv::cuda {

struct DecodeShape {
  int num_seqs = 0;      // requests x KV heads
  int num_kv_heads = 1;  // KV heads per request
  int head_dim = 128;    // 64 or 128
  int group = 1;         // G, query heads per KV head (1 to 8)
  int max_length = 0;    // upper bound of lengths[s]
  int splits = 0;        // 0: chosen from the shape and the GPU
};

/// Queries q[b * request_stride + (h * G + g) * head_stride + i] (Q: float or the storage type);
/// outputs out[b * out_request_stride + (h * G + g) * out_head_stride + i] (O: float or storage).
template <class Q, class O>
struct DecodeIO {
  const Q* q = nullptr;
  int64_t q_request_stride = 0;
  int64_t q_head_stride = 0;
  O* out = nullptr;
  int64_t out_request_stride = 0;
  int64_t out_head_stride = 0;
  float scale = 0.0f;  // 0: 1 / sqrt(head_dim)
};

namespace detail {

inline constexpr int kDecodeTile = 32;
inline constexpr int kDecodeStages = 4;
inline constexpr int kDecodeThreads = 128;

inline int decode_splits(const DecodeShape& shape) {
  if (shape.splits > 0) return shape.splits;
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const long long target = 6LL * sms;
  const long long most = std::max<long long>(1, ceil_div(shape.max_length, kDecodeTile * 4));
  return static_cast<int>(std::clamp<long long>(ceil_div(target, std::max(1, shape.num_seqs)), 1, most));
}

template <class T, class Q, class O, class Layout>
struct DecodeParams {
  LayerKV<T, Layout> kv;
  DecodeIO<Q, O> io;
  int splits;
  float scale;
  float* part_acc;  // [S][G][splits][D]
  float* part_ml;   // [S][G][splits][2]
};

template <class T, int D>
struct DecodeSmem {
  static constexpr std::size_t stage_bytes = 2 * sizeof(T) * kDecodeTile * D + sizeof(float) * kDecodeTile;
  static constexpr std::size_t bytes = kDecodeStages * stage_bytes;
};

/// grid (splits, S), 128 threads.
template <class T, int D, int G, class Q, class O, class Layout>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(DecodeParams<T, Q, O, Layout> p) {
  constexpr int LPR = D / 8;           // lanes per row: 8 elements (16 bytes) each
  constexpr int RPP = 32 / LPR;        // rows per warp pass
  constexpr int WARPS = kDecodeThreads / 32;
  constexpr int ROWS_PER_WARP = kDecodeTile / WARPS;
  constexpr int PASSES = ROWS_PER_WARP / RPP;
  constexpr int CHUNKS = D * static_cast<int>(sizeof(T)) / 16;
  using Smem = DecodeSmem<T, D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float red_ml[WARPS][G][2];

  const int x = blockIdx.x, s = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rig = lane / LPR, ch = lane % LPR;
  const int n = p.kv.lengths[s];
  const int per = static_cast<int>(ceil_div(ceil_div(n, p.splits), kDecodeTile) * kDecodeTile);
  const int begin = min(n, x * per), end = min(n, begin + per);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
  const auto seq = p.kv.layout.seq(s);

  // Pre-scaled queries: 8 dims (chunk ch) of each of the G heads.
  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const Q* qp = p.io.q + b * p.io.q_request_stride + (h * G + g) * p.io.q_head_stride + ch * 8;
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[g][i] = to_float(qp[i]) * p.scale;
  }
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  }

  auto stage_k = [&](int st) { return reinterpret_cast<T*>(smem_raw + st * Smem::stage_bytes); };
  auto stage_v = [&](int st) { return stage_k(st) + kDecodeTile * D; };
  auto stage_b = [&](int st) { return reinterpret_cast<float*>(stage_v(st) + kDecodeTile * D); };
  const int tiles = static_cast<int>(ceil_div(end - begin, kDecodeTile));
  auto load = [&](int t) {
    if (t >= tiles) return;
    const int st = t % kDecodeStages;
    const int j0 = begin + t * kDecodeTile;
    const int valid = min(kDecodeTile, end - j0);
    T* ks = stage_k(st);
    T* vs = stage_v(st);
    for (int i = tid; i < kDecodeTile * CHUNKS; i += kDecodeThreads) {
      const int r = i / CHUNKS, q = i % CHUNKS;
      const bool ok = r < valid;
      const int64_t e = ok ? seq.entry(j0 + r) : 0;
      cp_async16(ks + r * D + q * 8, p.kv.keys + e * p.kv.key_stride + q * 8, ok);
      cp_async16(vs + r * D + q * 8, p.kv.values + e * p.kv.value_stride + q * 8, ok);
    }
    if (tid < kDecodeTile) {
      const bool ok = tid < valid;
      const int64_t e = ok ? seq.entry(j0 + tid) : 0;
      cp_async4(stage_b(st) + tid, p.kv.bias + e, ok);
    }
  };
#pragma unroll
  for (int t = 0; t < kDecodeStages - 1; ++t) {
    load(t);
    cp_async_commit();
  }

  for (int t = 0; t < tiles; ++t) {
    cp_async_wait<kDecodeStages - 2>();
    __syncthreads();
    load(t + kDecodeStages - 1);
    cp_async_commit();
    const int st = t % kDecodeStages;
    const T* ks = stage_k(st);
    const T* vs = stage_v(st);
    const float* bs = stage_b(st);
    const int j0 = begin + t * kDecodeTile;
    float lg[PASSES][G];
#pragma unroll
    for (int ps = 0; ps < PASSES; ++ps) {
      const int row = warp * ROWS_PER_WARP + ps * RPP + rig;
      float k[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(ks + row * D + ch * 8), k);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) d = fmaf(qf[g][i], k[i], d);
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        lg[ps][g] = j0 + row < end ? d + bs[row] : kNegInf;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float tm = lg[0][g];
#pragma unroll
      for (int ps = 1; ps < PASSES; ++ps) tm = fmaxf(tm, lg[ps][g]);
#pragma unroll
      for (int o = LPR; o < 32; o <<= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, o));
      const float mn = fmaxf(m[g], tm);
      const float alpha = exp_diff(m[g], mn);
      float ps_sum = 0.0f;
#pragma unroll
      for (int ps = 0; ps < PASSES; ++ps) {
        lg[ps][g] = exp_diff(lg[ps][g], mn);
        ps_sum += lg[ps][g];
      }
#pragma unroll
      for (int o = LPR; o < 32; o <<= 1) ps_sum += __shfl_xor_sync(0xffffffffu, ps_sum, o);
      l[g] = l[g] * alpha + ps_sum;
      m[g] = mn;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= alpha;
    }
#pragma unroll
    for (int ps = 0; ps < PASSES; ++ps) {
      const int row = warp * ROWS_PER_WARP + ps * RPP + rig;
      float v[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(vs + row * D + ch * 8), v);
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(lg[ps][g], v[i], acc[g][i]);
    }
  }
  cp_async_wait<0>();
  // Rows of a warp share m and l: add their accumulators.
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int o = LPR; o < 32; o <<= 1) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
  __syncthreads();  // the stages are reused for the cross-warp reduction
  float* red_acc = reinterpret_cast<float*>(smem_raw);  // [WARPS][G][D]
  if (rig == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int i = 0; i < 8; ++i) red_acc[(warp * G + g) * D + ch * 8 + i] = acc[g][i];
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      red_ml[warp][g][0] = m[g];
      red_ml[warp][g][1] = l[g];
    }
  }
  __syncthreads();
  for (int i = tid; i < G * D; i += kDecodeThreads) {
    const int g = i / D, d = i % D;
    float mm = kNegInf;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mm = fmaxf(mm, red_ml[w][g][0]);
    float ll = 0.0f, aa = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float f = exp_diff(red_ml[w][g][0], mm);
      ll += red_ml[w][g][1] * f;
      aa += red_acc[(w * G + g) * D + d] * f;
    }
    if (p.splits == 1) {
      O* out = p.io.out + b * p.io.out_request_stride + (h * G + g) * p.io.out_head_stride;
      out[d] = from_float<O>(ll > 0.0f ? aa / ll : 0.0f);
    } else {
      const int64_t slot = (static_cast<int64_t>(s) * G + g) * p.splits + x;
      p.part_acc[slot * D + d] = aa;
      if (d == 0) {
        p.part_ml[slot * 2] = mm;
        p.part_ml[slot * 2 + 1] = ll;
      }
    }
  }
}

template <class Q, class O>
struct CombineParams {
  DecodeIO<Q, O> io;
  int num_kv_heads;
  int group;
  int head_dim;
  int splits;
  const float* part_acc;
  const float* part_ml;
};

/// grid (S), G * D threads.
template <class Q, class O>
__global__ void decode_combine_kernel(CombineParams<Q, O> p) {
  const int s = blockIdx.x;
  const int g = threadIdx.x / p.head_dim, d = threadIdx.x % p.head_dim;
  const int b = s / p.num_kv_heads, h = s % p.num_kv_heads;
  const int64_t base = (static_cast<int64_t>(s) * p.group + g) * p.splits;
  float mm = kNegInf;
  for (int x = 0; x < p.splits; ++x) mm = fmaxf(mm, p.part_ml[(base + x) * 2]);
  float ll = 0.0f, aa = 0.0f;
  for (int x = 0; x < p.splits; ++x) {
    const float f = exp_diff(p.part_ml[(base + x) * 2], mm);
    ll += p.part_ml[(base + x) * 2 + 1] * f;
    aa += p.part_acc[(base + x) * p.head_dim + d] * f;
  }
  O* out = p.io.out + b * p.io.out_request_stride + (h * p.group + g) * p.io.out_head_stride;
  out[d] = from_float<O>(ll > 0.0f ? aa / ll : 0.0f);
}

template <class T, int D, int G, class Q, class O, class Layout>
cudaError_t decode_launch(const LayerKV<T, Layout>& kv, const DecodeIO<Q, O>& io, const DecodeShape& shape, int splits,
                          float* part_acc, float* part_ml, cudaStream_t stream) {
  DecodeParams<T, Q, O, Layout> p{kv, io, splits, io.scale != 0.0f ? io.scale : 1.0f / std::sqrt(static_cast<float>(D)),
                                  part_acc, part_ml};
  constexpr std::size_t smem = DecodeSmem<T, D>::bytes;
  static_assert(smem >= sizeof(float) * (kDecodeThreads / 32) * 8 * D, "reduction fits in the stages");
  auto kernel = decode_kernel<T, D, G, Q, O, Layout>;
  if (smem > 48 * 1024)
    SIMCALKV_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<dim3(splits, shape.num_seqs), kDecodeThreads, smem, stream>>>(p);
  SIMCALKV_CUDA_TRY(cudaGetLastError());
  if (splits > 1) {
    CombineParams<Q, O> c{io, shape.num_kv_heads, G, D, splits, part_acc, part_ml};
    decode_combine_kernel<Q, O><<<shape.num_seqs, G * D, 0, stream>>>(c);
    SIMCALKV_CUDA_TRY(cudaGetLastError());
  }
  return cudaSuccess;
}

template <class T, int D, class Q, class O, class Layout>
cudaError_t decode_dispatch_group(const LayerKV<T, Layout>& kv, const DecodeIO<Q, O>& io, const DecodeShape& shape,
                                  int splits, float* acc, float* ml, cudaStream_t stream) {
  switch (shape.group) {
    case 1: return decode_launch<T, D, 1>(kv, io, shape, splits, acc, ml, stream);
    case 2: return decode_launch<T, D, 2>(kv, io, shape, splits, acc, ml, stream);
    case 3: return decode_launch<T, D, 3>(kv, io, shape, splits, acc, ml, stream);
    case 4: return decode_launch<T, D, 4>(kv, io, shape, splits, acc, ml, stream);
    case 5: return decode_launch<T, D, 5>(kv, io, shape, splits, acc, ml, stream);
    case 6: return decode_launch<T, D, 6>(kv, io, shape, splits, acc, ml, stream);
    case 7: return decode_launch<T, D, 7>(kv, io, shape, splits, acc, ml, stream);
    case 8: return decode_launch<T, D, 8>(kv, io, shape, splits, acc, ml, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace detail

/// Workspace bytes for decode_attention with this shape.
inline std::size_t decode_workspace_bytes(const DecodeShape& shape) {
  const int splits = detail::decode_splits(shape);
  if (splits <= 1) return 256;
  const std::size_t slots = static_cast<std::size_t>(shape.num_seqs) * shape.group * splits;
  return detail::align_up(slots * shape.head_dim * sizeof(float), 256) + detail::align_up(slots * 2 * sizeof(float), 256);
}

/// Decode attention of one layer (see the file comment); asynchronous on `stream`.
template <class T, class Layout, class Q, class O>
cudaError_t decode_attention(const LayerKV<T, Layout>& kv, const DecodeIO<Q, O>& io, const DecodeShape& shape,
                             void* workspace, std::size_t workspace_bytes, cudaStream_t stream = nullptr) {
  static_assert(is_storage_v<T>, "storage must be bf16 or fp16");
  if (shape.num_seqs <= 0) return cudaSuccess;
  if (shape.num_kv_heads <= 0 || shape.num_seqs % shape.num_kv_heads != 0) return cudaErrorInvalidValue;
  if (workspace_bytes < decode_workspace_bytes(shape)) return cudaErrorInvalidValue;
  const int splits = detail::decode_splits(shape);
  const std::size_t slots = static_cast<std::size_t>(shape.num_seqs) * shape.group * splits;
  float* acc = static_cast<float*>(workspace);
  float* ml = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                       detail::align_up(slots * shape.head_dim * sizeof(float), 256));
  switch (shape.head_dim) {
    case 64: return detail::decode_dispatch_group<T, 64>(kv, io, shape, splits, acc, ml, stream);
    case 128: return detail::decode_dispatch_group<T, 128>(kv, io, shape, splits, acc, ml, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace simcalkv::cuda
