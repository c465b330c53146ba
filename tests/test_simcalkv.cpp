#include "support.hpp"

#include <catch2/catch.hpp>

#include <set>

using namespace simcalkv;
using testing::Layer;
using testing::Window;

namespace {

template <class T>
LayerRequest<T> request_for(Layer<T>& layer, const Window& window, Budget budget, const Executor* ex = nullptr) {
  LayerRequest<T> r;
  r.heads = layer.span();
  r.window = window.view;
  r.budget = budget;
  r.executor = ex;
  return r;
}

SimCalKVOptions calibrated_options(std::size_t sinks, int recent) {
  SimCalKVOptions o;
  o.sink_tokens = sinks;
  o.recent_tokens = recent;
  o.bias = BiasMode::calibrated;
  return o;
}

template <class T>
std::vector<float> dump_head(const HeadView<T>& h) {
  std::vector<float> out;
  std::vector<float> row(static_cast<std::size_t>(h.head_dim));
  for (std::size_t j = 0; j < h.length; ++j) {
    h.load_key(j, row.data());
    out.insert(out.end(), row.begin(), row.end());
    h.load_value(j, row.data());
    out.insert(out.end(), row.begin(), row.end());
    out.push_back(h.bias[j]);
    out.push_back(static_cast<float>(h.positions[j]));
  }
  return out;
}

}  // namespace

TEST_CASE("calibrated merge reproduces the single window query's attention output", "[simcalkv]") {
  for (auto search : {SimilaritySearch::local, SimilaritySearch::exact}) {
    const int dim = 64;
    const std::size_t n = 600;
    Layer<float> layer(2, dim, n);
    layer.fill_random(n, 21);
    Window window(2, 1, dim, n, 22);  // G = 1, W = 1
    auto options = calibrated_options(4, 1);
    options.search = search;
    const SimCalKV policy(options);

    std::vector<std::vector<double>> before;
    for (int h = 0; h < 2; ++h) before.push_back(testing::naive_attention(layer.views[static_cast<std::size_t>(h)], window.view.query(h, 0), 0.125f));
    Workspace ws;
    const auto stats = policy.compress(request_for(layer, window, Budget::keep_fraction(0.25)), ws);
    CHECK(stats.entries_after == 2 * 150);
    CHECK(stats.merged == 2 * 450);
    CHECK(stats.evicted == 0);
    for (int h = 0; h < 2; ++h) {
      const auto& head = layer.views[static_cast<std::size_t>(h)];
      std::vector<float> out(dim);
      decode_attention(head, std::span<const float>(window.view.query(h, 0), dim), 1, out);
      const double err = testing::relative_error(before[static_cast<std::size_t>(h)], out.data());
      INFO("search " << static_cast<int>(search) << " head " << h);
      CHECK(err < 1e-5);
    }
  }
}

TEST_CASE("compression keeps the budget, sorted positions, protected and untouched entries", "[simcalkv]") {
  const int dim = 64, G = 4, W = 8;
  const std::size_t n = 333;
  Layer<float> layer(2, dim, n);
  layer.fill_random(n, 5);
  const testing::Snapshot<float> original(layer);
  Window window(2 * G, W, dim, n, 6);
  SimCalKVOptions options;
  options.sink_tokens = 4;
  const SimCalKV policy(options);
  Workspace ws;
  const std::size_t budget = 100;
  const auto stats = policy.compress(request_for(layer, window, Budget::entries(budget)), ws);
  CHECK(stats.entries_before == 2 * n);
  CHECK(stats.entries_after == 2 * budget);
  CHECK(stats.merged + stats.evicted == 2 * (n - budget));
  for (std::size_t h = 0; h < 2; ++h) {
    const auto& head = layer.views[h];
    REQUIRE(head.length == budget);
    std::set<Position> positions(head.positions, head.positions + head.length);
    for (std::size_t j = 1; j < head.length; ++j) CHECK(head.positions[j - 1] < head.positions[j]);
    for (Position p = 0; p < 4; ++p) CHECK(positions.count(p) == 1);
    for (Position p = static_cast<Position>(n) - W; p < static_cast<Position>(n); ++p) CHECK(positions.count(p) == 1);
    // Entries that neither merged nor received a merge are bit-for-bit the originals.
    const auto& plan = ws.head(h).plan;
    std::size_t untouched = 0;
    for (std::size_t slot = 0; slot < head.length; ++slot) {
      if (plan.row_of_slot[slot] >= 0) continue;
      ++untouched;
      const auto src = h * n + static_cast<std::size_t>(head.positions[slot]);
      CHECK(std::memcmp(head.key(slot), original.keys.data() + src * dim, dim * sizeof(float)) == 0);
      CHECK(std::memcmp(head.value(slot), original.values.data() + src * dim, dim * sizeof(float)) == 0);
      CHECK(head.bias[slot] == 0.0f);
    }
    CHECK(untouched > 0);
  }
}

