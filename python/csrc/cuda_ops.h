// The interface between simcalkv._C's torch glue (ops.cpp, g++) and its CUDA half (cuda_ops.cu,
// nvcc): plain structs of device pointers and sizes, no CUDA or torch types.
#pragma once

#include <cstddef>
#include <cstdint>

/// One layer of a batch in the ragged layout (device pointers). dtype 0: bfloat16, 1: float16.
struct CudaLayer {
  int dtype = 0;
  void* keys = nullptr;  // [total_rows, head_dim]
  void* values = nullptr;
  float* bias = nullptr;          // [total_rows]
  int32_t* positions = nullptr;   // [total_rows]
  const int64_t* offsets = nullptr;  // [num_seqs]
  int32_t* lengths = nullptr;        // [num_seqs], lowered by compression
  int num_seqs = 0;
  int num_kv_heads = 1;
  int head_dim = 128;
  int max_length = 0;      // upper bound of lengths[s]
  int64_t total_rows = 0;  // upper bound of the lengths' sum
};

/// The observation window: float32 queries of request b, query head h, token t at
/// queries + b * request_stride + h * head_stride + t * token_stride; positions [tokens].
struct CudaWindow {
  const float* queries = nullptr;
  int64_t request_stride = 0, head_stride = 0, token_stride = 0;
  const int32_t* positions = nullptr;
  int tokens = 0;
  int group = 1;
};

/// The policy: method 0 StreamingLLM, 1 SnapKV, 2 SimCalKV; -1 / 0 keep the method's default.
struct CudaPolicy {
  int method = 2;
  int sink_tokens = -1;
  int pooling = -1;  // simcalkv::Pooling
  int pool_kernel = 0;
  bool adakv = false;
};

/// One decode token per request: queries and outputs in the layer's dtype.
struct CudaDecodeIO {
  const void* queries = nullptr;
  int64_t q_request_stride = 0, q_head_stride = 0;
  void* out = nullptr;
  int64_t out_request_stride = 0, out_head_stride = 0;
  float scale = 0.0f;
  int group = 1;
};

std::size_t simcalkv_cuda_compress_workspace(const CudaLayer& layer, const CudaWindow& window, const CudaPolicy& policy);
/// Returns a cudaError_t (0: success); asynchronous on `stream` (a cudaStream_t).
int simcalkv_cuda_compress(const CudaLayer& layer, const CudaWindow& window, const CudaPolicy& policy,
                           double compress_ratio, void* workspace, std::size_t workspace_bytes, void* stream);
std::size_t simcalkv_cuda_decode_workspace(const CudaLayer& layer, int group);
int simcalkv_cuda_decode(const CudaLayer& layer, const CudaDecodeIO& io, void* workspace, std::size_t workspace_bytes,
                         void* stream);
const char* simcalkv_cuda_error(int code);
