// Compression during decoding: DecodeDriver over a KVCache with H2O, TOVA, SimCalKV and AdaKV.
#include "support.hpp"

#include <simcalkv/budget_schedule.hpp>
#include <simcalkv/policies/adakv.hpp>
#include <simcalkv/policies/layer_scheduled.hpp>
#include <simcalkv/policies/pyramidkv.hpp>
#include <simcalkv/decode_driver.hpp>
#include <simcalkv/policies/h2o.hpp>
#include <simcalkv/policies/snapkv.hpp>
#include <simcalkv/policies/tova.hpp>

#include <catch2/catch.hpp>

#include <set>

using namespace simcalkv;

namespace {

constexpr int kLayers = 2, kKV = 2, kGroup = 2, kQ = kKV * kGroup, kDim = 16;

/// A deterministic stream of keys, values and queries with positional locality.
struct TokenSource {
  testing::Rng rng;
  std::vector<float> drift;
  explicit TokenSource(std::uint64_t seed) : rng(seed), drift(static_cast<std::size_t>(kKV * kDim)) {
    for (auto& x : drift) x = rng.normal();
  }
  /// m tokens: keys and values [kv][m][d], queries [q][m][d] (queries near their group's keys).
  void next(std::size_t m, std::vector<float>& k, std::vector<float>& v, std::vector<float>& q) {
    const auto d = static_cast<std::size_t>(kDim);
    k.assign(kKV * m * d, 0.0f);
    v.assign(k.size(), 0.0f);
    q.assign(kQ * m * d, 0.0f);
    for (std::size_t t = 0; t < m; ++t)
      for (std::size_t h = 0; h < kKV; ++h)
        for (std::size_t i = 0; i < d; ++i) {
          float& x = drift[h * d + i];
          x = 0.9f * x + 0.45f * rng.normal();
          k[(h * m + t) * d + i] = x;
          v[(h * m + t) * d + i] = rng.normal();
          for (std::size_t g = 0; g < kGroup; ++g)
            q[((h * kGroup + g) * m + t) * d + i] = 0.5f * x + rng.normal();
        }
  }
};

struct Dump {
  std::vector<std::size_t> lengths;
  std::vector<float> data;
  std::vector<Position> positions;
  bool operator==(const Dump&) const = default;
};

Dump dump(const KVCache<float>& cache) {
  Dump out;
  for (int l = 0; l < kLayers; ++l)
    for (int h = 0; h < kKV; ++h) {
      const auto& v = cache.head(l, h);
      out.lengths.push_back(v.length);
      for (std::size_t j = 0; j < v.length; ++j) {
        out.data.insert(out.data.end(), v.key(j), v.key(j) + kDim);
        out.data.insert(out.data.end(), v.value(j), v.value(j) + kDim);
        out.data.push_back(v.bias[j]);
        out.data.push_back(v.scores ? v.scores[j] : 0.0f);
        out.positions.push_back(v.positions[j]);
      }
    }
  return out;
}

struct RunResult {
  Dump final_state;
  std::size_t compressions = 0;
  std::size_t max_length = 0;
};

/// Prefill `prompt` tokens, seed the driver with the prompt's last W queries, then decode `steps`
/// tokens: append, attend (accumulating H2O scores), step the driver. Checks the invariants after
/// every step.
template <class Policy>
RunResult run_decode(Policy policy, const DecodeOptions& options, std::size_t prompt, int steps,
                     const Executor* executor, std::uint64_t seed = 1) {
  KVCache<float> cache({kLayers, kKV, kDim}, 0, /*track_scores=*/true);
  DecodeDriver<Policy> driver(std::move(policy), kLayers, kQ, kDim, options);
  TokenSource source(seed);
  Workspace ws;
  std::vector<float> k, v, q;
  const auto W = static_cast<std::size_t>(options.window);
  for (int l = 0; l < kLayers; ++l) {
    source.next(prompt, k, v, q);
    cache.append(l, prompt, k, v);
    // The prompt's last W queries, [q][W][d].
    std::vector<float> window(kQ * W * kDim);
    std::vector<Position> positions(W);
    for (std::size_t t = 0; t < W; ++t) positions[t] = static_cast<Position>(prompt - W + t);
    for (std::size_t h = 0; h < kQ; ++h)
      for (std::size_t t = 0; t < W; ++t)
        std::copy_n(q.data() + (h * prompt + prompt - W + t) * kDim, kDim, window.data() + (h * W + t) * kDim);
    driver.record_block(l, window, positions);
    driver.maybe_compress(l, cache.layer(l), ws, executor);  // compress the prompt
  }
  RunResult result;
  std::vector<float> out(kGroup * kDim);
  for (int step = 0; step < steps; ++step) {
    for (int l = 0; l < kLayers; ++l) {
      const Position position = cache.next_position(l);
      source.next(1, k, v, q);
      cache.append(l, 1, k, v);
      for (int h = 0; h < kKV; ++h) {
        AttentionOptions attention;
        attention.accumulate_scores = true;
        decode_attention(cache.head(l, h), std::span<const float>(q).subspan(h * kGroup * kDim, kGroup * kDim), kGroup,
                         out, attention);
      }
      driver.step(l, cache.layer(l), q, position, ws, executor);
      REQUIRE(cache.next_position(l) == static_cast<Position>(prompt) + step + 1);
      for (int h = 0; h < kKV; ++h) {
        const auto& head = cache.head(l, h);
        result.max_length = std::max(result.max_length, head.length);
        REQUIRE(head.length <= driver.head_budget(l, h) + options.slack);
        for (std::size_t j = 1; j < head.length; ++j) REQUIRE(head.positions[j - 1] < head.positions[j]);
        REQUIRE(head.positions[head.length - 1] == position);  // the newest token is never evicted
        REQUIRE(head.positions[0] == 0);                       // nor the first sink
      }
    }
  }
  for (int l = 0; l < kLayers; ++l) result.compressions += driver.compressions(l);
  result.final_state = dump(cache);
  return result;
}

}  // namespace

