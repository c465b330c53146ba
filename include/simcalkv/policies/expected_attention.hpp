// simcalkv: ExpectedAttention (kvpress's ExpectedAttentionPress, NVIDIA/kvpress,
// kvpress/presses/expected_attention_press.py; Devoto et al., "Expected Attention", 2025), an
// eviction policy that scores entries by the attention future queries are expected to give them.
//
// The rule, per KV head and each of its G query heads:
//  1. Query statistics before RoPE: the mean mu and covariance S (divided by the count) of the
//     queries with their rotary embedding undone.
//  2. The rotation averaged over the next F positions (F = 512), Rbar = mean_f R(p + f), applied
//     to both: mu' = Rbar mu, S' = Rbar S Rbar^T.
//  3. Since attention is exp(q.k / sqrt(d)) with q ~ N(mu', S'), its expectation is
//     exp(mu'.k_j / sqrt(d) + k_j^T S' k_j / (2 d)); a softmax over the entries turns it into the
//     expected attention, averaged over the G query heads.
//  4. Scores times the value norms, (a_j + epsilon) * ||v_j|| (use_vnorm); the first 4 entries
//     (n_sink) are kept, and nothing else is protected.
// Departures, on purpose:
//  - The statistics come from the host's observation window (the last W queries, RoPE undone
//    with their positions), not from every prompt query: a host keeps W queries. kvpress drops
//    the first n_sink queries as outliers; the window never holds them.
//  - RoPE is the standard (rotate-half, Llama/Qwen/Mistral) rotation with base rope_theta: the
//    host's (LayerRequest::rope_theta; the engine passes its config's), or option rope_theta when
//    given; a request with neither is refused. Rope scaling variants (Llama 3.1's) are not modelled.
//  - A merged entry's logit bias b_j is added to its expected logit, as everywhere in the library
//    (0 for fresh entries).
// Ties go to the earlier entry; kept entries are moved, never rewritten.
#pragma once

#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string_view>
#include <vector>

namespace simcalkv {

struct ExpectedAttentionOptions {
  std::size_t sink_tokens = 4;   // n_sink
  int recent_tokens = 0;         // kvpress protects no recent entries
  int future_positions = 512;    // n_future_positions
  double rope_theta = 0.0;       // the model's rotary base; 0: the request's (LayerRequest::rope_theta)
  bool use_covariance = true;
  bool use_vnorm = true;
  double epsilon = 0.0;
};

class ExpectedAttention : public StagedPolicy<ExpectedAttention> {
 public:
  ExpectedAttention() = default;
  explicit ExpectedAttention(const ExpectedAttentionOptions& options) : options_(options) {
    detail::require(options.future_positions > 0, ErrorCode::invalid_argument,
                    "ExpectedAttention: future positions must be positive");
    detail::require(std::isfinite(options.rope_theta) && (options.rope_theta == 0.0 || options.rope_theta > 1.0),
                    ErrorCode::invalid_argument, "ExpectedAttention: rope_theta must be above 1 (or 0: the host's), got ",
                    options.rope_theta);
    detail::require(std::isfinite(options.epsilon) && options.epsilon >= 0.0, ErrorCode::invalid_argument,
                    "ExpectedAttention: epsilon must be non-negative");
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument,
                    "ExpectedAttention: recent must be -1 or more");
  }

  static constexpr bool needs_window = true;
  [[nodiscard]] std::string_view name() const noexcept { return "ExpectedAttention"; }
  [[nodiscard]] const ExpectedAttentionOptions& options() const noexcept { return options_; }

  template <StorageElement T>
  void check_request(const LayerRequest<T>& request) const {
    detail::require(request.heads.empty() || request.heads[0].head_dim % 2 == 0, ErrorCode::invalid_argument,
                    "ExpectedAttention: rotary embeddings need an even head_dim");
  }

  /// Score: expected attention under the window's query statistics, times the value norms.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const auto& window = ctx.window;
    const std::size_t n = head.length;
    const auto d = static_cast<std::size_t>(head.head_dim);
    const std::size_t half = d / 2;
    const auto W = static_cast<std::size_t>(window.num_tokens);
    kernels::load_keys(head, s);
    s.selection_score.assign(n, 0.0f);
    const std::size_t sinks = std::min(n, options_.sink_tokens);
    if (n == sinks) return;

    // The rotation averaged over the next F positions: per frequency, mean cos and mean sin.
    const double theta = options_.rope_theta > 0.0 ? options_.rope_theta : ctx.rope_theta;
    detail::require(theta > 1.0, ErrorCode::invalid_argument,
                    "ExpectedAttention: needs the model's rotary base: set LayerRequest::rope_theta or the option "
                    "rope_theta");
    std::vector<double> freq(half), cbar(half, 0.0), sbar(half, 0.0);
    const double next = static_cast<double>(window.positions[W - 1]) + 1.0;
    for (std::size_t i = 0; i < half; ++i) {
      freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      for (int f = 0; f < options_.future_positions; ++f) {
        cbar[i] += std::cos((next + f) * freq[i]);
        sbar[i] += std::sin((next + f) * freq[i]);
      }
      cbar[i] /= options_.future_positions;
      sbar[i] /= options_.future_positions;
    }
    // Rbar is a rotation per pair (x_i, x_{i+d/2}): (c x_i - s x_{i+d/2}, c x_{i+d/2} + s x_i), so
    // applying it costs O(d) per vector and O(d^2) per matrix side.
    auto rotate = [&](const double* x, double* out, std::size_t stride) {
      for (std::size_t i = 0; i < half; ++i) {
        const double a = x[i * stride], b = x[(i + half) * stride];
        out[i * stride] = cbar[i] * a - sbar[i] * b;
        out[(i + half) * stride] = cbar[i] * b + sbar[i] * a;
      }
    };

