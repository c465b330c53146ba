// simcalkv-eval: the scores that LongBench, RULER and the summarisation / translation literature report, computed
// per (prediction, reference) in C++ with nothing beyond the standard library. Every score is in [0, 1].
//
// Text is UTF-8 and is read as Python 3 reads it into a str: one code point at a time, with bytes that are not
// valid UTF-8 kept as the "surrogateescape" code points U+DC80..U+DCFF (so nothing is lost, nothing is undefined,
// and such bytes are neither letters, digits nor spaces). The reference implementations are Python; where they call
// str.lower(), str.split(), str.isspace() or the regex class \w, this file does the same with these rules:
//   * lower()   ASCII, Latin-1, Latin Extended-A, the pinyin vowels of Latin Extended-B (U+01CD..U+01DC), Latin
//               Extended Additional, Greek, Cyrillic, Armenian, fullwidth A-Z and the Kelvin / Angstrom / Ohm signs,
//               with U+0130 (capital I with dot) becoming "i" + U+0307 as in Python. Not done: other scripts' cases
//               and Greek final sigma (Python turns a word-final capital sigma into U+03C2, this file into U+03C3).
//   * split()   on exactly the code points for which Python's str.isspace() is true.
//   * \w        ASCII letters, digits and '_', and every non-ASCII code point except: Latin-1 punctuation and
//               symbols (U+00A1..U+00BF less the numeric and letter ones ª ² ³ µ ¹ º ¼ ½ ¾, and × ÷), combining
//               marks U+0300..U+036F and U+20D0..U+20FF, spaces, general punctuation U+2000..U+206F, currency
//               symbols, arrows / math operators / technical symbols U+2190..U+23FF, box drawing .. dingbats
//               U+2500..U+27BF, U+27C0..U+2BFF, supplemental punctuation U+2E00..U+2E7F, CJK symbols and
//               punctuation (U+3000..U+3004, U+3008..U+3020, U+3030, U+303D..U+303F, U+30A0, U+30FB), variation
//               selectors, CJK compatibility / small forms U+FE10..U+FE6F, fullwidth punctuation, private use,
//               surrogate escapes and emoji / pictographs U+1F000..U+1FAFF. That is Python's \w (str.isalnum() or
//               '_') up to rare symbol and number code points outside these blocks.
//
// The metrics, each against one reference (score() below takes several):
//
// rouge()  Google's rouge-score (rouge_scorer.RougeScorer with its DefaultTokenizer): tokens are the runs of
//          [a-z0-9] of the lowercased text (every other code point separates); with use_stemmer, tokens longer
//          than 3 characters go through porter_stem(). ROUGE-N F1 = 2PR/(P+R) on the multiset overlap of n-grams
//          (P = overlap / prediction n-grams, R = overlap / reference n-grams); ROUGE-L uses the longest common
//          subsequence length instead of the overlap; ROUGE-Lsum splits both texts into sentences on '\n' (empty
//          pieces dropped) and counts, for each reference sentence, the union of the LCS positions it shares with
//          every prediction sentence (one LCS per pair, read back exactly as rouge-score's table walk does),
//          each token counted at most as often as it occurs on both sides (ROUGE 1.5.5 summary-level LCS).
//          Every F-measure is 0 when either side has no token.
// porter_stem()  nltk's PorterStemmer() in its default NLTK_EXTENSIONS mode, on code points: the irregular forms
//          (skies -> sky, dying -> die, news, proceed, ...), words of 1-2 characters returned lowercased, the
//          departures in steps 1a, 1b, 1c, 2 (bli -> ble, alli handled first, fulli, logi with the 'l' kept in the
//          measured stem) and the 2-letter *o. Also as nltk: the irregular-form table is looked up with the word as
//          given (so "Skies" -> "ski" but "skies" -> "sky"), and a stem ending in the two characters "*d" counts
//          as a double consonant in step 1b ("a*ded" -> "ad"). Deviation: lowercasing is lower() above.
// qa_f1()  LongBench qa_f1_score: normalize_answer (lowercase; drop the 32 ASCII punctuation characters of
//          Python's string.punctuation; replace every whole \w-word "a", "an", "the" by a space; split on
//          whitespace), then token F1 on the multiset overlap (0 when nothing overlaps, so 0 when both are empty).
// qa_f1_zh()  LongBench qa_f1_zh_score without jieba. Segmentation here: a run of ASCII letters and digits is one
//          token, extended by '.' + digits when a '.' and a digit follow it ("3.5%" -> "3.5", "v1.2.3" -> "v1.2",
//          ".", "3" -- what jieba's fallback regex does); whitespace separates; every other code point is a token
//          of its own. Each token is then normalised as normalize_zh_answer does (lowercase, drop
//          string.punctuation and LongBench's Chinese punctuation list -- which has "》" but not "《" -- and
//          whitespace) and dropped when empty; F1 as qa_f1. Deviation: jieba groups Han characters into
//          dictionary / HMM words ("红楼梦" is one token there, three here); outside Han text the two agree
//          (checked with jieba 0.42.1: ASCII words, numbers, "café" -> "caf" "é", Greek or fullwidth letters one
//          per token, brackets) except where jieba's dictionary has an ASCII entry glued to other letters
//          ("xC++" is "x", "C++" there, "xc" here).
// exact_match()  1 when normalize_answer (as in qa_f1) gives the same token sequence, else 0 (so two texts with
//          no token after normalisation match).
// accuracy()  Multiple choice, defined here (LongBench and RULER have no such metric). The reference label is the
//          reference lowercased, stripped of whitespace and of leading '(' '[' and trailing ')' ']' '.' ':'
//          ("(B)", "B.", " b " all give "b"); an empty label scores 0. The prediction is lowercased; its first
//          choice starts after leading whitespace and decoration (* " ' ` ( [ and the curly quotes U+2018
//          U+201C). It scores 1 when that first choice starts with the label and the label is not followed by a
//          \w character ("B) Paris", "(b).", "**B**" match "B"; "Because" and "BA" do not). When it does not,
//          one answer preamble is skipped -- "the correct answer is", "the correct answer", "the answer is",
//          "the answer", "correct answer is", "correct answer", "answer is" or "answer", as a whole word, then
//          optional ':' / whitespace / decoration -- and the same test is made once more ("Answer: (B)", "The
//          answer is B."). Only the first choice counts: "A or B" against "B" scores 0.
// string_match_all() / string_match_part()  RULER: [lower(ref) is a substring of lower(pred)] averaged over the
//          references / the max over them (an empty reference is a substring of everything). RULER reports the
//          mean over samples x 100 rounded to 2 decimals; these are the per-sample values in [0, 1].
// bleu()   sacrebleu's sentence_bleu() defaults (sacrebleu 2.x): the hypothesis and reference are right-stripped
//          and tokenised by the "13a" tokenizer (mteval-v13a: "<skipped>" and "-\n" removed, '\n' -> ' ', the
//          entities &quot; &amp; &lt; &gt; decoded, then the 13a regexes: the ASCII symbols {|}~[\]^_`!"#$%&()*+
//          :;<=>?@/ split off, '.' and ',' split off unless between digits, '-' split off after a digit), case
//          kept. Modified n-gram precisions p_n = matched / hypothesis n-grams for n = 1..4 with "exp"
//          smoothing (the k-th order with no match gets 1 / (2^k * hypothesis n-grams)) and effective order
//          (orders with no hypothesis n-gram are left out of the geometric mean); brevity penalty
//          exp(1 - r/c) when the hypothesis has c < r tokens. 0 when no unigram matches, and 0 for an empty
//          hypothesis. Equal to sacrebleu's score / 100.
// code_sim()  LongBench code_sim_score: leading '\n' of the prediction removed, then its first '\n'-separated line
//          that contains none of '`', '#', "//" (the empty string if none), compared with fuzzywuzzy's
//          fuzz.ratio as installed with python-Levenshtein: 1 if the two strings are equal, else 0 if either is
//          empty, else Levenshtein.ratio = (|a| + |b| - d) / (|a| + |b|) with d the insert/delete edit distance
//          (= 2 * LCS / (|a| + |b|)), in code points, rounded to a whole percent half to even as Python's round()
//          does, divided by 100. No whitespace is stripped and case is kept, as there. (fuzzywuzzy without
//          python-Levenshtein uses difflib's matching blocks instead, which can differ by a few percent.)
//
// score() takes the max over the references for every metric but string_match_*, which use them all, as LongBench
// and RULER do; an empty reference list throws std::invalid_argument.
//
// Cost: ROUGE-L/Lsum, code_sim and the LCS behind them are O(|a| |b|) time; ROUGE-Lsum keeps one
// (sentence x sentence) table of 32-bit entries at a time (a 1000 x 1000-token pair of single-line texts: 4 MB).
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