TEST_CASE("GQA window scores match a naive implementation", "[simcalkv][scoring]") {
  const int dim = 32, G = 4, W = 6, kv_head = 1;
  const std::size_t n = 77;
  Layer<float> layer(2, dim, n);
  layer.fill_random(n, 9);
  for (std::size_t j = 0; j < n; ++j) layer.views[1].bias[j] = 0.3f * static_cast<float>(j % 4);
  Window window(2 * G, W, dim, n, 10);
  HeadScratch s;
  kernels::load_keys(layer.views[1], s);
  kernels::score_window(layer.views[1], window.view, kv_head, G, s);
  std::vector<double> naive(n, 0.0);
  const double scale = 1.0 / std::sqrt(double(dim));
  for (int g = 0; g < G; ++g)
    for (int t = 0; t < W; ++t) {
      const float* q = window.view.query(kv_head * G + g, t);  // query heads 4..7 read KV head 1
      std::vector<double> logits(n);
      double m = -INFINITY;
      for (std::size_t j = 0; j < n; ++j) {
        if (layer.views[1].positions[j] > window.positions[static_cast<std::size_t>(t)]) {
          logits[j] = -INFINITY;
          continue;
        }
        double dotp = 0;
        for (int i = 0; i < dim; ++i) dotp += double(q[i]) * *layer.views[1].key(j, i);
        logits[j] = scale * dotp + layer.views[1].bias[j];
        m = std::max(m, logits[j]);
      }
      double z = 0;
      for (auto l : logits) z += std::exp(l - m);
      for (std::size_t j = 0; j < n; ++j) naive[j] += std::exp(logits[j] - m) / z / (G * W);
    }
  for (std::size_t j = 0; j < n; ++j) CHECK(s.score[j] == Approx(naive[j]).epsilon(1e-4).margin(1e-9));
  double total = 0;
  for (float x : s.score) total += x;
  CHECK(total == Approx(1.0).epsilon(1e-5));
}

TEST_CASE("strided and transposed views compress exactly like contiguous ones", "[simcalkv][layout]") {
  const int dim = 64;
  const std::size_t n = 200;
  Layer<float> rows(2, dim, n, testing::ValueLayout::rows);
  Layer<float> transposed(2, dim, n, testing::ValueLayout::transposed);
  rows.fill_random(n, 31);
  transposed.fill_random(n, 31);
  Window window(4, 8, dim, n, 32);
  const SimCalKV policy;
  Workspace ws1, ws2;
  policy.compress(request_for(rows, window, Budget::keep_fraction(0.5)), ws1);
  policy.compress(request_for(transposed, window, Budget::keep_fraction(0.5)), ws2);
  for (std::size_t h = 0; h < 2; ++h) CHECK(dump_head(rows.views[h]) == dump_head(transposed.views[h]));
}

