// simcalkv CUDA: applying a layer plan made anywhere to a layer in device memory.
//
//   FlatLayerPlan flat = flatten(cpu_policy.plan(request, workspace));   // plan.hpp, on the CPU
//   // copy flat's arrays to the device, point a LayerPlanView at them (first_slot ... slot_scores)
//   apply_plan(kv, device_view, ApplyShape{S, max_length}, workspace, bytes, stream);
//
// The plan is the plain LayerPlanView of simcalkv/plan_view.hpp, the one description of a plan the
// CPU and the GPU share: a plan from any CPU policy (H2O, TOVA, KeepKV, D2O, ... which have no GPU
// kernels of their own) then runs on a GPU-resident ragged or paged cache, and compress_layer's own
// plan (recorded with its `plan_out`) is the same type. Sequence s of the view is sequence s of the
// layer (KV head s % num_kv_heads of request s / num_kv_heads, layout.cuh).
//
// Steps: the kept entries move down in place (compact_kernel, the one compress_layer uses), then
// each rewritten slot takes the row's key, value, bias and score that its update bits name
// (narrowed to T by round-to-nearest, as the CPU layouts store them), then slot scores, then
// lengths[s] = kept[s]. As in compress_layer, nothing is validated on the device: the host checks
// the plan against its cache first (the CPU's check_plan_fits rules: kept <= length, keep ascending
// and below the length), here with check_plan_view on the host copy.
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/compact.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/plan_view.hpp"

namespace simcalkv::cuda {

/// Sizes of an apply call known on the host: max_length bounds every lengths[s].
struct ApplyShape {
  int num_seqs = 0;
  int max_length = 0;
};

namespace detail {

template <class T, class Layout>
struct PlanRowsParams {
  LayerKV<T, Layout> kv;
  LayerPlanView plan;
};

/// grid (ceil(max_length / 8), S), 256 threads: a warp per slot writes the slot's row.
template <class T, class Layout>
__global__ void __launch_bounds__(256) plan_rows_kernel(PlanRowsParams<T, Layout> p) {
  const int s = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k = static_cast<int>(blockIdx.x) * 8 + warp;
  if (k >= p.plan.kept[s]) return;
  const int64_t g = static_cast<int64_t>(p.plan.first_slot[s]) + k;
  const int64_t e = p.kv.layout.seq(s).entry(k);
  const int row = p.plan.row_of_slot ? p.plan.row_of_slot[g] : -1;
  if (row >= 0) {
    const uint8_t updates = p.plan.row_updates[row];
    const int64_t d = p.kv.head_dim;
    if (updates & update_key)
      for (int i = lane; i < d; i += 32)
        p.kv.keys[e * p.kv.key_stride + i] = from_float<T>(p.plan.row_keys[row * d + i]);
    if (updates & update_value)
      for (int i = lane; i < d; i += 32)
        p.kv.values[e * p.kv.value_stride + i] = from_float<T>(p.plan.row_values[row * d + i]);
    if (lane == 0 && (updates & update_bias)) p.kv.bias[e] = p.plan.row_bias[row];
    if (lane == 0 && (updates & update_score) && p.kv.scores) p.kv.scores[e] = p.plan.row_score[row];
  }
  if (lane == 0 && p.plan.slot_scores && p.kv.scores && !isnan(p.plan.slot_scores[g]))
    p.kv.scores[e] = p.plan.slot_scores[g];
}

__global__ void plan_lengths_kernel(int32_t* lengths, const int32_t* kept, int num_seqs) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s < num_seqs) lengths[s] = kept[s];
}

inline std::size_t apply_chunks(const ApplyShape& shape) {
  return static_cast<std::size_t>(std::max<long long>(1, ceil_div(shape.max_length, kCompactChunk)));
}

}  // namespace detail

/// Workspace bytes apply_plan needs for this shape.
inline std::size_t apply_workspace_bytes(const ApplyShape& shape) {
  detail::Carver carver(nullptr);
  carver.take<unsigned>(static_cast<std::size_t>(shape.num_seqs));
  carver.take<int>(static_cast<std::size_t>(shape.num_seqs) * detail::apply_chunks(shape));
  return carver.bytes();
}

/// Applies `plan` (device memory) to every sequence of `kv`, asynchronously on `stream`.
template <class T, class Layout>
cudaError_t apply_plan(const LayerKV<T, Layout>& kv, const LayerPlanView& plan, const ApplyShape& shape,
                       void* workspace, std::size_t workspace_bytes, cudaStream_t stream = nullptr) {
  static_assert(is_storage_v<T>, "storage must be bf16 or fp16");
  if (plan.num_seqs != shape.num_seqs || kv.num_seqs != shape.num_seqs || plan.head_dim != kv.head_dim)
    return cudaErrorInvalidValue;
  if (kv.head_dim != 64 && kv.head_dim != 128) return cudaErrorInvalidValue;
  const int S = shape.num_seqs;
  if (S == 0) return cudaSuccess;
  const std::size_t chunks = detail::apply_chunks(shape);
  detail::Carver carver(workspace);
  unsigned* ticket = carver.take<unsigned>(static_cast<std::size_t>(S));
  int* flags = carver.take<int>(static_cast<std::size_t>(S) * chunks);
  if (carver.bytes() > workspace_bytes) return cudaErrorInvalidValue;
  SIMCALKV_CUDA_TRY(cudaMemsetAsync(ticket, 0, sizeof(unsigned) * S, stream));
  SIMCALKV_CUDA_TRY(cudaMemsetAsync(flags, 0, sizeof(int) * S * chunks, stream));
  const detail::CompactParams<T, Layout> cp{kv, plan, static_cast<int>(chunks), ticket, flags};
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(S));
  if (kv.head_dim == 64)
    detail::compact_kernel<T, 64, Layout><<<grid, 256, 0, stream>>>(cp);
  else
    detail::compact_kernel<T, 128, Layout><<<grid, 256, 0, stream>>>(cp);
  SIMCALKV_CUDA_TRY(cudaGetLastError());
  const unsigned row_blocks = static_cast<unsigned>(std::max<long long>(1, detail::ceil_div(shape.max_length, 8)));
  detail::plan_rows_kernel<T, Layout><<<dim3(row_blocks, S), 256, 0, stream>>>(detail::PlanRowsParams<T, Layout>{kv, plan});
  SIMCALKV_CUDA_TRY(cudaGetLastError());
  detail::plan_lengths_kernel<<<static_cast<unsigned>(detail::ceil_div(S, 256)), 256, 0, stream>>>(kv.lengths,
                                                                                                   plan.kept, S);
  return cudaGetLastError();
}

}  // namespace simcalkv::cuda
