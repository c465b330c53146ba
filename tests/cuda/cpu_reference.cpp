// The CPU library behind tests/cuda/cpu_reference.hpp.
#include "cpu_reference.hpp"

#include <simcalkv/budget_schedule.hpp>
#include <simcalkv/layouts/compact.hpp>
#include <simcalkv/registry.hpp>
#include <simcalkv/policies/adakv.hpp>
#include <simcalkv/policies/layer_scheduled.hpp>
#include <simcalkv/policies/pyramidkv.hpp>
#include <simcalkv/kernels/attention.hpp>
#include <simcalkv/kernels/scoring.hpp>
#include <simcalkv/kernels/select.hpp>
#include <simcalkv/kernels/similarity.hpp>
#include <simcalkv/policies/simcalkv.hpp>
#include <simcalkv/policies/snapkv.hpp>
#include <simcalkv/policies/streaming_llm.hpp>

#include <bit>
#include <cstring>
#include <exception>
#include <span>

namespace ref {
namespace {

using simcalkv::bfloat16;
using simcalkv::half;

template <class T>
T from_u16(std::uint16_t b) {
  return std::bit_cast<T>(b);
}
template <class T>
std::uint16_t to_u16(T x) {
  return std::bit_cast<std::uint16_t>(x);
}

/// Float-typed copies of a request's heads in the element type T, with views over them.
template <class T>
struct Heads {
  std::vector<std::vector<T>> keys, values;
  std::vector<std::vector<float>> bias, scores;
  std::vector<std::vector<std::int32_t>> pos;
  std::vector<simcalkv::HeadView<T>> views;

