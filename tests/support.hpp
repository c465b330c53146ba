// Test helpers: layers of hand-built or random KV heads over test-owned buffers, and naive
// reference implementations to compare the library against.
#pragma once

#include <simcalkv/simcalkv.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace testing {

using simcalkv::HeadView;
using simcalkv::Position;

/// Deterministic normal samples without std::normal_distribution (whose output varies by library).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}
  float uniform() { return static_cast<float>((engine_() >> 11) * (1.0 / 9007199254740992.0)); }
  float normal() {
    const float u1 = std::max(uniform(), 1e-12f), u2 = uniform();
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
  }

 private:
  std::mt19937_64 engine_;
};

enum class ValueLayout { rows, transposed };

/// One layer of KV heads owning its buffers; views may use a transposed V layout.
template <class T>
struct Layer {
  int heads = 0, dim = 0;
  std::size_t capacity = 0;
  std::vector<T> keys, values;
  std::vector<float> bias, scores;
  std::vector<Position> positions;
  std::vector<HeadView<T>> views;

  Layer(int num_heads, int head_dim, std::size_t cap, ValueLayout layout = ValueLayout::rows)
      : heads(num_heads), dim(head_dim), capacity(cap),
        keys(static_cast<std::size_t>(num_heads) * cap * static_cast<std::size_t>(head_dim)),
        values(keys.size()), bias(static_cast<std::size_t>(num_heads) * cap, 0.0f), scores(bias.size(), 0.0f),
        positions(bias.size(), 0) {
    for (int h = 0; h < heads; ++h) {
      const std::size_t base = static_cast<std::size_t>(h) * cap;
      HeadView<T> v = simcalkv::make_head_view<T>(keys.data() + base * static_cast<std::size_t>(dim),
                                                  values.data() + base * static_cast<std::size_t>(dim),
                                                  bias.data() + base, positions.data() + base, scores.data() + base,
                                                  0, cap, dim);
      if (layout == ValueLayout::transposed) {
        v.value_token_stride = 1;
        v.value_dim_stride = static_cast<std::ptrdiff_t>(cap);
      }
      views.push_back(v);
    }
  }
  Layer(const Layer&) = delete;

  /// Random keys with positional locality (a slowly drifting direction) and random values.
  void fill_random(std::size_t n, std::uint64_t seed, float key_scale = 1.0f) {
    Rng rng(seed);
    std::vector<float> drift(static_cast<std::size_t>(dim));
    for (auto& view : views) {
      for (auto& x : drift) x = rng.normal();
      for (std::size_t j = 0; j < n; ++j) {
        for (int i = 0; i < dim; ++i) {
          drift[static_cast<std::size_t>(i)] = 0.9f * drift[static_cast<std::size_t>(i)] + 0.45f * rng.normal();
          *view.key(j, i) = T(key_scale * drift[static_cast<std::size_t>(i)]);
          *view.value(j, i) = T(rng.normal());
        }
        view.bias[j] = 0.0f;
        view.positions[j] = static_cast<Position>(j);
        view.scores[j] = 0.0f;
      }
      view.length = n;
    }
  }
  std::span<HeadView<T>> span() { return views; }
};

/// Window queries [num_q_heads][W][dim] at positions n-W .. n-1.
struct Window {
  std::vector<float> queries;
  std::vector<Position> positions;
  simcalkv::WindowView view;
  Window(int num_q_heads, int W, int dim, std::size_t n, std::uint64_t seed, float scale = 1.0f) {
    Rng rng(seed);
    queries.resize(static_cast<std::size_t>(num_q_heads) * static_cast<std::size_t>(W) * static_cast<std::size_t>(dim));
    for (auto& q : queries) q = scale * rng.normal();
    for (int t = 0; t < W; ++t) positions.push_back(static_cast<Position>(n) - W + t);
    view = simcalkv::make_window_view(queries.data(), positions.data(), num_q_heads, W, dim);
  }
};

/// Naive attention of one query over a head (bias included, optional causal limit), in double.
template <class T>
std::vector<double> naive_attention(const HeadView<T>& h, const float* q, float scale,
                                    Position limit = std::numeric_limits<Position>::max()) {
  std::vector<double> logits(h.length), out(static_cast<std::size_t>(h.head_dim), 0.0);
  double m = -INFINITY;
  for (std::size_t j = 0; j < h.length; ++j) {
    if (h.positions[j] > limit) {
      logits[j] = -INFINITY;
      continue;
    }
    double s = 0;
    for (int i = 0; i < h.head_dim; ++i) s += double(q[i]) * double(simcalkv::to_float(*h.key(j, i)));
    logits[j] = scale * s + h.bias[j];
    m = std::max(m, logits[j]);
  }
  double z = 0;
  for (std::size_t j = 0; j < h.length; ++j) {
    if (logits[j] == -INFINITY) continue;
    const double p = std::exp(logits[j] - m);
    z += p;
    for (int i = 0; i < h.head_dim; ++i) out[static_cast<std::size_t>(i)] += p * simcalkv::to_float(*h.value(j, i));
  }
  for (auto& x : out) x /= z;
  return out;
}

inline double relative_error(const std::vector<double>& ref, const float* got) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num += (ref[i] - got[i]) * (ref[i] - got[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline double relative_error(const std::vector<double>& ref, const std::vector<double>& got) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    num += (ref[i] - got[i]) * (ref[i] - got[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

/// Byte-wise snapshot of everything a layer holds, to check nothing changed.
template <class T>
struct Snapshot {
  std::vector<T> keys, values;
  std::vector<float> bias, scores;
  std::vector<Position> positions;
  std::vector<std::size_t> lengths;
  explicit Snapshot(const Layer<T>& l)
      : keys(l.keys), values(l.values), bias(l.bias), scores(l.scores), positions(l.positions) {
    for (const auto& v : l.views) lengths.push_back(v.length);
  }
  bool same_as(const Layer<T>& l) const {
    std::vector<std::size_t> now;
    for (const auto& v : l.views) now.push_back(v.length);
    return std::memcmp(keys.data(), l.keys.data(), keys.size() * sizeof(T)) == 0 &&
           std::memcmp(values.data(), l.values.data(), values.size() * sizeof(T)) == 0 &&
           std::memcmp(bias.data(), l.bias.data(), bias.size() * sizeof(float)) == 0 &&
           std::memcmp(scores.data(), l.scores.data(), scores.size() * sizeof(float)) == 0 &&
           positions == l.positions && lengths == now;
  }
};

}  // namespace testing
