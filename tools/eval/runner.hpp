// simcalkv-eval: one sample through the reference engine (engine/). The prompt is prefilled once and the
// full cache's answer decoded once; then, for every (method, ratio), the post-prefill cache is restored from a
// snapshot, compressed and decoded again. The first answer token comes from the prefill's logits in both cases
// (as the paper's harness does: compression happens after the prompt's forward pass).
#pragma once

#include "datasets.hpp"
#include "session.hpp"
#include "tokenizer.hpp"

#include <simcalkv/executor.hpp>
#include <simcalkv/registry.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace simcalkv::eval {

struct DecodeSettings {
  int max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;
  unsigned long long seed = 0;
};

/// One answer: its tokens and text, the decoding wall time (from the prefill's logits to the last token, as the
/// paper's time_before_s / the decoding part of time_after_s) and the forward passes it took.
struct Generation {
  std::vector<int> ids;
  std::string text;
  double seconds = 0.0;
  int steps = 0;              // decode forward passes (tokens - 1 when the answer runs to the limit)
  bool interrupted = false;
  [[nodiscard]] double tokens_per_second() const {
    return steps > 0 && seconds > 0 ? steps / seconds : std::numeric_limits<double>::quiet_NaN();
  }
};

/// What one (sample, method, ratio) measured.
struct AfterResult {
  Generation gen;
  double compress_seconds = 0.0;
  std::size_t kv_bytes = 0;  // reserved bytes after compression (shrink_to_fit)
  CompressionStats stats;
  std::string error;         // a compression that failed (the row has no answer)
};

struct BeforeResult {
  std::size_t prompt_tokens = 0;     // after truncation
  std::size_t truncated_tokens = 0;  // removed from the middle
  double prefill_seconds = 0.0;
  std::size_t kv_bytes = 0;          // reserved bytes after prefill (shrink_to_fit)
  Generation gen;
};

namespace detail_run {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline int pick(const std::vector<float>& logits, const DecodeSettings& d, std::mt19937_64& rng) {
  if (d.temperature <= 0.0)
    return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
    return logits[static_cast<std::size_t>(x)] > logits[static_cast<std::size_t>(y)];
  });
  const double mx = logits[static_cast<std::size_t>(order[0])];
  std::vector<double> p(order.size());
  double total = 0;
  for (std::size_t i = 0; i < order.size(); ++i)
    total += p[i] = std::exp((logits[static_cast<std::size_t>(order[i])] - mx) / d.temperature);
  std::size_t keep = 0;
  double cum = 0;
  while (keep < p.size()) {
    cum += p[keep++] / total;
    if (cum >= d.top_p) break;
  }
  // inverse CDF with our own uniform draw: the same seed gives the same tokens on every standard library
  const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
  double kept = 0;
  for (std::size_t i = 0; i < keep; ++i) kept += p[i];
  double acc = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    acc += p[i] / kept;
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace detail_run

/// Runs samples through one model; one instance per (model, KV storage type).
template <StorageElement T>
class Runner {
 public:
  struct Options {
    int window = 32;
    int chunk = 512;
    const Executor* executor = nullptr;
    engine::KVLayout layout = engine::KVLayout::compact;  // where the session keeps the cache
    const std::atomic<bool>* stop = nullptr;  // set by SIGINT: decoding returns early, marked interrupted
    bool track_scores = false;  // accumulate attention over the prefill for policies that read it (H2O)
  };

  Runner(const engine::Model& model, const engine::Tokenizer& tok, Options opt)
      : model_(model), tok_(tok), opt_(opt) {}

