// The policy lists every tool takes (--kv_method): one rule for splitting them, so that a spec
// with several options means the same thing to simcalkv-eval, -fidelity and -demo.
#pragma once

#include "flags.hpp"

#include <string>
#include <vector>

namespace simcalkv::tools {

/// Splits a list of policy specs. ';' always separates specs; ',' separates them too, except that a piece shaped
/// key=value (an '=' before any ':') continues the previous spec's options, so
/// "SimCalKV:bias=log_count,search=local:64,SnapKV" is two specs. Empty items are refused; `flag` names the
/// option in the message.
inline std::vector<std::string> split_policy_specs(const std::string& flag, const std::string& text) {
  std::vector<std::string> out;
  auto take = [&](const std::string& raw) {
    const auto a = raw.find_first_not_of(" \t"), b = raw.find_last_not_of(" \t");
    if (a == std::string::npos) throw UsageError(flag + " has an empty item in '" + text + "'");
    const std::string piece = raw.substr(a, b - a + 1);
    const auto eq = piece.find('='), colon = piece.find(':');
    const bool option = eq != std::string::npos && (colon == std::string::npos || eq < colon);
    if (!option) {
      out.push_back(piece);
    } else if (out.empty()) {
      throw UsageError(flag + ": '" + piece + "' is an option with no method before it");
    } else {
      out.back() += (out.back().find(':') == std::string::npos ? ":" : ",") + piece;
    }
  };
  std::string cur;
  for (char c : text) {
    if (c == ',' || c == ';') {
      take(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  take(cur);
  return out;
}

}  // namespace simcalkv::tools