TEST_CASE("DecodeDriver keeps a ring of the last W query tokens per layer", "[decode]") {
  DecodeDriver<> driver(make_policy("StreamingLLM"), 2, 2, 3, DecodeOptions{Budget::entries(8), 0, 3, true});
  auto query = [](Position p) {
    std::vector<float> q(2 * 3);
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 3; ++i) q[static_cast<std::size_t>(h * 3 + i)] = static_cast<float>(100 * p + 10 * h + i);
    return q;
  };
  for (Position p = 10; p < 15; ++p) driver.record(0, query(p), p);
  CHECK(driver.recorded(0) == 3);
  CHECK(driver.recorded(1) == 0);
  auto check_window = [&](const std::vector<Position>& expected) {
    const WindowView w = driver.window(0);
    REQUIRE(w.num_tokens == static_cast<int>(expected.size()));
    CHECK(w.num_query_heads == 2);
    CHECK(w.head_dim == 3);
    for (int t = 0; t < w.num_tokens; ++t) {
      CHECK(w.positions[t] == expected[static_cast<std::size_t>(t)]);
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 3; ++i)
          CHECK(w.query(h, t)[i] == static_cast<float>(100 * expected[static_cast<std::size_t>(t)] + 10 * h + i));
    }
  };
  check_window({12, 13, 14});

  SECTION("a block in the trace layout [heads][tokens][dim]") {
    std::vector<float> block(2 * 2 * 3);
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < 2; ++t)
        for (int i = 0; i < 3; ++i)
          block[static_cast<std::size_t>((h * 2 + t) * 3 + i)] = static_cast<float>(100 * (15 + t) + 10 * h + i);
    const std::vector<Position> positions{15, 16};
    driver.record_block(0, block, positions);
    check_window({14, 15, 16});
  }
  SECTION("bad calls record nothing") {
    CHECK_THROWS_WITH(driver.record(0, std::vector<float>(5), 15), Catch::Contains("expected 6 query floats"));
    auto nan = query(15);
    nan[4] = NAN;
    CHECK_THROWS_WITH(driver.record(0, nan, 15), Catch::Contains("NaN"));
    CHECK_THROWS_WITH(driver.record(0, query(14), 14), Catch::Contains("does not follow 14"));
    CHECK_THROWS_WITH(driver.record(2, query(15), 15), Catch::Contains("layer 2 out of range"));
    check_window({12, 13, 14});
  }
  SECTION("reset forgets") {
    driver.reset();
    CHECK(driver.recorded(0) == 0);
    CHECK(driver.window(0).num_tokens == 0);
    driver.record(0, query(3), 3);
    check_window({3});
  }
  CHECK_THROWS_WITH((DecodeDriver<>(make_policy("Full"), 1, 2, 3, DecodeOptions{Budget::entries(8), 0, 0, true})),
                    Catch::Contains("window must be positive"));
}

