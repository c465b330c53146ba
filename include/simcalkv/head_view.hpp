// simcalkv: a non-owning view of one KV head over a host engine's own buffers.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/numeric.hpp"

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace simcalkv {

namespace detail {
/// Row widening and narrowing for HeadView's members, defined by kernels/convert.hpp (which
/// every header that reads or writes rows includes): the kernels it calls include this header.
template <class T>
struct RowIO;
}  // namespace detail

/// Position of a token in the sequence: RoPE's position, never the physical cache slot.
using Position = std::int32_t;

/// One KV head as the host lays it out. Nothing is copied or owned: the host keeps the buffers.
///
/// Entry j (0 <= j < length) has its key at keys[j * key_token_stride + i * key_dim_stride] for
/// i < head_dim, likewise its value; so a row-major [capacity][head_dim] buffer has strides
/// (head_dim, 1), and a transposed V ([head_dim][capacity], llama.cpp without flash attention)
/// has value strides (1, capacity). `bias[j]` is added to the entry's attention logit, `positions[j]`
/// is the token's original position, and `scores` (optional) accumulates attention for policies
/// that need it. Compression rewrites entries in place and lowers `length`.
template <StorageElement T>
struct HeadView {
  using element_type = T;

  T* keys = nullptr;
  std::ptrdiff_t key_token_stride = 0;
  std::ptrdiff_t key_dim_stride = 1;
  T* values = nullptr;
  std::ptrdiff_t value_token_stride = 0;
  std::ptrdiff_t value_dim_stride = 1;
  float* bias = nullptr;           // [capacity], required
  Position* positions = nullptr;   // [capacity], required, ascending over 0..length
  float* scores = nullptr;         // [capacity], optional accumulator
  std::size_t length = 0;
  std::size_t capacity = 0;
  int head_dim = 0;

  [[nodiscard]] T* key(std::size_t j, int i = 0) const noexcept {
    return keys + static_cast<std::ptrdiff_t>(j) * key_token_stride + i * key_dim_stride;
  }
  [[nodiscard]] T* value(std::size_t j, int i = 0) const noexcept {
    return values + static_cast<std::ptrdiff_t>(j) * value_token_stride + i * value_dim_stride;
  }
  [[nodiscard]] bool keys_contiguous() const noexcept { return key_dim_stride == 1; }
  [[nodiscard]] bool values_contiguous() const noexcept { return value_dim_stride == 1; }

  /// Reads entry j's key (or value) widened to float into dst[0..head_dim).
  void load_key(std::size_t j, float* dst) const noexcept {
    detail::RowIO<T>::load(key(j), key_dim_stride, dst, static_cast<std::size_t>(head_dim));
  }
  void load_value(std::size_t j, float* dst) const noexcept {
    detail::RowIO<T>::load(value(j), value_dim_stride, dst, static_cast<std::size_t>(head_dim));
  }
  void store_key(std::size_t j, const float* src) const noexcept {
    detail::RowIO<T>::store(src, key(j), key_dim_stride, static_cast<std::size_t>(head_dim));
  }
  void store_value(std::size_t j, const float* src) const noexcept {
    detail::RowIO<T>::store(src, value(j), value_dim_stride, static_cast<std::size_t>(head_dim));
  }

  /// Moves entry `from` into slot `to` bit for bit (storage elements, bias, position, score).
  void move_entry(std::size_t from, std::size_t to) const noexcept {
    if (from == to) return;
    for (int i = 0; i < head_dim; ++i) {
      *key(to, i) = *key(from, i);
      *value(to, i) = *value(from, i);
    }
    bias[to] = bias[from];
    positions[to] = positions[from];
    if (scores) scores[to] = scores[from];
  }
};

/// Row-major [capacity][head_dim] key and value buffers: the common layout.
template <StorageElement T>
HeadView<T> make_head_view(T* keys, T* values, float* bias, Position* positions, float* scores,
                           std::size_t length, std::size_t capacity, int head_dim) {
  HeadView<T> view;
  view.keys = keys;
  view.key_token_stride = head_dim;
  view.values = values;
  view.value_token_stride = head_dim;
  view.bias = bias;
  view.positions = positions;
  view.scores = scores;
  view.length = length;
  view.capacity = capacity;
  view.head_dim = head_dim;
  return view;
}

namespace detail {

template <StorageElement T>
void validate_layout(const HeadView<T>& h, const std::string& name) {
  using detail::require;
  require(h.head_dim > 0, ErrorCode::invalid_argument, name, ": head_dim must be positive, got ", h.head_dim);
  require(h.length <= h.capacity, ErrorCode::capacity_overflow, name, ": length ", h.length,
          " exceeds capacity ", h.capacity);
  require(h.keys && h.values, ErrorCode::invalid_argument, name, ": null key or value buffer");
  require(h.bias && h.positions, ErrorCode::invalid_argument, name,
          ": null bias or positions buffer (both are required)");
  require(h.key_token_stride != 0 && h.key_dim_stride != 0 && h.value_token_stride != 0 &&
              h.value_dim_stride != 0,
          ErrorCode::invalid_argument, name, ": a stride is zero");
  // Entries must not alias: the span of one token's dims must not reach into the next token.
  auto distinct = [&](std::ptrdiff_t token, std::ptrdiff_t dim) {
    const auto t = token < 0 ? -token : token;
    const auto s = dim < 0 ? -dim : dim;
    return h.capacity <= 1 || t >= s * h.head_dim || s >= t * static_cast<std::ptrdiff_t>(h.capacity);
  };
  require(distinct(h.key_token_stride, h.key_dim_stride), ErrorCode::invalid_argument, name,
          ": key strides (token ", h.key_token_stride, ", dim ", h.key_dim_stride,
          ") make entries overlap for head_dim ", h.head_dim, " and capacity ", h.capacity);
  require(distinct(h.value_token_stride, h.value_dim_stride), ErrorCode::invalid_argument, name,
          ": value strides (token ", h.value_token_stride, ", dim ", h.value_dim_stride,
          ") make entries overlap for head_dim ", h.head_dim, " and capacity ", h.capacity);
}

/// The bytes one buffer of a head spans, for telling buffers that alias apart.
struct BufferExtent {
  std::uintptr_t lo = 0, hi = 0;       // [lo, hi)
  std::ptrdiff_t token_stride = 0;     // bytes; 0 for a plain array
  std::ptrdiff_t dim_stride = 0;       // bytes
  std::size_t row_bytes = 0;           // head_dim * element size (strided buffers)
  std::size_t elem = 0;                // element size
  const char* what = "";
  std::size_t head = 0;
};

template <class E>
BufferExtent strided_extent(const E* base, std::ptrdiff_t token_stride, std::ptrdiff_t dim_stride,
                            std::size_t capacity, int head_dim, const char* what, std::size_t head) {
  const auto b = reinterpret_cast<std::uintptr_t>(base);
  const auto e = static_cast<std::ptrdiff_t>(sizeof(E));
  const std::ptrdiff_t last_token = static_cast<std::ptrdiff_t>(capacity == 0 ? 0 : capacity - 1) * token_stride * e;
  const std::ptrdiff_t last_dim = static_cast<std::ptrdiff_t>(head_dim - 1) * dim_stride * e;
  const std::ptrdiff_t lo = std::min<std::ptrdiff_t>(0, last_token) + std::min<std::ptrdiff_t>(0, last_dim);
  const std::ptrdiff_t hi = std::max<std::ptrdiff_t>(0, last_token) + std::max<std::ptrdiff_t>(0, last_dim) + e;
  return {b + static_cast<std::uintptr_t>(lo), b + static_cast<std::uintptr_t>(hi), token_stride * e, dim_stride * e,
          static_cast<std::size_t>(head_dim) * sizeof(E), sizeof(E), what, head};
}

template <class E>
BufferExtent array_extent(const E* base, std::size_t capacity, const char* what, std::size_t head) {
  const auto b = reinterpret_cast<std::uintptr_t>(base);
  return {b, b + std::max<std::size_t>(capacity, 1) * sizeof(E), 0, 0, 0, sizeof(E), what, head};
}

/// Whether two buffers share a byte. Rows interleaved in one tensor -- llama.cpp's K of every head at
/// cell c, or keys and values of a token side by side -- span overlapping ranges without sharing an
/// element: with equal positive token strides and contiguous dims, they collide only when the offset
/// between them, modulo the token stride, falls inside a row.
inline bool buffers_overlap(const BufferExtent& a, const BufferExtent& b) {
  if (a.hi <= b.lo || b.hi <= a.lo) return false;
  const bool rows = a.token_stride > 0 && a.token_stride == b.token_stride && a.row_bytes == b.row_bytes &&
                    a.dim_stride == static_cast<std::ptrdiff_t>(a.elem) && b.dim_stride == a.dim_stride &&
                    a.row_bytes <= static_cast<std::size_t>(a.token_stride);
  if (!rows) return true;
  const auto t = static_cast<std::uintptr_t>(a.token_stride);
  const std::uintptr_t r = (b.lo > a.lo ? b.lo - a.lo : a.lo - b.lo) % t;
  return r < a.row_bytes || r > t - a.row_bytes;
}

/// Refuses heads whose buffers alias each other or another head's: compression moves entries head by
/// head, so shared bytes would be overwritten under a head that still reads them.
template <StorageElement T>
void validate_distinct_buffers(std::span<const HeadView<T>> heads, const std::string& who) {
  std::vector<BufferExtent> extents;
  for (std::size_t h = 0; h < heads.size(); ++h) {
    const HeadView<T>& v = heads[h];
    if (v.capacity == 0) continue;
    extents.push_back(strided_extent(v.keys, v.key_token_stride, v.key_dim_stride, v.capacity, v.head_dim, "keys", h));
    extents.push_back(
        strided_extent(v.values, v.value_token_stride, v.value_dim_stride, v.capacity, v.head_dim, "values", h));
    extents.push_back(array_extent(v.bias, v.capacity, "bias", h));
    extents.push_back(array_extent(v.positions, v.capacity, "positions", h));
    if (v.scores) extents.push_back(array_extent(v.scores, v.capacity, "scores", h));
  }
  for (std::size_t i = 0; i < extents.size(); ++i)
    for (std::size_t j = i + 1; j < extents.size(); ++j)
      if (buffers_overlap(extents[i], extents[j])) {
        const auto& a = extents[i];
        const auto& b = extents[j];
        if (a.head == b.head)
          fail(ErrorCode::invalid_argument, who, ": KV head ", a.head, ": its ", a.what, " and ", b.what,
               " buffers overlap (each needs its own memory)");
        fail(ErrorCode::invalid_argument, who, ": the ", a.what, " of KV head ", a.head, " and the ", b.what,
             " of KV head ", b.head, " overlap (heads must not share buffers)");
      }
}

}  // namespace detail
}  // namespace simcalkv
