// simcalkv-eval: LongBench's scores that tools/eval/metrics.hpp does not hold, as LongBench's metrics.py computes
// them (classification_score, retrieval_score, retrieval_zh_score, count_score), and a character-level ROUGE-L for
// Chinese summaries (LongBench's rouge_zh_score segments words with jieba, which is not available here: every CJK
// character is one token, runs of other letters and digits are words).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv::eval::longbench {

/// Every maximal run of ASCII digits (Python's re.findall(r"\d+") on ASCII text).
inline std::vector<std::string> digit_runs(std::string_view s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] >= '0' && s[i] <= '9') {
      std::size_t j = i;
      while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
      out.emplace_back(s.substr(i, j - i));
      i = j;
    } else {
      ++i;
    }
  }
  return out;
}

/// LongBench count_score: the share of the numbers in the prediction that equal the answer.
inline double count_score(std::string_view prediction, std::string_view ground_truth) {
  const auto numbers = digit_runs(prediction);
  if (numbers.empty()) return 0.0;
  const auto right = std::count(numbers.begin(), numbers.end(), std::string(ground_truth));
  return static_cast<double>(right) / static_cast<double>(numbers.size());
}

/// LongBench retrieval_score (marker "Paragraph ") and retrieval_zh_score (marker "段落"): the paragraph number
/// is the digits after the first marker in the answer; the score is the share of the prediction's numbers equal
/// to it. An answer without the marker scores 0 (LongBench raises).
inline double retrieval_score(std::string_view prediction, std::string_view ground_truth,
                              std::string_view marker = "Paragraph ") {
  std::string id;
  for (std::size_t at = ground_truth.find(marker); at != std::string_view::npos;
       at = ground_truth.find(marker, at + 1)) {
    std::size_t j = at + marker.size();
    while (j < ground_truth.size() && ground_truth[j] >= '0' && ground_truth[j] <= '9') ++j;
    if (j > at + marker.size()) {
      id = std::string(ground_truth.substr(at + marker.size(), j - at - marker.size()));
      break;
    }
  }
  if (id.empty()) return 0.0;
  return count_score(prediction, id);
}

/// LongBench classification_score: the classes named in the prediction, less those that are a strict part of the
/// answer (removed while iterating, as the Python loop does, so the entry after a removed one is not examined);
/// 1/len(matches) when the answer is among them.
inline double classification_score(std::string_view prediction, std::string_view ground_truth,
                                   std::span<const std::string> all_classes) {
  std::vector<std::string> matches;
  for (const auto& c : all_classes)
    if (prediction.find(c) != std::string_view::npos) matches.push_back(c);
  for (std::size_t i = 0; i < matches.size(); ++i) {
    const std::string term = matches[i];
    if (ground_truth.find(term) != std::string_view::npos && term != ground_truth)
      matches.erase(std::find(matches.begin(), matches.end(), term));
  }
  if (std::find(matches.begin(), matches.end(), std::string(ground_truth)) == matches.end()) return 0.0;
  return 1.0 / static_cast<double>(matches.size());
}

namespace detail {
inline std::uint32_t decode_utf8(std::string_view s, std::size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  int n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
  if (i + static_cast<std::size_t>(n) > s.size()) n = 1;
  std::uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]) & 0x3F);
  i += static_cast<std::size_t>(n);
  return cp;
}
inline bool is_cjk(std::uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x3040 && cp <= 0x30FF) || (cp >= 0xAC00 && cp <= 0xD7AF);
}
inline bool is_word(std::uint32_t cp) {
  return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
         (cp >= 0xC0 && cp < 0x2000 && cp != 0xD7 && cp != 0xF7);
}
}  // namespace detail

/// Tokens for rouge_zh: each CJK character alone, runs of letters and digits as words (lower-cased ASCII),
/// punctuation and spaces dropped.
inline std::vector<std::string> zh_tokens(std::string_view s) {
  std::vector<std::string> out;
  std::string word;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t start = i;
    const std::uint32_t cp = detail::decode_utf8(s, i);
    if (detail::is_cjk(cp)) {
      if (!word.empty()) out.push_back(std::move(word)), word.clear();
      out.emplace_back(s.substr(start, i - start));
    } else if (detail::is_word(cp)) {
      for (std::size_t k = start; k < i; ++k)
        word += (s[k] >= 'A' && s[k] <= 'Z') ? static_cast<char>(s[k] - 'A' + 'a') : s[k];
    } else if (!word.empty()) {
      out.push_back(std::move(word));
      word.clear();
    }
  }
  if (!word.empty()) out.push_back(std::move(word));
  return out;
}

/// ROUGE-L F1 (longest common subsequence) over zh_tokens.
inline double rouge_zh(std::string_view prediction, std::string_view reference) {
  const auto p = zh_tokens(prediction), r = zh_tokens(reference);
  if (p.empty() || r.empty()) return 0.0;
  std::vector<std::size_t> prev(r.size() + 1, 0), cur(r.size() + 1, 0);
  for (std::size_t i = 1; i <= p.size(); ++i) {
    for (std::size_t j = 1; j <= r.size(); ++j)
      cur[j] = p[i - 1] == r[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  const double lcs = static_cast<double>(prev[r.size()]);
  if (lcs == 0) return 0.0;
  const double precision = lcs / static_cast<double>(p.size()), recall = lcs / static_cast<double>(r.size());
  return 2 * precision * recall / (precision + recall);
}

}  // namespace simcalkv::eval::longbench
