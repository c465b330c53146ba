// simcalkv: parsing a policy's option string ("bias=log_count,search=local:64").
#pragma once

#include "simcalkv/error.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv {

inline std::string to_lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

inline std::string join(const std::vector<std::string>& items, std::string_view separator = ", ") {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i) out += separator;
    out += items[i];
  }
  return out;
}

/// Options of one policy. Keys are case-insensitive. Every getter records the key as known, so
/// finish() can reject keys the policy never asked for and list the ones it has.
class PolicyOptions {
 public:
  PolicyOptions(std::string policy, std::string_view text) : policy_(std::move(policy)) {
    std::size_t start = 0;
    while (start <= text.size() && !text.empty()) {
      const std::size_t end = std::min(text.find(',', start), text.size());
      const std::string_view item = text.substr(start, end - start);
      if (!item.empty()) {
        const auto eq = item.find('=');
        detail::require(eq != std::string_view::npos && eq > 0, ErrorCode::invalid_argument, policy_,
                        ": option '", item, "' is not of the form key=value");
        const std::string key = to_lower(item.substr(0, eq));
        detail::require(!values_.count(key), ErrorCode::invalid_argument, policy_, ": option '", key, "' given twice");
        values_[key] = std::string(item.substr(eq + 1));
      }
      start = end + 1;
    }
  }

  [[nodiscard]] const std::string& policy() const noexcept { return policy_; }
  [[nodiscard]] bool has(const std::string& key) {
    known_.insert(key);
    return values_.count(key) != 0;
  }

  std::string get_string(const std::string& key, const std::string& fallback) {
    return has(key) ? values_.at(key) : fallback;
  }
  /// One of `choices` (case-insensitive); an unknown value lists them.
  std::string get_choice(const std::string& key, const std::string& fallback, const std::vector<std::string>& choices) {
    if (!has(key)) return fallback;
    const std::string value = to_lower(values_.at(key));
    detail::require(std::find(choices.begin(), choices.end(), value) != choices.end(), ErrorCode::invalid_argument,
                    policy_, ": option ", key, "=", values_.at(key), " is not one of: ", join(choices));
    return value;
  }
  double get_double(const std::string& key, double fallback, double lo = -INFINITY, double hi = INFINITY) {
    if (!has(key)) return fallback;
    const std::string& text = values_.at(key);
    double value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    detail::require(ec == std::errc() && ptr == text.data() + text.size() && std::isfinite(value),
                    ErrorCode::invalid_argument, policy_, ": option ", key, "=", text, " is not a number");
    detail::require(value >= lo && value <= hi, ErrorCode::invalid_argument, policy_, ": option ", key, "=", text,
                    " is outside [", lo, ", ", hi, "]");
    return value;
  }
  long long get_int(const std::string& key, long long fallback, long long lo = 0, long long hi = 1LL << 40) {
    if (!has(key)) return fallback;
    const std::string& text = values_.at(key);
    long long value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    detail::require(ec == std::errc() && ptr == text.data() + text.size(), ErrorCode::invalid_argument, policy_,
                    ": option ", key, "=", text, " is not an integer");
    detail::require(value >= lo && value <= hi, ErrorCode::invalid_argument, policy_, ": option ", key, "=", text,
                    " is outside [", lo, ", ", hi, "]");
    return value;
  }
  bool get_bool(const std::string& key, bool fallback) {
    if (!has(key)) return fallback;
    const std::string v = to_lower(values_.at(key));
    if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
    if (v == "0" || v == "false" || v == "no" || v == "off") return false;
    detail::fail(ErrorCode::invalid_argument, policy_, ": option ", key, "=", values_.at(key), " is not a boolean");
  }

  /// Rejects any key no getter asked for.
  void finish() const {
    for (const auto& [key, value] : values_)
      if (!known_.count(key)) {
        std::vector<std::string> names(known_.begin(), known_.end());
        detail::fail(ErrorCode::invalid_argument, policy_, ": unknown option '", key, "'; options: ",
                     names.empty() ? std::string("(none)") : join(names));
      }
  }

 private:
  std::string policy_;
  std::map<std::string, std::string> values_;
  std::set<std::string> known_;
};

/// The options every protecting policy reads: sinks (first entries kept) and recent (last entries
/// kept; -1 the window's length), into an options struct with sink_tokens and recent_tokens.
template <class Options>
void read_protection(PolicyOptions& o, Options& options) {
  options.sink_tokens = static_cast<decltype(options.sink_tokens)>(
      o.get_int("sinks", static_cast<long long>(options.sink_tokens)));
  if constexpr (requires { options.recent_tokens; })
    options.recent_tokens = static_cast<int>(o.get_int("recent", options.recent_tokens, -1, 1LL << 30));
}

}  // namespace simcalkv
