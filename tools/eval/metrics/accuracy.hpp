// simcalkv-eval metrics: multiple-choice accuracy (the chosen label against the reference) (see metrics.hpp for the rules every metric follows).
#pragma once

#include "text.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace simcalkv::eval {

namespace detail {

// ------------------------------------------------------------------------------------------------- accuracy

inline bool is_decoration(char32_t c) {
  return c == U'*' || c == U'"' || c == U'\'' || c == U'`' || c == U'(' || c == U'[' || c == 0x2018 || c == 0x201C;
}

inline std::size_t skip_decoration(std::u32string_view s, std::size_t i) {
  while (i < s.size() && (py_isspace(s[i]) || is_decoration(s[i]))) ++i;
  return i;
}

inline bool label_at(std::u32string_view s, std::size_t i, std::u32string_view label) {
  if (s.substr(i).substr(0, label.size()) != label) return false;
  return i + label.size() == s.size() || !py_word_char(s[i + label.size()]);
}

}  // namespace detail

/// Multiple choice: 1 when the prediction's first choice is the reference label (rules at the top of this file).
inline double accuracy(std::string_view prediction, std::string_view reference) {
  using detail::py_isspace;
  std::u32string label = detail::py_lower(detail::decode_utf8(reference));
  std::size_t a = 0, b = label.size();
  while (a < b && (py_isspace(label[a]) || label[a] == U'(' || label[a] == U'[')) ++a;
  while (b > a && (py_isspace(label[b - 1]) || label[b - 1] == U')' || label[b - 1] == U']' || label[b - 1] == U'.' ||
                   label[b - 1] == U':')) {
    --b;
  }
  label = label.substr(a, b - a);
  if (label.empty()) return 0.0;

  const std::u32string pred = detail::py_lower(detail::decode_utf8(prediction));
  std::size_t i = detail::skip_decoration(pred, 0);
  if (detail::label_at(pred, i, label)) return 1.0;
  static constexpr std::u32string_view preambles[] = {U"the correct answer is", U"the correct answer", U"the answer is",
                                                      U"the answer",  U"correct answer is",  U"correct answer",
                                                      U"answer is",   U"answer"};
  for (std::u32string_view preamble : preambles) {
    if (!detail::label_at(pred, i, preamble)) continue;
    std::size_t j = i + preamble.size();
    while (j < pred.size() && py_isspace(pred[j])) ++j;
    if (j < pred.size() && pred[j] == U':') ++j;
    j = detail::skip_decoration(pred, j);
    return detail::label_at(pred, j, label) ? 1.0 : 0.0;
  }
  return 0.0;
}

}  // namespace simcalkv::eval
