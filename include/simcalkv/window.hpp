// simcalkv: the observation window a host hands to a policy.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/numeric.hpp"

#include <cstddef>
#include <span>

namespace simcalkv {

/// The last W post-RoPE queries of every query head of one layer, as float, with their positions.
/// Query head h, window token t is at queries + h * head_stride + t * token_stride (dims
/// contiguous). A query sees entries with position <= its own (causal). Query head h belongs to
/// KV head h / G, G = num_query_heads / num_kv_heads (Hugging Face's repeat_kv order).
struct WindowView {
  const float* queries = nullptr;
  std::ptrdiff_t head_stride = 0;
  std::ptrdiff_t token_stride = 0;
  const Position* positions = nullptr;  // [num_tokens]
  int num_query_heads = 0;
  int num_tokens = 0;
  int head_dim = 0;

  [[nodiscard]] const float* query(int head, int token) const noexcept {
    return queries + head * head_stride + token * token_stride;
  }
};

/// A window laid out [num_query_heads][num_tokens][head_dim], the layout of a trace file.
inline WindowView make_window_view(const float* queries, const Position* positions, int num_query_heads,
                                   int num_tokens, int head_dim) {
  return WindowView{queries,   static_cast<std::ptrdiff_t>(num_tokens) * head_dim, head_dim, positions,
                    num_query_heads, num_tokens, head_dim};
}

/// The window's newest token alone, with all its query heads (windows are in position order,
/// oldest first): TOVA scores by it, SimCalKV-paper weighs merged values by it.
inline WindowView newest_query(const WindowView& window) noexcept {
  WindowView last = window;
  if (window.num_tokens > 0) {
    last.queries = window.query(0, window.num_tokens - 1);
    last.positions = window.positions + (window.num_tokens - 1);
    last.num_tokens = 1;
  }
  return last;
}

namespace detail {
inline void validate_window(const WindowView& w, int head_dim, std::size_t num_kv_heads) {
  require(w.num_tokens >= 0, ErrorCode::invalid_argument, "window: negative token count");
  require(w.num_tokens == 0 || (w.queries && w.positions), ErrorCode::invalid_argument,
          "window: null query or position buffer");
  require(w.head_dim == head_dim, ErrorCode::invalid_argument, "window: head_dim ", w.head_dim,
          " does not match the cache's ", head_dim);
  require(num_kv_heads > 0 && w.num_query_heads > 0 &&
              w.num_query_heads % static_cast<int>(num_kv_heads) == 0,
          ErrorCode::invalid_argument, "window: ", w.num_query_heads,
          " query heads are not a multiple of ", num_kv_heads, " KV heads");
  for (int h = 0; h < w.num_query_heads; ++h)
    for (int t = 0; t < w.num_tokens; ++t)
      require(all_finite(w.query(h, t), static_cast<std::size_t>(head_dim)), ErrorCode::non_finite,
              "window: query of head ", h, ", token ", t, " contains NaN or Inf");
}
}  // namespace detail

}  // namespace simcalkv