    const double tau = 1.0 / std::sqrt(static_cast<double>(d));
    std::vector<double> pre(W * d), mu(d), cov(d * d), mu_r(d), tmp(d * d);
    std::vector<float> cov_r(d * d), quad(n * d), logits(n);
    for (int g = 0; g < ctx.group; ++g) {
      const int qh = ctx.kv_head * ctx.group + g;
      // 1. The window's queries with RoPE undone (rotation by minus their position's angles).
      for (std::size_t t = 0; t < W; ++t) {
        const float* q = window.query(qh, static_cast<int>(t));
        const double p = static_cast<double>(window.positions[t]);
        for (std::size_t i = 0; i < half; ++i) {
          const double c = std::cos(p * freq[i]), sn = std::sin(p * freq[i]);
          pre[t * d + i] = c * q[i] + sn * q[i + half];
          pre[t * d + i + half] = c * q[i + half] - sn * q[i];
        }
      }
      std::fill(mu.begin(), mu.end(), 0.0);
      for (std::size_t t = 0; t < W; ++t)
        for (std::size_t i = 0; i < d; ++i) mu[i] += pre[t * d + i] / static_cast<double>(W);
      // 2. Rotated to the future: mu' = Rbar mu, S' = Rbar S Rbar^T (columns, then rows).
      rotate(mu.data(), mu_r.data(), 1);
      if (options_.use_covariance) {
        std::fill(cov.begin(), cov.end(), 0.0);
        for (std::size_t t = 0; t < W; ++t)
          for (std::size_t a = 0; a < d; ++a) {
            const double xa = pre[t * d + a] - mu[a];
            for (std::size_t b = 0; b < d; ++b) cov[a * d + b] += xa * (pre[t * d + b] - mu[b]) / static_cast<double>(W);
          }
        for (std::size_t b = 0; b < d; ++b) rotate(cov.data() + b, tmp.data() + b, d);  // Rbar S: each column
        for (std::size_t a = 0; a < d; ++a) rotate(tmp.data() + a * d, cov.data() + a * d, 1);  // (Rbar S) Rbar^T: each row
        for (std::size_t x = 0; x < d * d; ++x) cov_r[x] = static_cast<float>(cov[x] / (2.0 * static_cast<double>(d)));
        // quad[j] = k_j^T S' k_j / (2 d): one product for all entries, then row dots.
        kernels::gemm_nt(s.keys.data(), n, cov_r.data(), d, d, quad.data(), d);
      }
      // 3. Expected logits and their softmax over the entries after the sinks.
      double top = -std::numeric_limits<double>::infinity();
      for (std::size_t j = sinks; j < n; ++j) {
        const float* k = s.keys.data() + j * d;
        double z = 0.0;
        for (std::size_t i = 0; i < d; ++i) z += mu_r[i] * k[i];
        z = z * tau + head.bias[j];
        if (options_.use_covariance) z += kernels::dot(quad.data() + j * d, k, d);
        logits[j] = static_cast<float>(z);
        top = std::max(top, z);
      }
      double sum = 0.0;
      for (std::size_t j = sinks; j < n; ++j) sum += std::exp(static_cast<double>(logits[j]) - top);
      for (std::size_t j = sinks; j < n; ++j)
        s.selection_score[j] += static_cast<float>(std::exp(static_cast<double>(logits[j]) - top) / sum /
                                                   static_cast<double>(ctx.group));
    }
    // 4. Value norms; the sinks above every other score.
    if (options_.use_vnorm) {
      std::vector<float> v(d);
      for (std::size_t j = sinks; j < n; ++j) {
        head.load_value(j, v.data());
        s.selection_score[j] = static_cast<float>((s.selection_score[j] + options_.epsilon) *
                                                  std::sqrt(static_cast<double>(kernels::squared_norm(v.data(), d))));
      }
    }
    float highest = 0.0f;
    for (std::size_t j = sinks; j < n; ++j) highest = std::max(highest, s.selection_score[j]);
    for (std::size_t j = 0; j < sinks; ++j) s.selection_score[j] = highest + 1.0f;
  }

  /// ExpectedAttentionOptions from a registry option string: sinks, recent, future, rope_theta,
  /// covariance, vnorm, epsilon.
  static ExpectedAttentionOptions read_options(PolicyOptions& o) {
    ExpectedAttentionOptions e;
    read_protection(o, e);
    e.future_positions = static_cast<int>(o.get_int("future", e.future_positions, 1, 1 << 24));
    if (o.has("rope_theta")) e.rope_theta = o.get_double("rope_theta", e.rope_theta, 1.0 + 1e-9, 1e12);
    e.use_covariance = o.get_bool("covariance", e.use_covariance);
    e.use_vnorm = o.get_bool("vnorm", e.use_vnorm);
    e.epsilon = o.get_double("epsilon", e.epsilon, 0.0, 1e6);
    return e;
  }

 private:
  ExpectedAttentionOptions options_;
};

}  // namespace simcalkv
