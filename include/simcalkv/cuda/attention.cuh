// simcalkv CUDA: split-KV decode attention over a compressed layer, with the per-entry bias
// (kernels/attention.hpp's decode_attention on the GPU).
//
// For every sequence s (request b, KV head h) and each of its G query heads g:
//
//     out[b][h * G + g] = softmax_j(scale * q . k_j + bias_j) V   over j < lengths[s],
//
// with float accumulation from 16-bit storage. The G query heads of a group are served from one
// read of K and V. Each sequence's entries are split over `splits` blocks (split-KV, as FlashInfer
// and FlashDecoding do); a block streams its part through shared memory with cp.async and keeps an
// online softmax per query head; a second kernel combines the splits. Works over the ragged and
// the paged layouts.
//
// The default kernel runs both products on the tensor cores (mma.sync m16n8k16): the G query
// heads are the rows of A (padded to 16), 16 entries per warp and step; the probabilities stay in
// registers (the accumulator layout of Q K^T is the A layout of P V) as a hi + lo pair of 16-bit
// terms, so the result keeps about 16 significant bits of each probability. The CUDA-core kernel
// (DecodeShape::tensor_cores = false) computes the same in float FMAs.
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
  bool tensor_cores = true;  // mma.sync kernel (default); false: the CUDA-core kernel
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
  const long long most = std::max<long long>(1, ceil_div(shape.max_length, 256));
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


// ---------------------------------------------------------------------------------------------
// Tensor-core decode

inline constexpr int kMmaTile = 64;    // entries per stage: 16 per warp
inline constexpr int kMmaStages = 3;

/// D += A * B for one m16n8k16 tile (fragments as the PTX ISA lays them out).
template <class T>
__device__ __forceinline__ void mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

template <class T, int D>
struct MmaSmem {
  static constexpr int ld = D + 8;  // padded rows: conflict-free fragment loads and ldmatrix
  static constexpr std::size_t stage_bytes = 2 * sizeof(T) * kMmaTile * ld + sizeof(float) * kMmaTile;
  static constexpr std::size_t bytes = kMmaStages * stage_bytes;
};

/// grid (splits, S), 128 threads: 4 warps, each 16 entries of every 64-entry stage.
template <class T, int D, int G, class Q, class O, class Layout>
__global__ void __launch_bounds__(kDecodeThreads) decode_mma_kernel(DecodeParams<T, Q, O, Layout> p) {
  static_assert(G >= 1 && G <= 8, "group size 1 to 8");
  constexpr int KS = D / 16;          // k-steps of Q K^T
  constexpr int NB = D / 8;           // n-blocks of P V
  constexpr int NQ = std::is_same_v<Q, float> ? 2 : 1;  // float queries: hi + lo terms
  constexpr int WARPS = kDecodeThreads / 32;
  constexpr int LD = MmaSmem<T, D>::ld;
  constexpr int CHUNKS = D * static_cast<int>(sizeof(T)) / 16;
  using Smem = MmaSmem<T, D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float red_ml[WARPS][G][2];

  const int x = blockIdx.x, s = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;  // fragment row (query head) and column pair
  const int n = p.kv.lengths[s];
  const int per = static_cast<int>(ceil_div(ceil_div(n, p.splits), kMmaTile) * kMmaTile);
  const int begin = min(n, x * per), end = min(n, begin + per);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
  const auto seq = p.kv.layout.seq(s);

  // Q as the A operand: row g (query head), 16 dims per k-step; rows 8..15 are zero.
  uint32_t qa[KS][2], ql[KS][2];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (g < G) {
      const Q* qp = p.io.q + b * p.io.q_request_stride + (h * G + g) * p.io.q_head_stride + ks * 16 + t4 * 2;
      v[0] = to_float(qp[0]), v[1] = to_float(qp[1]), v[2] = to_float(qp[8]), v[3] = to_float(qp[9]);
    }
    if constexpr (NQ == 2) {
      split2<T>(v[0], v[1], qa[ks][0], ql[ks][0]);
      split2<T>(v[2], v[3], qa[ks][1], ql[ks][1]);
    } else {
      qa[ks][0] = pack2<T>(v[0], v[1]);
      qa[ks][1] = pack2<T>(v[2], v[3]);
    }
  }
  float o[NB][4];
