#include "support.hpp"

#include <catch2/catch.hpp>

using namespace simcalkv;
using testing::Layer;

template <class T>
static void check_decode(std::size_t n, int dim, bool with_bias, testing::ValueLayout layout, double tolerance) {
  const int G = 4;
  Layer<T> layer(1, dim, n + 3, layout);
  layer.fill_random(n, 100 + n + static_cast<std::size_t>(dim), 0.5f);
  auto& head = layer.views[0];
  testing::Rng rng(7 + n);
  if (with_bias)
    for (std::size_t j = 0; j < n; ++j) head.bias[j] = 2.0f * rng.normal();
  std::vector<float> q(static_cast<std::size_t>(G * dim)), out(q.size());
  for (auto& x : q) x = rng.normal();
  decode_attention(head, q, G, out);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int g = 0; g < G; ++g) {
    const auto ref = testing::naive_attention(head, q.data() + g * dim, scale);
    INFO("n=" << n << " dim=" << dim << " bias=" << with_bias << " head " << g);
    CHECK(testing::relative_error(ref, out.data() + g * dim) < tolerance);
  }
}

TEST_CASE("decode attention matches a naive reference", "[attention]") {
  for (std::size_t n : {1u, 3u, 17u, 129u, 4097u})
    for (int dim : {64, 128})
      for (bool bias : {false, true}) {
        check_decode<float>(n, dim, bias, testing::ValueLayout::rows, 1e-5);
        check_decode<float>(n, dim, bias, testing::ValueLayout::transposed, 1e-5);
        // 16-bit storage: the reference reads the same rounded elements, so only float rounding differs.
        check_decode<half>(n, dim, bias, testing::ValueLayout::rows, 1e-5);
        check_decode<bfloat16>(n, dim, bias, testing::ValueLayout::rows, 1e-5);
      }
}

TEST_CASE("block attention is causal and matches the reference per token", "[attention]") {
  const int G = 2, dim = 64, m = 5;
  const std::size_t n = 40;
  Layer<float> layer(1, dim, n, testing::ValueLayout::rows);
  layer.fill_random(n, 3);
  auto& head = layer.views[0];
  for (std::size_t j = 0; j < n; ++j) head.bias[j] = 0.1f * static_cast<float>(j % 3);
  testing::Rng rng(11);
  std::vector<float> q(static_cast<std::size_t>(G * m * dim)), out(q.size());
  for (auto& x : q) x = rng.normal();
  std::vector<Position> pos;
  for (int t = 0; t < m; ++t) pos.push_back(static_cast<Position>(n) - m + t);
  block_attention(head, q, G, pos, out);
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < m; ++t) {
      const auto off = static_cast<std::size_t>((g * m + t) * dim);
      const auto ref = testing::naive_attention(head, q.data() + off, 1.0f / 8.0f, pos[static_cast<std::size_t>(t)]);
      CHECK(testing::relative_error(ref, out.data() + off) < 1e-5);
    }
}

TEST_CASE("attention accumulates probabilities into the score buffer", "[attention]") {
  const int dim = 64, G = 4;
  Layer<float> layer(1, dim, 50);
  layer.fill_random(50, 5);
  auto& head = layer.views[0];
  std::vector<float> q(static_cast<std::size_t>(G * dim), 0.1f), out(q.size());
  AttentionOptions options;
  options.accumulate_scores = true;
  decode_attention(head, q, G, out, options);
  double total = 0;
  for (std::size_t j = 0; j < head.length; ++j) total += head.scores[j];
  CHECK(total == Approx(1.0).epsilon(1e-5));  // mean over G rows of distributions summing to 1
  decode_attention(head, q, G, out, options);
  total = 0;
  for (std::size_t j = 0; j < head.length; ++j) total += head.scores[j];
  CHECK(total == Approx(2.0).epsilon(1e-5));
}

TEST_CASE("block attention accumulates each token's group-mean probability, as decode steps do", "[attention]") {
  // H2O's accumulated attention: a block of m tokens adds m (each token's G rows averaged), the same
  // as m decode steps, entry by entry.
  const int G = 3, dim = 32, m = 6;
  const std::size_t n = 30;
  Layer<float> block_layer(1, dim, n), step_layer(1, dim, n);
  block_layer.fill_random(n, 9);
  step_layer.fill_random(n, 9);
  auto& bh = block_layer.views[0];
  auto& sh = step_layer.views[0];
  testing::Rng rng(4);
  std::vector<float> q(static_cast<std::size_t>(G * m * dim)), out(q.size());
  for (auto& x : q) x = rng.normal();
  std::vector<Position> pos;
  for (int t = 0; t < m; ++t) pos.push_back(static_cast<Position>(n) - m + t);
  AttentionOptions acc;
  acc.accumulate_scores = true;
  block_attention(bh, q, G, pos, out, acc);
  double total = 0;
  for (std::size_t j = 0; j < n; ++j) total += bh.scores[j];
  CHECK(total == Approx(static_cast<double>(m)).epsilon(1e-5));
  std::vector<float> q1(static_cast<std::size_t>(G * dim)), o1(q1.size());
  for (int t = 0; t < m; ++t) {
    for (int g = 0; g < G; ++g)
      std::copy_n(q.data() + (g * m + t) * dim, dim, q1.data() + g * dim);
    auto visible = sh;
    visible.length = n - static_cast<std::size_t>(m - 1 - t);  // the token sees positions <= its own
    decode_attention(visible, q1, G, o1, acc);
  }
  for (std::size_t j = 0; j < n; ++j) {
    INFO("entry " << j);
    CHECK(bh.scores[j] == Approx(sh.scores[j]).margin(1e-6).epsilon(1e-4));
  }
}

TEST_CASE("attention rejects bad input with a clear message", "[attention][validation]") {
  Layer<float> layer(1, 64, 10);
  layer.fill_random(10, 1);
  auto head = layer.views[0];
  std::vector<float> q(128), out(128);
  CHECK_THROWS_WITH(decode_attention(head, std::span<const float>(q).first(100), 2, out),
                    Catch::Contains("expected 128 query floats"));
  q[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(decode_attention(head, q, 2, out), Catch::Contains("NaN or Inf"));
  q[5] = 0;
  auto bad = head;
  bad.keys = nullptr;
  CHECK_THROWS_WITH(decode_attention(bad, q, 2, out), Catch::Contains("null key or value buffer"));
  bad = head;
  bad.length = 11;
  CHECK_THROWS_WITH(decode_attention(bad, q, 2, out), Catch::Contains("exceeds capacity"));
  bad = head;
  bad.scores = nullptr;
  AttentionOptions acc;
  acc.accumulate_scores = true;
  CHECK_THROWS_WITH(decode_attention(bad, q, 2, out, acc), Catch::Contains("score buffer"));
}
