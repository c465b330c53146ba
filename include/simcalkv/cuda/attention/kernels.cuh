// simcalkv CUDA decode attention: the kernels (CUDA cores and tensor cores) and the combination of the splits (the file comment of cuda/attention.cuh describes the whole).
#pragma once

#include "simcalkv/cuda/attention/kv_stream.cuh"
#include "simcalkv/cuda/attention/params.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <utility>

namespace simcalkv::cuda {

namespace detail {

// ---------------------------------------------------------------------------------------------
// Combining the splits

/// Whether this block is the last of its sequence's `splits` blocks to get here; the last one
/// resets the counter to 0 for the next call. The counter holds a tag of the launch (high half,
/// from %gridid) and the count (low half): a value with another tag (a fresh workspace's garbage)
/// counts as 0, so the workspace needs no initialisation.
__device__ __forceinline__ bool last_of_splits(unsigned long long* counter, int splits) {
  unsigned long long grid;
  asm("mov.u64 %0, %%gridid;\n" : "=l"(grid));
  const unsigned long long tag =
      static_cast<unsigned long long>(static_cast<uint32_t>((grid * 0x9e3779b97f4a7c15ull) >> 32) | 1u) << 32;
  unsigned long long seen = 0, want;
  for (;;) {
    want = (seen & 0xffffffff00000000ull) == tag ? seen + 1 : (tag | 1u);
    const unsigned long long prev = atomicCAS(counter, seen, want);
    if (prev == seen) break;
    seen = prev;
  }
  if (static_cast<uint32_t>(want) < static_cast<uint32_t>(splits)) return false;
  atomicExch(counter, 0ull);
  return true;
}

/// The end of both kernels: red_acc [WARPS][G][D] and red_ml [WARPS][G] (max, sum) hold the
/// warps' partial results in shared memory. With one split the block writes the output; with
/// more it writes its partial to the workspace, and the last block of the sequence combines the
/// partials in split order (deterministic, the same arithmetic as a separate combine pass).
template <int D, int G, int WARPS, class T, class Q, class O, class Layout>
__device__ __forceinline__ void decode_finish(const DecodeParams<T, Q, O, Layout>& p, const float* red_acc,
                                              const float (*red_ml)[G][2], int s, int x) {
  const int tid = static_cast<int>(threadIdx.x);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
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
  if (p.splits == 1) return;
  __shared__ bool last;
  __threadfence();  // the partials are visible GPU-wide before the ticket is taken
  __syncthreads();
  if (tid == 0) last = last_of_splits(p.tickets + s, p.splits);
  __syncthreads();
  if (!last) return;
  __threadfence();  // acquire the other blocks' partials; read them from L2 (__ldcg), not L1
  for (int i = tid; i < G * D; i += kDecodeThreads) {
    const int gg = i / D, d = i % D;
    const int64_t base = (static_cast<int64_t>(s) * G + gg) * p.splits;
    float mm = kNegInf;
    for (int xx = 0; xx < p.splits; ++xx) mm = fmaxf(mm, __ldcg(p.part_ml + (base + xx) * 2));
    float ll = 0.0f, aa = 0.0f;
    for (int xx = 0; xx < p.splits; ++xx) {
      const float f = exp_diff(__ldcg(p.part_ml + (base + xx) * 2), mm);
      ll += __ldcg(p.part_ml + (base + xx) * 2 + 1) * f;
      aa += __ldcg(p.part_acc + (base + xx) * D + d) * f;
    }
    O* out = p.io.out + b * p.io.out_request_stride + (h * G + gg) * p.io.out_head_stride;
    out[d] = from_float<O>(ll > 0.0f ? aa / ll : 0.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// CUDA-core decode

/// grid (splits, S), 128 threads.
template <class T, int D, int G, class Q, class O, class Layout>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(DecodeParams<T, Q, O, Layout> p) {
  constexpr int LPR = D / 8;           // lanes per row: 8 elements (16 bytes) each
  constexpr int RPP = 32 / LPR;        // rows per warp pass
  constexpr int WARPS = kDecodeThreads / 32;
  constexpr int ROWS_PER_WARP = kDecodeTile / WARPS;
  constexpr int PASSES = ROWS_PER_WARP / RPP;
  using Stream = FmaStream<T, D, Layout>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ typename Stream::Shared stream_sh;
  __shared__ float red_ml[WARPS][G][2];

  const int x = blockIdx.x, s = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rig = lane / LPR, ch = lane % LPR;
  const int n = p.kv.lengths[s];
  const int per = static_cast<int>(ceil_div(ceil_div(n, p.splits), kDecodeTile) * kDecodeTile);
  const int begin = min(n, x * per), end = min(n, begin + per);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
  Stream kv(p.kv, s, begin, end, smem_raw, stream_sh);
  kv.start();

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

  for (int t = 0; t < kv.tiles; ++t) {
    kv.advance(t);
    const auto ahead = kv.fetch(t + kDecodeStages);
    const int st = t % kDecodeStages;
    const T* ks = kv.k(st);
    const T* vs = kv.v(st);
    const float* bs = kv.b(st);
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
    kv.prepare(t + kDecodeStages, ahead);
  }
  kv.finish();
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
  decode_finish<D, G, WARPS>(p, red_acc, red_ml, s, x);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core decode

template <class Stream, class T, class Q, class O, class Layout>
__device__ __forceinline__ Stream make_stream(const DecodeParams<T, Q, O, Layout>& p, int s, int begin, int end,
                                              unsigned char* smem, typename Stream::Shared& sh) {
  if constexpr (Stream::kTma)
    return Stream(p.kv, &p.kmap, &p.vmap, s, begin, end, smem, sh);
  else
    return Stream(p.kv, s, begin, end, smem, sh);
}

/// grid (splits, S), 128 threads: 4 warps, each 16 entries of every 64-entry stage. TMA: the
/// copies of full tiles by the tensor memory accelerator (ragged layout, sm_90).
template <class T, int D, int G, class Q, class O, class Layout, bool TMA>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_mma_kernel(const __grid_constant__ DecodeParams<T, Q, O, Layout> p) {
  static_assert(G >= 1 && G <= 8, "group size 1 to 8");
  constexpr int KS = D / 16;          // k-steps of Q K^T
  constexpr int NB = D / 8;           // n-blocks of P V
  constexpr int NQ = std::is_same_v<Q, float> ? 2 : 1;  // float queries: hi + lo terms
  constexpr int NP = std::is_same_v<O, float> ? 2 : 1;  // float output: probabilities as hi + lo
  constexpr int WARPS = kDecodeThreads / 32;
  using Stream = std::conditional_t<TMA, MmaTmaStream<T, D>, MmaStream<T, D, Layout>>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ typename Stream::Shared stream_sh;
  __shared__ float red_ml[WARPS][G][2];

  const int x = blockIdx.x, s = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;  // fragment row (query head) and column pair
  const int n = p.kv.lengths[s];
  const int per = static_cast<int>(ceil_div(ceil_div(n, p.splits), kMmaTile) * kMmaTile);
  const int begin = min(n, x * per), end = min(n, begin + per);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
  Stream kv = make_stream<Stream>(p, s, begin, end, smem_raw, stream_sh);
  kv.start();  // the first copies fly while the queries load

  // Q as the A operand: row g (query head), 16 dims per k-step; rows 8..15 are zero.
  uint32_t qa[KS][4], ql[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (g < G) {
      const Q* qp = p.io.q + b * p.io.q_request_stride + (h * G + g) * p.io.q_head_stride + ks * 16 + t4 * 2;
      v[0] = to_float(qp[0]), v[1] = to_float(qp[1]), v[2] = to_float(qp[8]), v[3] = to_float(qp[9]);
    }
    qa[ks][1] = qa[ks][3] = ql[ks][1] = ql[ks][3] = 0u;
    if constexpr (NQ == 2) {
      split2<T>(v[0], v[1], qa[ks][0], ql[ks][0]);
      split2<T>(v[2], v[3], qa[ks][2], ql[ks][2]);
    } else {
      qa[ks][0] = pack2<T>(v[0], v[1]);
      qa[ks][2] = pack2<T>(v[2], v[3]);
    }
  }
  float o[NB][4];
#pragma unroll
  for (int i = 0; i < NB; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  // Row g's running max and sum, in base 2 (logits times log2 e); the four lanes of a row agree.
  float m = kNegInf, l = 0.0f;
  const float scale2 = p.scale * kLog2e;

  const int e0 = warp * 16;  // this warp's entries within a stage
  // ldmatrix addresses: lane l gives row l % 8 of matrix l / 8. For K the four matrices are
  // (entries 0-7, dims 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) of a k-step: the B fragments of
  // both n-blocks. For V (transposed) they are (entries 0-7, dims 0-7), (8-15, 0-7), (0-7, 8-15),
  // (8-15, 8-15) of a pair of n-blocks.
  const int mi = lane >> 3, ri = lane & 7;
  const int k_row = e0 + (mi >> 1) * 8 + ri, k_chunk = mi & 1;
  const int v_row = e0 + (mi & 1) * 8 + ri, v_chunk = mi >> 1;
  for (int t = 0; t < kv.tiles; ++t) {
    kv.advance(t);
    const auto ahead = kv.fetch(t + kMmaStages);
    const int st = t % kMmaStages;
    const T* ks = kv.k(st);
    const T* vs = kv.v(st);
    const float* bs = kv.b(st);
    const int j0 = begin + t * kMmaTile;
    // S = Q K^T for entries e0 .. e0 + 15 (two n-blocks of 8, two independent chains).
    float sacc[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t kb[4];
      ldsm_x4(kb, ks + Stream::at(k_row, kk * 2 + k_chunk));
      mma_m16n8k16<T>(sacc[0], qa[kk], kb[0], kb[1]);
      mma_m16n8k16<T>(sacc[1], qa[kk], kb[2], kb[3]);
      if constexpr (NQ == 2) {
        mma_m16n8k16<T>(sacc[0], ql[kk], kb[0], kb[1]);
        mma_m16n8k16<T>(sacc[1], ql[kk], kb[2], kb[3]);
      }
    }
    // Online softmax of row g over the 16 entries: this lane holds entries t4*2, +1 of each block.
    float xs[4];
    float tile_max = kNegInf;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = e0 + (i >> 1) * 8 + t4 * 2 + (i & 1);
      const bool ok = g < G && j0 + e < end;
      xs[i] = ok ? fmaf(sacc[i >> 1][i & 1], scale2, bs[e] * kLog2e) : kNegInf;
      tile_max = fmaxf(tile_max, xs[i]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float mn = fmaxf(m, tile_max);
    const float base = mn == kNegInf ? 0.0f : mn;  // every entry so far masked: 2^(-inf - 0) = 0
    const float alpha = mn == m ? 1.0f : fast_exp2(m - base);
    float psum = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xs[i] = fast_exp2(xs[i] - base);
      psum += xs[i];
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    l = l * alpha + psum;
    m = mn;
    // Once the maxima settle (most tiles), no row of the warp rescales: skip the multiplies.
    if (__any_sync(0xffffffffu, alpha != 1.0f)) {
#pragma unroll
      for (int i = 0; i < NB; ++i) o[i][0] *= alpha, o[i][1] *= alpha;
    }
    // P as the A operand (rows 8..15 zero): one 16-bit term when the output is 16-bit (its own
    // rounding is as coarse), hi + lo for float output.
    uint32_t pa[4] = {0u, 0u, 0u, 0u}, pl[4] = {0u, 0u, 0u, 0u};
    if constexpr (NP == 2) {
      split2<T>(xs[0], xs[1], pa[0], pl[0]);
      split2<T>(xs[2], xs[3], pa[2], pl[2]);
    } else {
      pa[0] = pack2<T>(xs[0], xs[1]);
      pa[2] = pack2<T>(xs[2], xs[3]);
    }
    // O += P V: V fragments by transposing loads of the warp's 16 rows, two n-blocks at a time.
#pragma unroll
    for (int nbp = 0; nbp < NB / 2; ++nbp) {
      uint32_t vb[4];
      ldsm_x4_trans(vb, vs + Stream::at(v_row, nbp * 2 + v_chunk));
      mma_m16n8k16<T>(o[2 * nbp], pa, vb[0], vb[1]);
      mma_m16n8k16<T>(o[2 * nbp + 1], pa, vb[2], vb[3]);
      if constexpr (NP == 2) {
        mma_m16n8k16<T>(o[2 * nbp], pl, vb[0], vb[1]);
        mma_m16n8k16<T>(o[2 * nbp + 1], pl, vb[2], vb[3]);
      }
    }
    kv.prepare(t + kMmaStages, ahead);
  }
  kv.finish();
  __syncthreads();  // the stages are reused for the cross-warp reduction
  float* red_acc = reinterpret_cast<float*>(smem_raw);  // [WARPS][G][D]
  if (g < G) {
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      red_acc[(warp * G + g) * D + i * 8 + t4 * 2] = o[i][0];
      red_acc[(warp * G + g) * D + i * 8 + t4 * 2 + 1] = o[i][1];
    }
    if (t4 == 0) {
      red_ml[warp][g][0] = m * kLn2;  // back to natural units for decode_finish
      red_ml[warp][g][1] = l;
    }
  }
  __syncthreads();
  decode_finish<D, G, WARPS>(p, red_acc, red_ml, s, x);
}

}  // namespace detail

}  // namespace simcalkv::cuda
