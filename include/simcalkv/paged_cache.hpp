// simcalkv: an owning paged KV cache, the block-table cache of vLLM-style hosts on the CPU. Each
// layer has a pool of pages and every KV head its own block table (heads_per_table = 1), so heads
// shrink to their own budgets and the pages compression frees go back to the layer's free list,
// from which later tokens of any head of the layer take theirs. layer(l) is the PagedLayer view a
// policy plans on and attention reads (layouts/paged.hpp).
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/layouts/paged.hpp"
#include "simcalkv/policy.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace simcalkv {

template <StorageElement T>
class PagedKVCache {
 public:
  struct Shape {
    int num_layers = 0;
    int num_kv_heads = 0;
    int head_dim = 0;
  };

  /// Pages of `page_size` entries; a multiple of 32 keeps attention bit-identical to KVCache's.
  PagedKVCache(const Shape& shape, int page_size = 32, bool track_scores = false)
      : shape_(shape), page_size_(page_size), track_scores_(track_scores) {
    detail::require(shape.num_layers > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0,
                    ErrorCode::invalid_argument, "PagedKVCache: layers, KV heads and head_dim must be positive");
    detail::require(page_size > 0, ErrorCode::invalid_argument, "PagedKVCache: page size must be positive, got ",
                    page_size);
    layers_.resize(static_cast<std::size_t>(shape.num_layers));
    for (auto& L : layers_) {
      L.lengths.assign(static_cast<std::size_t>(shape.num_kv_heads), 0);
      refresh(L);
    }
  }

  [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
  [[nodiscard]] int page_size() const noexcept { return page_size_; }
  [[nodiscard]] PagedLayer<T>& layer(int l) { return layer_at(l).view; }
  [[nodiscard]] Position next_position(int l) const { return layers_.at(static_cast<std::size_t>(l)).next_position; }
  [[nodiscard]] std::size_t length(int l, int h) const {
    return layers_.at(static_cast<std::size_t>(l)).lengths.at(static_cast<std::size_t>(h));
  }

  /// Appends m tokens to every KV head of `layer` (keys and values [kv_head][m][head_dim]) at
  /// positions next_position .. + m - 1 with zero bias; takes pages from the free list first. On
  /// error nothing is appended.
  template <StorageElement U>
  void append(int layer, std::size_t m, std::span<const U> keys, std::span<const U> values) {
    auto& L = layer_at(layer);
    const auto d = static_cast<std::size_t>(shape_.head_dim);
    const auto H = static_cast<std::size_t>(shape_.num_kv_heads);
    const std::size_t expected = H * m * d;
    detail::require(keys.size() == expected && values.size() == expected, ErrorCode::invalid_argument,
                    "PagedKVCache::append: expected ", expected, " elements of keys and of values ([", H, "][", m,
                    "][", d, "]), got ", keys.size(), " and ", values.size());
    std::vector<float> row(d);
    for (std::size_t i = 0; i < expected; i += d) {
      load_row(keys.data() + i, row.data(), d);
      detail::require(all_finite(row.data(), d), ErrorCode::non_finite, "PagedKVCache::append: a key contains NaN or Inf");
      load_row(values.data() + i, row.data(), d);
      detail::require(all_finite(row.data(), d), ErrorCode::non_finite,
                      "PagedKVCache::append: a value contains NaN or Inf");
    }
    // Pages first (all allocation happens here), then the writes.
    std::size_t most_pages = L.table_stride;
    std::size_t new_pages = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t need = detail::pages_for(L.lengths[h] + m, page_size_);
      most_pages = std::max(most_pages, need);
      new_pages += need - detail::pages_for(L.lengths[h], page_size_);
    }
    if (most_pages > L.table_stride) grow_tables(L, std::max(most_pages, 2 * L.table_stride));
    if (new_pages > L.free.size()) grow_pool(L, L.num_pages + std::max(new_pages - L.free.size(), L.num_pages));
    for (std::size_t h = 0; h < H; ++h) {
      std::int32_t* table = L.tables.data() + h * L.table_stride;
      for (std::size_t p = detail::pages_for(L.lengths[h], page_size_); p < detail::pages_for(L.lengths[h] + m, page_size_);
           ++p) {
        table[p] = L.free.back();
        L.free.pop_back();
      }
    }
    for (std::size_t h = 0; h < H; ++h) {
      for (std::size_t t = 0; t < m; ++t) {
        const std::size_t j = L.lengths[h] + t;
        const EntryRef<T> e = L.view.entry(h, j);
        const std::size_t src = (h * m + t) * d;
        load_row(keys.data() + src, row.data(), d);
        store_strided(row.data(), e.key, 1, d);
        load_row(values.data() + src, row.data(), d);
        store_strided(row.data(), e.value, 1, d);
        *e.bias = 0.0f;
        *e.position = L.next_position + static_cast<Position>(t);
        if (e.score) *e.score = 0.0f;
      }
      L.lengths[h] += m;
    }
    L.next_position += static_cast<Position>(m);
  }
  void append(int layer, std::size_t m, std::span<const float> keys, std::span<const float> values) {
    append<float>(layer, m, keys, values);
  }

