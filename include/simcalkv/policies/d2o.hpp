// simcalkv: D2O (Wan et al., "D2O: Dynamic Discriminative Operations for Efficient Long-Context
// Inference of Large Language Models", arXiv 2406.13035 / ICLR 2025), the merging rule, as the
// authors' code runs it (AIoT-MLSys-Lab/D2O, LMEval_kv_token_merge/modeling_llama3_7b_13b_d2o.py).
//
// D2O has two levels, both here.
// Layer level (layers=density, the default): budgets from each layer's attention density. The
// host computes d2o_layer_statistic (layer_statistic below) for every layer after prefill and
// passes them all in LayerRequest::layer_statistics (wants_layer_statistics() asks for them; the
// engine, simcalkv-eval and simcalkv-perplexity do it). Layer l then gets softmax(-s)_l of the
// model's budget (LayerSchedule::density, the code's dynamic_layer_ratios, its excess over a
// layer's length spread over the others where the code clamps it to 1), and layers 0, 1 and
// L-1 are not compressed at all, as in the code, so the model holds more than L times the base
// budget (exempt=false keeps the total). Without statistics every layer gets its base budget.
// Token level, per layer and per call:
//  1. Keep set per head: the protected entries plus the highest window-attention scorers.
//  2. Match: each removed entry e finds its nearest kept key c (cosine similarity u_e). The code
//     compares against every kept key (quadratic in the context); by default we search the 64
//     kept entries nearest in position on each side, as SimCalKV does, which keeps compression
//     linear (search=exact: the code's rule).
//  3. One decision for the layer (decide_matches): the threshold is the mean of every compressed
//     head's best similarities, tau = mean u; with a threshold carried from the previous step,
//     tau = beta * mean u + (1 - beta) * tau_prev (the code's EMA of max_values.mean()). The
//     c-th removed entry of every head merges when the heads' mean of their c-th best similarity
//     is at least tau (the code's max_values.mean(1) >= threshold), else all of them are evicted.
//     (The policy is stateless, so the running tau is the caller's to keep.)
//  4. Similarity-weighted merge, as the paper's Eq. 11: for kept c and the set E_c merging into it,
//         D = e + sum_{i in E_c} exp(u_i),  k' = (e k_c + sum_i exp(u_i) k_i) / D,  v' likewise,
//     a softmax over the similarities with the kept key's own similarity 1 giving it exp(1) = e.
//     The code instead averages u_i k_i with k_c (scatter_reduce 'mean'); where code and paper
//     disagree we follow the paper. No bias: the kept entry's logit bias is left as it was; its
//     accumulated score, when the head has a score buffer, becomes the sum over the set.
// Departures: the selection scores are the observation window's attention (the code accumulates
// H2O scores over every query); the decision needs equal removed counts across heads to pair the
// c-th entries as the code does; heads with fewer (AdaKV budgets) average over those that have
// a c-th entry. Defaults: beta = 0.7 (the code's comment "0.3 0.7"), self weight e (option
// self_weight).
#pragma once

#include "simcalkv/budget_schedule.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/similarity.hpp"
#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/policies/match.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct D2OOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: as many as the window has queries
  /// EMA factor of the merge threshold (Eq. 10).
  float beta = 0.7f;
  /// The threshold of the previous step; NaN: none (first eviction, tau = mean best similarity).
  float previous_threshold = std::numeric_limits<float>::quiet_NaN();
  /// The kept entry's weight in Eq. 11 before normalisation: exp(1), its similarity with itself.
  float self_weight = std::numbers::e_v<float>;
  /// Layer budgets from LayerRequest::layer_statistics (the code's density allocation).
  bool density_layers = true;
  /// Layers 0, 1 and L-1 left whole, as the code does (models of more than 3 layers).
  bool exempt_layers = true;
  SimilaritySearch search = SimilaritySearch::local;  // exact: the code's search over every kept key
  std::size_t search_radius = 64;  // for SimilaritySearch::local
};

class D2O : public WindowScored<D2O> {
 public:
  D2O() = default;
  explicit D2O(const D2OOptions& options) : options_(options) {
    detail::require(std::isfinite(options.beta) && options.beta >= 0.0f && options.beta <= 1.0f,
                    ErrorCode::invalid_argument, "D2O: beta must be in [0, 1], got ", options.beta);
    detail::require(std::isnan(options.previous_threshold) || std::isfinite(options.previous_threshold),
                    ErrorCode::invalid_argument, "D2O: previous threshold must be finite (or NaN for none)");
    detail::require(std::isfinite(options.self_weight) && options.self_weight > 0.0f, ErrorCode::invalid_argument,
                    "D2O: self weight must be positive, got ", options.self_weight);
    detail::require(options.search_radius > 0, ErrorCode::invalid_argument, "D2O: search radius must be positive");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "D2O"; }
  [[nodiscard]] const D2OOptions& options() const noexcept { return options_; }
  [[nodiscard]] bool wants_layer_statistics() const noexcept { return options_.density_layers; }

