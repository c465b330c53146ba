// The command line every simcalkv tool shares, so that the same thing has the same name everywhere
// (the paper's --model_name, --kv_method, --compress_ratio) and every tool answers alike:
//
//   * names are canonical with underscores; --dashed-spellings and --flag=value are accepted too;
//   * --help / -h prints a line per flag (with its default) on stdout and the tool exits 0;
//   * a usage error prints "prog: error: MESSAGE" and a pointer to --help on stderr, exit status 2;
//   * an unknown flag is answered with the nearest known one ("did you mean --compress_ratio?");
//   * numbers are checked whole (no "3x", no NaN/Inf) and against a range printed as users write it,
//     "[0, 1)", ">= 1"; list items may not be empty; a flag given twice is refused unless repeatable.
//
// A tool declares its flags over its own variables (defaults are the variables' initial values) and
// calls parse(); nothing here knows any tool.
#pragma once

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace simcalkv::tools {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The shortest text that reads back as the same double: 0.5, 1, 1e+06.
inline std::string format_number(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

/// A closed, open or half-open interval of allowed values, printed the way a user would write it.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;

  bool contains(double x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  std::string text() const {
    const bool lo_inf = std::isinf(lo), hi_inf = std::isinf(hi);
    if (lo_inf && hi_inf) return "any number";
    if (hi_inf) return std::string(lo_open ? "> " : ">= ") + format_number(lo);
    if (lo_inf) return std::string(hi_open ? "< " : "<= ") + format_number(hi);
    return std::string(lo_open ? "(" : "[") + format_number(lo) + ", " + format_number(hi) + (hi_open ? ")" : "]");
  }
  /// "must be >= 1" / "must be in [0, 1)": how the range reads after a flag's name.
  std::string requirement() const {
    return (std::isinf(lo) || std::isinf(hi) ? "must be " : "must be in ") + text();
  }
};

inline Range any_number() { return {}; }
inline Range at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false}; }
inline Range above(double lo) { return {lo, std::numeric_limits<double>::infinity(), true, false}; }
inline Range closed(double lo, double hi) { return {lo, hi, false, false}; }
inline Range half_open(double lo, double hi) { return {lo, hi, false, true}; }  // [lo, hi)
inline Range left_open(double lo, double hi) { return {lo, hi, true, false}; }  // (lo, hi]

namespace detail_flags {

inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

inline std::string canonical(std::string_view name) {
  std::string s(name);
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

/// Greedy word wrap of `text` to `width` columns; continuation lines start with `indent` spaces.
inline std::string wrap(const std::string& text, std::size_t first_column, std::size_t indent, std::size_t width) {
  std::string out;
  std::size_t column = first_column;
  std::istringstream words(text);
  std::string word;
  bool first = true;
  while (words >> word) {
    if (!first && column + 1 + word.size() > width) {
      out += '\n';
      out.append(indent, ' ');
      column = indent;
    } else if (!first) {
      out += ' ';
      ++column;
    }
    out += word;
    column += word.size();
    first = false;
  }
  return out;
}

}  // namespace detail_flags

/// Parses one number of type T from the whole of `text`; `what` names it in the error ("--window").
template <class T>
T parse_number(const std::string& what, const std::string& text, const Range& range = any_number()) {
  static_assert(std::is_arithmetic_v<T>);
  T out{};
  bool ok = !text.empty();
  if (ok) {
    if constexpr (std::is_floating_point_v<T>) {
      // strtod accepts "+0.5" and "1e-3" as users write them; "nan" and "inf" are refused below.
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      ok = end == text.c_str() + text.size() && !std::isspace(static_cast<unsigned char>(text[0]));
      if (ok && !std::isfinite(v)) throw UsageError(what + " expects a finite number, got '" + text + "'");
      out = static_cast<T>(v);
    } else {
      const char* b = text.data();
      if (*b == '+') ++b;
      const auto r = std::from_chars(b, text.data() + text.size(), out);
      if (r.ec == std::errc::result_out_of_range)
        throw UsageError(what + " " + (std::isinf(range.hi) ? "is out of range" : range.requirement()) + ", got " + text);
      ok = r.ec == std::errc() && r.ptr == text.data() + text.size();
    }
  }
  if (!ok)
    throw UsageError(what + " expects " + (std::is_integral_v<T> ? "a whole number" : "a number") + ", got '" + text + "'");
  if (!range.contains(static_cast<double>(out))) throw UsageError(what + " " + range.requirement() + ", got " + text);
  return out;
}

/// Splits on commas; empty items (",,", a trailing comma) are refused rather than skipped.
inline std::vector<std::string> split_commas(const std::string& what, const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  auto flush = [&] {
    const auto a = cur.find_first_not_of(" \t"), b = cur.find_last_not_of(" \t");
    if (a == std::string::npos) throw UsageError(what + " has an empty item in '" + text + "'");
    out.push_back(cur.substr(a, b - a + 1));
    cur.clear();
  };
  for (char c : text) {
    if (c == ',') flush();
    else cur += c;
  }
  flush();
  return out;
}

class Flags {
 public:
  Flags(std::string program, std::string synopsis, std::string about)
      : program_(std::move(program)), synopsis_(std::move(synopsis)), about_(std::move(about)) {}

