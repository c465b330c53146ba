// simcalkv: an owning KV cache for engines that have none of their own.
//
// Layers x KV heads; every head has its own buffers, length and capacity, so per-head budgets
// really free memory (shrink_to_fit). The cache keeps one HeadView per head over its buffers and
// hands those views to policies and attention, which update the lengths in place.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/numeric.hpp"

#include <algorithm>
#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace simcalkv {

template <StorageElement T>
class KVCache {
 public:
  struct Shape {
    int num_layers = 0;
    int num_kv_heads = 0;
    int head_dim = 0;
  };

  /// `track_scores` gives every head a score accumulator (H2O and decode-time policies need it).
  KVCache(const Shape& shape, std::size_t initial_capacity = 0, bool track_scores = false)
      : shape_(shape), track_scores_(track_scores) {
    detail::require(shape.num_layers > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0,
                    ErrorCode::invalid_argument, "KVCache: layers, KV heads and head_dim must be positive (got ",
                    shape.num_layers, ", ", shape.num_kv_heads, ", ", shape.head_dim, ")");
    layers_.resize(static_cast<std::size_t>(shape.num_layers));
    for (auto& layer : layers_) {
      layer.views.resize(static_cast<std::size_t>(shape.num_kv_heads));
      layer.storage.resize(static_cast<std::size_t>(shape.num_kv_heads));
      for (std::size_t h = 0; h < layer.views.size(); ++h) {
        layer.views[h].head_dim = shape.head_dim;
        reallocate(layer, h, initial_capacity);
      }
    }
  }

