// simcalkv: the shared-cell layout, llama.cpp's: per layer one K tensor [kv_size][n_kv_heads *
// head_dim] and one V tensor (the same, or transposed [n_kv_heads * head_dim][kv_size] when
// flash attention is off), indexed by *cells* that every layer and head share (llama_kv_cells: a
// position and a sequence set per cell). Entries cannot move per head or per layer, so:
//
//  - the plan must keep one set per layer for all heads (LayerRequest::shared_selection);
//  - merged keys, values and biases are written in place into the kept cells, per head;
//  - a removed cell is masked in this layer: its bias is -inf in every head of the layer's
//    [n_kv_heads][kv_size] bias plane, the bias the host adds to KQ before the softmax (ggml's
//    soft_max_ext takes a mask that broadcasts over heads only, so a per-head bias is added to
//    kq first; see docs/design.md);
//  - a cell every layer has masked holds nothing any more: freeable_cells() lists them, and the
//    host frees them in one call (llama.cpp: seq_rm over each cell, here SharedCells::free).
//
// A layer's live cells are the used cells its bias plane does not mask; planning reads them in
// cell order (they must ascend in position) through a packed copy (Staging).
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/layouts/compact.hpp"
#include "simcalkv/layouts/entries.hpp"
#include "simcalkv/plan.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace simcalkv {

/// One layer over shared cells.
template <StorageElement T>
struct SharedCellsLayer {
  T* k = nullptr;                    // cell c, head h, dim i at k[c * k_row_stride + h * head_dim + i]
  std::ptrdiff_t k_row_stride = 0;   // n_embd_k_gqa (= n_kv_heads * head_dim) for a packed tensor
  T* v = nullptr;
  std::ptrdiff_t v_row_stride = 0;   // as k, or (v_transposed) the distance between dims: kv_size
  bool v_transposed = false;         // element (c, h, i) at v[(h * head_dim + i) * v_row_stride + c]
  float* bias = nullptr;             // [n_kv_heads][kv_size]: -inf masks a cell in this layer
  Position* cell_positions = nullptr;  // [kv_size], shared by every layer
  const std::uint8_t* cell_used = nullptr;  // [kv_size], nonzero: the cell holds a token
  std::size_t kv_size = 0;
  int n_kv_heads = 0;
  int head_dim = 0;

  [[nodiscard]] bool live(std::size_t c) const noexcept {
    return cell_used[c] && bias[c] != -std::numeric_limits<float>::infinity();
  }
  [[nodiscard]] T* key(std::size_t c, std::size_t h) const noexcept {
    return k + static_cast<std::ptrdiff_t>(c) * k_row_stride + static_cast<std::ptrdiff_t>(h) * head_dim;
  }
  [[nodiscard]] T* value(std::size_t c, std::size_t h) const noexcept {
    if (v_transposed) return v + static_cast<std::ptrdiff_t>(h) * head_dim * v_row_stride + static_cast<std::ptrdiff_t>(c);
    return v + static_cast<std::ptrdiff_t>(c) * v_row_stride + static_cast<std::ptrdiff_t>(h) * head_dim;
  }
  [[nodiscard]] std::ptrdiff_t value_dim_stride() const noexcept { return v_transposed ? v_row_stride : 1; }
};

namespace detail {
/// A shared-cell layer seen through its live cells (the same for every head).
template <StorageElement T>
struct LiveCells {
  const SharedCellsLayer<T>& layer;
  std::vector<std::size_t> cells;  // live cells in cell order
  [[nodiscard]] std::size_t num_heads() const noexcept { return static_cast<std::size_t>(layer.n_kv_heads); }
  [[nodiscard]] int head_dim() const noexcept { return layer.head_dim; }
  [[nodiscard]] std::size_t length(std::size_t) const noexcept { return cells.size(); }
  [[nodiscard]] bool has_scores() const noexcept { return false; }
  [[nodiscard]] EntryRef<T> entry(std::size_t h, std::size_t j) const noexcept {
    const std::size_t c = cells[j];
    return EntryRef<T>{layer.key(c, h), 1, layer.value(c, h), layer.value_dim_stride(),
                       layer.bias + h * layer.kv_size + c, layer.cell_positions + c, nullptr};
  }
};

template <StorageElement T>
LiveCells<T> live_cells(const SharedCellsLayer<T>& layer, const std::string& where) {
  require(layer.k && layer.v && layer.bias && layer.cell_positions && layer.cell_used && layer.n_kv_heads > 0 &&
              layer.head_dim > 0,
          ErrorCode::invalid_argument, where, ": a required buffer is null or a size is not positive");
  LiveCells<T> out{layer, {}};
  for (std::size_t c = 0; c < layer.kv_size; ++c) {
    if (!layer.cell_used[c]) continue;
    const bool masked = layer.bias[c] == -std::numeric_limits<float>::infinity();
    for (std::size_t h = 1; h < static_cast<std::size_t>(layer.n_kv_heads); ++h)
      require((layer.bias[h * layer.kv_size + c] == -std::numeric_limits<float>::infinity()) == masked,
              ErrorCode::invalid_argument, where, ": cell ", c, " is masked in some heads of the layer and not others");
    if (!masked) out.cells.push_back(c);
  }
  return out;
}
}  // namespace detail

