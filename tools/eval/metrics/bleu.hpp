// simcalkv-eval metrics: sacrebleu's sentence BLEU with the 13a tokenizer (see metrics.hpp for the rules every metric follows).
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

// ----------------------------------------------------------------------------------------------------- BLEU

inline std::u32string replace_all(std::u32string s, std::u32string_view from, std::u32string_view to) {
  std::u32string out;
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = s.find(from, pos);
    if (hit == std::u32string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s, pos, std::u32string::npos);
  return out;
}

/// sacrebleu's 13a tokenizer (after BLEU's rstrip()), then str.split().
inline std::vector<std::u32string> tokenize_13a(std::string_view text) {
  std::u32string s = decode_utf8(text);
  while (!s.empty() && py_isspace(s.back())) s.pop_back();
  s = replace_all(std::move(s), U"<skipped>", U"");
  s = replace_all(std::move(s), U"-\n", U"");
  s = replace_all(std::move(s), U"\n", U" ");
  s = replace_all(std::move(s), U"&quot;", U"\"");
  s = replace_all(std::move(s), U"&amp;", U"&");
  s = replace_all(std::move(s), U"&lt;", U"<");
  s = replace_all(std::move(s), U"&gt;", U">");
  s = U" " + s + U" ";

  auto is_symbol = [](char32_t c) {  // the class [\{-\~\[-\` -\&\(-\+\:-\@\/]
    return (c >= 0x7B && c <= 0x7E) || (c >= 0x5B && c <= 0x60) || (c >= 0x20 && c <= 0x26) ||
           (c >= 0x28 && c <= 0x2B) || (c >= 0x3A && c <= 0x40) || c == 0x2F;
  };
  auto is_period_comma = [](char32_t c) { return c == U'.' || c == U','; };
  std::u32string t;
  // 1: ([symbol]) -> " \1 "
  for (char32_t c : s) {
    if (is_symbol(c)) {
      t.push_back(U' ');
      t.push_back(c);
      t.push_back(U' ');
    } else {
      t.push_back(c);
    }
  }
  // 2: ([^0-9])([.,]) -> "\1 \2 ", leftmost non-overlapping matches as re.sub finds them
  s.clear();
  for (std::size_t i = 0; i < t.size();) {
    if (i + 1 < t.size() && !is_ascii_digit(t[i]) && is_period_comma(t[i + 1])) {
      s += t[i];
      s += U' ';
      s += t[i + 1];
      s += U' ';
      i += 2;
    } else {
      s += t[i++];
    }
  }
  // 3: ([.,])([^0-9]) -> " \1 \2"
  t.clear();
  for (std::size_t i = 0; i < s.size();) {
    if (i + 1 < s.size() && is_period_comma(s[i]) && !is_ascii_digit(s[i + 1])) {
      t += U' ';
      t += s[i];
      t += U' ';
      t += s[i + 1];
      i += 2;
    } else {
      t += s[i++];
    }
  }
  // 4: ([0-9])(-) -> "\1 \2 "
  s.clear();
  for (std::size_t i = 0; i < t.size();) {
    if (i + 1 < t.size() && is_ascii_digit(t[i]) && t[i + 1] == U'-') {
      s += t[i];
      s += U' ';
      s += U'-';
      s += U' ';
      i += 2;
    } else {
      s += t[i++];
    }
  }
  return py_split(s);
}

}  // namespace detail

/// Sentence BLEU-4 as sacrebleu's sentence_bleu() with its defaults (13a, exp smoothing, effective order), / 100.
inline double bleu(std::string_view prediction, std::string_view reference) {
  detail::Vocab<std::u32string> vocab;
  const std::vector<int> hyp = vocab.ids(detail::tokenize_13a(prediction));
  const std::vector<int> ref = vocab.ids(detail::tokenize_13a(reference));
  constexpr std::size_t max_order = 4;
  std::array<std::size_t, max_order> correct{}, total{};
  for (std::size_t n = 1; n <= max_order; ++n) {
    const auto hc = detail::ngram_counts(hyp, n), rc = detail::ngram_counts(ref, n);
    correct[n - 1] = static_cast<std::size_t>(detail::ngram_overlap(hc, rc));
    total[n - 1] = hyp.size() >= n ? hyp.size() - n + 1 : 0;
  }
  if (correct[0] == 0) return 0.0;  // no n-gram matches at all (a bigram match implies unigram matches)
  const double c = static_cast<double>(hyp.size()), r = static_cast<double>(ref.size());
  const double bp = c < r ? std::exp(1.0 - r / c) : 1.0;  // c > 0 here
  double log_sum = 0, smooth = 1;
  std::size_t order = 0;
  for (std::size_t n = 1; n <= max_order; ++n) {
    if (total[n - 1] == 0) break;
    order = n;
    double precision;
    if (correct[n - 1] == 0) {
      smooth *= 2;
      precision = 1.0 / (smooth * static_cast<double>(total[n - 1]));
    } else {
      precision = static_cast<double>(correct[n - 1]) / static_cast<double>(total[n - 1]);
    }
    log_sum += std::log(precision);
  }
  return bp * std::exp(log_sum / static_cast<double>(order));
}

}  // namespace simcalkv::eval