#pragma unroll
  for (int i = 0; i < NB; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m = kNegInf, l = 0.0f;  // row g's running max and sum (all four lanes of the row agree)

  auto stage_k = [&](int st) { return reinterpret_cast<T*>(smem_raw + st * Smem::stage_bytes); };
  auto stage_v = [&](int st) { return stage_k(st) + kMmaTile * LD; };
  auto stage_b = [&](int st) { return reinterpret_cast<float*>(stage_v(st) + kMmaTile * LD); };
  const int tiles = static_cast<int>(ceil_div(end - begin, kMmaTile));
  auto load = [&](int t) {
    if (t >= tiles) return;
    const int st = t % kMmaStages;
    const int j0 = begin + t * kMmaTile;
    const int valid = min(kMmaTile, end - j0);
    T* ks = stage_k(st);
    T* vs = stage_v(st);
    for (int i = tid; i < kMmaTile * CHUNKS; i += kDecodeThreads) {
      const int r = i / CHUNKS, q = i % CHUNKS;
      const bool ok = r < valid;
      const int64_t e = ok ? seq.entry(j0 + r) : 0;
      cp_async16(ks + r * LD + q * 8, p.kv.keys + e * p.kv.key_stride + q * 8, ok);
      cp_async16(vs + r * LD + q * 8, p.kv.values + e * p.kv.value_stride + q * 8, ok);
    }
    if (tid < kMmaTile) {
      const bool ok = tid < valid;
      const int64_t e = ok ? seq.entry(j0 + tid) : 0;
      cp_async4(stage_b(st) + tid, p.kv.bias + e, ok);
    }
  };
#pragma unroll
  for (int t = 0; t < kMmaStages - 1; ++t) {
    load(t);
    cp_async_commit();
  }

  const int e0 = warp * 16;  // this warp's entries within a stage
  for (int t = 0; t < tiles; ++t) {
    cp_async_wait<kMmaStages - 2>();
    __syncthreads();
    load(t + kMmaStages - 1);
    cp_async_commit();
    const int st = t % kMmaStages;
    const T* ks = stage_k(st);
    const T* vs = stage_v(st);
    const float* bs = stage_b(st);
    const int j0 = begin + t * kMmaTile;
    // S = Q K^T for entries e0 .. e0 + 15 (two n-blocks of 8).
    float sacc[2][4];
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
      sacc[nb][0] = sacc[nb][1] = sacc[nb][2] = sacc[nb][3] = 0.0f;
      const T* krow = ks + (e0 + nb * 8 + g) * LD + t4 * 2;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + kk * 16);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8);
        mma16816<T>(sacc[nb], qa[kk][0], 0u, qa[kk][1], 0u, b0, b1);
        if constexpr (NQ == 2) mma16816<T>(sacc[nb], ql[kk][0], 0u, ql[kk][1], 0u, b0, b1);
      }
    }
    // Online softmax of row g over the 16 entries: this lane holds entries t4*2, +1 of each block.
    float xs[4];
    float tile_max = kNegInf;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = e0 + (i >> 1) * 8 + t4 * 2 + (i & 1);
      const bool ok = g < G && j0 + e < end;
      xs[i] = ok ? sacc[i >> 1][i & 1] * p.scale + bs[e] : kNegInf;
      tile_max = fmaxf(tile_max, xs[i]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float mn = fmaxf(m, tile_max);
    const float alpha = exp_diff(m, mn);
    float psum = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xs[i] = exp_diff(xs[i], mn);
      psum += xs[i];
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    l = l * alpha + psum;
    m = mn;
#pragma unroll
    for (int i = 0; i < NB; ++i) o[i][0] *= alpha, o[i][1] *= alpha;
    // P as the A operand (rows 8..15 zero), hi + lo.
    uint32_t pa0, pa2, pl0, pl2;
    split2<T>(xs[0], xs[1], pa0, pl0);
    split2<T>(xs[2], xs[3], pa2, pl2);
    // O += P V: V fragments by transposing loads of the warp's 16 rows, two n-blocks at a time.
    const int mi = lane >> 3, ri = lane & 7;
    const T* vrow = vs + (e0 + (mi & 1) * 8 + ri) * LD + (mi >> 1) * 8;
#pragma unroll
    for (int nbp = 0; nbp < NB / 2; ++nbp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, vrow + nbp * 16);
      mma16816<T>(o[2 * nbp], pa0, 0u, pa2, 0u, vb[0], vb[1]);
      mma16816<T>(o[2 * nbp], pl0, 0u, pl2, 0u, vb[0], vb[1]);
      mma16816<T>(o[2 * nbp + 1], pa0, 0u, pa2, 0u, vb[2], vb[3]);
      mma16816<T>(o[2 * nbp + 1], pl0, 0u, pl2, 0u, vb[2], vb[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages are reused for the cross-warp reduction
  float* red_acc = reinterpret_cast<float*>(smem_raw);  // [WARPS][G][D]
  if (g < G) {
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      red_acc[(warp * G + g) * D + i * 8 + t4 * 2] = o[i][0];
      red_acc[(warp * G + g) * D + i * 8 + t4 * 2 + 1] = o[i][1];
    }
    if (t4 == 0) {
      red_ml[warp][g][0] = m;
      red_ml[warp][g][1] = l;
    }
  }
  __syncthreads();
  for (int i = tid; i < G * D; i += kDecodeThreads) {
    const int gg = i / D, d = i % D;
    float mm = kNegInf;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mm = fmaxf(mm, red_ml[w][gg][0]);
    float ll = 0.0f, aa = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float f = exp_diff(red_ml[w][gg][0], mm);
      ll += red_ml[w][gg][1] * f;
      aa += red_acc[(w * G + gg) * D + d] * f;
    }
    if (p.splits == 1) {
      O* out = p.io.out + b * p.io.out_request_stride + (h * G + gg) * p.io.out_head_stride;
      out[d] = from_float<O>(ll > 0.0f ? aa / ll : 0.0f);
    } else {
      const int64_t slot = (static_cast<int64_t>(s) * G + gg) * p.splits + x;
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
  static_assert(DecodeSmem<T, D>::bytes >= sizeof(float) * (kDecodeThreads / 32) * 8 * D, "reduction fits");
  static_assert(MmaSmem<T, D>::bytes >= sizeof(float) * (kDecodeThreads / 32) * 8 * D, "reduction fits");
  const std::size_t smem = shape.tensor_cores ? MmaSmem<T, D>::bytes : DecodeSmem<T, D>::bytes;
  auto kernel = shape.tensor_cores ? decode_mma_kernel<T, D, G, Q, O, Layout> : decode_kernel<T, D, G, Q, O, Layout>;
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
