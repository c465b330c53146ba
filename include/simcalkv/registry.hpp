// simcalkv: building a policy from a name and an option string, e.g.
// "SimCalKV:bias=log_count,search=local:64". Names are case-insensitive and spelled as in the
// paper's harness; unknown names and options are errors that list what exists.
#pragma once

#include "simcalkv/any_policy.hpp"
#include "simcalkv/policies/full.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policy_options.hpp"

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv {

struct PolicyEntry {
  std::string name;
  std::string summary;
  std::function<AnyPolicy(PolicyOptions&)> make;
};

namespace detail {

inline SimCalKVOptions read_simcalkv_options(PolicyOptions& o) {
  SimCalKVOptions s;
  s.sink_tokens = static_cast<std::size_t>(o.get_int("sinks", static_cast<long long>(s.sink_tokens)));
  s.recent_tokens = static_cast<int>(o.get_int("recent", s.recent_tokens, -1));
  const auto pooling = o.get_choice("pooling", "none", {"none", "max", "avg"});
  s.pooling = pooling == "max" ? kernels::Pooling::max : pooling == "avg" ? kernels::Pooling::avg : kernels::Pooling::none;
  s.pool_kernel = static_cast<int>(o.get_int("pool_kernel", s.pool_kernel, 1, 1025));
  // search=exact | local | local:RADIUS
  const std::string search = to_lower(o.get_string("search", "local"));
  const auto colon = search.find(':');
  const std::string mode = search.substr(0, colon);
  require(mode == "local" || mode == "exact", ErrorCode::invalid_argument, o.policy(), ": option search=", search,
          " is not one of: exact, local, local:RADIUS");
  s.search = mode == "exact" ? SimilaritySearch::exact : SimilaritySearch::local;
  if (colon != std::string::npos) {
    require(mode == "local", ErrorCode::invalid_argument, o.policy(), ": only local search takes a radius");
    PolicyOptions radius(o.policy(), "radius=" + search.substr(colon + 1));
    s.search_radius = static_cast<std::size_t>(radius.get_int("radius", 64, 1));
  }
  s.search_radius = static_cast<std::size_t>(o.get_int("radius", static_cast<long long>(s.search_radius), 1));
  s.similarity_threshold = static_cast<float>(o.get_double("threshold", -INFINITY, -INFINITY, 1.0));
  const auto bias = o.get_choice("bias", "bounded", {"bounded", "calibrated", "log_count", "none"});
  s.bias = bias == "calibrated"  ? BiasMode::calibrated
           : bias == "log_count" ? BiasMode::log_count
           : bias == "none"      ? BiasMode::none
                                 : BiasMode::bounded;
  s.merge_keys = o.get_bool("merge_keys", s.merge_keys);
  return s;
}

}  // namespace detail

/// Every registered policy, in a stable order.
inline const std::vector<PolicyEntry>& policy_registry() {
  static const std::vector<PolicyEntry> entries = [] {
    std::vector<PolicyEntry> e;
    e.push_back({"Full", "no compression", [](PolicyOptions&) { return AnyPolicy(Full{}); }});
    e.push_back({"SimCalKV",
                 "similarity-aware merging with bias calibration; options sinks, recent, pooling, pool_kernel, "
                 "search (exact|local[:R]), radius, threshold, bias (bounded|calibrated|log_count|none), merge_keys",
                 [](PolicyOptions& o) { return AnyPolicy(SimCalKV(detail::read_simcalkv_options(o))); }});
    // -- eviction policies and budget allocators (insert entries below this line) --
    // -- merging policies (insert entries below this line) --
    return e;
  }();
  return entries;
}

inline std::vector<std::string> policy_names() {
  std::vector<std::string> names;
  for (const auto& e : policy_registry()) names.push_back(e.name);
  return names;
}

/// Builds a policy from "Name" or "Name:key=value,key=value".
inline AnyPolicy make_policy(std::string_view spec) {
  const auto colon = spec.find(':');
  const std::string name(spec.substr(0, colon));
  const std::string_view options = colon == std::string_view::npos ? std::string_view{} : spec.substr(colon + 1);
  for (const auto& entry : policy_registry()) {
    if (to_lower(entry.name) != to_lower(name)) continue;
    PolicyOptions parsed(entry.name, options);
    AnyPolicy policy = entry.make(parsed);
    parsed.finish();
    return AnyPolicy(policy, std::string(spec));
  }
  detail::fail(ErrorCode::invalid_argument, "unknown policy '", name, "'; policies: ", join(policy_names()));
}

}  // namespace simcalkv
