// simcalkv: building a policy from a name and an option string, e.g.
// "SimCalKV:bias=log_count,search=local:64". Names are case-insensitive and spelled as in the
// paper's harness; unknown names and options are errors that list what exists.
//
// The registry instantiates every policy for every storage type: the costliest thing to compile in
// a program that includes it. A program that includes it from many files can compile it once:
// define SIMCALKV_COMPILED_REGISTRY for every file and add one file that defines
// SIMCALKV_REGISTRY_DEFINITION too and includes this header (the project's programs do that with
// src/registry.cpp, the simcalkv_registry target). Without the macro, everything here is inline.
#pragma once

#include "simcalkv/any_policy.hpp"
#include "simcalkv/policies/full.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policies/simcalkv_paper.hpp"
#include "simcalkv/policies/value_merging.hpp"
#include "simcalkv/policy_options.hpp"
// eviction policies and budget allocators
#include "simcalkv/policies/adakv.hpp"
#include "simcalkv/policies/expected_attention.hpp"
#include "simcalkv/policies/layer_scheduled.hpp"
#include "simcalkv/policies/pyramidkv.hpp"
#include "simcalkv/policies/h2o.hpp"
#include "simcalkv/policies/keydiff.hpp"
#include "simcalkv/policies/knorm.hpp"
#include "simcalkv/policies/pyramid_infer.hpp"
#include "simcalkv/policies/snapkv.hpp"
#include "simcalkv/policies/streaming_llm.hpp"
#include "simcalkv/policies/tova.hpp"
// merging policies
#include "simcalkv/policies/cam.hpp"
#include "simcalkv/policies/d2o.hpp"
#include "simcalkv/policies/interpolation.hpp"
#include "simcalkv/policies/keepkv.hpp"
#include "simcalkv/policies/kvmerger.hpp"

#include <optional>

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

#if defined(SIMCALKV_COMPILED_REGISTRY) && !defined(SIMCALKV_REGISTRY_DEFINITION)

/// Every registered policy, in a stable order (defined in the registry's own file).
const std::vector<PolicyEntry>& policy_registry();
std::vector<std::string> policy_names();
/// Builds a policy from "Name" or "Name:key=value,key=value".
AnyPolicy make_policy(std::string_view spec);

#else

#ifdef SIMCALKV_COMPILED_REGISTRY
#define SIMCALKV_REGISTRY_INLINE
#else
#define SIMCALKV_REGISTRY_INLINE inline
#endif

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

/// An inner policy a composition ("AdaKV+<Name>", "Merging+<Name>") accepts, and how to make the
/// composed policy from the options (the inner's plus the wrapper's: AdaKV's alpha, Merging's threshold...).
struct AdaKVInner {
  const char* name;
  AnyPolicy (*make)(PolicyOptions&);
};

template <class P, class Options>
AnyPolicy make_adakv(PolicyOptions& o, Options (*read)(PolicyOptions&)) {
  AdaKVOptions ada;
  ada.alpha = o.get_double("alpha", ada.alpha, 0.0, 1.0);
  return AnyPolicy(AdaKV<P>(P(read(o)), ada));
}

inline const std::vector<AdaKVInner>& adakv_inners() {
  static const std::vector<AdaKVInner> inners = {
      {"SimCalKV", [](PolicyOptions& o) { return make_adakv<SimCalKV>(o, &read_simcalkv_options); }},
      {"SnapKV", [](PolicyOptions& o) { return make_adakv<SnapKV>(o, &SnapKV::read_options); }},
      {"H2O", [](PolicyOptions& o) { return make_adakv<H2O>(o, &H2O::read_options); }},
      {"TOVA", [](PolicyOptions& o) { return make_adakv<TOVA>(o, &TOVA::read_options); }},
      {"KNorm", [](PolicyOptions& o) { return make_adakv<KNorm>(o, &KNorm::read_options); }},
      {"KeyDiff", [](PolicyOptions& o) { return make_adakv<KeyDiff>(o, &KeyDiff::read_options); }},
      {"ExpectedAttention",
       [](PolicyOptions& o) { return make_adakv<ExpectedAttention>(o, &ExpectedAttention::read_options); }},
      {"StreamingLLM", [](PolicyOptions& o) { return make_adakv<StreamingLLM>(o, &StreamingLLM::read_options); }},
      {"PyramidKV", [](PolicyOptions& o) { return make_adakv<PyramidKV>(o, &PyramidKV::read_options); }},
      {"PyramidInfer", [](PolicyOptions& o) { return make_adakv<PyramidInfer>(o, &PyramidInfer::read_options); }},
      {"KeepKV", [](PolicyOptions& o) { return make_adakv<KeepKV>(o, &KeepKV::read_options); }},
      {"CaM", [](PolicyOptions& o) { return make_adakv<CaM>(o, &CaM::read_options); }},
      {"KVMerger", [](PolicyOptions& o) { return make_adakv<KVMerger>(o, &KVMerger::read_options); }},
      {"D2O", [](PolicyOptions& o) { return make_adakv<D2O>(o, &D2O::read_options); }},
      {"LerpKV", [](PolicyOptions& o) { return make_adakv<LerpKV>(o, &LerpKV::read_options); }},
      {"SlerpKV", [](PolicyOptions& o) { return make_adakv<SlerpKV>(o, &SlerpKV::read_options); }},
      {"NlerpKV", [](PolicyOptions& o) { return make_adakv<NlerpKV>(o, &NlerpKV::read_options); }},
  };
  return inners;
}