/// F-measures of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum, each in [0, 1].
struct RougeScores {
  double rouge1 = 0, rouge2 = 0, rougeL = 0, rougeLsum = 0;
};

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

// ------------------------------------------------------------------------------------------------ Porter stemmer

namespace porter {

using Word = std::u32string;
using View = std::u32string_view;

inline bool is_vowel(char32_t c) { return c == U'a' || c == U'e' || c == U'i' || c == U'o' || c == U'u'; }

/// Porter's consonant test at position i: not a vowel, and a 'y' only when first or after a vowel. Iterative over a
/// run of y's (each flips the one before it).
inline bool consonant(View w, std::size_t i) {
  std::size_t j = i;
  while (j > 0 && w[j] == U'y') --j;
  const bool base = w[j] == U'y' ? true : !is_vowel(w[j]);  // w[j] == 'y' only when j == 0
  return ((i - j) % 2 == 0) ? base : !base;
}

/// m in [C](VC)^m[V]: the number of vowel-to-consonant changes.
inline int measure(View w) {
  int m = 0;
  bool prev_consonant = true;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const bool c = is_vowel(w[i]) ? false : (w[i] == U'y' ? (i == 0 ? true : !prev_consonant) : true);
    if (c && i > 0 && !prev_consonant) ++m;
    prev_consonant = c;
  }
  return m;
}

