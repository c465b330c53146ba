// simcalkv-eval metrics: UTF-8 as Python 3 reads it, Python str behaviour, token vocabularies and n-gram counts (see metrics.hpp for the rules every metric follows).
#pragma once

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

// ---------------------------------------------------------------------------------------------- UTF-8 <-> code points

/// Decodes UTF-8 as Python's bytes.decode("utf-8", "surrogateescape"): every byte that is not part of a well-formed
/// sequence (overlong forms, surrogates and values above U+10FFFF are not) becomes U+DC00 + byte.
inline std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  const std::size_t n = s.size();
  auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  auto cont = [&](std::size_t i, unsigned lo = 0x80, unsigned hi = 0xBF) {
    return i < n && byte(i) >= lo && byte(i) <= hi;
  };
  std::size_t i = 0;
  while (i < n) {
    const unsigned b = byte(i);
    if (b < 0x80) {
      out.push_back(static_cast<char32_t>(b));
      ++i;
      continue;
    }
    std::size_t len = 0;
    if (b >= 0xC2 && b <= 0xDF) {
      if (cont(i + 1)) len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      const unsigned lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
      if (cont(i + 1, lo, hi) && cont(i + 2)) len = 3;
    } else if (b >= 0xF0 && b <= 0xF4) {
      const unsigned lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
      if (cont(i + 1, lo, hi) && cont(i + 2) && cont(i + 3)) len = 4;
    }
    if (len == 0) {
      out.push_back(static_cast<char32_t>(0xDC00 + b));
      ++i;
      continue;
    }
    char32_t c = len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (std::size_t k = 1; k < len; ++k) c = (c << 6) | (byte(i + k) & 0x3F);
    out.push_back(c);
    i += len;
  }
  return out;
}