  [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
  [[nodiscard]] bool tracks_scores() const noexcept { return track_scores_; }

  /// The view of one head; policies and attention take it (or the layer's span) directly.
  [[nodiscard]] HeadView<T>& head(int layer, int kv_head) { return layer_at(layer).views.at(static_cast<std::size_t>(kv_head)); }
  [[nodiscard]] const HeadView<T>& head(int layer, int kv_head) const {
    return layer_at(layer).views.at(static_cast<std::size_t>(kv_head));
  }
  [[nodiscard]] std::span<HeadView<T>> layer(int layer) { return layer_at(layer).views; }

  /// Tokens ever appended to the layer: the next token's RoPE position, whatever was removed.
  [[nodiscard]] Position next_position(int layer) const { return layer_at(layer).next_position; }

  /// Appends m tokens to every KV head of `layer`: keys and values laid out [kv_head][m][head_dim],
  /// at positions next_position .. next_position + m - 1, with zero bias. Grows capacity
  /// geometrically; on error nothing is appended.
  template <StorageElement U>
  void append(int layer, std::size_t m, std::span<const U> keys, std::span<const U> values) {
    auto& L = layer_at(layer);
    const auto d = static_cast<std::size_t>(shape_.head_dim);
    const std::size_t expected = static_cast<std::size_t>(shape_.num_kv_heads) * m * d;
    detail::require(keys.size() == expected && values.size() == expected, ErrorCode::invalid_argument,
                    "KVCache::append: expected ", expected, " floats of keys and of values ([", shape_.num_kv_heads,
                    "][", m, "][", d, "]), got ", keys.size(), " and ", values.size());
    std::vector<float> row(d);
    for (std::size_t i = 0; i < expected; i += d) {
      load_row(keys.data() + i, row.data(), d);
      detail::require(all_finite(row.data(), d), ErrorCode::non_finite, "KVCache::append: a key contains NaN or Inf");
      load_row(values.data() + i, row.data(), d);
      detail::require(all_finite(row.data(), d), ErrorCode::non_finite, "KVCache::append: a value contains NaN or Inf");
    }
    for (std::size_t h = 0; h < L.views.size(); ++h)
      if (L.views[h].length + m > L.views[h].capacity)
        reallocate(L, h, std::max(L.views[h].length + m, 2 * L.views[h].capacity));
    for (std::size_t h = 0; h < L.views.size(); ++h) {
      auto& v = L.views[h];
      for (std::size_t t = 0; t < m; ++t) {
        const std::size_t slot = v.length + t;
        const std::size_t src = (h * m + t) * d;
        load_row(keys.data() + src, row.data(), d);
        v.store_key(slot, row.data());
        load_row(values.data() + src, row.data(), d);
        v.store_value(slot, row.data());
        v.bias[slot] = 0.0f;
        v.positions[slot] = L.next_position + static_cast<Position>(t);
        if (v.scores) v.scores[slot] = 0.0f;
      }
      v.length += m;
    }
    L.next_position += static_cast<Position>(m);
  }

  void append(int layer, std::size_t m, std::span<const float> keys, std::span<const float> values) {
    append<float>(layer, m, keys, values);
  }

  /// Ensures a head can hold `capacity` entries without reallocating.
  void reserve(int layer, int kv_head, std::size_t capacity) {
    auto& L = layer_at(layer);
    const auto h = static_cast<std::size_t>(kv_head);
    detail::require(h < L.views.size(), ErrorCode::invalid_argument, "KVCache::reserve: KV head ", kv_head, " out of range");
    if (capacity > L.views[h].capacity) reallocate(L, h, capacity);
  }
  void reserve_all(std::size_t capacity) {
    for (int l = 0; l < shape_.num_layers; ++l)
      for (int h = 0; h < shape_.num_kv_heads; ++h) reserve(l, h, capacity);
  }

  /// Releases every head's unused capacity: after compression this is what frees memory.
  void shrink_to_fit() {
    for (auto& L : layers_)
      for (std::size_t h = 0; h < L.views.size(); ++h)
        if (L.views[h].capacity > L.views[h].length) reallocate(L, h, L.views[h].length);
  }

  void clear() {
    for (auto& L : layers_) {
      for (auto& v : L.views) v.length = 0;
      L.next_position = 0;
    }
  }

  /// Bytes per entry: key and value elements, bias, position and (if tracked) score.
  [[nodiscard]] std::size_t entry_bytes() const noexcept {
    return 2 * static_cast<std::size_t>(shape_.head_dim) * sizeof(T) + sizeof(float) + sizeof(Position) +
           (track_scores_ ? sizeof(float) : 0);
  }
  /// Bytes holding live entries.
  [[nodiscard]] std::size_t used_bytes() const noexcept { return count([](const HeadView<T>& v) { return v.length; }) * entry_bytes(); }
  /// Bytes allocated (capacity), which is what the process really holds.
  [[nodiscard]] std::size_t reserved_bytes() const noexcept {
    return count([](const HeadView<T>& v) { return v.capacity; }) * entry_bytes();
  }
  [[nodiscard]] std::size_t total_entries() const noexcept { return count([](const HeadView<T>& v) { return v.length; }); }

 private:
  struct HeadStorage {
    std::unique_ptr<T[]> keys, values;
    std::unique_ptr<float[]> bias, scores;
    std::unique_ptr<Position[]> positions;
  };
  struct Layer {
    std::vector<HeadView<T>> views;
    std::vector<HeadStorage> storage;
    Position next_position = 0;
  };

  Layer& layer_at(int layer) {
    detail::require(layer >= 0 && layer < shape_.num_layers, ErrorCode::invalid_argument, "KVCache: layer ", layer,
                    " out of range [0, ", shape_.num_layers, ")");
    return layers_[static_cast<std::size_t>(layer)];
  }
  const Layer& layer_at(int layer) const { return const_cast<KVCache*>(this)->layer_at(layer); }

  template <class F>
  std::size_t count(F per_head) const noexcept {
    std::size_t total = 0;
    for (const auto& L : layers_)
      for (const auto& v : L.views) total += per_head(v);
    return total;
  }

  /// New buffers of `capacity` entries holding the current ones; strong guarantee (allocate first).
  void reallocate(Layer& L, std::size_t h, std::size_t capacity) {
    auto& v = L.views[h];
    const auto d = static_cast<std::size_t>(shape_.head_dim);
    HeadStorage fresh;
    fresh.keys.reset(new T[capacity * d]);
    fresh.values.reset(new T[capacity * d]);
    fresh.bias.reset(new float[capacity]);
    fresh.positions.reset(new Position[capacity]);
    if (track_scores_) fresh.scores.reset(new float[capacity]);
    const std::size_t keep = std::min(v.length, capacity);
    if (v.keys) {
      std::copy_n(v.keys, keep * d, fresh.keys.get());
      std::copy_n(v.values, keep * d, fresh.values.get());
      std::copy_n(v.bias, keep, fresh.bias.get());
      std::copy_n(v.positions, keep, fresh.positions.get());
      if (track_scores_) std::copy_n(v.scores, keep, fresh.scores.get());
    }
    L.storage[h] = std::move(fresh);
    v = make_head_view<T>(L.storage[h].keys.get(), L.storage[h].values.get(), L.storage[h].bias.get(),
                          L.storage[h].positions.get(), L.storage[h].scores.get(), keep, capacity, shape_.head_dim);
  }

  Shape shape_;
  bool track_scores_;
  std::vector<Layer> layers_;
};

}  // namespace simcalkv
