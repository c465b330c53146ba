// simcalkv-eval metrics: ROUGE-1/2/L/Lsum (Google's rouge-score) and code_sim (LongBench's fuzz ratio), on longest common subsequences (see metrics.hpp for the rules every metric follows).
#pragma once

#include "porter.hpp"
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

/// F-measures of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum, each in [0, 1].
struct RougeScores {
  double rouge1 = 0, rouge2 = 0, rougeL = 0, rougeLsum = 0;
};

namespace detail {

// ------------------------------------------------------------------------------------------------------ ROUGE

/// rouge-score's tokenizer: lowercase, runs of [a-z0-9], optional stemming of tokens longer than 3 characters.
inline std::vector<std::string> rouge_tokenize(std::u32string_view text, bool use_stemmer) {
  std::vector<std::string> tokens;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    if (use_stemmer && cur.size() > 3) {
      const std::u32string stemmed = porter::stem(std::u32string(cur.begin(), cur.end()));
      cur = encode_utf8(stemmed);  // [a-z0-9] in, [a-z0-9] out
    }
    if (!cur.empty()) tokens.push_back(std::move(cur));
    cur.clear();
  };
  std::u32string lowered;
  for (char32_t c : text) {
    lowered.clear();
    append_lower(lowered, c);
    for (char32_t l : lowered) {
      if ((l >= U'a' && l <= U'z') || (l >= U'0' && l <= U'9')) {
        cur.push_back(static_cast<char>(l));
      } else {
        flush();
      }
    }
  }
  flush();
  return tokens;
}

/// Indices into ref of one LCS of (ref, can), read back from the full table the way rouge-score does.
inline std::vector<std::size_t> lcs_indices(const std::vector<int>& ref, const std::vector<int>& can) {
  const std::size_t rows = ref.size(), cols = can.size();
  std::vector<std::uint32_t> t((rows + 1) * (cols + 1), 0);
  auto at = [&](std::size_t i, std::size_t j) -> std::uint32_t& { return t[i * (cols + 1) + j]; };
  for (std::size_t i = 1; i <= rows; ++i) {
    for (std::size_t j = 1; j <= cols; ++j) {
      at(i, j) = ref[i - 1] == can[j - 1] ? at(i - 1, j - 1) + 1 : std::max(at(i - 1, j), at(i, j - 1));
    }
  }
  std::vector<std::size_t> out;
  std::size_t i = rows, j = cols;
  while (i > 0 && j > 0) {
    if (ref[i - 1] == can[j - 1]) {
      out.push_back(i - 1);
      --i;
      --j;
    } else if (at(i, j - 1) > at(i - 1, j)) {
      --j;
    } else {
      --i;
    }
  }
  return out;  // reversed order; only the set matters
}

/// ROUGE-Lsum F-measure (summary-level union LCS with the 1.5.5 double-count guard).
inline double summary_level_lcs(const std::vector<std::vector<int>>& ref_sents,
                                const std::vector<std::vector<int>>& can_sents) {
  std::size_t m = 0, n = 0;
  std::unordered_map<int, int> ref_counts, can_counts;
  for (const auto& s : ref_sents) {
    m += s.size();
    for (int t : s) ++ref_counts[t];
  }
  for (const auto& s : can_sents) {
    n += s.size();
    for (int t : s) ++can_counts[t];
  }
  if (m == 0 || n == 0) return 0.0;
  std::size_t hits = 0;
  for (const auto& r : ref_sents) {
    std::vector<char> in_union(r.size(), 0);
    for (const auto& c : can_sents) {
      for (std::size_t i : lcs_indices(r, c)) in_union[i] = 1;
    }
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (!in_union[i]) continue;
      int& rc = ref_counts[r[i]];
      int& cc = can_counts[r[i]];
      if (rc > 0 && cc > 0) {
        ++hits;
        --rc;
        --cc;
      }
    }
  }
  return fmeasure(static_cast<double>(hits) / static_cast<double>(n), static_cast<double>(hits) / static_cast<double>(m));
}

/// rouge-score's sentence split for ROUGE-Lsum: on '\n', empty pieces dropped.
inline std::vector<std::u32string_view> newline_sentences(std::u32string_view text) {
  std::vector<std::u32string_view> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(U'\n', start);
    if (end == std::u32string_view::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace detail

/// ROUGE-1/2/L/Lsum F-measures of prediction against reference, as rouge-score computes them.
inline RougeScores rouge(std::string_view prediction, std::string_view reference, bool use_stemmer = true) {
  const std::u32string pred = detail::decode_utf8(prediction), ref = detail::decode_utf8(reference);
  detail::Vocab<std::string> vocab;
  const std::vector<int> p = vocab.ids(detail::rouge_tokenize(pred, use_stemmer));
  const std::vector<int> r = vocab.ids(detail::rouge_tokenize(ref, use_stemmer));
  RougeScores out;
  auto rouge_n = [&](std::size_t n) {
    const auto pc = detail::ngram_counts(p, n), rc = detail::ngram_counts(r, n);
    const int overlap = detail::ngram_overlap(rc, pc);
    const std::size_t pn = p.size() >= n ? p.size() - n + 1 : 0, rn = r.size() >= n ? r.size() - n + 1 : 0;
    return detail::fmeasure(overlap / static_cast<double>(std::max<std::size_t>(pn, 1)),
                            overlap / static_cast<double>(std::max<std::size_t>(rn, 1)));
  };
  out.rouge1 = rouge_n(1);
  out.rouge2 = rouge_n(2);
  if (!p.empty() && !r.empty()) {
    const double lcs = static_cast<double>(detail::lcs_length(r, p));
    out.rougeL = detail::fmeasure(lcs / static_cast<double>(p.size()), lcs / static_cast<double>(r.size()));
  }
  std::vector<std::vector<int>> ref_sents, pred_sents;
  for (auto s : detail::newline_sentences(ref)) ref_sents.push_back(vocab.ids(detail::rouge_tokenize(s, use_stemmer)));
  for (auto s : detail::newline_sentences(pred)) pred_sents.push_back(vocab.ids(detail::rouge_tokenize(s, use_stemmer)));
  out.rougeLsum = detail::summary_level_lcs(ref_sents, pred_sents);
  return out;
}

/// LongBench code_sim_score: fuzz.ratio of the prediction's first code line and the reference, / 100.
inline double code_sim(std::string_view prediction, std::string_view reference) {
  const std::u32string pred = detail::decode_utf8(prediction), ref = detail::decode_utf8(reference);
  std::u32string_view rest(pred);
  while (!rest.empty() && rest.front() == U'\n') rest.remove_prefix(1);
  std::u32string_view line;
  bool found = false;
  while (!found) {
    const std::size_t end = rest.find(U'\n');
    const std::u32string_view candidate = rest.substr(0, end);
    if (candidate.find(U'`') == std::u32string_view::npos && candidate.find(U'#') == std::u32string_view::npos &&
        candidate.find(U"//") == std::u32string_view::npos) {
      line = candidate;
      found = true;
    }
    if (end == std::u32string_view::npos) break;
    rest.remove_prefix(end + 1);
  }
  if (line == std::u32string_view(ref)) return 1.0;  // also when both are empty
  if (line.empty() || ref.empty()) return 0.0;
  const std::size_t total = line.size() + ref.size();
  const std::size_t distance = total - 2 * detail::lcs_length(line, std::u32string_view(ref));
  const double ratio = static_cast<double>(total - distance) / static_cast<double>(total);
  return std::nearbyint(100.0 * ratio) / 100.0;  // round half to even (the default rounding mode), as round()
}

}  // namespace simcalkv::eval