TEST_CASE("results do not depend on the thread count", "[simcalkv][determinism]") {
  const int dim = 64;
  const std::size_t n = 500;
  Layer<float> a(4, dim, n), b(4, dim, n);
  a.fill_random(n, 41);
  b.fill_random(n, 41);
  Window window(16, 16, dim, n, 42);
  const SimCalKV policy;
  const ThreadExecutor two(2);
  Workspace ws1, ws2;
  const auto s1 = policy.compress(request_for(a, window, Budget::compress_ratio(0.75)), ws1);
  const auto s2 = policy.compress(request_for(b, window, Budget::compress_ratio(0.75), &two), ws2);
  CHECK(s1.merged == s2.merged);
  CHECK(std::memcmp(a.keys.data(), b.keys.data(), a.keys.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0);
  CHECK(a.bias == b.bias);
  CHECK(a.positions == b.positions);
}

TEMPLATE_TEST_CASE("16-bit storage compresses with float arithmetic", "[simcalkv][dtype]", half, bfloat16) {
  const int dim = 128;
  const std::size_t n = 300;
  Layer<TestType> layer(1, dim, n);
  layer.fill_random(n, 51);
  Window window(1, 1, dim, n, 52);
  const auto before = testing::naive_attention(layer.views[0], window.view.query(0, 0), 1.0f / std::sqrt(128.0f));
  const SimCalKV policy(calibrated_options(4, 1));
  Workspace ws;
  policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws);
  CHECK(layer.views[0].length == 150);
  std::vector<float> out(dim);
  decode_attention(layer.views[0], std::span<const float>(window.view.query(0, 0), dim), 1, out);
  // Merged keys and values are rounded to storage precision: 2^-8 for bf16, 2^-11 for half.
  const double tolerance = std::is_same_v<TestType, bfloat16> ? 2e-2 : 3e-3;
  CHECK(testing::relative_error(before, out.data()) < tolerance);
}

TEST_CASE("a failed compression leaves every head exactly as it was", "[simcalkv][validation]") {
  const int dim = 32;
  const std::size_t n = 120;
  Layer<float> layer(4, dim, n);
  layer.fill_random(n, 61);
  Window window(8, 4, dim, n, 62);
  const SimCalKV policy;
  Workspace ws;
  const ThreadExecutor two(2);

  SECTION("NaN in one head's values") {
    *layer.views[2].value(50, 3) = std::numeric_limits<float>::quiet_NaN();
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5), &two), ws),
                      Catch::Contains("KV head 2") && Catch::Contains("value of entry 50"));
    CHECK(snap.same_as(layer));
  }
  SECTION("Inf in a key") {
    *layer.views[3].key(7, 0) = std::numeric_limits<float>::infinity();
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws),
                      Catch::Contains("key of entry 7"));
    CHECK(snap.same_as(layer));
  }
  SECTION("budget below the protected entries") {
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::entries(5)), ws),
                      Catch::Contains("below the 8 protected entries"));
    CHECK(snap.same_as(layer));
  }
  SECTION("budget above the length") {
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::entries(n + 1)), ws),
                      Catch::Contains("exceeds the head's length"));
    CHECK(snap.same_as(layer));
  }
  SECTION("positions out of order in the last head") {
    std::swap(layer.views[3].positions[10], layer.views[3].positions[11]);
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws),
                      Catch::Contains("strictly ascending"));
    CHECK(snap.same_as(layer));
  }
  SECTION("NaN in the window queries") {
    window.queries[17] = std::numeric_limits<float>::quiet_NaN();
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws),
                      Catch::Contains("window: query"));
    CHECK(snap.same_as(layer));
  }
  SECTION("query heads not a multiple of KV heads") {
    window.view.num_query_heads = 6;
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws),
                      Catch::Contains("not a multiple of 4 KV heads"));
  }
  SECTION("mismatched head_dim") {
    window.view.head_dim = 16;
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws),
                      Catch::Contains("does not match the cache's 32"));
  }
  SECTION("overlapping strides") {
    layer.views[1].key_token_stride = 8;
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws),
                      Catch::Contains("make entries overlap"));
  }
  SECTION("null bias buffer") {
    layer.views[0].bias = nullptr;
    CHECK_THROWS_WITH(policy.compress(request_for(layer, window, Budget::keep_fraction(0.5)), ws),
                      Catch::Contains("null bias or positions"));
  }
}