TEST_CASE("DecodeDriver budgets: entries, or a fraction of the prompt fixed at the first check", "[decode]") {
  KVCache<float> cache({1, 2, 8});
  TokenSource source(3);
  std::vector<float> k(2 * 64 * 8, 0.5f), v(k.size(), 0.25f);
  cache.append(0, 64, k, v);
  Workspace ws;
  DecodeDriver<> fraction(make_policy("StreamingLLM"), 1, 2, 8, DecodeOptions{Budget::keep_fraction(0.5), 4, 8, true});
  CHECK(fraction.budget(0) == 0);
  std::vector<float> q(2 * 8, 1.0f);
  const auto stats = fraction.step(0, cache.layer(0), q, 63, ws);
  CHECK(fraction.budget(0) == 32);
  CHECK(stats.entries_after == 2 * 32);
  CHECK(fraction.compressions(0) == 1);
  std::vector<float> k1(2 * 8, 0.5f), v1(k1.size(), 0.25f);
  for (Position p = 64; p < 100; ++p) {
    cache.append(0, 1, k1, v1);
    fraction.step(0, cache.layer(0), q, p, ws);
    CHECK(fraction.budget(0) == 32);  // fixed: not half of the growing length
    CHECK(cache.head(0, 0).length <= 36);
  }
  CHECK(fraction.compressions(0) == 1 + 36 / 5);  // every slack + 1 = 5 steps
  fraction.set_budget(0, 20);
  cache.append(0, 1, k1, v1);
  fraction.step(0, cache.layer(0), q, 100, ws);
  CHECK(cache.head(0, 1).length == 20);

  DecodeDriver<> entries(make_policy("StreamingLLM"), 1, 2, 8, DecodeOptions{Budget::entries(16), 0, 8, true});
  entries.maybe_compress(0, cache.layer(0), ws);
  CHECK(entries.budget(0) == 16);
  CHECK(cache.head(0, 0).length == 16);
  CHECK(entries.maybe_compress(0, cache.layer(0), ws).entries_before == 0);  // nothing to do
}

TEST_CASE("H2O, TOVA and SimCalKV in decode mode: budgets, positions, thread count", "[decode]") {
  const ThreadExecutor two(2);
  // TOVA with the sinks and the window protected: the loop checks that they survive.
  for (const char* spec : {"H2O", "TOVA:sinks=4,recent=-1", "SimCalKV", "SnapKV", "PyramidInfer"}) {
    for (const std::size_t slack : {std::size_t{0}, std::size_t{8}}) {
      INFO(spec << " slack " << slack);
      const DecodeOptions options{Budget::entries(32), slack, 8, true};
      const int steps = 240;
      const auto a = run_decode(make_policy(spec), options, 48, steps, nullptr);
      const auto b = run_decode(make_policy(spec), options, 48, steps, &two);
      CHECK(a.final_state == b.final_state);
      CHECK(a.compressions == b.compressions);
      // PyramidInfer's compounded cosine schedule keeps layer 0 whole (r_0 = 1), so at two layers
      // its budgets are uniform; longer models are checked in test_eviction_policies.cpp.
      if (std::string(spec) == "PyramidInfer")
        CHECK(layer_budgets(LayerSchedule::compound_cosine(0.9), kLayers, 32, 100, 14) == std::vector<std::size_t>{32, 32});
      {
        CHECK(a.max_length == 32 + slack);
        // Uniform budgets: every compression leaves exactly the budget.
        CHECK(a.compressions == static_cast<std::size_t>(kLayers) * (1 + steps / (slack + 1)));
        for (auto length : a.final_state.lengths) CHECK(length <= 32 + slack);
      }
    }
  }
}

