// simcalkv CUDA: where a layer's cache entries live in device memory.
//
// A layer holds `num_seqs` sequences; sequence s is KV head s % num_kv_heads of request
// s / num_kv_heads (so the G query heads of a group and the batch are handled at once). Entry j
// of sequence s (0 <= j < lengths[s]) is the row e = layout.seq(s).entry(j) of the layer's
// buffers: its key at keys + e * key_stride (head_dim contiguous elements), its value at
// values + e * value_stride, its bias at bias[e], its position at positions[e], its optional
// accumulated score at scores[e]. Two layouts give e:
//
//  - RaggedLayout: one flat buffer per layer, sequence s starting at row offsets[s]; the rows
//    of a sequence are consecutive, and its capacity is the host's business (offsets[s+1] -
//    offsets[s] in the usual packing).
//  - PagedLayout: a page table like vLLM's block table. The rows of a page are consecutive;
//    with heads_per_table = 1 every (request, KV head) has its own table (so heads shrink
//    independently and freed pages go back to the pool), with heads_per_table = H the heads of
//    a request share one table and are interleaved inside a page, vLLM's
//    [num_blocks][block_size][num_kv_heads][head_dim] layout (key_stride = head_dim).
//
// Compression moves surviving entries down in place (entry j goes to slot <= j) and lowers
// lengths[s]; it never allocates, frees or relinks pages. After it the host may return the pages
// past ceil(lengths[s] / page_size) of a per-head table to its pool.
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/page_table.hpp"

namespace simcalkv::cuda {

struct RaggedLayout {
  const int64_t* offsets = nullptr;  // [num_seqs], device memory: first row of each sequence

  struct Seq {
    int64_t base;
    __device__ __forceinline__ int64_t entry(int j) const { return base + j; }
  };
  __device__ __forceinline__ Seq seq(int s) const { return Seq{offsets[s]}; }
};

struct PagedLayout {
  const int32_t* page_table = nullptr;  // device memory: table t at page_table + t * table_stride
  int64_t table_stride = 0;             // ints between consecutive tables
  int page_size = 16;                   // entries per page (rows of one head)
  int heads_per_table = 1;              // sequences sharing one table, interleaved in its pages

  struct Seq {
    const int32_t* table;
    int page_size;
    int heads;
    int head;
    // The CPU's paged layout addresses rows with the same function (simcalkv/page_table.hpp).
    __device__ __forceinline__ int64_t entry(int j) const { return paged_row(table, page_size, heads, head, j); }
  };
  __device__ __forceinline__ Seq seq(int s) const {
    return Seq{page_table_of(page_table, table_stride, heads_per_table, s), page_size, heads_per_table,
               s % heads_per_table};
  }
};

/// One layer of the cache: buffers of every sequence of the batch (see the file comment).
/// T is bf16 or fp16; rows must be 16-byte aligned (key_stride, value_stride and head_dim
/// multiples of 8, 16-byte aligned base pointers).
template <class T, class Layout>
struct LayerKV {
  T* keys = nullptr;
  T* values = nullptr;
  int64_t key_stride = 0;    // elements between consecutive rows
  int64_t value_stride = 0;
  float* bias = nullptr;         // per row, required
  int32_t* positions = nullptr;  // per row, required, strictly ascending along a sequence
  float* scores = nullptr;       // per row, optional accumulator (moved and summed like the CPU)
  int32_t* lengths = nullptr;    // [num_seqs], device memory; lowered by compression
  Layout layout{};
  int num_seqs = 0;
  int num_kv_heads = 1;  // KV heads per request in this layer (of this shard)
  int head_dim = 0;
};

/// The observation window of a layer: for request b, query head h of this shard (h < G * H),
/// window token t, the query is at queries + b * request_stride + h * head_stride +
/// t * token_stride (head_dim contiguous elements). Q is float (split into two 16-bit terms on
/// the tensor cores, about 16 significant bits) or the storage type (one term). Its position is
/// positions[b * position_request_stride + t]. Query head h reads KV head h / G.
template <class Q>
struct WindowArgs {
  const Q* queries = nullptr;
  int64_t request_stride = 0;
  int64_t head_stride = 0;
  int64_t token_stride = 0;
  const int32_t* positions = nullptr;
  int64_t position_request_stride = 0;
  int num_tokens = 0;  // W
  int group = 1;       // G, query heads per KV head
};

}  // namespace simcalkv::cuda
