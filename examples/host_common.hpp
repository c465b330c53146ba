// Shared by the host-shape examples: one prefilled layer of random post-RoPE keys and values, its
// observation window, and the same layer in simcalkv's own compact cache for comparison.
#pragma once

#include <simcalkv/simcalkv.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace example {

struct Prefill {
  int kv_heads = 2, q_heads = 8, dim = 64, window = 16;
  std::size_t tokens = 500;
  std::vector<float> keys, values;  // [kv_head][token][dim], as a forward pass produces them
  std::vector<float> window_queries;  // [q_head][window][dim]
  std::vector<simcalkv::Position> window_positions;

  explicit Prefill(unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    keys.resize(static_cast<std::size_t>(kv_heads) * tokens * static_cast<std::size_t>(dim));
    values.resize(keys.size());
    // Keys drift slowly along the sequence, so neighbours are similar (as real keys are).
    for (int h = 0; h < kv_heads; ++h) {
      std::vector<float> drift(static_cast<std::size_t>(dim));
      for (std::size_t t = 0; t < tokens; ++t)
        for (int i = 0; i < dim; ++i) {
          auto& x = drift[static_cast<std::size_t>(i)];
          x = 0.9f * x + 0.45f * normal(rng);
          keys[(static_cast<std::size_t>(h) * tokens + t) * static_cast<std::size_t>(dim) + static_cast<std::size_t>(i)] = x;
        }
    }
    for (auto& v : values) v = normal(rng);
    window_queries.resize(static_cast<std::size_t>(q_heads) * static_cast<std::size_t>(window) * static_cast<std::size_t>(dim));
    for (auto& q : window_queries) q = normal(rng);
    for (int t = 0; t < window; ++t) window_positions.push_back(static_cast<simcalkv::Position>(tokens) - window + t);
  }
  [[nodiscard]] simcalkv::WindowView window_view() const {
    return simcalkv::make_window_view(window_queries.data(), window_positions.data(), q_heads, window, dim);
  }
  [[nodiscard]] int group() const { return q_heads / kv_heads; }
  [[nodiscard]] const float* key(int h, std::size_t t) const {
    return keys.data() + (static_cast<std::size_t>(h) * tokens + t) * static_cast<std::size_t>(dim);
  }
  [[nodiscard]] const float* value(int h, std::size_t t) const {
    return values.data() + (static_cast<std::size_t>(h) * tokens + t) * static_cast<std::size_t>(dim);
  }
};

/// The same layer compressed in simcalkv's compact cache: the reference every host shape must match.
struct CompactReference {
  simcalkv::KVCache<float> cache;
  CompactReference(const Prefill& p, const simcalkv::AnyPolicy& policy, simcalkv::Budget budget, bool shared)
      : cache({1, p.kv_heads, p.dim}) {
    cache.append(0, p.tokens, std::span<const float>(p.keys), std::span<const float>(p.values));
    simcalkv::LayerRequest<float> request;
    request.heads = cache.layer(0);
    request.window = p.window_view();
    request.budget = budget;
    request.shared_selection = shared;
    simcalkv::Workspace ws;
    policy.compress(request, ws);
  }
  /// Decode attention of the G query heads of KV head h.
  std::vector<float> attend(int h, std::span<const float> q, int group) {
    std::vector<float> out(q.size());
    simcalkv::decode_attention(cache.layer(0)[static_cast<std::size_t>(h)], q, group, out);
    return out;
  }
};

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m;
}

/// Prints the comparison and returns the exit status: 0 when the host's outputs match.
inline int report(const char* host, double diff, double tolerance) {
  std::printf("%s: attention outputs differ from the compact layout's by at most %.3g (tolerance %.1g): %s\n", host,
              diff, tolerance, diff <= tolerance ? "ok" : "MISMATCH");
  return diff <= tolerance ? 0 : 1;
}

}  // namespace example
