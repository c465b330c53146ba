// ExpectedAttention (kvpress's ExpectedAttentionPress) against a naive reference in double: the
// window's queries are made from known pre-RoPE queries, so the reference takes their statistics
// directly and averages explicit rotation matrices over the future positions.
#include "support.hpp"

#include <simcalkv/policies/expected_attention.hpp>
#include <simcalkv/registry.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

using namespace simcalkv;
using testing::Layer;

namespace {

/// The rotate-half RoPE rotation at position p as a dense d x d matrix.
std::vector<double> rotation(double p, std::size_t d, double theta) {
  std::vector<double> R(d * d, 0.0);
  const std::size_t half = d / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const double a = p * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    R[i * d + i] = std::cos(a);
    R[i * d + i + half] = -std::sin(a);
    R[(i + half) * d + i + half] = std::cos(a);
    R[(i + half) * d + i] = std::sin(a);
  }
  return R;
}

}  // namespace

TEST_CASE("ExpectedAttention scores are kvpress's expected attention times value norms", "[eviction][expected_attention]") {
  const std::size_t d = 8, n = 41, W = 6;
  const int G = 2;
  const double theta = 500.0;  // a small base: every frequency turns within the window
  const int future = 37;
  Layer<float> layer(1, static_cast<int>(d), n);
  layer.fill_random(n, 5);
  testing::Rng rng(6);
  // Pre-RoPE queries [G][W][d] with a common direction, rotated to their positions for the window.
  std::vector<double> pre(static_cast<std::size_t>(G) * W * d);
  for (std::size_t x = 0; x < pre.size(); ++x) pre[x] = 0.5 * rng.normal() + (x % d == 1 ? 1.5 : 0.0);
  std::vector<float> q(pre.size());
  std::vector<Position> positions;
  for (std::size_t t = 0; t < W; ++t) positions.push_back(static_cast<Position>(n - W + t));
  for (int g = 0; g < G; ++g)
    for (std::size_t t = 0; t < W; ++t) {
      const auto R = rotation(static_cast<double>(positions[t]), d, theta);
      for (std::size_t r = 0; r < d; ++r) {
        double acc = 0;
        for (std::size_t c = 0; c < d; ++c) acc += R[r * d + c] * pre[(g * W + t) * d + c];
        q[(g * W + t) * d + r] = static_cast<float>(acc);
      }
    }
  const WindowView window = make_window_view(q.data(), positions.data(), G, static_cast<int>(W), static_cast<int>(d));

  // Reference: Rbar = mean of R(n + f), f < future; per query head mu' = Rbar mu, S' = Rbar S Rbar^T;
  // a = softmax over entries 4.. of (mu'.k / sqrt(d) + k^T S' k / (2d)), group mean, times ||v||.
  std::vector<double> Rbar(d * d, 0.0);
  for (int f = 0; f < future; ++f) {
    const auto R = rotation(static_cast<double>(n + f), d, theta);
    for (std::size_t x = 0; x < d * d; ++x) Rbar[x] += R[x] / future;
  }
  const auto& h = layer.views[0];
  std::vector<double> want(n, 0.0);
  for (int g = 0; g < G; ++g) {
    std::vector<double> mu(d, 0.0), S(d * d, 0.0), mur(d, 0.0), Sr(d * d, 0.0);
    for (std::size_t t = 0; t < W; ++t)
      for (std::size_t i = 0; i < d; ++i) mu[i] += pre[(g * W + t) * d + i] / W;
    for (std::size_t t = 0; t < W; ++t)
      for (std::size_t a = 0; a < d; ++a)
        for (std::size_t b = 0; b < d; ++b)
          S[a * d + b] += (pre[(g * W + t) * d + a] - mu[a]) * (pre[(g * W + t) * d + b] - mu[b]) / W;
    for (std::size_t r = 0; r < d; ++r)
      for (std::size_t c = 0; c < d; ++c) mur[r] += Rbar[r * d + c] * mu[c];
    for (std::size_t a = 0; a < d; ++a)
      for (std::size_t b = 0; b < d; ++b)
        for (std::size_t x = 0; x < d; ++x)
          for (std::size_t y = 0; y < d; ++y) Sr[a * d + b] += Rbar[a * d + x] * S[x * d + y] * Rbar[b * d + y];
    std::vector<double> z(n, 0.0);
    double top = -INFINITY;
    for (std::size_t j = 4; j < n; ++j) {
      for (std::size_t i = 0; i < d; ++i) z[j] += mur[i] * *h.key(j, static_cast<int>(i)) / std::sqrt(double(d));
      for (std::size_t a = 0; a < d; ++a)
        for (std::size_t b = 0; b < d; ++b)
          z[j] += *h.key(j, static_cast<int>(a)) * Sr[a * d + b] * *h.key(j, static_cast<int>(b)) / (2.0 * d);
      top = std::max(top, z[j]);
    }
    double sum = 0;
    for (std::size_t j = 4; j < n; ++j) sum += std::exp(z[j] - top);
    for (std::size_t j = 4; j < n; ++j) want[j] += std::exp(z[j] - top) / sum / G;
  }
  for (std::size_t j = 4; j < n; ++j) {
    double norm = 0;
    for (std::size_t i = 0; i < d; ++i) norm += double(*h.value(j, static_cast<int>(i))) * *h.value(j, static_cast<int>(i));
    want[j] *= std::sqrt(norm);
  }

  ExpectedAttentionOptions o;
  o.future_positions = future;
  Workspace ws;
  LayerRequest<float> request;
  request.heads = layer.span();
  request.window = window;
  request.budget = Budget::entries(20);
  CHECK_THROWS_WITH(ExpectedAttention(o).plan(request, ws), Catch::Contains("needs the model's rotary base"));
  request.rope_theta = theta;  // the host's RoPE base, as the engine passes it
  const LayerPlan plan = ExpectedAttention(o).plan(request, ws);
  const auto got = ws.head(0).selection_score;
  for (std::size_t j = 4; j < n; ++j) {
    INFO("entry " << j);
    CHECK(got[j] == Approx(want[j]).epsilon(1e-4).margin(1e-9));
  }
  // The option overrides the request's base.
  o.rope_theta = theta;
  request.rope_theta = 10000.0;
  ExpectedAttention(o).plan(request, ws);
  CHECK(ws.head(0).selection_score == got);
  // The kept set: the 4 sinks and the top 16 expected scores, nothing else protected.
  std::vector<std::size_t> order;
  for (std::size_t j = 4; j < n; ++j) order.push_back(j);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return want[a] > want[b]; });
  std::vector<std::uint32_t> keep{0, 1, 2, 3};
  for (std::size_t k = 0; k < 16; ++k) keep.push_back(static_cast<std::uint32_t>(order[k]));
  std::sort(keep.begin(), keep.end());
  CHECK(plan.heads[0].keep == keep);

  const auto spec = make_policy("ExpectedAttention:rope_theta=500000,future=256,covariance=false,vnorm=false");
  CHECK(spec.target<ExpectedAttention>()->options().rope_theta == 500000.0);
  CHECK_FALSE(spec.target<ExpectedAttention>()->options().use_covariance);
  CHECK_THROWS_WITH(make_policy("ExpectedAttention:rope_theta=1"), Catch::Contains("outside"));
  CHECK(make_policy("AdaKV+ExpectedAttention").name() == "AdaKV+ExpectedAttention");
}
