// Model-level quality of a compressed KV cache: what a user of the whole model sees, errors
// compounded through every layer (the per-layer attention error of simcalkv-fidelity does not show it).
//
// For each window of the text (prompt P tokens, continuation C tokens, one more token as the last label):
// the prompt is prefilled with the full cache, every layer is compressed with the policy, then the C
// continuation tokens are fed teacher-forced on the compressed cache (true positions P..P+C-1). Row t of
// their logits predicts token P+t+1. Per (policy, ratio): the mean over those predictions of
// KL(full || compressed) of the next-token distributions, the rate at which both argmaxes agree, and the
// perplexity of the true tokens. The full cache is the reference (kl 0, top-1 1), fed the same way.
#pragma once

#include "session.hpp"

#include <simcalkv/any_policy.hpp>
#include <simcalkv/budget.hpp>
#include <simcalkv/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace simcalkv::tools {

/// log-softmax of one logits row, in double.
inline void log_softmax(std::span<const float> logits, std::vector<double>& out) {
  out.resize(logits.size());
  double mx = -INFINITY;
  for (float x : logits) mx = std::max(mx, static_cast<double>(x));
  double se = 0.0;
  for (float x : logits) se += std::exp(static_cast<double>(x) - mx);
  const double lse = mx + std::log(se);
  for (std::size_t v = 0; v < logits.size(); ++v) out[v] = static_cast<double>(logits[v]) - lse;
}

/// KL(p || q) from log-probabilities; terms with p = 0 contribute nothing.
inline double kl_divergence(std::span<const double> log_p, std::span<const double> log_q) {
  double kl = 0.0;
  for (std::size_t v = 0; v < log_p.size(); ++v) {
    const double p = std::exp(log_p[v]);
    if (p > 0.0) kl += p * (log_p[v] - log_q[v]);
  }
  return std::max(kl, 0.0);  // rounding can leave -1e-17 when p == q
}

/// The first index of the largest value (ties to the lowest token id, as argmax does).
inline std::size_t argmax(std::span<const float> row) {
  return static_cast<std::size_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

/// Sums over predictions, per (policy, ratio).
struct QualityTotals {
  double kl = 0.0;
  double nll = 0.0;
  long long top1_agree = 0;
  long long tokens = 0;
  long long windows = 0;
  long long failed_windows = 0;
  std::string last_error;

  [[nodiscard]] double mean_kl() const { return tokens ? kl / static_cast<double>(tokens) : NAN; }
  [[nodiscard]] double top1() const { return tokens ? static_cast<double>(top1_agree) / static_cast<double>(tokens) : NAN; }
  [[nodiscard]] double perplexity() const { return tokens ? std::exp(nll / static_cast<double>(tokens)) : NAN; }
};

/// Adds the C predictions of `logits` [C][V] against the full cache's log-probabilities and labels.
inline void accumulate(QualityTotals& t, std::span<const float> logits, const std::vector<std::vector<double>>& full_logp,
                       const std::vector<std::size_t>& full_argmax, std::span<const int> labels, int vocab) {
  std::vector<double> logq;
  const auto V = static_cast<std::size_t>(vocab);
  for (std::size_t r = 0; r < labels.size(); ++r) {
    const auto row = logits.subspan(r * V, V);
    log_softmax(row, logq);
    t.kl += kl_divergence(full_logp[r], logq);
    t.nll -= logq[static_cast<std::size_t>(labels[r])];
    t.top1_agree += argmax(row) == full_argmax[r] ? 1 : 0;
  }
  t.tokens += static_cast<long long>(labels.size());
  t.windows += 1;
}

/// One window through the full cache and through every (policy, ratio); adds to `totals`
/// [1 + policies * ratios] (row 0: the full cache; then policy-major, ratio-minor).
template <StorageElement T>
void measure_window(const engine::Model& model, const engine::SessionOptions& so, std::span<const int> window, int P,
                    const std::vector<AnyPolicy>& policies, const std::vector<double>& ratios,
                    std::vector<QualityTotals>& totals, const Executor* executor = nullptr) {
  const int C = static_cast<int>(window.size()) - P - 1;
  if (P < 1 || C < 1) engine::fail("measure_window: a window needs at least 1 prompt and 1 continuation token");
  const auto prompt = window.subspan(0, static_cast<std::size_t>(P));
  const auto cont = window.subspan(static_cast<std::size_t>(P), static_cast<std::size_t>(C));
  const auto labels = window.subspan(static_cast<std::size_t>(P) + 1, static_cast<std::size_t>(C));
  const int V = model.config.vocab_size;
  const int L = model.config.num_layers;

  // Attention accumulated over the whole prompt when a policy selects by it (H2O).
  engine::SessionOptions options = so;
  for (const auto& p : policies) options.track_scores = options.track_scores || p.reads_accumulated_scores();
  engine::Session<T> s(model, options);
  s.prefill(prompt);
  // The post-prefill cache, restored (bit for bit) before each compression.
  std::vector<std::vector<T>> keys(static_cast<std::size_t>(L)), values(static_cast<std::size_t>(L));
  std::vector<std::vector<float>> scores(static_cast<std::size_t>(L));
  std::size_t n = 0;
  for (int l = 0; l < L; ++l) {
    n = s.kv_copy(l, keys[static_cast<std::size_t>(l)], values[static_cast<std::size_t>(l)]);
    scores[static_cast<std::size_t>(l)] = s.kv_scores(l);
  }
  const auto restore = [&] {
    s.kv_clear();
    for (int l = 0; l < L; ++l) {
      s.kv_append(l, n, std::span<const T>(keys[static_cast<std::size_t>(l)]),
                  std::span<const T>(values[static_cast<std::size_t>(l)]));
      s.kv_set_scores(l, scores[static_cast<std::size_t>(l)]);
    }
  };

  const auto full = s.extend(cont);
  std::vector<std::vector<double>> full_logp(static_cast<std::size_t>(C));
  std::vector<std::size_t> full_argmax(static_cast<std::size_t>(C));
  for (int r = 0; r < C; ++r) {
    const std::span<const float> row(full.data() + static_cast<std::size_t>(r) * V, static_cast<std::size_t>(V));
    log_softmax(row, full_logp[static_cast<std::size_t>(r)]);
    full_argmax[static_cast<std::size_t>(r)] = argmax(row);
  }
  accumulate(totals[0], full, full_logp, full_argmax, labels, V);

  std::size_t row = 1;
  for (const auto& policy : policies)
    for (const double ratio : ratios) {
      auto& t = totals[row++];
      restore();
      try {
        s.compress(policy, Budget::compress_ratio(ratio), executor);
      } catch (const Error& e) {
        t.failed_windows += 1;
        t.last_error = e.what();
        continue;
      }
      accumulate(t, s.extend(cont), full_logp, full_argmax, labels, V);
    }
}

}  // namespace simcalkv::tools