  const std::string& program() const { return program_; }

  /// A flag with a text value.
  Flags& text(const std::string& name, std::string* out, const std::string& meta, const std::string& help) {
    return add(name, meta, help, out->empty() ? "" : *out, [out](const std::string& v) { *out = v; });
  }

  /// A number of T's type, checked against `range`.
  template <class T>
  Flags& number(const std::string& name, T* out, Range range, const std::string& meta, const std::string& help) {
    const std::string flag = "--" + name;
    return add(name, meta, with_range(help, range), format_number(static_cast<double>(*out)),
               [out, range, flag](const std::string& v) { *out = parse_number<T>(flag, v, range); });
  }

  /// One of a fixed set of words.
  Flags& choice(const std::string& name, std::string* out, std::vector<std::string> choices, const std::string& help) {
    std::string meta;
    for (const auto& c : choices) meta += (meta.empty() ? "" : "|") + c;
    const std::string flag = "--" + name;
    return add(name, meta, help, *out, [out, choices, flag](const std::string& v) {
      if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
        std::string list;
        for (std::size_t i = 0; i < choices.size(); ++i)
          list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
        throw UsageError(flag + " must be " + list + ", got '" + v + "'");
      }
      *out = v;
    });
  }

  /// Comma-separated numbers, each in `range`; repeated values are dropped when `unique`.
  template <class T>
  Flags& number_list(const std::string& name, std::vector<T>* out, Range range, const std::string& meta,
                     const std::string& help, bool unique = true) {
    std::string shown;
    for (const T& x : *out) {
      if (!shown.empty()) shown += ',';
      shown += format_number(static_cast<double>(x));
    }
    const std::string flag = "--" + name;
    return add(name, meta, with_range(help, range), shown, [out, range, flag, unique](const std::string& v) {
      out->clear();
      for (const auto& item : split_commas(flag, v)) {
        const T x = parse_number<T>(flag, item, range);
        if (!unique || std::find(out->begin(), out->end(), x) == out->end()) out->push_back(x);
      }
    });
  }

  /// A list of words, split by `split` (commas by default).
  Flags& text_list(const std::string& name, std::vector<std::string>* out, const std::string& meta,
                   const std::string& help,
                   std::function<std::vector<std::string>(const std::string&)> split = nullptr) {
    std::string shown;
    for (const auto& x : *out) shown += (shown.empty() ? "" : ",") + x;
    const std::string flag = "--" + name;
    if (!split) split = [flag](const std::string& v) { return split_commas(flag, v); };
    return add(name, meta, help, shown, [out, split](const std::string& v) { *out = split(v); });
  }