  /// Tokenises and truncates the prompt, prefills it, decodes the full cache's answer, and keeps the post-prefill
  /// cache for after().
  BeforeResult before(const std::string& prompt, std::size_t max_input_tokens, const DecodeSettings& d) {
    BeforeResult r;
    std::vector<int> ids = tok_.encode(prompt, true);
    if (ids.empty()) throw engine::EngineError("the prompt has no tokens");
    for (int id : ids)
      if (id < 0 || id >= model_.config.vocab_size)
        throw engine::EngineError("tokenizer id " + std::to_string(id) + " is outside the model's vocabulary (" +
                                  std::to_string(model_.config.vocab_size) + ")");
    r.truncated_tokens = truncate_middle(ids, max_input_tokens);
    r.prompt_tokens = ids.size();
    engine::SessionOptions so;
    so.chunk = opt_.chunk;
    so.window = opt_.window;
    so.track_scores = opt_.track_scores;
    so.layout = opt_.layout;
    session_ = std::make_unique<engine::Session<T>>(model_, so);
    const auto t0 = std::chrono::steady_clock::now();
    logits_ = session_->prefill(ids);
    r.prefill_seconds = detail_run::seconds_since(t0);
    session_->kv_shrink_to_fit();
    r.kv_bytes = session_->kv_reserved_bytes();
    snapshot();
    r.gen = generate(d);
    return r;
  }

  /// Restores the post-prefill cache, compresses it with `policy` to `ratio` removed, decodes the answer.
  AfterResult after(const AnyPolicy& policy, double ratio, const DecodeSettings& d) {
    AfterResult r;
    restore();
    const auto t0 = std::chrono::steady_clock::now();
    try {
      r.stats = session_->compress(policy, Budget::compress_ratio(ratio), opt_.executor);
    } catch (const simcalkv::Error& e) {
      r.error = e.what();
      return r;
    }
    r.compress_seconds = detail_run::seconds_since(t0);
    r.kv_bytes = session_->kv_reserved_bytes();
    r.gen = generate(d);
    return r;
  }

 private:
  Generation generate(const DecodeSettings& d) {
    Generation g;
    const auto& eos = model_.config.eos_token_ids;
    std::mt19937_64 rng(d.seed);
    std::vector<float> logits = logits_;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < d.max_new_tokens; ++i) {
      if (opt_.stop && opt_.stop->load(std::memory_order_relaxed)) {
        g.interrupted = true;
        break;
      }
      const int next = detail_run::pick(logits, d, rng);
      if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
      g.ids.push_back(next);
      if (i + 1 == d.max_new_tokens) break;
      logits = session_->decode(next);
      ++g.steps;
    }
    g.seconds = detail_run::seconds_since(t0);
    g.text = tok_.decode(g.ids, true);
    return g;
  }

  /// The prompt's keys and values of every layer, [kv_head][n][head_dim] in the storage type.
  void snapshot() {
    const auto& c = model_.config;
    keys_.assign(static_cast<std::size_t>(c.num_layers), {});
    values_.assign(static_cast<std::size_t>(c.num_layers), {});
    scores_.assign(static_cast<std::size_t>(c.num_layers), {});
    for (int l = 0; l < c.num_layers; ++l) {
      n_ = session_->kv_copy(l, keys_[static_cast<std::size_t>(l)], values_[static_cast<std::size_t>(l)]);
      scores_[static_cast<std::size_t>(l)] = session_->kv_scores(l);
    }
  }

  /// Puts the cache back as prefill left it: the same keys, values and scores (bit for bit), positions 0..n-1, zero
  /// biases.
  void restore() {
    session_->kv_clear();
    for (int l = 0; l < model_.config.num_layers; ++l) {
      session_->kv_append(l, n_, std::span<const T>(keys_[static_cast<std::size_t>(l)]),
                          std::span<const T>(values_[static_cast<std::size_t>(l)]));
      session_->kv_set_scores(l, scores_[static_cast<std::size_t>(l)]);
    }
  }

  const engine::Model& model_;
  const engine::Tokenizer& tok_;
  Options opt_;
  std::unique_ptr<engine::Session<T>> session_;
  std::vector<float> logits_;
  std::size_t n_ = 0;
  std::vector<std::vector<T>> keys_, values_;
  std::vector<std::vector<float>> scores_;  // accumulated attention, when tracked
};

}  // namespace simcalkv::eval