  /// Layer level: the density schedule over the request's layer statistics (none: the base
  /// budgets); layers 0, 1 and L-1 whole when exempt.
  template <StorageElement T>
  std::vector<std::size_t> schedule(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    std::vector<std::size_t> out(base.begin(), base.end());
    if (!options_.density_layers || request.layer_statistics.empty()) return out;
    const int L = request.num_layers;
    detail::require(request.layer_statistics.size() == static_cast<std::size_t>(L), ErrorCode::invalid_argument,
                    "D2O: ", request.layer_statistics.size(), " layer statistics for ", L, " layers");
    if (options_.exempt_layers && L > 3 && (request.layer <= 1 || request.layer == L - 1)) {
      for (std::size_t h = 0; h < out.size(); ++h) out[h] = request.heads[h].length;
      return out;
    }
    const LayerSchedule density =
        LayerSchedule::density(std::vector<double>(request.layer_statistics.begin(), request.layer_statistics.end()));
    return scheduled_budgets(density, request, base, stage::protection(*this, request.window));
  }

  /// The merge threshold when the best similarities average `mean_best` (NaN: no match at all):
  /// the mean itself on a first eviction, else the EMA with the previous threshold.
  [[nodiscard]] float threshold(double mean_best) const noexcept {
    if (std::isnan(mean_best)) return std::numeric_limits<float>::infinity();
    if (std::isnan(options_.previous_threshold)) return static_cast<float>(mean_best);
    return static_cast<float>(options_.beta * mean_best + (1.0 - options_.beta) * options_.previous_threshold);
  }

  /// Match: each removed entry's nearest kept key.
  template <StorageElement T>
  void match(const HeadContext<T>& ctx, HeadScratch& s) const {
    match_removed(static_cast<std::size_t>(ctx.head.head_dim), options_.search, options_.search_radius, s);
  }

  /// One decision for the layer: tau from the mean of every head's best similarities; the c-th
  /// removed entries merge where the heads' mean of their c-th similarity reaches tau.
  void decide_matches(std::span<HeadScratch* const> heads) const {
    constexpr float none = -std::numeric_limits<float>::infinity();
    double sum = 0.0;
    std::size_t count = 0, longest = 0;
    for (const HeadScratch* s : heads) {
      longest = std::max(longest, s->matching.similarity.size());
      for (const float u : s->matching.similarity)
        if (u != none) sum += u, ++count;
    }
    const float tau = threshold(count ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN());
    for (std::size_t c = 0; c < longest; ++c) {
      double across = 0.0;
      std::size_t have = 0;
      for (const HeadScratch* s : heads)
        if (c < s->matching.similarity.size() && s->matching.similarity[c] != none)
          across += s->matching.similarity[c], ++have;
      const bool merges = have > 0 && across / static_cast<double>(have) >= static_cast<double>(tau);
      if (merges) continue;
      for (HeadScratch* s : heads)
        if (c < s->matching.target.size()) s->matching.target[c] = -1;
    }
  }

  /// Merge: the similarity-weighted average of each kept entry and what the layer decided merges into it.
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const auto d = static_cast<std::size_t>(head.head_dim);
    const std::size_t n = head.length;
    const auto& keep = s.selection.keep;
    const auto& removed = s.selection.removed;
    const auto& target = s.matching.target;
    const auto& similarity = s.matching.similarity;

