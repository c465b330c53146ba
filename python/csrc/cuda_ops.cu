// simcalkv._C's GPU half: the CUDA kernels of include/simcalkv/cuda over raw device pointers.
//
// Compiled by nvcc without torch's headers (ops.cpp holds the torch glue and checks every argument
// before calling here), so this file is also compiled on machines without a CUDA torch
// (scripts/cuda_check.sh). One layer of a batch at a time, in the ragged layout: sequence
// s = request * num_kv_heads + head, its rows starting at offsets[s], lengths[s] of them live.
#include "cuda_ops.h"

#include <simcalkv/cuda/attention.cuh>
#include <simcalkv/cuda/compress.cuh>

namespace {

using namespace simcalkv::cuda;

PolicyConfig config_of(const CudaPolicy& p) {
  PolicyConfig c;
  switch (p.method) {
    case 0: c = streaming_llm_config(); break;
    case 1: c = snapkv_config(); break;
    default: c = simcalkv_config(); break;
  }
  if (p.sink_tokens >= 0) c.sink_tokens = p.sink_tokens;
  if (p.pooling >= 0) c.pooling = static_cast<Pooling>(p.pooling);
  if (p.pool_kernel > 0) c.pool_kernel = p.pool_kernel;
  c.adakv = p.adakv;
  return c;
}

CompressShape shape_of(const CudaLayer& l, const CudaWindow& w) {
  CompressShape s;
  s.num_seqs = l.num_seqs;
  s.num_kv_heads = l.num_kv_heads;
  s.head_dim = l.head_dim;
  s.window_tokens = w.tokens;
  s.group = w.group;
  s.max_length = l.max_length;
  s.total_length = l.total_rows;
  return s;
}

template <class T>
LayerKV<T, RaggedLayout> kv_of(const CudaLayer& l) {
  LayerKV<T, RaggedLayout> kv;
  kv.keys = static_cast<T*>(l.keys);
  kv.values = static_cast<T*>(l.values);
  kv.key_stride = kv.value_stride = l.head_dim;
  kv.bias = l.bias;
  kv.positions = l.positions;
  kv.lengths = l.lengths;
  kv.layout.offsets = l.offsets;
  kv.num_seqs = l.num_seqs;
  kv.num_kv_heads = l.num_kv_heads;
  kv.head_dim = l.head_dim;
  return kv;
}

WindowArgs<float> window_of(const CudaWindow& w) {
  WindowArgs<float> a;
  a.queries = w.queries;
  a.request_stride = w.request_stride;
  a.head_stride = w.head_stride;
  a.token_stride = w.token_stride;
  a.positions = w.positions;
  a.position_request_stride = 0;  // one window position list for every request
  a.num_tokens = w.tokens;
  a.group = w.group;
  return a;
}

DecodeShape decode_shape_of(const CudaLayer& l, int group) {
  DecodeShape s;
  s.num_seqs = l.num_seqs;
  s.num_kv_heads = l.num_kv_heads;
  s.head_dim = l.head_dim;
  s.group = group;
  s.max_length = l.max_length;
  return s;
}

template <class T>
int compress_as(const CudaLayer& l, const CudaWindow& w, const CudaPolicy& p, double compress_ratio, void* workspace,
                std::size_t workspace_bytes, void* stream) {
  const BudgetRule rule{BudgetKind::compress_ratio, compress_ratio};
  return static_cast<int>(compress_layer(kv_of<T>(l), window_of(w), config_of(p), rule, nullptr, shape_of(l, w),
                                         workspace, workspace_bytes, static_cast<cudaStream_t>(stream)));
}

template <class T>
int decode_as(const CudaLayer& l, const CudaDecodeIO& io, void* workspace, std::size_t workspace_bytes, void* stream) {
  DecodeIO<T, T> d;
  d.q = static_cast<const T*>(io.queries);
  d.q_request_stride = io.q_request_stride;
  d.q_head_stride = io.q_head_stride;
  d.out = static_cast<T*>(io.out);
  d.out_request_stride = io.out_request_stride;
  d.out_head_stride = io.out_head_stride;
  d.scale = io.scale;
  return static_cast<int>(decode_attention(kv_of<T>(l), d, decode_shape_of(l, io.group), workspace, workspace_bytes,
                                           static_cast<cudaStream_t>(stream)));
}

}  // namespace

std::size_t simcalkv_cuda_compress_workspace(const CudaLayer& layer, const CudaWindow& window, const CudaPolicy& policy) {
  const PolicyConfig c = config_of(policy);
  return layer.dtype == 0 ? compress_workspace_bytes<bf16, float>(shape_of(layer, window), c)
                          : compress_workspace_bytes<fp16, float>(shape_of(layer, window), c);
}

int simcalkv_cuda_compress(const CudaLayer& layer, const CudaWindow& window, const CudaPolicy& policy,
                           double compress_ratio, void* workspace, std::size_t workspace_bytes, void* stream) {
  return layer.dtype == 0 ? compress_as<bf16>(layer, window, policy, compress_ratio, workspace, workspace_bytes, stream)
                          : compress_as<fp16>(layer, window, policy, compress_ratio, workspace, workspace_bytes, stream);
}

std::size_t simcalkv_cuda_decode_workspace(const CudaLayer& layer, int group) {
  return decode_workspace_bytes(decode_shape_of(layer, group));
}

int simcalkv_cuda_decode(const CudaLayer& layer, const CudaDecodeIO& io, void* workspace, std::size_t workspace_bytes,
                         void* stream) {
  return layer.dtype == 0 ? decode_as<bf16>(layer, io, workspace, workspace_bytes, stream)
                          : decode_as<fp16>(layer, io, workspace, workspace_bytes, stream);
}

const char* simcalkv_cuda_error(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }
