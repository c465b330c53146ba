// simcalkv CUDA: split-KV decode attention over a compressed layer, with the per-entry bias
// (kernels/attention.hpp's decode_attention on the GPU).
//
// For every sequence s (request b, KV head h) and each of its G query heads g:
//
//     out[b][h * G + g] = softmax_j(scale * q . k_j + bias_j) V   over j < lengths[s],
//
// with float accumulation from 16-bit storage. The G query heads of a group are served from one
// read of K and V. Each sequence's entries are split over `splits` blocks (split-KV, as FlashInfer
// and FlashDecoding do); a block streams its part through shared memory and keeps an online
// softmax per query head; the last block of a sequence to finish combines the splits (no second
// kernel). Over the ragged layout on sm_90 the TMA copies whole tiles (tma.cuh); otherwise K and V
// rows arrive by 16-byte cp.async copies, with the paged layout's row addresses resolved a stage
// ahead so that its page-table loads never stall the copies.
//
// The default kernel runs both products on the tensor cores (mma.sync m16n8k16): the G query
// heads are the rows of A (padded to 16), 16 entries per warp and step; the probabilities stay in
// registers (the accumulator layout of Q K^T is the A layout of P V), as one 16-bit term for a
// 16-bit output and as a hi + lo pair of 16-bit terms (about 16 significant bits) for a float
// output. The CUDA-core kernel (DecodeShape::tensor_cores = false) computes the same in float FMAs.
//
//   DecodeShape shape{num_seqs, num_kv_heads, head_dim, group, max_length};
//   std::size_t bytes = decode_workspace_bytes(shape);
//   decode_attention(kv, q, q_strides, out, out_strides, shape, workspace, bytes, stream);
//
// The workspace needs no initialisation: the per-sequence counters that elect the combining
// block are tagged with the launch, and the combining block resets its counter, so the same
// workspace serves every later call (CUDA-graph replays included).
#pragma once
//
// The parts, FlashInfer-style: attention/params.cuh (plain structs over caller memory),
// attention/kv_stream.cuh (rows into shared memory), attention/kernels.cuh (the kernels and the
// combination of splits), attention/scheduler.cuh (splits, workspace, launch; the entry points).
#pragma once

#include "simcalkv/cuda/attention/kernels.cuh"
#include "simcalkv/cuda/attention/kv_stream.cuh"
#include "simcalkv/cuda/attention/params.cuh"
#include "simcalkv/cuda/attention/scheduler.cuh"