    HeadPlan& plan = s.plan;
    plan.set_keep(keep, n);
    for (std::size_t c = 0; c < removed.size(); ++c)
      if (target[c] >= 0) plan.row_of_slot[static_cast<std::size_t>(target[c])] = -2;  // receives
    std::vector<float> value(d);
    std::vector<double> total;
    for (std::size_t k = 0; k < keep.size(); ++k) {
      if (plan.row_of_slot[k] != -2) continue;
      plan.row_of_slot[k] = -1;
      const std::size_t r = plan.add_row(k, HeadPlan::key | HeadPlan::value | HeadPlan::score, head.head_dim);
      const std::uint32_t j = keep[k];
      head.load_value(j, value.data());
      kernels::axpy(options_.self_weight, s.keys.data() + static_cast<std::size_t>(j) * d,
                    plan.row_keys.data() + r * d, d);
      kernels::axpy(options_.self_weight, value.data(), plan.row_values.data() + r * d, d);
      plan.row_bias[r] = head.bias[j];
      plan.row_score[r] = head.scores ? head.scores[j] : 0.0f;
      total.push_back(options_.self_weight);
    }
    for (std::size_t c = 0; c < removed.size(); ++c) {
      if (target[c] < 0) {
        ++plan.evicted;
        continue;
      }
      ++plan.merged;
      const std::uint32_t e = removed[c];
      const auto r = static_cast<std::size_t>(plan.row_of_slot[static_cast<std::size_t>(target[c])]);
      const double w = std::exp(static_cast<double>(similarity[c]));
      total[r] += w;
      head.load_value(e, value.data());
      kernels::axpy(static_cast<float>(w), s.keys.data() + static_cast<std::size_t>(e) * d,
                    plan.row_keys.data() + r * d, d);
      kernels::axpy(static_cast<float>(w), value.data(), plan.row_values.data() + r * d, d);
      if (head.scores) plan.row_score[r] += head.scores[e];
    }
    for (std::size_t r = 0; r < total.size(); ++r) {
      const auto inv = static_cast<float>(1.0 / total[r]);
      kernels::scale(inv, plan.row_keys.data() + r * d, d);
      kernels::scale(inv, plan.row_values.data() + r * d, d);
    }
  }

  /// D2OOptions from a registry option string: sinks, recent, beta, tau (previous threshold),
  /// self_weight, layers (density|uniform), exempt, search, radius.
  static D2OOptions read_options(PolicyOptions& o) {
    D2OOptions k;
    read_protection(o, k);
    k.beta = static_cast<float>(o.get_double("beta", k.beta, 0.0, 1.0));
    if (o.has("tau")) k.previous_threshold = static_cast<float>(o.get_double("tau", 0.0, -1.0, 1.0));
    k.self_weight = static_cast<float>(o.get_double("self_weight", k.self_weight, 1e-6, 1e6));
    k.density_layers = o.get_choice("layers", "density", {"density", "uniform"}) == "density";
    k.exempt_layers = o.get_bool("exempt", k.exempt_layers);
    read_search(o, k);
    return k;
  }

 private:
  D2OOptions options_;
};
/// D2O's per-layer attention statistic, from the observation window instead of the full prefill
/// attention: for each KV head, the (unbiased) variance over entries of the window attention's
/// column sums (its W*G queries, GQA-aggregated), min-max normalised across the layer's KV heads
/// ((v - min) / (max - min + 1e-6), as D2O's code does across heads), then averaged. In [0, 1);
/// high means sparse attention. Note the normalisation makes it 0 for a single KV head. Compute it
/// per layer after prefill and pass the values to LayerSchedule::density. Reads only.
template <StorageElement T>
double d2o_layer_statistic(const LayerRequest<T>& request, Workspace& workspace) {
  using detail::require;
  require(!request.heads.empty(), ErrorCode::invalid_argument, "d2o_layer_statistic: the layer has no KV heads");
  require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
          "d2o_layer_statistic: needs an observation window");
  const int d = request.heads[0].head_dim;
  for (std::size_t h = 0; h < request.heads.size(); ++h) {
    detail::validate_layout(request.heads[h], "d2o_layer_statistic: KV head " + std::to_string(h));
    require(request.heads[h].head_dim == d, ErrorCode::invalid_argument, "d2o_layer_statistic: KV head ", h,
            ": head_dim ", request.heads[h].head_dim, " differs from head 0's ", d);
  }
  detail::validate_window(request.window, d, request.heads.size());
  workspace.prepare(request.heads.size());
  std::vector<double> variance(request.heads.size(), 0.0);
  const int group = request.group_size();
  request.exec().parallel_for(request.heads.size(), [&](std::size_t h) {
    const HeadView<T>& head = request.heads[h];
    HeadScratch& s = workspace.head(h);
    detail::validate_head_contents(head, "d2o_layer_statistic: KV head " + std::to_string(h), request.check_finite,
                                   s.floats);
    const std::size_t n = head.length;
    if (n < 2) return;
    kernels::load_keys(head, s);
    kernels::score_window(head, request.window, static_cast<int>(h), group, s);
    const double rows = static_cast<double>(s.row_positions.size());
    double mean = 0.0;
    for (std::size_t j = 0; j < n; ++j) mean += rows * s.score[j];
    mean /= static_cast<double>(n);
    double sum = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
      const double c = rows * s.score[j] - mean;
      sum += c * c;
    }
    variance[h] = sum / static_cast<double>(n - 1);
  });
  const auto [lo, hi] = std::minmax_element(variance.begin(), variance.end());
  const double low = *lo, span = *hi - *lo + 1e-6;
  double total = 0.0;
  for (double v : variance) total += (v - low) / span;
  return total / static_cast<double>(variance.size());
}


/// The per-layer statistic a policy that wants_layer_statistics() reads (D2O's density): the host
/// computes it for every layer after prefill, before compressing any, and passes the values in
/// LayerRequest::layer_statistics.
template <StorageElement T>
double layer_statistic(const LayerRequest<T>& request, Workspace& workspace) {
  return d2o_layer_statistic(request, workspace);
}

}  // namespace simcalkv