inline bool contains_vowel(View w) {
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (!consonant(w, i)) return true;
  }
  return false;
}

inline bool ends_double_consonant(View w) {
  return w.size() >= 2 && w[w.size() - 1] == w[w.size() - 2] && consonant(w, w.size() - 1);
}

/// *o: ends consonant-vowel-consonant with the last not w, x or y; or (NLTK) is exactly vowel-consonant.
inline bool ends_cvc(View w) {
  const std::size_t n = w.size();
  if (n >= 3 && consonant(w, n - 3) && !consonant(w, n - 2) && consonant(w, n - 1) && w[n - 1] != U'w' &&
      w[n - 1] != U'x' && w[n - 1] != U'y') {
    return true;
  }
  return n == 2 && !consonant(w, 0) && consonant(w, 1);
}

inline bool ends_with(View w, View suffix) { return w.size() >= suffix.size() && w.substr(w.size() - suffix.size()) == suffix; }

inline Word stem_of(View w, View suffix) { return Word(w.substr(0, w.size() - suffix.size())); }

struct Rule {
  View suffix, replacement;
};

/// nltk's rule lists: the first rule whose suffix the word ends with decides, whether its condition holds or not.
template <class Cond>
Word apply_rules(const Word& w, std::span<const Rule> rules, Cond condition) {
  for (const Rule& r : rules) {
    if (!ends_with(w, r.suffix)) continue;
    Word stem = stem_of(w, r.suffix);
    if (!condition(View(stem), r.suffix)) return w;
    return stem + Word(r.replacement);
  }
  return w;
}

inline Word step1a(const Word& w) {
  if (ends_with(w, U"ies") && w.size() == 4) return stem_of(w, U"ies") + U"ie";
  static constexpr Rule rules[] = {{U"sses", U"ss"}, {U"ies", U"i"}, {U"ss", U"ss"}, {U"s", U""}};
  return apply_rules(w, rules, [](View, View) { return true; });
}

