// simcalkv: entries of a layout that is not one packed HeadView per head (paged blocks, shared
// cells): a reference to one entry's fields, and the staging copy a policy plans on.
//
// Planning reads each head as a HeadView; a layout whose entries are scattered (a block table,
// cells with holes) is first gathered into packed staging buffers, which costs one copy of the
// layer's keys and values (O(n d), against the O(W G n d) of scoring it), and the plan's entry
// indices then refer to the head's entries in order, whatever memory they live in.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/convert.hpp"

#include <cstddef>
#include <vector>

namespace simcalkv {

/// One entry of a head: its key and value rows (head_dim elements at the given dim strides), its
/// bias, position and optional score.
template <StorageElement T>
struct EntryRef {
  T* key = nullptr;
  std::ptrdiff_t key_dim_stride = 1;
  T* value = nullptr;
  std::ptrdiff_t value_dim_stride = 1;
  float* bias = nullptr;
  Position* position = nullptr;
  float* score = nullptr;
};

/// Packed copies of a layer's heads, [head][entry][head_dim], for planning.
template <StorageElement T>
class Staging {
 public:
  /// Copies every head of `layout` (an object with num_heads(), head_dim(), length(h) and
  /// entry(h, j) -> EntryRef<T>) and returns one HeadView per head over the copies.
  template <class Layout>
  std::vector<HeadView<T>>& gather(const Layout& layout) {
    const std::size_t H = layout.num_heads();
    const auto d = static_cast<std::size_t>(layout.head_dim());
    std::size_t total = 0;
    for (std::size_t h = 0; h < H; ++h) total += layout.length(h);
    keys_.resize(total * d);
    values_.resize(total * d);
    bias_.resize(total);
    positions_.resize(total);
    scores_.resize(total);
    views_.resize(H);
    bool any_scores = false;
    std::size_t base = 0;
    for (std::size_t h = 0; h < H; ++h) {
      const std::size_t n = layout.length(h);
      for (std::size_t j = 0; j < n; ++j) {
        const EntryRef<T> e = layout.entry(h, j);
        for (std::size_t i = 0; i < d; ++i) {
          keys_[(base + j) * d + i] = e.key[static_cast<std::ptrdiff_t>(i) * e.key_dim_stride];
          values_[(base + j) * d + i] = e.value[static_cast<std::ptrdiff_t>(i) * e.value_dim_stride];
        }
        bias_[base + j] = *e.bias;
        positions_[base + j] = *e.position;
        scores_[base + j] = e.score ? *e.score : 0.0f;
        any_scores = any_scores || e.score != nullptr;
      }
      views_[h] = make_head_view(keys_.data() + base * d, values_.data() + base * d, bias_.data() + base,
                                 positions_.data() + base, nullptr, n, n, static_cast<int>(d));
      base += n;
    }
    if (any_scores)
      for (std::size_t h = 0, b = 0; h < H; b += views_[h].length, ++h) views_[h].scores = scores_.data() + b;
    return views_;
  }
  [[nodiscard]] std::vector<HeadView<T>>& views() noexcept { return views_; }

 private:
  std::vector<T> keys_, values_;
  std::vector<float> bias_, scores_;
  std::vector<Position> positions_;
  std::vector<HeadView<T>> views_;
};

namespace detail {

/// write_head_plan's entry operations over a layout's EntryRefs of head `h`.
template <class Layout, StorageElement T>
struct LayoutEntries {
  const Layout& layout;
  std::size_t h;
  std::size_t d;
  void move(std::size_t from, std::size_t to) const noexcept {
    if (from == to) return;
    const EntryRef<T> a = layout.entry(h, from), b = layout.entry(h, to);
    for (std::size_t i = 0; i < d; ++i) {
      b.key[static_cast<std::ptrdiff_t>(i) * b.key_dim_stride] = a.key[static_cast<std::ptrdiff_t>(i) * a.key_dim_stride];
      b.value[static_cast<std::ptrdiff_t>(i) * b.value_dim_stride] =
          a.value[static_cast<std::ptrdiff_t>(i) * a.value_dim_stride];
    }
    *b.bias = *a.bias;
    *b.position = *a.position;
    if (a.score && b.score) *b.score = *a.score;
  }
  void store_key(std::size_t slot, const float* row) const noexcept {
    const EntryRef<T> e = layout.entry(h, slot);
    store_strided(row, e.key, e.key_dim_stride, d);
  }
  void store_value(std::size_t slot, const float* row) const noexcept {
    const EntryRef<T> e = layout.entry(h, slot);
    store_strided(row, e.value, e.value_dim_stride, d);
  }
  void set_bias(std::size_t slot, float b) const noexcept { *layout.entry(h, slot).bias = b; }
  void set_score(std::size_t slot, float s) const noexcept {
    if (float* p = layout.entry(h, slot).score) *p = s;
  }
  [[nodiscard]] bool has_scores() const noexcept { return layout.has_scores(); }
};

}  // namespace detail
}  // namespace simcalkv