/// Packs the layer's live cells into `staging`: one HeadView per KV head, to plan on with
/// LayerRequest::shared_selection set. Reads only.
template <StorageElement T>
std::vector<HeadView<T>>& stage_shared_cells(const SharedCellsLayer<T>& layer, Staging<T>& staging) {
  return staging.gather(detail::live_cells(layer, "shared-cell layout"));
}

/// Applies a shared-selection plan in place: kept cells take their merged rows and biases,
/// removed cells are masked in this layer.
template <StorageElement T>
CompressionStats apply_plan(const LayerPlan& plan, SharedCellsLayer<T>& layer) {
  const std::string where = plan.policy + " (shared-cell layout)";
  const auto cells = detail::live_cells(layer, where);
  detail::require(plan.shared_selection, ErrorCode::invalid_argument, where,
                  ": the heads of a layer share cells, so the plan must keep one set for all of them (plan with "
                  "LayerRequest::shared_selection = true)");
  detail::require(plan.heads.size() == static_cast<std::size_t>(layer.n_kv_heads), ErrorCode::invalid_argument,
                  where, ": the plan has ", plan.heads.size(), " KV heads, the layer ", layer.n_kv_heads);
  for (std::size_t h = 0; h < plan.heads.size(); ++h) {
    detail::check_head_plan(plan.heads[h], h, cells.cells.size(), cells.cells.size(), layer.head_dim, plan.head_dim,
                            where);
    detail::require(plan.heads[h].keep == plan.heads[0].keep, ErrorCode::invalid_argument, where, ": KV head ", h,
                    " keeps other entries than KV head 0");
  }
  const auto d = static_cast<std::size_t>(plan.head_dim);
  constexpr float masked = -std::numeric_limits<float>::infinity();
  for (std::size_t h = 0; h < plan.heads.size(); ++h) {
    const HeadPlan& p = plan.heads[h];
    if (p.identity) continue;
    float* bias = layer.bias + h * layer.kv_size;
    std::size_t k = 0;
    for (std::size_t j = 0; j < cells.cells.size(); ++j) {
      const std::size_t c = cells.cells[j];
      if (k < p.keep.size() && p.keep[k] == j) {
        if (const auto row = p.row_of_slot[k]; row >= 0) {
          const auto r = static_cast<std::size_t>(row);
          const auto updates = p.row_updates[r];
          if (updates & HeadPlan::key) store_strided(p.row_keys.data() + r * d, layer.key(c, h), 1, d);
          if (updates & HeadPlan::value)
            store_strided(p.row_values.data() + r * d, layer.value(c, h), layer.value_dim_stride(), d);
          if (updates & HeadPlan::bias) bias[c] = p.row_bias[r];
        }
        ++k;
      } else {
        bias[c] = masked;
      }
    }
  }
  return plan.stats();
}

/// Cells no layer uses any more: used, and masked in every layer's bias plane (head 0 stands for
/// its layer). The host frees them (llama.cpp: seq_rm on each), after which their bias columns
/// must be reset to 0 for the next token that takes the cell.
template <StorageElement T>
std::vector<std::size_t> freeable_cells(std::span<const SharedCellsLayer<T>> layers) {
  std::vector<std::size_t> out;
  if (layers.empty()) return out;
  for (std::size_t c = 0; c < layers[0].kv_size; ++c) {
    bool all = layers[0].cell_used[c] != 0;
    for (const auto& layer : layers) all = all && layer.bias[c] == -std::numeric_limits<float>::infinity();
    if (all) out.push_back(c);
  }
  return out;
}

}  // namespace simcalkv