inline Word step1b(const Word& w) {
  if (ends_with(w, U"ied")) return stem_of(w, U"ied") + (w.size() == 4 ? U"ie" : U"i");
  if (ends_with(w, U"eed")) {
    Word stem = stem_of(w, U"eed");
    return measure(stem) > 0 ? stem + U"ee" : w;
  }
  Word s;
  if (ends_with(w, U"ed") && contains_vowel(View(w).substr(0, w.size() - 2))) {
    s = stem_of(w, U"ed");
  } else if (ends_with(w, U"ing") && contains_vowel(View(w).substr(0, w.size() - 3))) {
    s = stem_of(w, U"ing");
  } else {
    return w;
  }
  if (ends_with(s, U"at") || ends_with(s, U"bl") || ends_with(s, U"iz")) return s + U"e";
  // nltk's "*d" rule: a double consonant -- or, through its suffix test, the literal characters "*d" -- loses one
  // letter unless it is l, s or z. s.back() is a consonant letter here in the first case and 'd' in the second.
  if (ends_double_consonant(s) || ends_with(s, U"*d")) {
    const char32_t last = s.back();
    if (last == U'l' || last == U's' || last == U'z') return s;
    return s.substr(0, s.size() - 2) + last;
  }
  if (measure(s) == 1 && ends_cvc(s)) return s + U"e";
  return s;
}

inline Word step1c(const Word& w) {
  if (!ends_with(w, U"y")) return w;
  Word stem = stem_of(w, U"y");
  if (stem.size() > 1 && consonant(stem, stem.size() - 1)) return stem + U"i";
  return w;
}

inline Word step2(const Word& w) {
  if (ends_with(w, U"alli") && measure(View(w).substr(0, w.size() - 4)) > 0) return step2(stem_of(w, U"alli") + U"al");
  static constexpr Rule rules[] = {
      {U"ational", U"ate"}, {U"tional", U"tion"}, {U"enci", U"ence"},   {U"anci", U"ance"},  {U"izer", U"ize"},
      {U"bli", U"ble"},     {U"alli", U"al"},     {U"entli", U"ent"},   {U"eli", U"e"},      {U"ousli", U"ous"},
      {U"ization", U"ize"}, {U"ation", U"ate"},   {U"ator", U"ate"},    {U"alism", U"al"},   {U"iveness", U"ive"},
      {U"fulness", U"ful"}, {U"ousness", U"ous"}, {U"aliti", U"al"},    {U"iviti", U"ive"},  {U"biliti", U"ble"},
      {U"fulli", U"ful"},   {U"logi", U"log"}};
  return apply_rules(w, rules, [&w](View stem, View suffix) {
    // logi -> log keeps the 'l' in the stem whose measure is taken (geology -> geolog).
    if (suffix == U"logi") return measure(View(w).substr(0, w.size() - 3)) > 0;
    return measure(stem) > 0;
  });
}

inline Word step3(const Word& w) {
  static constexpr Rule rules[] = {{U"icate", U"ic"}, {U"ative", U""}, {U"alize", U"al"}, {U"iciti", U"ic"},
                                   {U"ical", U"ic"},  {U"ful", U""},   {U"ness", U""}};
  return apply_rules(w, rules, [](View stem, View) { return measure(stem) > 0; });
}

inline Word step4(const Word& w) {
  static constexpr Rule rules[] = {{U"al", U""},   {U"ance", U""}, {U"ence", U""}, {U"er", U""},    {U"ic", U""},
                                   {U"able", U""}, {U"ible", U""}, {U"ant", U""},  {U"ement", U""}, {U"ment", U""},
                                   {U"ent", U""},  {U"ion", U""},  {U"ou", U""},   {U"ism", U""},   {U"ate", U""},
                                   {U"iti", U""},  {U"ous", U""},  {U"ive", U""},  {U"ize", U""}};
  return apply_rules(w, rules, [](View stem, View suffix) {
    if (measure(stem) <= 1) return false;
    return suffix != U"ion" || stem.back() == U's' || stem.back() == U't';
  });
}

inline Word step5a(const Word& w) {
  if (!ends_with(w, U"e")) return w;
  Word stem = stem_of(w, U"e");
  const int m = measure(stem);
  if (m > 1 || (m == 1 && !ends_cvc(stem))) return stem;
  return w;
}

inline Word step5b(const Word& w) {
  if (ends_with(w, U"ll") && measure(View(w).substr(0, w.size() - 1)) > 1) return w.substr(0, w.size() - 1);
  return w;
}

inline const std::map<Word, Word>& irregular_forms() {
  static const std::map<Word, Word> forms = {
      {U"sky", U"sky"},         {U"skies", U"sky"},      {U"dying", U"die"},         {U"lying", U"lie"},
      {U"tying", U"tie"},       {U"news", U"news"},      {U"innings", U"inning"},    {U"inning", U"inning"},
      {U"outings", U"outing"},  {U"outing", U"outing"},  {U"cannings", U"canning"},  {U"canning", U"canning"},
      {U"howe", U"howe"},       {U"proceed", U"proceed"}, {U"exceed", U"exceed"},    {U"succeed", U"succeed"}};
  return forms;
}