/// A composed policy family, "<Prefix>+<Inner>[:options]": its prefix, the inners it takes, and
/// what the error says when the inner is not one of them.
struct Composition {
  const char* prefix;  // "AdaKV"
  const std::vector<AdaKVInner>& (*inners)();
  const char* refusal;  // "' is not a policy that takes per-head budgets; AdaKV composes with: "
};

inline AnyPolicy make_composed_of(const Composition& c, std::string_view inner, PolicyOptions& o) {
  for (const auto& entry : c.inners())
    if (to_lower(entry.name) == to_lower(inner)) return entry.make(o);
  std::vector<std::string> names;
  for (const auto& entry : c.inners()) names.push_back(entry.name);
  fail(ErrorCode::invalid_argument, c.prefix, "+", inner, ": '", inner, c.refusal, join(names));
}

/// "<Prefix>+<Name>[:options]" for any inner of the family; nullopt if `name` is not of that form.
inline std::optional<AnyPolicy> make_composition(const Composition& c, const std::string& name,
                                                 std::string_view options, std::string_view spec) {
  const std::string prefix = to_lower(c.prefix) + "+";
  if (to_lower(name).rfind(prefix, 0) != 0) return std::nullopt;
  const std::string inner = name.substr(prefix.size());
  std::string canonical = inner;
  for (const auto& entry : c.inners())
    if (to_lower(entry.name) == to_lower(inner)) canonical = entry.name;
  PolicyOptions parsed(std::string(c.prefix) + "+" + canonical, options);
  AnyPolicy policy = make_composed_of(c, inner, parsed);
  parsed.finish();
  return AnyPolicy(policy, std::string(spec));
}

inline const Composition adakv_composition{"AdaKV", &adakv_inners,
                                           "' is not a policy that takes per-head budgets; AdaKV composes with: "};

inline AnyPolicy make_adakv_of(std::string_view inner, PolicyOptions& o) {
  return make_composed_of(adakv_composition, inner, o);
}

/// "Merging+<Name>[:options]": kvpress's MergingPress around an eviction policy (its options plus
/// threshold, search, radius); nullopt if `name` is not of that form.
template <class P, class Options>
AnyPolicy make_merging(PolicyOptions& o, Options (*read)(PolicyOptions&)) {
  P inner(read(o));
  return AnyPolicy(ValueMerging<P>(std::move(inner), ValueMerging<P>::read_options(o)));
}

inline const std::vector<AdaKVInner>& merging_inners() {
  static const std::vector<AdaKVInner> inners = {
      {"SnapKV", [](PolicyOptions& o) { return make_merging<SnapKV>(o, &SnapKV::read_options); }},
      {"StreamingLLM", [](PolicyOptions& o) { return make_merging<StreamingLLM>(o, &StreamingLLM::read_options); }},
      {"H2O", [](PolicyOptions& o) { return make_merging<H2O>(o, &H2O::read_options); }},
      {"TOVA", [](PolicyOptions& o) { return make_merging<TOVA>(o, &TOVA::read_options); }},
      {"KNorm", [](PolicyOptions& o) { return make_merging<KNorm>(o, &KNorm::read_options); }},
      {"KeyDiff", [](PolicyOptions& o) { return make_merging<KeyDiff>(o, &KeyDiff::read_options); }},
      {"ExpectedAttention",
       [](PolicyOptions& o) { return make_merging<ExpectedAttention>(o, &ExpectedAttention::read_options); }},
      {"PyramidKV", [](PolicyOptions& o) { return make_merging<PyramidKV>(o, &PyramidKV::read_options); }},
      {"PyramidInfer", [](PolicyOptions& o) { return make_merging<PyramidInfer>(o, &PyramidInfer::read_options); }},
  };
  return inners;
}