  Heads(const Request& r, int d) {
    const std::size_t H = r.heads.size();
    keys.resize(H), values.resize(H), bias.resize(H), scores.resize(H), pos.resize(H);
    for (std::size_t h = 0; h < H; ++h) {
      const Seq& s = r.heads[h];
      const std::size_t n = static_cast<std::size_t>(s.length);
      keys[h].resize(n * d), values[h].resize(n * d);
      for (std::size_t i = 0; i < n * d; ++i) keys[h][i] = from_u16<T>(s.keys[i]), values[h][i] = from_u16<T>(s.values[i]);
      bias[h].assign(s.bias.begin(), s.bias.begin() + n);
      pos[h].assign(s.pos.begin(), s.pos.begin() + n);
      if (!s.scores.empty()) scores[h].assign(s.scores.begin(), s.scores.begin() + n);
      views.push_back(simcalkv::make_head_view<T>(keys[h].data(), values[h].data(), bias[h].data(), pos[h].data(),
                                                  s.scores.empty() ? nullptr : scores[h].data(), n, n, d));
    }
  }
  void write_back(Request& r, int d) const {
    for (std::size_t h = 0; h < views.size(); ++h) {
      Seq& s = r.heads[h];
      const std::size_t n = views[h].length;
      s.length = static_cast<int>(n);
      s.keys.assign(n * d, 0), s.values.assign(n * d, 0);
      for (std::size_t i = 0; i < n * d; ++i) s.keys[i] = to_u16(keys[h][i]), s.values[i] = to_u16(values[h][i]);
      s.bias.assign(bias[h].begin(), bias[h].begin() + n);
      s.pos.assign(pos[h].begin(), pos[h].begin() + n);
      if (!s.scores.empty()) s.scores.assign(scores[h].begin(), scores[h].begin() + n);
    }
  }
};

simcalkv::SimCalKVOptions simcalkv_options(const Policy& p) {
  simcalkv::SimCalKVOptions o;
  o.sink_tokens = static_cast<std::size_t>(p.sinks);
  o.recent_tokens = p.recent;
  o.pooling = p.pooling;
  o.pool_kernel = p.pool_kernel;
  o.search = p.exact ? simcalkv::SimilaritySearch::exact : simcalkv::SimilaritySearch::local;
  o.search_radius = static_cast<std::size_t>(p.radius);
  o.similarity_threshold = p.threshold;
  o.bias = p.bias;
  o.merge_keys = p.merge_keys;
  return o;
}

simcalkv::SnapKVOptions snapkv_options(const Policy& p) {
  return simcalkv::SnapKVOptions{static_cast<std::size_t>(p.sinks), p.recent, p.pooling, p.pool_kernel};
}

template <class T>
simcalkv::LayerRequest<T> make_request(Heads<T>& heads, const Request& r, int d, int group, int window,
                                       const Policy& p) {
  simcalkv::LayerRequest<T> req;
  req.heads = heads.views;
  req.window = simcalkv::make_window_view(r.queries.data(), r.window_pos.data(),
                                          static_cast<int>(r.heads.size()) * group, window, d);
  req.budget = simcalkv::Budget::keep_fraction(p.keep_fraction);
  return req;
}

template <class T>
bool compress_t(int d, int group, int window, const Policy& p, Request& r, std::string* error) {
  Heads<T> heads(r, d);
  auto req = make_request(heads, r, d, group, window, p);
  simcalkv::Workspace ws;
  try {
    if (p.method == Method::streaming_llm) {
      simcalkv::StreamingLLM(simcalkv::StreamingLLMOptions{static_cast<std::size_t>(p.sinks)}).compress(req, ws);
    } else if (p.method == Method::snapkv) {
      if (p.adakv)
        simcalkv::AdaKV<simcalkv::SnapKV>(simcalkv::SnapKV(snapkv_options(p)), simcalkv::AdaKVOptions{p.alpha})
            .compress(req, ws);
      else
        simcalkv::SnapKV(snapkv_options(p)).compress(req, ws);
    } else {
      if (p.adakv)
        simcalkv::AdaKV<simcalkv::SimCalKV>(simcalkv::SimCalKV(simcalkv_options(p)), simcalkv::AdaKVOptions{p.alpha})
            .compress(req, ws);
      else
        simcalkv::SimCalKV(simcalkv_options(p)).compress(req, ws);
    }
  } catch (const std::exception& e) {
    if (error) *error = e.what();
    return false;
  }
  heads.write_back(r, d);
  return true;
}

template <class T>
std::vector<std::size_t> budgets_t(int d, int group, int window, const Policy& p, const Request& r) {
  Heads<T> heads(r, d);
  auto req = make_request(heads, r, d, group, window, p);
  const auto base = simcalkv::uniform_head_budgets(req);
  if (!p.adakv || p.method == Method::streaming_llm) return base;
  simcalkv::Workspace ws;
  if (p.method == Method::snapkv)
    return simcalkv::AdaKV<simcalkv::SnapKV>(simcalkv::SnapKV(snapkv_options(p)), simcalkv::AdaKVOptions{p.alpha})
        .allocate(req, ws, base);
  return simcalkv::AdaKV<simcalkv::SimCalKV>(simcalkv::SimCalKV(simcalkv_options(p)), simcalkv::AdaKVOptions{p.alpha})
      .allocate(req, ws, base);
}

/// The CPU policy's own plan of the layer (its public plan_with_budgets): head `h` at `budget`,
/// the others keep everything; the stage results of head h are read from the workspace.
template <class T>
Plan plan_t(int d, int group, int window, const Policy& p, const Request& r, int h, std::size_t budget) {
  Heads<T> heads(r, d);
  auto req = make_request(heads, r, d, group, window, p);
  std::vector<std::size_t> budgets(heads.views.size());
  for (std::size_t k = 0; k < budgets.size(); ++k) budgets[k] = heads.views[k].length;
  const auto hh = static_cast<std::size_t>(h);
  budgets[hh] = budget;
  simcalkv::Workspace ws;
  simcalkv::LayerPlan layer_plan;
  if (p.method == Method::streaming_llm)
    layer_plan = simcalkv::StreamingLLM(simcalkv::StreamingLLMOptions{static_cast<std::size_t>(p.sinks)})
                     .plan_with_budgets(req, ws, budgets);
  else if (p.method == Method::snapkv)
    layer_plan = simcalkv::SnapKV(snapkv_options(p)).plan_with_budgets(req, ws, budgets);
  else
    layer_plan = simcalkv::SimCalKV(simcalkv_options(p)).plan_with_budgets(req, ws, budgets);
  const auto& s = ws.head(hh);
  const std::size_t n = heads.views[hh].length;
  Plan plan;
  plan.keep = layer_plan.heads[hh].keep;
  if (budget >= n) return plan;
  plan.cand = s.selection.removed;
  plan.sel = s.selection_score;
  if (p.method != Method::streaming_llm) {
    plan.score = s.score;
    plan.mass = s.mass;
    plan.inv_norm = s.inv_norms;
  }
  if (p.method == Method::simcalkv) {
    plan.slot = s.matching.target;
    plan.similarity = s.matching.similarity;
  }
  return plan;
}

template <class T>
simcalkv::FlatLayerPlan layer_plan_t(int d, int group, int window, const Policy& p, const Request& r) {
  Heads<T> heads(r, d);
  auto req = make_request(heads, r, d, group, window, p);
  simcalkv::Workspace ws;
  const simcalkv::StreamingLLM streaming(simcalkv::StreamingLLMOptions{static_cast<std::size_t>(p.sinks)});
  const simcalkv::SnapKV snapkv(snapkv_options(p));
  const simcalkv::SimCalKV simcalkv_policy(simcalkv_options(p));
  const simcalkv::AdaKVOptions ada{p.alpha};
  if (p.method == Method::streaming_llm) return simcalkv::flatten(streaming.plan(req, ws));
  if (p.method == Method::snapkv)
    return simcalkv::flatten(p.adakv ? simcalkv::AdaKV<simcalkv::SnapKV>(snapkv, ada).plan(req, ws) : snapkv.plan(req, ws));
  return simcalkv::flatten(p.adakv ? simcalkv::AdaKV<simcalkv::SimCalKV>(simcalkv_policy, ada).plan(req, ws)
                                   : simcalkv_policy.plan(req, ws));
}

template <class T>
bool spec_plan_t(int d, int group, int window, const std::string& spec, double keep_fraction, const Request& r,
                 simcalkv::FlatLayerPlan* out, std::string* error) {
  Policy p;
  p.keep_fraction = keep_fraction;
  Heads<T> heads(r, d);
  auto req = make_request(heads, r, d, group, window, p);
  req.rope_theta = 10000.0;  // ExpectedAttention asks for a RoPE base
  simcalkv::Workspace ws;
  try {
    *out = simcalkv::flatten(simcalkv::make_policy(spec).plan(req, ws));
  } catch (const std::exception& e) {
    if (error) *error = e.what();
    return false;
  }
  return true;
}

template <class T>
bool apply_t(int d, const simcalkv::FlatLayerPlan& flat, Request& r, std::string* error) {
  Heads<T> heads(r, d);
  try {
    const simcalkv::LayerPlan plan = simcalkv::unflatten(flat.view(), flat.length_before, "flattened plan");
    simcalkv::apply_plan<T>(plan, std::span<simcalkv::HeadView<T>>(heads.views));
  } catch (const std::exception& e) {
    if (error) *error = e.what();
    return false;
  }
  heads.write_back(r, d);
  return true;
}

template <class T>
void decode_t(int d, int group, const Seq& seq, const float* q, float* out) {
  Request r;
  r.heads.push_back(seq);
  Heads<T> heads(r, d);
  simcalkv::decode_attention(heads.views[0], std::span<const float>(q, static_cast<std::size_t>(group * d)), group,
                             std::span<float>(out, static_cast<std::size_t>(group * d)));
}

}  // namespace

float from_bits(Elem e, std::uint16_t bits) {
  return e == Elem::bf16 ? simcalkv::to_float(from_u16<bfloat16>(bits)) : simcalkv::to_float(from_u16<half>(bits));
}
std::uint16_t to_bits(Elem e, float x) {
  return e == Elem::bf16 ? to_u16(simcalkv::from_float<bfloat16>(x)) : to_u16(simcalkv::from_float<half>(x));
}

bool compress(Elem e, int d, int group, int window, const Policy& policy, Request& request, std::string* error) {
  return e == Elem::bf16 ? compress_t<bfloat16>(d, group, window, policy, request, error)
                         : compress_t<half>(d, group, window, policy, request, error);
}

std::vector<std::size_t> budgets(Elem e, int d, int group, int window, const Policy& policy, const Request& request) {
  return e == Elem::bf16 ? budgets_t<bfloat16>(d, group, window, policy, request)
                         : budgets_t<half>(d, group, window, policy, request);
}

Plan plan_head(Elem e, int d, int group, int window, const Policy& policy, const Request& request, int head,
               std::size_t budget) {
  return e == Elem::bf16 ? plan_t<bfloat16>(d, group, window, policy, request, head, budget)
                         : plan_t<half>(d, group, window, policy, request, head, budget);
}

simcalkv::FlatLayerPlan layer_plan(Elem e, int d, int group, int window, const Policy& policy, const Request& request) {
  return e == Elem::bf16 ? layer_plan_t<bfloat16>(d, group, window, policy, request)
                         : layer_plan_t<half>(d, group, window, policy, request);
}

bool layer_plan(Elem e, int d, int group, int window, const std::string& spec, double keep_fraction,
                const Request& request, simcalkv::FlatLayerPlan* plan, std::string* error) {
  return e == Elem::bf16 ? spec_plan_t<bfloat16>(d, group, window, spec, keep_fraction, request, plan, error)
                         : spec_plan_t<half>(d, group, window, spec, keep_fraction, request, plan, error);
}

std::vector<std::string> policy_names() { return simcalkv::policy_names(); }

bool apply(Elem e, int d, const simcalkv::FlatLayerPlan& plan, Request& request, std::string* error) {
  return e == Elem::bf16 ? apply_t<bfloat16>(d, plan, request, error) : apply_t<half>(d, plan, request, error);
}

void decode(Elem e, int d, int group, const Seq& seq, const float* queries, float* out) {
  if (e == Elem::bf16)
    decode_t<bfloat16>(d, group, seq, queries, out);
  else
    decode_t<half>(d, group, seq, queries, out);
}

}  // namespace ref
