// simcalkv-eval metrics: LongBench's QA F1 (English and Chinese), exact match and RULER's string matches (see metrics.hpp for the rules every metric follows).
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

// ------------------------------------------------------------------------------------------------ LongBench QA

/// LongBench's normalize_answer, split into tokens.
inline std::vector<std::u32string> normalize_answer_tokens(std::string_view text) {
  const std::u32string lowered = py_lower(decode_utf8(text));
  std::u32string no_punct;
  no_punct.reserve(lowered.size());
  for (char32_t c : lowered) {
    if (!is_ascii_punct(c)) no_punct.push_back(c);
  }
  std::u32string no_articles;
  no_articles.reserve(no_punct.size());
  std::size_t i = 0;
  while (i < no_punct.size()) {
    if (!py_word_char(no_punct[i])) {
      no_articles.push_back(no_punct[i++]);
      continue;
    }
    const std::size_t start = i;
    while (i < no_punct.size() && py_word_char(no_punct[i])) ++i;
    const std::u32string_view word(no_punct.data() + start, i - start);
    if (word == U"a" || word == U"an" || word == U"the") {
      no_articles.push_back(U' ');
    } else {
      no_articles.append(word);
    }
  }
  return py_split(no_articles);
}

/// LongBench's f1_score on two token lists.
template <class Str>
double token_f1(const std::vector<Str>& prediction, const std::vector<Str>& reference) {
  std::map<Str, int> ref_counts;
  for (const auto& t : reference) ++ref_counts[t];
  int same = 0;
  for (const auto& t : prediction) {
    auto it = ref_counts.find(t);
    if (it != ref_counts.end() && it->second > 0) {
      --it->second;
      ++same;
    }
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(prediction.size());
  const double recall = static_cast<double>(same) / static_cast<double>(reference.size());
  return 2 * precision * recall / (precision + recall);
}

/// LongBench's Chinese punctuation (normalize_zh_answer's list; '.' is there too but is ASCII).
inline bool is_zh_punct(char32_t c) {
  static constexpr char32_t list[] = {
      0xFF01, 0xFF1F, 0xFF61, 0x3002, 0xFF02, 0xFF03, 0xFF04, 0xFF05, 0xFF06, 0xFF07, 0xFF08, 0xFF09, 0xFF0A,
      0xFF0B, 0xFF0C, 0xFF0D, 0xFF0F, 0xFF1A, 0xFF1B, 0xFF1C, 0xFF1D, 0xFF1E, 0xFF20, 0xFF3B, 0xFF3C, 0xFF3D,
      0xFF3E, 0xFF3F, 0xFF40, 0xFF5B, 0xFF5C, 0xFF5D, 0xFF5E, 0xFF5F, 0xFF60, 0xFF62, 0xFF63, 0xFF64, 0x3001,
      0x3003, 0x300B, 0x300C, 0x300D, 0x300E, 0x300F, 0x3010, 0x3011, 0x3014, 0x3015, 0x3016, 0x3017, 0x3018,
      0x3019, 0x301A, 0x301B, 0x301C, 0x301D, 0x301E, 0x301F, 0x3030, 0x303E, 0x303F, 0x2013, 0x2014, 0x2018,
      0x2019, 0x201B, 0x201C, 0x201D, 0x201E, 0x201F, 0x2026, 0x2027, 0xFE4F};
  return std::find(std::begin(list), std::end(list), c) != std::end(list);
}

/// The segmentation that stands in for jieba (see qa_f1_zh at the top of this file), before normalisation.
inline std::vector<std::u32string> zh_segments(std::u32string_view s) {
  std::vector<std::u32string> out;
  std::size_t i = 0;
  while (i < s.size()) {
    const char32_t c = s[i];
    if (py_isspace(c)) {
      ++i;
    } else if (is_ascii_alnum(c)) {
      std::size_t j = i;
      while (j < s.size() && is_ascii_alnum(s[j])) ++j;
      if (j + 1 < s.size() && s[j] == U'.' && is_ascii_digit(s[j + 1])) {
        j += 1;
        while (j < s.size() && is_ascii_digit(s[j])) ++j;
      }
      out.emplace_back(s.substr(i, j - i));
      i = j;
    } else {
      out.emplace_back(1, c);
      ++i;
    }
  }
  return out;
}

/// Segments and normalises as qa_f1_zh does.
inline std::vector<std::u32string> zh_tokens(std::string_view text) {
  std::vector<std::u32string> out;
  for (const auto& seg : zh_segments(decode_utf8(text))) {
    std::u32string token;
    for (char32_t c : py_lower(seg)) {
      if (!is_ascii_punct(c) && !is_zh_punct(c) && !py_isspace(c)) token.push_back(c);
    }
    if (!token.empty()) out.push_back(std::move(token));
  }
  return out;
}

}  // namespace detail

/// LongBench qa_f1_score.
inline double qa_f1(std::string_view prediction, std::string_view reference) {
  return detail::token_f1(detail::normalize_answer_tokens(prediction), detail::normalize_answer_tokens(reference));
}

/// LongBench qa_f1_zh_score with the segmentation described at the top of this file instead of jieba.
inline double qa_f1_zh(std::string_view prediction, std::string_view reference) {
  return detail::token_f1(detail::zh_tokens(prediction), detail::zh_tokens(reference));
}

/// 1 when normalize_answer gives the same text for both, else 0.
inline double exact_match(std::string_view prediction, std::string_view reference) {
  return detail::normalize_answer_tokens(prediction) == detail::normalize_answer_tokens(reference) ? 1.0 : 0.0;
}

/// RULER string_match_all for one sample: the fraction of references found (case-insensitive) in the prediction.
/// Throws std::invalid_argument on an empty reference list.
inline double string_match_all(std::string_view prediction, std::span<const std::string> references) {
  if (references.empty()) throw std::invalid_argument("simcalkv::eval::string_match_all: no reference");
  const std::string pred = detail::encode_utf8(detail::py_lower(detail::decode_utf8(prediction)));
  std::size_t found = 0;
  for (const auto& r : references) {
    if (pred.find(detail::encode_utf8(detail::py_lower(detail::decode_utf8(r)))) != std::string::npos) ++found;
  }
  return static_cast<double>(found) / static_cast<double>(references.size());
}

/// RULER string_match_part for one sample: 1 when any reference is found (case-insensitive) in the prediction.
/// Throws std::invalid_argument on an empty reference list.
inline double string_match_part(std::string_view prediction, std::span<const std::string> references) {
  if (references.empty()) throw std::invalid_argument("simcalkv::eval::string_match_part: no reference");
  const std::string pred = detail::encode_utf8(detail::py_lower(detail::decode_utf8(prediction)));
  for (const auto& r : references) {
    if (pred.find(detail::encode_utf8(detail::py_lower(detail::decode_utf8(r)))) != std::string::npos) return 1.0;
  }
  return 0.0;
}

}  // namespace simcalkv::eval