  /// A switch: takes no value; sets *out to `when_given`.
  Flags& flag(const std::string& name, bool* out, const std::string& help, bool when_given = true) {
    Spec s = spec(name, "", help, "");
    s.is_switch = true;
    s.apply = [out, when_given](const std::string&) { *out = when_given; };
    specs_.push_back(std::move(s));
    return *this;
  }

  /// A flag whose value the tool interprets itself (throw UsageError for a bad one).
  Flags& custom(const std::string& name, const std::string& meta, const std::string& help, const std::string& shown_default,
                std::function<void(const std::string&)> apply) {
    return add(name, meta, help, shown_default, std::move(apply));
  }

  /// Another spelling of the flag declared last (kept for old command lines; listed in its help line).
  Flags& alias(const std::string& other) {
    specs_.back().aliases.push_back(detail_flags::canonical(other));
    return *this;
  }
  /// The flag declared last may be given more than once (each value is applied in turn).
  Flags& repeatable() {
    specs_.back().repeatable = true;
    return *this;
  }
  /// Replaces the default the help line shows for the flag declared last.
  Flags& shown_default(const std::string& text) {
    specs_.back().shown_default = text;
    return *this;
  }
  /// A flag that no longer exists; giving it fails with `message` (what to write instead).
  Flags& retired(const std::string& name, const std::string& message) {
    retired_.push_back({detail_flags::canonical(name), message});
    return *this;
  }
  /// A heading in the help text before the flags declared next.
  Flags& section(const std::string& title) {
    sections_.push_back({specs_.size(), title});
    return *this;
  }
  /// Text printed after the flags.
  Flags& epilog(const std::string& text) {
    epilog_ = text;
    return *this;
  }

  /// Applies the arguments (without argv[0]). Returns false when --help or -h was asked for: the caller prints
  /// help() on stdout and exits 0. Throws UsageError for anything it cannot accept.
  bool parse(const std::vector<std::string>& args) {
    given_.clear();
    for (std::size_t i = 0; i < args.size(); ++i) {
      const std::string& raw = args[i];
      if (raw == "-h" || raw == "--help") return false;
      if (raw.size() < 3 || raw.compare(0, 2, "--") != 0)
        throw UsageError("unexpected argument '" + raw + "' (options start with --)");
      std::string name = raw.substr(2), value;
      bool inline_value = false;
      if (const auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        inline_value = true;
      }
      const std::string key = detail_flags::canonical(name);
      for (const auto& r : retired_)
        if (r.name == key) throw UsageError("--" + name + " is gone: " + r.message);
      Spec* s = find(key);
      if (!s) throw UsageError("unknown option '--" + name + "'" + suggestion(key));
      if (given_.count(s->name) && !s->repeatable) throw UsageError("--" + s->name + " is given twice");
      given_.insert(s->name);
      if (s->is_switch) {
        if (inline_value) throw UsageError("--" + s->name + " takes no value");
        s->apply("");
        continue;
      }
      if (!inline_value) {
        if (i + 1 >= args.size()) throw UsageError("--" + s->name + " needs a value (" + s->meta + ")");
        value = args[++i];
      }
      s->apply(value);
    }
    return true;
  }
  bool parse(int argc, char** argv) { return parse(std::vector<std::string>(argv + 1, argv + argc)); }

  /// Whether the flag (canonical name) was on the command line of the last parse().
  bool given(const std::string& name) const { return given_.count(detail_flags::canonical(name)) != 0; }