inline Word stem(const Word& word) {
  const Word lowered = py_lower(word);
  const auto& forms = irregular_forms();
  if (auto it = forms.find(word); it != forms.end()) return it->second;
  if (word.size() <= 2) return lowered;
  Word w = step1a(lowered);
  w = step1b(w);
  w = step1c(w);
  w = step2(w);
  w = step3(w);
  w = step4(w);
  w = step5a(w);
  return step5b(w);
}

}  // namespace porter

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

// =========================================================================================================== API

/// Porter stem of one word, as nltk's PorterStemmer().stem(word) (see the top of this file).
inline std::string porter_stem(std::string_view word) {
  return detail::encode_utf8(detail::porter::stem(detail::decode_utf8(word)));
}

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

// ================================================================================================ metric registry

enum class Metric {
  rouge1, rouge2, rougeL, rougeLsum, qa_f1, qa_f1_zh, exact_match, accuracy, string_match_all, string_match_part,
  bleu, code_sim
};

namespace detail {
inline constexpr std::array<std::string_view, 12> metric_name_table = {
    "rouge1", "rouge2",   "rougeL",           "rougeLsum",         "qa_f1", "qa_f1_zh",
    "exact_match", "accuracy", "string_match_all", "string_match_part", "bleu",  "code_sim"};
}  // namespace detail

/// The names of every metric, in the enum's order (the names are the enumerators' names).
inline std::span<const std::string_view> metric_names() { return detail::metric_name_table; }

inline std::string_view metric_name(Metric m) {
  const auto i = static_cast<std::size_t>(m);
  if (i >= detail::metric_name_table.size()) throw std::invalid_argument("simcalkv::eval::metric_name: not a Metric");
  return detail::metric_name_table[i];
}

/// The metric of that (case-sensitive) name; std::invalid_argument listing the valid names for any other.
inline Metric metric_from_name(std::string_view name) {
  for (std::size_t i = 0; i < detail::metric_name_table.size(); ++i) {
    if (detail::metric_name_table[i] == name) return static_cast<Metric>(i);
  }
  std::string message = "unknown metric '" + std::string(name) + "'; valid metrics:";
  for (std::size_t i = 0; i < detail::metric_name_table.size(); ++i) {
    message += i ? ", " : " ";
    message += detail::metric_name_table[i];
  }
  throw std::invalid_argument(message);
}

/// Score of one prediction against its references: string_match_* use them all, every other metric takes the max
/// over them. Throws std::invalid_argument when references is empty.
inline double score(Metric m, std::string_view prediction, std::span<const std::string> references,
                    bool use_stemmer = true) {
  if (references.empty()) {
    throw std::invalid_argument("simcalkv::eval::score: no reference to score " + std::string(metric_name(m)) +
                                " against");
  }
  if (m == Metric::string_match_all) return string_match_all(prediction, references);
  if (m == Metric::string_match_part) return string_match_part(prediction, references);
  auto one = [&](std::string_view ref) {
    switch (m) {
      case Metric::rouge1: return rouge(prediction, ref, use_stemmer).rouge1;
      case Metric::rouge2: return rouge(prediction, ref, use_stemmer).rouge2;
      case Metric::rougeL: return rouge(prediction, ref, use_stemmer).rougeL;
      case Metric::rougeLsum: return rouge(prediction, ref, use_stemmer).rougeLsum;
      case Metric::qa_f1: return qa_f1(prediction, ref);
      case Metric::qa_f1_zh: return qa_f1_zh(prediction, ref);
      case Metric::exact_match: return exact_match(prediction, ref);
      case Metric::accuracy: return accuracy(prediction, ref);
      case Metric::bleu: return bleu(prediction, ref);
      case Metric::code_sim: return code_sim(prediction, ref);
      case Metric::string_match_all:
      case Metric::string_match_part: break;
    }
    throw std::invalid_argument("simcalkv::eval::score: not a Metric");
  };
  double best = 0.0;
  for (const auto& ref : references) best = std::max(best, one(ref));
  return best;
}

}  // namespace simcalkv::eval