inline const Composition merging_composition{
    "Merging", &merging_inners, "' is not an eviction policy Merging wraps; Merging composes with: "};

inline AnyPolicy make_merging_of(std::string_view inner, PolicyOptions& o) {
  return make_composed_of(merging_composition, inner, o);
}

}  // namespace detail

/// Every registered policy, in a stable order.
SIMCALKV_REGISTRY_INLINE const std::vector<PolicyEntry>& policy_registry() {
  static const std::vector<PolicyEntry> entries = [] {
    std::vector<PolicyEntry> e;
    e.push_back({"Full", "no compression", [](PolicyOptions&) { return AnyPolicy(Full{}); }});
    e.push_back({"SimCalKV",
                 "similarity-aware merging with bias calibration; options sinks, recent, pooling, pool_kernel, "
                 "search (exact|local[:R]), radius, threshold, bias (bounded|calibrated|log_count|none), merge_keys",
                 [](PolicyOptions& o) { return AnyPolicy(SimCalKV(detail::read_simcalkv_options(o))); }});
    e.push_back({"SimCalKV-paper",
                 "the SimCalKV paper code's rule: accumulated prefill attention, nothing protected, exact match at "
                 "cosine > 0, key (mean + kept) / 2, newest-query value weights, ln 2 logit bias; no options",
                 [](PolicyOptions&) { return AnyPolicy(SimCalKVPaper{}); }});
    // -- eviction policies and budget allocators (insert entries below this line) --
    e.push_back({"StreamingLLM", "attention sinks plus the most recent entries; options sinks",
                 [](PolicyOptions& o) { return AnyPolicy(StreamingLLM(StreamingLLM::read_options(o))); }});
    e.push_back({"H2O",
                 "recent entries plus heavy hitters by accumulated attention (head.scores, else the window); "
                 "options sinks, recent (-1: half the budget), seed_scores",
                 [](PolicyOptions& o) { return AnyPolicy(H2O(H2O::read_options(o))); }});
    e.push_back({"SnapKV", "top entries by pooled window attention, window kept; options sinks, recent, "
                 "pooling (none|max|avg), pool_kernel",
                 [](PolicyOptions& o) { return AnyPolicy(SnapKV(SnapKV::read_options(o))); }});
    e.push_back({"TOVA", "one set per layer by the newest query's attention over all heads, nothing protected "
                 "(the paper); options select (layer|head), sinks, recent",
                 [](PolicyOptions& o) { return AnyPolicy(TOVA(TOVA::read_options(o))); }});
    e.push_back({"PyramidKV", "SnapKV with budgets falling linearly with depth; options sinks, recent, pooling, "
                 "pool_kernel, beta",
                 [](PolicyOptions& o) { return AnyPolicy(PyramidKV(PyramidKV::read_options(o))); }});
    e.push_back({"PyramidInfer", "compounded cosine per-layer budgets, one set per layer by recency-weighted "
                 "window attention over all heads, recent 20% kept; options sinks, recent_ratio, decay, schedule "
                 "(cosine|geometric), distance_weight, select (layer|head)",
                 [](PolicyOptions& o) { return AnyPolicy(PyramidInfer(PyramidInfer::read_options(o))); }});
    e.push_back({"KNorm", "top entries by minus the key's L2 norm (no queries needed); options sinks, recent",
                 [](PolicyOptions& o) { return AnyPolicy(KNorm(KNorm::read_options(o))); }});
    e.push_back({"KeyDiff", "top entries by minus the key's cosine to the head's mean normalised key (no queries "
                 "needed); options sinks, recent",
                 [](PolicyOptions& o) { return AnyPolicy(KeyDiff(KeyDiff::read_options(o))); }});
    e.push_back({"ExpectedAttention", "kvpress's ExpectedAttentionPress: attention expected from the window's query "
                 "statistics rotated to the next positions, times value norms; options sinks, recent, future, "
                 "rope_theta, covariance, vnorm, epsilon",
                 [](PolicyOptions& o) { return AnyPolicy(ExpectedAttention(ExpectedAttention::read_options(o))); }});
    e.push_back({"AdaKV+SnapKV", "AdaKV per-head budgets with SnapKV; options alpha plus SnapKV's",
                 [](PolicyOptions& o) { return detail::make_adakv_of("SnapKV", o); }});
    e.push_back({"AdaKV+SimCalKV", "AdaKV per-head budgets with SimCalKV; options alpha plus SimCalKV's",
                 [](PolicyOptions& o) { return detail::make_adakv_of("SimCalKV", o); }});
    // -- merging policies (insert entries below this line) --
    e.push_back({"KeepKV",
                 "electoral votes as a logit bias log(votes), similarity-gated mass-weighted merging, recency-weighted "
                 "window scores without the votes; options sinks, recent, threshold, distance_weight, search (exact|local), radius",
                 [](PolicyOptions& o) { return AnyPolicy(KeepKV(KeepKV::read_options(o))); }});
    e.push_back({"CaM", "evicted values spread over the next kept values with probability min(1, a/mean); "
                 "options sinks, recent, span, seed",
                 [](PolicyOptions& o) { return AnyPolicy(CaM(CaM::read_options(o))); }});
    e.push_back({"KVMerger", "runs of similar neighbouring keys merged around their pivot with Gaussian weights; "
                 "options sinks, recent, threshold, sigma (0: adaptive)",
                 [](PolicyOptions& o) { return AnyPolicy(KVMerger(KVMerger::read_options(o))); }});
    e.push_back({"D2O", "density layer budgets (layers 0, 1, L-1 whole), one merge decision per layer from the mean best similarity, similarity-weighted; options sinks, recent, layers (density|uniform), exempt, "
                 "beta, tau, self_weight, search (exact|local), radius",
                 [](PolicyOptions& o) { return AnyPolicy(D2O(D2O::read_options(o))); }});
    e.push_back({"LerpKV", "linear interpolation into the most similar kept entry by attention mass; options "
                 "sinks, recent, threshold, search (exact|local), radius",
                 [](PolicyOptions& o) { return AnyPolicy(LerpKV(LerpKV::read_options(o))); }});
    e.push_back({"SlerpKV", "spherical interpolation (norms linear) into the most similar kept entry by attention "
                 "mass; options sinks, recent, threshold, search (exact|local), radius",
                 [](PolicyOptions& o) { return AnyPolicy(SlerpKV(SlerpKV::read_options(o))); }});
    e.push_back({"Merging+SnapKV",
                 "kvpress's MergingPress around SnapKV: removed values folded into the most similar survivor's, "
                 "weighted by similarity and value norms, keys kept; options threshold, search (exact|local), "
                 "radius plus SnapKV's",
                 [](PolicyOptions& o) { return detail::make_merging_of("SnapKV", o); }});
    e.push_back({"NlerpKV", "normalised linear interpolation into the most similar kept entry by attention mass; "
                 "options sinks, recent, threshold, search (exact|local), radius",
                 [](PolicyOptions& o) { return AnyPolicy(NlerpKV(NlerpKV::read_options(o))); }});
    return e;
  }();
  return entries;
}

SIMCALKV_REGISTRY_INLINE std::vector<std::string> policy_names() {
  std::vector<std::string> names;
  for (const auto& e : policy_registry()) names.push_back(e.name);
  return names;
}

/// Builds a policy from "Name" or "Name:key=value,key=value".
SIMCALKV_REGISTRY_INLINE AnyPolicy make_policy(std::string_view spec) {
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
  for (const auto* family : {&detail::adakv_composition, &detail::merging_composition})
    if (auto composed = detail::make_composition(*family, name, options, spec)) return *composed;
  detail::fail(ErrorCode::invalid_argument, "unknown policy '", name, "'; policies: ", join(policy_names()));
}

#undef SIMCALKV_REGISTRY_INLINE
#endif  // SIMCALKV_COMPILED_REGISTRY && !SIMCALKV_REGISTRY_DEFINITION

}  // namespace simcalkv