/// Appends c as UTF-8; the surrogate escapes U+DC80..U+DCFF become the byte they stand for again.
inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c >= 0xDC80 && c <= 0xDCFF) {
    out.push_back(static_cast<char>(static_cast<unsigned char>(c - 0xDC00)));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

inline std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// ------------------------------------------------------------------------------------------ Python str behaviour

/// Python's str.isspace() for one code point.
inline bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

inline bool is_ascii_alnum(char32_t c) { return (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z') || (c >= U'0' && c <= U'9'); }
inline bool is_ascii_digit(char32_t c) { return c >= U'0' && c <= U'9'; }

/// One of the 32 characters of Python's string.punctuation.
inline bool is_ascii_punct(char32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
}

/// Simple lowercase mapping of one code point for the blocks listed at the top of this file (U+0130 is special-cased
/// by append_lower()).
inline char32_t lower_simple(char32_t c) {
  if (c < 0x80) return (c >= U'A' && c <= U'Z') ? c + 32 : c;
  if (c >= 0xC0 && c <= 0xDE) return c == 0xD7 ? c : c + 0x20;
  if (c >= 0x100 && c <= 0x17F) {
    if (c <= 0x12F || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177)) return c % 2 == 0 ? c + 1 : c;
    if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return c % 2 == 1 ? c + 1 : c;
    return c == 0x178 ? char32_t{0xFF} : c;
  }
  if (c >= 0x1CD && c <= 0x1DC) return c % 2 == 1 ? c + 1 : c;
  if (c >= 0x386 && c <= 0x3AB) {
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 0x25;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 0x3F;
    if (c >= 0x391 && c != 0x3A2) return c + 0x20;
    return c;
  }
  if (c >= 0x400 && c <= 0x52F) {
    if (c <= 0x40F) return c + 0x50;
    if (c <= 0x42F) return c + 0x20;
    if ((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF) || c >= 0x4D0) return c % 2 == 0 ? c + 1 : c;
    if (c == 0x4C0) return 0x4CF;
    if (c >= 0x4C1 && c <= 0x4CE) return c % 2 == 1 ? c + 1 : c;
    return c;
  }
  if (c >= 0x531 && c <= 0x556) return c + 0x30;
  if ((c >= 0x1E00 && c <= 0x1E95) || (c >= 0x1EA0 && c <= 0x1EFF)) return c % 2 == 0 ? c + 1 : c;
  if (c == 0x1E9E) return 0xDF;
  if (c == 0x2126) return 0x3C9;
  if (c == 0x212A) return U'k';
  if (c == 0x212B) return 0xE5;
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 0x20;
  return c;
}

inline void append_lower(std::u32string& out, char32_t c) {
  if (c == 0x130) {  // Python: "\u0130".lower() == "i\u0307"
    out.push_back(U'i');
    out.push_back(0x307);
  } else {
    out.push_back(lower_simple(c));
  }
}

inline std::u32string py_lower(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) append_lower(out, c);
  return out;
}

/// Python's regex \w on str (str.isalnum() or '_'), up to the approximation described at the top of this file.
inline bool py_word_char(char32_t c) {
  if (c < 0x80) return is_ascii_alnum(c) || c == U'_';
  if (c < 0xC0) {
    return c == 0xAA || c == 0xB2 || c == 0xB3 || c == 0xB5 || c == 0xB9 || c == 0xBA || (c >= 0xBC && c <= 0xBE);
  }
  if (c == 0xD7 || c == 0xF7) return false;
  if (c < 0x300) return true;
  if (c <= 0x36F) return false;                                   // combining diacritical marks
  if (c < 0x1680) return true;
  if (py_isspace(c)) return false;
  if (c >= 0x2000 && c <= 0x206F) return false;                   // general punctuation
  if (c >= 0x20A0 && c <= 0x20FF) return false;                   // currency symbols, combining marks for symbols
  if (c >= 0x2190 && c <= 0x23FF) return false;                   // arrows, math operators, technical
  if (c >= 0x2500 && c <= 0x2BFF) return false;                   // box drawing .. misc symbols and arrows
  if (c >= 0x2E00 && c <= 0x2E7F) return false;                   // supplemental punctuation
  if (c >= 0x3000 && c <= 0x303F) {                               // CJK symbols and punctuation
    return !(c <= 0x3004 || (c >= 0x3008 && c <= 0x3020) || c == 0x3030 || c >= 0x303D);
  }
  if (c == 0x30A0 || c == 0x30FB) return false;
  if (c >= 0xD800 && c <= 0xF8FF) return false;                   // surrogates (escapes), private use
  if (c >= 0xFE00 && c <= 0xFE0F) return false;                   // variation selectors
  if (c >= 0xFE10 && c <= 0xFE6F) return false;                   // vertical, compatibility and small forms
  if (c >= 0xFF00 && c <= 0xFF65) {                               // fullwidth forms: letters and digits are \w
    return (c >= 0xFF10 && c <= 0xFF19) || (c >= 0xFF21 && c <= 0xFF3A) || (c >= 0xFF41 && c <= 0xFF5A);
  }
  if (c >= 0xFFE0 && c <= 0xFFEF) return false;
  if (c >= 0x1F000 && c <= 0x1FAFF) return false;                 // emoji and pictographs
  return true;
}

/// Python's str.split() with no argument.
inline std::vector<std::u32string> py_split(std::u32string_view s) {
  std::vector<std::u32string> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && py_isspace(s[i])) ++i;
    const std::size_t start = i;
    while (i < s.size() && !py_isspace(s[i])) ++i;
    if (i > start) out.emplace_back(s.substr(start, i - start));
  }
  return out;
}

inline double fmeasure(double precision, double recall) {
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

/// Length of the longest common subsequence, two rows of the usual table.
template <class Seq>
std::size_t lcs_length(const Seq& a, const Seq& b) {
  if (a.empty() || b.empty()) return 0;
  std::vector<std::uint32_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

/// Token ids: the same string gets the same id across everything scored with one Vocab.
template <class Str>
class Vocab {
 public:
  int id(const Str& token) { return ids_.try_emplace(token, static_cast<int>(ids_.size())).first->second; }
  std::vector<int> ids(const std::vector<Str>& tokens) {
    std::vector<int> out;
    out.reserve(tokens.size());
    for (const auto& t : tokens) out.push_back(id(t));
    return out;
  }

 private:
  std::unordered_map<Str, int> ids_;
};

/// Multiset of the n-grams of tokens (n-grams as vectors of ids).
inline std::map<std::vector<int>, int> ngram_counts(const std::vector<int>& tokens, std::size_t n) {
  std::map<std::vector<int>, int> counts;
  for (std::size_t i = 0; i + n <= tokens.size(); ++i) ++counts[std::vector<int>(tokens.begin() + i, tokens.begin() + i + n)];
  return counts;
}

/// Sum over n-grams of min(count in a, count in b).
inline int ngram_overlap(const std::map<std::vector<int>, int>& a, const std::map<std::vector<int>, int>& b) {
  int overlap = 0;
  for (const auto& [gram, count] : a) {
    if (auto it = b.find(gram); it != b.end()) overlap += std::min(count, it->second);
  }
  return overlap;
}

}  // namespace detail

}  // namespace simcalkv::eval
