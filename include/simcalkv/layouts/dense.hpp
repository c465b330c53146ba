// simcalkv: the dense layout, Hugging Face transformers' per-layer cache tensors: keys and values
// [kv_heads][capacity][head_dim] (one request of the [batch, kv_heads, seq, head_dim] tensor; a
// batch is one DenseLayer per row), every head of the layer the same length. Our per-head
// additive bias is a [kv_heads][capacity] plane (an SDPA float mask per head, broadcast over the
// query heads of each group), and each head keeps its entries' original positions
// [kv_heads][capacity] for the next compression.
//
// One length per layer means every head must keep the same number of entries: uniform budgets
// or a shared selection. Per-head budgets (AdaKV) need the compact or paged layout, which free
// what a head gives up; apply_plan() refuses them here instead of padding in silence.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/layouts/compact.hpp"
#include "simcalkv/plan.hpp"

#include <string>
#include <vector>

namespace simcalkv {

template <StorageElement T>
struct DenseLayer {
  T* keys = nullptr;              // [kv_heads][capacity][head_dim]
  T* values = nullptr;            // [kv_heads][capacity][head_dim]
  float* bias = nullptr;          // [kv_heads][capacity]
  Position* positions = nullptr;  // [kv_heads][capacity]
  float* scores = nullptr;        // optional, [kv_heads][capacity]
  std::size_t length = 0;         // the layer's sequence length, shared by its heads
  std::size_t capacity = 0;
  int num_kv_heads = 0;
  int head_dim = 0;

  /// One HeadView per KV head over the tensors, to plan on (LayerRequest::heads).
  [[nodiscard]] std::vector<HeadView<T>> views() const {
    std::vector<HeadView<T>> out(static_cast<std::size_t>(num_kv_heads));
    const auto d = static_cast<std::size_t>(head_dim);
    for (std::size_t h = 0; h < out.size(); ++h)
      out[h] = make_head_view(keys + h * capacity * d, values + h * capacity * d, bias + h * capacity,
                              positions + h * capacity, scores ? scores + h * capacity : nullptr, length, capacity,
                              head_dim);
    return out;
  }
};

/// Applies `plan` to a dense layer: every head compacts in place and the layer's length becomes
/// the common kept count.
template <StorageElement T>
CompressionStats apply_plan(const LayerPlan& plan, DenseLayer<T>& layer) {
  const std::string where = plan.policy + " (dense layout)";
  detail::require(layer.keys && layer.values && layer.bias && layer.positions && layer.num_kv_heads > 0,
                  ErrorCode::invalid_argument, where, ": a required buffer is null or there are no heads");
  detail::require(plan.heads.size() == static_cast<std::size_t>(layer.num_kv_heads), ErrorCode::invalid_argument,
                  where, ": the plan has ", plan.heads.size(), " KV heads, the layer ", layer.num_kv_heads);
  for (std::size_t h = 1; h < plan.heads.size(); ++h)
    detail::require(plan.kept(h) == plan.kept(0), ErrorCode::invalid_argument, where, ": KV head ", h, " keeps ",
                    plan.kept(h), " entries and KV head 0 ", plan.kept(0),
                    "; a dense cache has one length per layer (use uniform budgets or a shared selection, or the "
                    "compact or paged layout for per-head budgets)");
  std::vector<HeadView<T>> heads = layer.views();
  apply_plan(plan, std::span<HeadView<T>>(heads));
  layer.length = plan.kept(0);
  return plan.stats();
}

}  // namespace simcalkv
