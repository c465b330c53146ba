// simcalkv-eval: the scores that LongBench, RULER and the summarisation / translation literature report, computed
// per (prediction, reference) in C++ with nothing beyond the standard library. Every score is in [0, 1].
//
// Text is UTF-8 and is read as Python 3 reads it into a str: one code point at a time, with bytes that are not
// valid UTF-8 kept as the "surrogateescape" code points U+DC80..U+DCFF (so nothing is lost, nothing is undefined,
// and such bytes are neither letters, digits nor spaces). The reference implementations are Python; where they call
// str.lower(), str.split(), str.isspace() or the regex class \w, metrics/text.hpp does the same with these rules:
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
//
// The metrics live one family per header under metrics/; this header is their registry: names to
// metrics, and score() against several references.
#pragma once

#include "metrics/accuracy.hpp"
#include "metrics/bleu.hpp"
#include "metrics/porter.hpp"
#include "metrics/qa.hpp"
#include "metrics/rouge.hpp"
#include "metrics/text.hpp"

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