TEST_CASE("bias modes: log_count gives log n for fresh tokens, none gives zero, bounded stays in range", "[simcalkv]") {
  const int dim = 32;
  const std::size_t n = 160;
  for (auto mode : {BiasMode::log_count, BiasMode::none, BiasMode::bounded}) {
    Layer<float> layer(1, dim, n);
    layer.fill_random(n, 71);
    Window window(2, 8, dim, n, 72);
    SimCalKVOptions o;
    o.bias = mode;
    const SimCalKV policy(o);
    Workspace ws;
    policy.compress(request_for(layer, window, Budget::entries(40)), ws);
    const auto& plan = ws.head(0).plan;
    // Count the members of each merged set from the plan's assignment.
    const auto& s = ws.head(0);
    std::vector<int> members(layer.views[0].length, 1);
    for (auto slot : s.matching.target)
      if (slot >= 0) ++members[static_cast<std::size_t>(slot)];
    for (std::size_t slot = 0; slot < layer.views[0].length; ++slot) {
      if (plan.row_of_slot[slot] < 0) continue;
      const float b = layer.views[0].bias[slot];
      const float log_n = std::log(static_cast<float>(members[slot]));
      if (mode == BiasMode::log_count) CHECK(b == Approx(log_n).epsilon(1e-5));
      if (mode == BiasMode::none) CHECK(b == 0.0f);
      if (mode == BiasMode::bounded) {
        CHECK(b >= 0.0f);
        CHECK(b <= log_n + 1e-5f);
      }
    }
  }
}

TEST_CASE("merged entries merge again consistently: their bias carries their mass", "[simcalkv]") {
  // Two rounds with one window query: calibrated merging stays exact for that query.
  const int dim = 64;
  const std::size_t n = 400;
  Layer<float> layer(1, dim, n);
  layer.fill_random(n, 81);
  Window window(1, 1, dim, n, 82);
  const auto before = testing::naive_attention(layer.views[0], window.view.query(0, 0), 0.125f);
  const SimCalKV policy(calibrated_options(4, 1));
  Workspace ws;
  policy.compress(request_for(layer, window, Budget::entries(200)), ws);
  policy.compress(request_for(layer, window, Budget::entries(60)), ws);
  CHECK(layer.views[0].length == 60);
  std::vector<float> out(dim);
  decode_attention(layer.views[0], std::span<const float>(window.view.query(0, 0), dim), 1, out);
  CHECK(testing::relative_error(before, out.data()) < 1e-5);
}

TEST_CASE("similarity threshold evicts dissimilar entries", "[simcalkv]") {
  const int dim = 32;
  const std::size_t n = 100;
  Layer<float> layer(1, dim, n);
  layer.fill_random(n, 91);
  Window window(1, 4, dim, n, 92);
  SimCalKVOptions o;
  o.similarity_threshold = 1.01f;  // no cosine reaches it: every candidate is evicted
  Workspace ws;
  const auto stats = SimCalKV(o).compress(request_for(layer, window, Budget::entries(30)), ws);
  CHECK(stats.evicted == 70);
  CHECK(stats.merged == 0);
  for (std::size_t j = 0; j < 30; ++j) CHECK(layer.views[0].bias[j] == 0.0f);
}

TEST_CASE("budget conventions", "[budget]") {
  CHECK(Budget::compress_ratio(0.5).for_length(1000) == 500);
  CHECK(Budget::compress_ratio(0.75).for_length(1000) == 250);
  CHECK(Budget::keep_fraction(0.1).for_length(1000) == 100);
  CHECK(Budget::entries(7).for_length(10) == 7);
  CHECK_THROWS_WITH(Budget::compress_ratio(1.0), Catch::Contains("[0, 1)"));
  CHECK_THROWS_WITH(Budget::keep_fraction(0.0), Catch::Contains("(0, 1]"));
  CHECK_THROWS_WITH(Budget::entries(11).for_length(10), Catch::Contains("exceeds"));
}