TEST_CASE("per-step H2O evicts the lowest accumulated score; per-step TOVA the lowest newest attention",
          "[decode]") {
  // TOVA per KV head with 4 sinks and the window protected (the expected victims below are per head).
  for (const char* spec : {"H2O", "TOVA:select=head,sinks=4,recent=-1"}) {
    INFO(spec);
    const bool h2o = std::string(spec) == "H2O";
    const std::size_t B = 32, W = 8;
    KVCache<float> cache({1, kKV, kDim}, 0, true);
    DecodeDriver<> driver(make_policy(spec), 1, kQ, kDim, DecodeOptions{Budget::entries(B), 0, static_cast<int>(W), true});
    TokenSource source(9);
    Workspace ws;
    std::vector<float> k, v, q, out(kGroup * kDim);
    source.next(B, k, v, q);
    cache.append(0, B, k, v);
    for (int step = 0; step < 60; ++step) {
      const Position position = cache.next_position(0);
      source.next(1, k, v, q);
      cache.append(0, 1, k, v);
      AttentionOptions attention;
      attention.accumulate_scores = true;
      for (int h = 0; h < kKV; ++h)
        decode_attention(cache.head(0, h), std::span<const float>(q).subspan(h * kGroup * kDim, kGroup * kDim), kGroup,
                         out, attention);
      driver.record(0, q, position);
      // The expected victim of each head, before compressing.
      std::vector<Position> victim(kKV);
      const WindowView last = TOVA::last_query(driver.window(0));
      for (int h = 0; h < kKV; ++h) {
        const auto& head = cache.head(0, h);
        const std::size_t n = head.length;  // B + 1
        const std::size_t recent = h2o ? B / 2 : std::min<std::size_t>(W, static_cast<std::size_t>(step) + 1);
        std::vector<float> score(n);
        if (h2o) {
          std::copy_n(head.scores, n, score.begin());
        } else {
          HeadScratch s;
          kernels::load_keys(head, s);
          kernels::score_window(head, last, h, kGroup, s);
          score = s.score;
        }
        std::size_t worst = n;
        for (std::size_t j = 4; j + recent < n; ++j)
          if (worst == n || score[j] <= score[worst]) worst = j;  // ties: the later entry goes
        REQUIRE(worst < n);
        victim[static_cast<std::size_t>(h)] = head.positions[worst];
      }
      std::vector<std::set<Position>> before(kKV);
      for (int h = 0; h < kKV; ++h)
        before[static_cast<std::size_t>(h)] =
            std::set<Position>(cache.head(0, h).positions, cache.head(0, h).positions + cache.head(0, h).length);
      const auto stats = driver.maybe_compress(0, cache.layer(0), ws);
      CHECK(stats.evicted == kKV);
      for (int h = 0; h < kKV; ++h) {
        auto expected = before[static_cast<std::size_t>(h)];
        expected.erase(victim[static_cast<std::size_t>(h)]);
        const auto& head = cache.head(0, h);
        CHECK(std::set<Position>(head.positions, head.positions + head.length) == expected);
      }
    }
  }
}

TEST_CASE("calibrated merges stay exact for the newest query across decode rounds", "[decode][simcalkv]") {
  SimCalKVOptions o;
  o.bias = BiasMode::calibrated;
  o.recent_tokens = 1;
  KVCache<float> cache({1, kKV, kDim}, 0, true);
  DecodeDriver<SimCalKV> driver(SimCalKV(o), 1, kQ, kDim, DecodeOptions{Budget::entries(24), 6, 1, true});
  TokenSource source(17);
  Workspace ws;
  std::vector<float> k, v, q;
  source.next(40, k, v, q);
  cache.append(0, 40, k, v);
  std::size_t rounds = 0;
  for (int step = 0; step < 150; ++step) {
    const Position position = cache.next_position(0);
    source.next(1, k, v, q);
    cache.append(0, 1, k, v);
    std::vector<std::vector<double>> before;
    for (int h = 0; h < kKV; ++h)
      for (int g = 0; g < kGroup; ++g)
        before.push_back(testing::naive_attention(cache.head(0, h), q.data() + (h * kGroup + g) * kDim, 0.25f));
    const auto stats = driver.step(0, cache.layer(0), q, position, ws);
    if (stats.entries_before == 0) continue;
    ++rounds;
    CHECK(stats.merged > 0);
    for (int h = 0; h < kKV; ++h) {
      CHECK(cache.head(0, h).length == 24);
      std::vector<float> out(kGroup * kDim);
      decode_attention(cache.head(0, h), std::span<const float>(q).subspan(h * kGroup * kDim, kGroup * kDim), kGroup, out);
      for (int g = 0; g < kGroup; ++g) {
        // Calibration fits the group's two queries jointly; each output stays close.
        const double err = testing::relative_error(before[static_cast<std::size_t>(h * kGroup + g)], out.data() + g * kDim);
        CHECK(err < 0.2);
      }
    }
  }
  CHECK(rounds > 10);
  // Biases are finite and merged entries carry positive mass.
  for (int h = 0; h < kKV; ++h)
    for (std::size_t j = 0; j < cache.head(0, h).length; ++j) CHECK(std::isfinite(cache.head(0, h).bias[j]));
}

