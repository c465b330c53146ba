// simcalkv-eval: the Hugging Face hub's split-slicing syntax, as `datasets.load_dataset(split=...)` reads it.
//
//   test            the whole split
//   test[:100]      the first 100 records          test[-10:]    the last 10
//   validation[10:20]                              train[:5%]    the first 5% (rounded to the closest record)
//   train[10%:20%](pct1_dropremainder)             rounding as datasets' ReadInstruction
//   train[:10]+test[:10]                           several parts, concatenated in order
//
// The same rules as datasets' ReadInstruction: the unit is % when either bound has %, negative bounds count from the
// end, bounds are clamped to the split, % bounds must lie in [-100, 100], and "closest" rounding is Python's round()
// (half to even) of bound * n / 100.
#pragma once

#include <cmath>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv::eval {

/// A split specification that does not parse, or a slice that cannot apply (the message says which).
class SplitError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SplitPart {
  std::string name;                 // "test", "validation", "train_xl", ...
  std::optional<long long> from;    // as written (may be negative)
  std::optional<long long> to;
  bool percent = false;
  bool sliced = false;              // had [..:..]
  enum class Rounding { closest, pct1_dropremainder } rounding = Rounding::closest;
};

struct Split {
  std::vector<SplitPart> parts;
  std::string text;  // as given

  /// The record indices [first, last) each part selects from a split of n records.
  struct Range {
    std::size_t first = 0, last = 0;
  };
  /// Applies part `i` to a split of `n` records.
  [[nodiscard]] Range range(std::size_t i, std::size_t n) const;
};

namespace detail_split {

inline bool is_word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

[[noreturn]] inline void bad(std::string_view whole, const std::string& why) {
  throw SplitError("bad --split '" + std::string(whole) + "': " + why +
                   " (expected NAME, NAME[FROM:TO] or NAME[FROM%:TO%], parts joined with '+', e.g. test, "
                   "test[:100], validation[10:20], train[:5%], test[-10:])");
}

inline std::optional<long long> parse_bound(std::string_view s, bool& pct, std::string_view whole) {
  if (s.empty()) return std::nullopt;
  if (s.back() == '%') {
    pct = true;
    s.remove_suffix(1);
  }
  std::size_t i = 0;
  if (i < s.size() && s[i] == '-') ++i;
  if (i == s.size()) bad(whole, "'" + std::string(s) + "' is not an integer bound");
  for (std::size_t k = i; k < s.size(); ++k)
    if (s[k] < '0' || s[k] > '9') bad(whole, "'" + std::string(s) + "' is not an integer bound");
  if (s.size() - i > 15) bad(whole, "bound '" + std::string(s) + "' is too large");
  return std::stoll(std::string(s));
}

inline SplitPart parse_part(std::string_view p, std::string_view whole) {
  SplitPart part;
  std::size_t i = 0;
  // name: \w+(\.\w+)*
  while (i < p.size() && (is_word_char(p[i]) || p[i] == '.')) ++i;
  part.name = std::string(p.substr(0, i));
  if (part.name.empty()) bad(whole, "a part has no split name");
  if (part.name.front() == '.' || part.name.back() == '.' || part.name.find("..") != std::string::npos)
    bad(whole, "split name '" + part.name + "' is not a word");
  std::string_view rest = p.substr(i);
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close == std::string_view::npos) bad(whole, "'[' without ']'");
    const std::string_view inside = rest.substr(1, close - 1);
    const auto colon = inside.find(':');
    if (colon == std::string_view::npos)
      bad(whole, "'[" + std::string(inside) + "]' has no ':' (a single record is written [i:i+1])");
    if (inside.find(':', colon + 1) != std::string_view::npos) bad(whole, "a slice has no step");
    bool from_pct = false, to_pct = false;
    part.from = parse_bound(inside.substr(0, colon), from_pct, whole);
    part.to = parse_bound(inside.substr(colon + 1), to_pct, whole);
    part.percent = from_pct || to_pct;
    part.sliced = true;
    rest = rest.substr(close + 1);
  }
  if (!rest.empty() && rest.front() == '(') {
    const auto close = rest.find(')');
    if (close == std::string_view::npos) bad(whole, "'(' without ')'");
    const std::string_view r = rest.substr(1, close - 1);
    if (r == "closest") part.rounding = SplitPart::Rounding::closest;
    else if (r == "pct1_dropremainder") part.rounding = SplitPart::Rounding::pct1_dropremainder;
    else bad(whole, "rounding '" + std::string(r) + "' is not closest or pct1_dropremainder");
    if (!part.percent) bad(whole, "a rounding applies to % slices only");
    rest = rest.substr(close + 1);
  }
  if (!rest.empty()) bad(whole, "unexpected '" + std::string(rest) + "' after '" + std::string(p.substr(0, p.size() - rest.size())) + "'");
  if (part.percent)
    for (const auto& b : {part.from, part.to})
      if (b && (*b < -100 || *b > 100)) bad(whole, "percent bounds must lie in [-100, 100]");
  return part;
}

}  // namespace detail_split

/// Parses a split specification; throws SplitError naming the problem.
inline Split parse_split(std::string_view text) {
  Split s;
  s.text = std::string(text);
  std::string compact;
  for (char c : text)
    if (c != ' ' && c != '\t') compact += c;
  if (compact.empty()) detail_split::bad(text, "empty");
  std::size_t start = 0;
  while (true) {
    const auto plus = compact.find('+', start);
    const std::string_view p = std::string_view(compact).substr(start, plus == std::string::npos ? std::string::npos : plus - start);
    if (p.empty()) detail_split::bad(text, "empty part around '+'");
    s.parts.push_back(detail_split::parse_part(p, text));
    if (plus == std::string::npos) break;
    start = plus + 1;
  }
  return s;
}

inline Split::Range Split::range(std::size_t i, std::size_t n) const {
  const SplitPart& p = parts.at(i);
  const auto N = static_cast<long long>(n);
  auto to_abs = [&](long long b) -> long long {
    if (!p.percent) return b;
    if (p.rounding == SplitPart::Rounding::closest)
      return static_cast<long long>(std::nearbyint(static_cast<double>(b) * static_cast<double>(N) / 100.0));
    if (N < 100)
      throw SplitError("split '" + text + "': pct1_dropremainder rounding needs at least 100 records, the split has " +
                       std::to_string(N));
    return b * (N / 100);
  };
  long long from = p.from ? to_abs(*p.from) : 0;
  long long to = p.to ? to_abs(*p.to) : N;
  if (from < 0) from = std::max(N + from, 0LL);
  if (to < 0) to = std::max(N + to, 0LL);
  from = std::min(from, N);
  to = std::min(to, N);
  Range r;
  r.first = static_cast<std::size_t>(from);
  r.last = static_cast<std::size_t>(std::max(from, to));
  return r;
}

}  // namespace simcalkv::eval
