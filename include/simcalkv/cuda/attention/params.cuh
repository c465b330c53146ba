// simcalkv CUDA decode attention: the plain parameter structs over caller memory (shape, I/O strides, kernel parameters) (the file comment of cuda/attention.cuh describes the whole).
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/cuda/tma.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <utility>

namespace simcalkv::cuda {

struct DecodeShape {
  int num_seqs = 0;      // requests x KV heads
  int num_kv_heads = 1;  // KV heads per request
  int head_dim = 128;    // 64 or 128
  int group = 1;         // G, query heads per KV head (1 to 8)
  int max_length = 0;    // upper bound of lengths[s]
  int splits = 0;        // 0: chosen from the shape and the GPU
  bool tensor_cores = true;  // mma.sync kernel (default); false: the CUDA-core kernel
  bool tma = true;           // ragged layout on sm_90+: full tiles copied by the TMA (tma.cuh)
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

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeTile = 32;  // CUDA-core kernel: entries per stage, 8 per warp
inline constexpr int kDecodeStages = 4;
inline constexpr int kMmaTile = 64;     // tensor-core kernel: entries per stage, 16 per warp
inline constexpr int kMmaStages = 3;

template <class T, class Q, class O, class Layout>
struct DecodeParams {
  LayerKV<T, Layout> kv;
  DecodeIO<Q, O> io;
  int splits;
  float scale;
  float* part_acc;                // [S][G][splits][D]
  float* part_ml;                 // [S][G][splits][2]
  unsigned long long* tickets;    // [S]: which block of a sequence finishes last
  CUtensorMap kmap, vmap;         // TMA kernels: the maps of keys and values (tma.cuh)
};

}  // namespace detail

}  // namespace simcalkv::cuda
