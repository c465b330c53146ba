// simcalkv-eval metrics: the Porter stemmer, as nltk's PorterStemmer (see metrics.hpp for the rules every metric follows).
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

}  // namespace detail

/// Porter stem of one word, as nltk's PorterStemmer().stem(word) (see the top of this file).
inline std::string porter_stem(std::string_view word) {
  return detail::encode_utf8(detail::porter::stem(detail::decode_utf8(word)));
}

}  // namespace simcalkv::eval