  /// Plans `policy` on layer l (request: everything but the heads) and applies it; the freed
  /// pages go back to the layer's free list.
  template <class Policy>
  CompressionStats compress(int l, const Policy& policy, const LayerRequest<T>& request, Workspace& workspace) {
    auto& L = layer_at(l);
    PagedApplyResult result = compress_paged(policy, L.view, request, workspace, staging_);
    release(l, result.freed_pages);
    return result.stats;
  }
  /// Layer l's heads gathered into contiguous views (valid until the next staging or compress),
  /// for what reads a layer without planning it (layer_statistic).
  std::vector<HeadView<T>>& staged(int l) { return stage_paged(layer_at(l).view, staging_); }
  /// Puts pages a host took off a table back on layer l's free list.
  void release(int l, std::span<const std::int32_t> pages) {
    auto& L = layer_at(l);
    L.free.insert(L.free.end(), pages.rbegin(), pages.rend());
  }

  void clear() {
    for (auto& L : layers_) {
      std::fill(L.tables.begin(), L.tables.end(), -1);
      std::fill(L.lengths.begin(), L.lengths.end(), 0);
      L.free.clear();
      for (std::size_t p = L.num_pages; p > 0; --p) L.free.push_back(static_cast<std::int32_t>(p - 1));
      L.next_position = 0;
    }
  }

  [[nodiscard]] std::size_t entry_bytes() const noexcept {
    return 2 * static_cast<std::size_t>(shape_.head_dim) * sizeof(T) + sizeof(float) + sizeof(Position) +
           (track_scores_ ? sizeof(float) : 0);
  }
  [[nodiscard]] std::size_t total_entries() const noexcept {
    std::size_t n = 0;
    for (const auto& L : layers_)
      for (const auto len : L.lengths) n += len;
    return n;
  }
  [[nodiscard]] std::size_t used_bytes() const noexcept { return total_entries() * entry_bytes(); }
  /// Bytes of the pages tables hold (free pages are the host's to hand out again).
  [[nodiscard]] std::size_t reserved_bytes() const noexcept {
    std::size_t pages = 0;
    for (const auto& L : layers_) pages += L.num_pages - L.free.size();
    return pages * static_cast<std::size_t>(page_size_) * entry_bytes();
  }
  /// Pages on the layers' free lists.
  [[nodiscard]] std::size_t free_pages() const noexcept {
    std::size_t pages = 0;
    for (const auto& L : layers_) pages += L.free.size();
    return pages;
  }

 private:
  struct Layer {
    std::vector<T> keys, values;             // [num_pages * page_size][head_dim]
    std::vector<float> bias, scores;         // [num_pages * page_size]
    std::vector<Position> positions;
    std::vector<std::int32_t> tables;        // [kv_heads][table_stride]
    std::size_t table_stride = 0;
    std::vector<std::size_t> lengths;        // [kv_heads]
    std::vector<std::int32_t> free;          // pages no table holds; the back is taken first
    std::size_t num_pages = 0;
    Position next_position = 0;
    PagedLayer<T> view;
  };

  Layer& layer_at(int l) {
    detail::require(l >= 0 && l < shape_.num_layers, ErrorCode::invalid_argument, "PagedKVCache: layer ", l,
                    " out of range [0, ", shape_.num_layers, ")");
    return layers_[static_cast<std::size_t>(l)];
  }
  void refresh(Layer& L) {
    PagedLayer<T>& v = L.view;
    v.keys = L.keys.data();
    v.values = L.values.data();
    v.key_stride = v.value_stride = shape_.head_dim;
    v.bias = L.bias.data();
    v.positions = L.positions.data();
    v.scores = track_scores_ ? L.scores.data() : nullptr;
    v.page_table = L.tables.data();
    v.table_stride = static_cast<std::ptrdiff_t>(L.table_stride);
    v.page_size = page_size_;
    v.heads_per_table = 1;
    v.lengths = L.lengths.data();
    v.num_seqs = static_cast<std::size_t>(shape_.num_kv_heads);
    v.head_dim = shape_.head_dim;
  }
  void grow_tables(Layer& L, std::size_t stride) {
    std::vector<std::int32_t> fresh(static_cast<std::size_t>(shape_.num_kv_heads) * stride, -1);
    for (std::size_t h = 0; h < static_cast<std::size_t>(shape_.num_kv_heads); ++h)
      std::copy_n(L.tables.data() + h * L.table_stride, L.table_stride, fresh.data() + h * stride);
    L.tables = std::move(fresh);
    L.table_stride = stride;
    refresh(L);
  }
  void grow_pool(Layer& L, std::size_t pages) {
    const std::size_t rows = pages * static_cast<std::size_t>(page_size_);
    const auto d = static_cast<std::size_t>(shape_.head_dim);
    L.keys.resize(rows * d);
    L.values.resize(rows * d);
    L.bias.resize(rows);
    L.positions.resize(rows);
    if (track_scores_) L.scores.resize(rows);
    L.free.reserve(L.free.size() + pages - L.num_pages);
    // New pages go under the free list's back, so pages freed earlier are reused first.
    std::vector<std::int32_t> added;
    for (std::size_t p = pages; p > L.num_pages; --p) added.push_back(static_cast<std::int32_t>(p - 1));
    L.free.insert(L.free.begin(), added.begin(), added.end());
    L.num_pages = pages;
    refresh(L);
  }

  Shape shape_;
  int page_size_;
  bool track_scores_;
  std::vector<Layer> layers_;
  Staging<T> staging_;
};

}  // namespace simcalkv