  std::string help() const {
    constexpr std::size_t width = 100, column = 28;
    std::string out = "usage: " + program_ + (synopsis_.empty() ? "" : " " + synopsis_) + "\n";
    if (!about_.empty()) {
      out += '\n';
      out += detail_flags::wrap(about_, 0, 0, width);
      out += '\n';
    }
    std::size_t next_section = 0;
    if (sections_.empty() || sections_[0].before != 0) out += "\noptions:\n";
    for (std::size_t i = 0; i <= specs_.size(); ++i) {
      while (next_section < sections_.size() && sections_[next_section].before == i)
        out += "\n" + sections_[next_section++].title + ":\n";
      if (i == specs_.size()) break;
      const Spec& s = specs_[i];
      std::string head = "  --" + s.name + (s.meta.empty() ? "" : " " + s.meta);
      std::string body = s.help;
      if (!s.aliases.empty()) {
        body += " (also";
        for (const auto& a : s.aliases) body += " --" + a;
        body += ")";
      }
      if (!s.shown_default.empty()) body += " [" + s.shown_default + "]";
      if (head.size() + 2 > column) {
        out += head + "\n" + std::string(column, ' ') + detail_flags::wrap(body, column, column, width) + "\n";
      } else {
        out += head + std::string(column - head.size(), ' ') + detail_flags::wrap(body, column, column, width) + "\n";
      }
    }
    out += "  --help, -h                this text\n";
    out += "\nEvery flag may also be spelled with dashes (--compress-ratio) and given as --flag=value.\n";
    if (!epilog_.empty()) out += "\n" + epilog_ + (epilog_.back() == '\n' ? "" : "\n");
    return out;
  }

  /// The usual ending of a tool's main() on a UsageError: the message and a pointer to --help, status 2.
  int report(const std::exception& e) const {
    std::fprintf(stderr, "%s: error: %s\n(%s --help lists the options)\n", program_.c_str(), e.what(), program_.c_str());
    return 2;
  }

 private:
  struct Spec {
    std::string name, meta, help, shown_default;
    std::vector<std::string> aliases;
    bool is_switch = false, repeatable = false;
    std::function<void(const std::string&)> apply;
  };
  struct Retired {
    std::string name, message;
  };
  struct Section {
    std::size_t before;
    std::string title;
  };

  static std::string with_range(const std::string& help, const Range& range) {
    if (std::isinf(range.lo) && std::isinf(range.hi)) return help;
    return help + (std::isinf(range.lo) || std::isinf(range.hi) ? ", " : ", in ") + range.text();
  }
  Spec spec(const std::string& name, const std::string& meta, const std::string& help, const std::string& shown) {
    const std::string key = detail_flags::canonical(name);
    if (find(key)) throw std::logic_error("flag --" + key + " declared twice");
    return Spec{key, meta, help, shown, {}, false, false, nullptr};
  }
  Flags& add(const std::string& name, const std::string& meta, const std::string& help, const std::string& shown,
             std::function<void(const std::string&)> apply) {
    Spec s = spec(name, meta, help, shown);
    s.apply = std::move(apply);
    specs_.push_back(std::move(s));
    return *this;
  }
  Spec* find(const std::string& key) {
    for (auto& s : specs_) {
      if (s.name == key) return &s;
      for (const auto& a : s.aliases)
        if (a == key) return &s;
    }
    return nullptr;
  }
  std::string suggestion(const std::string& key) const {
    std::string best;
    std::size_t best_distance = std::max<std::size_t>(2, key.size() / 3) + 1;
    auto consider = [&](const std::string& candidate, const std::string& shown) {
      const std::size_t d = detail_flags::edit_distance(key, candidate);
      if (d < best_distance) best_distance = d, best = shown;
    };
    for (const auto& s : specs_) {
      consider(s.name, s.name);
      for (const auto& a : s.aliases) consider(a, s.name);
    }
    consider("help", "help");
    return best.empty() ? "" : " (did you mean --" + best + "?)";
  }

  std::string program_, synopsis_, about_, epilog_;
  std::vector<Spec> specs_;
  std::vector<Retired> retired_;
  std::vector<Section> sections_;
  std::set<std::string> given_;
};

}  // namespace simcalkv::tools
