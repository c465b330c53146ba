// simcalkv: the addressing of a paged KV layer (vLLM's block table), written once for the CPU's
// paged layout (layouts/paged.hpp) and the GPU's (cuda/layout.cuh): plain functions that compile
// for the host and, under nvcc, for the device.
//
// Sequence s (KV head s % heads_per_table of table s / heads_per_table) has its table at
// tables + (s / heads_per_table) * table_stride; its entry j lies in page table[j / page_size], and
// its key and value row is (page * page_size + j % page_size) * heads_per_table + head: a page holds
// the page_size rows of every head of its table interleaved, vLLM's
// [num_blocks][block_size][num_kv_heads][head_dim] with heads_per_table = num_kv_heads.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SIMCALKV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SIMCALKV_HOST_DEVICE inline
#endif

namespace simcalkv {

/// The table of sequence s.
template <class Int>
SIMCALKV_HOST_DEVICE Int* page_table_of(Int* tables, std::int64_t table_stride, int heads_per_table,
                                        std::int64_t s) {
  return tables + (s / heads_per_table) * table_stride;
}

/// The key/value row of entry j of a sequence whose table is `table` and whose place among the
/// table's heads is `head`.
SIMCALKV_HOST_DEVICE std::int64_t paged_row(const std::int32_t* table, int page_size, int heads_per_table, int head,
                                            std::int64_t j) {
  const std::int64_t page = table[j / page_size];
  return (page * page_size + j % page_size) * heads_per_table + head;
}

}  // namespace simcalkv