TEST_CASE("a single-query window: calibrated decode compression reproduces its output", "[decode][simcalkv]") {
  // One query head per KV head (G = 1) and W = 1: calibration is exact for that query, round
  // after round, although merged entries merge again.
  SimCalKVOptions o;
  o.bias = BiasMode::calibrated;
  o.recent_tokens = 1;
  const int d = 32;
  KVCache<float> cache({1, 1, d}, 0, false);
  DecodeDriver<SimCalKV> driver(SimCalKV(o), 1, 1, d, DecodeOptions{Budget::entries(20), 5, 1, true});
  testing::Rng rng(23);
  Workspace ws;
  std::vector<float> k(d), v(d), q(d), drift(d);
  for (auto& x : drift) x = rng.normal();
  std::size_t rounds = 0;
  for (int step = 0; step < 200; ++step) {
    for (int i = 0; i < d; ++i) {
      drift[static_cast<std::size_t>(i)] = 0.9f * drift[static_cast<std::size_t>(i)] + 0.45f * rng.normal();
      k[static_cast<std::size_t>(i)] = drift[static_cast<std::size_t>(i)];
      v[static_cast<std::size_t>(i)] = rng.normal();
      q[static_cast<std::size_t>(i)] = drift[static_cast<std::size_t>(i)] + rng.normal();
    }
    const Position position = cache.next_position(0);
    cache.append(0, 1, k, v);
    const auto before = testing::naive_attention(cache.head(0, 0), q.data(), 1.0f / std::sqrt(float(d)));
    const auto stats = driver.step(0, cache.layer(0), q, position, ws);
    if (stats.entries_before == 0) continue;
    ++rounds;
    std::vector<float> out(d);
    decode_attention(cache.head(0, 0), q, 1, out);
    CHECK(testing::relative_error(before, out.data()) < 1e-4);
  }
  CHECK(rounds > 20);
  CHECK(cache.next_position(0) == 200);
}

TEST_CASE("AdaKV in decode mode, concrete or type-erased", "[decode][adakv]") {
  const DecodeOptions options{Budget::entries(32), 0, 8, true};
  SECTION("DecodeDriver<AdaKV<SnapKV>> passes per-head budgets") {
    const ThreadExecutor two(2);
    const auto a = run_decode(AdaKV<SnapKV>(), options, 48, 120, nullptr, 5);
    const auto b = run_decode(AdaKV<SnapKV>(), options, 48, 120, &two, 5);
    CHECK(a.final_state == b.final_state);
    // Unequal heads, each layer within num_kv_heads * (budget + slack).
    CHECK(a.final_state.lengths[0] + a.final_state.lengths[1] <= kKV * 32);
    CHECK(a.final_state.lengths[2] + a.final_state.lengths[3] <= kKV * 32);
    CHECK(a.final_state.lengths[0] != a.final_state.lengths[1]);
  }
  SECTION("type-erased, AnyPolicy passes per-head budgets as well") {
    const auto a = run_decode(AdaKV<SnapKV>(), options, 48, 120, nullptr, 5);
    const auto b = run_decode(make_policy("AdaKV+SnapKV"), options, 48, 120, nullptr, 5);
    CHECK(a.final_state == b.final_state);
  }
}
