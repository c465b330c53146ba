// simcalkv: the entries a policy never removes (attention sinks and the most recent entries).
#pragma once

#include <algorithm>
#include <cstddef>

namespace simcalkv {

/// Entries a policy never removes: the first `sinks` and the last `recent`.
struct Protection {
  std::size_t sinks = 4;
  std::size_t recent = 32;
  [[nodiscard]] std::size_t count(std::size_t n) const noexcept { return std::min(n, sinks + recent); }
  [[nodiscard]] bool protects(std::size_t j, std::size_t n) const noexcept {
    return j < sinks || j + recent >= n;
  }
};

/// Protected entries for a request: sinks, and `recent` (or the window length when negative).
inline Protection make_protection(std::size_t sinks, int recent, int window_tokens) {
  return Protection{sinks, static_cast<std::size_t>(recent >= 0 ? recent : window_tokens)};
}

}  // namespace simcalkv
