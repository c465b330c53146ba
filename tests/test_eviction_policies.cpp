// Eviction baselines: StreamingLLM, H2O, SnapKV, TOVA, PyramidKV, PyramidInfer (and AdaKV in
// front of them). Each rule is pinned on a small hand-made cache whose survivors are known, then
// every policy goes through the shared invariants.
#include "support.hpp"

#include <simcalkv/budget_schedule.hpp>
#include <simcalkv/policies/adakv.hpp>
#include <simcalkv/policies/layer_scheduled.hpp>
#include <simcalkv/policies/pyramidkv.hpp>
#include <simcalkv/policies/h2o.hpp>
#include <simcalkv/policies/keydiff.hpp>
#include <simcalkv/policies/knorm.hpp>
#include <simcalkv/policies/pyramid_infer.hpp>
#include <simcalkv/policies/snapkv.hpp>
#include <simcalkv/policies/streaming_llm.hpp>
#include <simcalkv/policies/tova.hpp>

#include <catch2/catch.hpp>

#include <set>

using namespace simcalkv;
using testing::Layer;
using testing::Window;

namespace {

template <class T>
LayerRequest<T> request_for(Layer<T>& layer, const WindowView& window, Budget budget, const Executor* ex = nullptr) {
  LayerRequest<T> r;
  r.heads = layer.span();
  r.window = window;
  r.budget = budget;
  r.executor = ex;
  r.rope_theta = 10000.0;  // ExpectedAttention needs a RoPE base; these layers have none
  return r;
}

/// Window queries set by hand: [num_q_heads][W][dim], at the given positions.
struct HandWindow {
  std::vector<float> queries;
  std::vector<Position> positions;
  int heads, tokens, dim;
  HandWindow(int num_q_heads, int dim_, std::vector<Position> pos)
      : queries(static_cast<std::size_t>(num_q_heads) * pos.size() * static_cast<std::size_t>(dim_), 0.0f),
        positions(std::move(pos)), heads(num_q_heads), tokens(static_cast<int>(positions.size())), dim(dim_) {}
  float* query(int head, int token) {
    return queries.data() + (static_cast<std::size_t>(head) * static_cast<std::size_t>(tokens) +
                             static_cast<std::size_t>(token)) * static_cast<std::size_t>(dim);
  }
  /// Query (head, token) = scale * unit vector along dimension `axis`.
  void set(int head, int token, int axis, float scale) {
    std::fill(query(head, token), query(head, token) + dim, 0.0f);
    query(head, token)[axis] = scale;
  }
  [[nodiscard]] WindowView view() const { return make_window_view(queries.data(), positions.data(), heads, tokens, dim); }
};

/// A layer of zero keys and distinct values at positions 0..n-1; spike(h, j, axis, c) sets a key.
template <class T>
void zero_layer(Layer<T>& layer, std::size_t n) {
  for (std::size_t h = 0; h < layer.views.size(); ++h) {
    auto& v = layer.views[h];
    for (std::size_t j = 0; j < n; ++j) {
      for (int i = 0; i < v.head_dim; ++i) {
        *v.key(j, i) = T(0.0f);
        *v.value(j, i) = T(static_cast<float>(h * 1000 + j) + 0.25f * static_cast<float>(i));
      }
      v.bias[j] = 0.0f;
      v.positions[j] = static_cast<Position>(j);
      v.scores[j] = 0.0f;
    }
    v.length = n;
  }
}

template <class T>
void spike(Layer<T>& layer, std::size_t h, std::size_t j, int axis, float c) {
  *layer.views[h].key(j, axis) = T(c);
}

template <class T>
std::vector<Position> kept_positions(const HeadView<T>& head) {
  return std::vector<Position>(head.positions, head.positions + head.length);
}

/// Every kept entry of `layer` is bit for bit the original entry at its position (head-major
/// layout, positions = original slots), bias included.
template <class T>
bool kept_entries_untouched(const Layer<T>& layer, const testing::Snapshot<T>& original) {
  const auto d = static_cast<std::size_t>(layer.dim);
  for (std::size_t h = 0; h < layer.views.size(); ++h) {
    const auto& head = layer.views[h];
    for (std::size_t slot = 0; slot < head.length; ++slot) {
      const std::size_t src = h * layer.capacity + static_cast<std::size_t>(head.positions[slot]);
      for (std::size_t i = 0; i < d; ++i) {
        const auto key = *head.key(slot, static_cast<int>(i));
        const auto value = *head.value(slot, static_cast<int>(i));
        const auto original_key = original.keys[src * d + i];
        const auto original_value = original.values[src * d + i];
        if (std::memcmp(&key, &original_key, sizeof(T)) != 0) return false;
        if (std::memcmp(&value, &original_value, sizeof(T)) != 0) return false;
      }
      if (std::memcmp(&head.bias[slot], &original.bias[src], sizeof(float)) != 0) return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("StreamingLLM keeps the sinks and the most recent entries", "[eviction][streaming_llm]") {
  Layer<float> layer(2, 8, 20);
  layer.fill_random(20, 1);
  const testing::Snapshot<float> original(layer);
  Window window(4, 2, 8, 20, 2);
  Workspace ws;
  const auto stats = StreamingLLM().compress(request_for(layer, window.view, Budget::entries(10)), ws);
  CHECK(stats.entries_after == 20);
  CHECK(stats.evicted == 20);
  CHECK(stats.merged == 0);
  for (const auto& head : layer.views)
    CHECK(kept_positions(head) == std::vector<Position>{0, 1, 2, 3, 14, 15, 16, 17, 18, 19});
  CHECK(kept_entries_untouched(layer, original));

  SECTION("no window tokens are needed") {
    Layer<float> other(1, 8, 20);
    other.fill_random(20, 3);
    WindowView empty = window.view;
    empty.num_tokens = 0;
    empty.num_query_heads = 1;
    StreamingLLMOptions o;
    o.sink_tokens = 2;
    StreamingLLM(o).compress(request_for(other, empty, Budget::entries(5)), ws);
    CHECK(kept_positions(other.views[0]) == std::vector<Position>{0, 1, 17, 18, 19});
  }
  SECTION("a budget below the sinks is an error") {
    Layer<float> other(1, 8, 20);
    other.fill_random(20, 3);
    const testing::Snapshot<float> snap(other);
    WindowView one = window.view;
    one.num_query_heads = 1;
    CHECK_THROWS_WITH(StreamingLLM().compress(request_for(other, one, Budget::entries(3)), ws),
                      Catch::Contains("below the 4 protected"));
    CHECK(snap.same_as(other));
  }
}

TEST_CASE("SnapKV keeps the window and the top pooled window scores", "[eviction][snapkv]") {
  const int dim = 4;
  const std::size_t n = 20;
  Layer<float> layer(1, dim, n);
  zero_layer(layer, n);
  HandWindow window(1, dim, {17, 18, 19});  // W = 3: entries 17..19 are the recent ones
  for (int t = 0; t < 3; ++t) window.set(0, t, 0, 4.0f);
  SnapKVOptions o;
  o.sink_tokens = 2;
  Workspace ws;

  SECTION("no pooling: exactly the spikes") {
    for (std::size_t j : {5u, 9u, 12u}) spike(layer, 0, j, 0, 8.0f);
    o.pooling = kernels::Pooling::none;
    SnapKV(o).compress(request_for(layer, window.view(), Budget::entries(8)), ws);
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{0, 1, 5, 9, 12, 17, 18, 19});
  }
  SECTION("max pooling spreads a spike over its kernel") {
    spike(layer, 0, 9, 0, 8.0f);
    o.pooling = kernels::Pooling::max;
    o.pool_kernel = 3;
    SnapKV(o).compress(request_for(layer, window.view(), Budget::entries(8)), ws);
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{0, 1, 8, 9, 10, 17, 18, 19});
  }
  SECTION("pooling does not reach into the window") {
    spike(layer, 0, 17, 0, 8.0f);  // a window entry: protected, and must not lift entry 16
    spike(layer, 0, 5, 0, 6.0f);
    o.pooling = kernels::Pooling::max;
    o.pool_kernel = 3;
    SnapKV(o).compress(request_for(layer, window.view(), Budget::entries(8)), ws);
    // Entry 5's pooled score is shared by 4 and 6; entry 16 would outrank them if pooling saw 17.
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{0, 1, 4, 5, 6, 17, 18, 19});
  }
  SECTION("defaults are max pooling, kernel 7, four sinks, recent = window") {
    CHECK(SnapKV().options().pooling == kernels::Pooling::max);
    CHECK(SnapKV().options().pool_kernel == 7);
    CHECK(SnapKV().protection(window.view()).sinks == 4);
    CHECK(SnapKV().protection(window.view()).recent == 3);
  }
  SECTION("needs window queries") {
    WindowView none = window.view();
    none.num_tokens = 0;
    CHECK_THROWS_WITH(SnapKV().compress(request_for(layer, none, Budget::entries(10)), ws),
                      Catch::Contains("needs an observation window"));
  }
}

TEST_CASE("H2O keeps the recent half and the heavy hitters by accumulated score", "[eviction][h2o]") {
  const int dim = 4;
  const std::size_t n = 20;
  Layer<float> layer(1, dim, n);
  zero_layer(layer, n);
  auto& head = layer.views[0];
  for (std::size_t j = 0; j < n; ++j) head.scores[j] = 0.01f * static_cast<float>(j % 3);
  head.scores[2] = 1.0f;
  head.scores[6] = 0.9f;
  head.scores[11] = 0.8f;
  head.scores[13] = 0.5f;
  const std::vector<float> scores_before(head.scores, head.scores + n);
  HandWindow window(1, dim, {19});
  window.set(0, 0, 1, 3.0f);
  Workspace ws;

  SECTION("defaults: 4 sinks, recent = budget / 2, heavy hitters fill the rest") {
    H2O().compress(request_for(layer, window.view(), Budget::entries(12)), ws);
    CHECK(kept_positions(head) == std::vector<Position>{0, 1, 2, 3, 6, 11, 14, 15, 16, 17, 18, 19});
    // Accumulated scores move with their entries and are not rewritten.
    for (std::size_t slot = 0; slot < head.length; ++slot)
      CHECK(head.scores[slot] == scores_before[static_cast<std::size_t>(head.positions[slot])]);
  }
  SECTION("the paper's rule: no sinks, equal heavy and recent budgets") {
    H2OOptions o;
    o.sink_tokens = 0;
    H2O(o).compress(request_for(layer, window.view(), Budget::entries(8)), ws);
    CHECK(kept_positions(head) == std::vector<Position>{2, 6, 11, 13, 16, 17, 18, 19});
  }
  SECTION("a fixed recent count") {
    H2OOptions o;
    o.sink_tokens = 0;
    o.recent_tokens = 2;
    H2O(o).compress(request_for(layer, window.view(), Budget::entries(6)), ws);
    CHECK(kept_positions(head) == std::vector<Position>{2, 6, 11, 13, 18, 19});
  }
  SECTION("greedy: one entry over budget evicts the lowest score outside the recent part") {
    H2OOptions o;
    o.sink_tokens = 0;
    o.recent_tokens = 4;
    for (std::size_t j = 0; j < n; ++j) head.scores[j] += 0.005f;
    head.scores[7] = 0.0f;
    head.scores[17] = 0.0f;  // recent: never evicted
    H2O(o).compress(request_for(layer, window.view(), Budget::entries(19)), ws);
    const auto kept = kept_positions(head);
    CHECK(kept.size() == 19);
    CHECK(std::count(kept.begin(), kept.end(), 7) == 0);
    CHECK(std::count(kept.begin(), kept.end(), 17) == 1);
  }
  SECTION("ties: the earlier entry is kept, the later one evicted") {
    H2OOptions o;
    o.sink_tokens = 0;
    o.recent_tokens = 4;
    H2O(o).compress(request_for(layer, window.view(), Budget::entries(19)), ws);
    const auto kept = kept_positions(head);  // entries 0, 3, 9, 12, 15 tie at 0: 15 goes
    CHECK(std::count(kept.begin(), kept.end(), 15) == 0);
    CHECK(std::count(kept.begin(), kept.end(), 0) == 1);
  }
}

TEST_CASE("H2O falls back to the window's accumulated attention and seeds the scores", "[eviction][h2o]") {
  const int dim = 16, G = 2, W = 4;
  const std::size_t n = 60, budget = 24;
  Layer<float> layer(2, dim, n);
  layer.fill_random(n, 11);
  Window window(2 * G, W, dim, n, 12);
  H2OOptions o;
  Workspace ws;

  // Expected: per head, a_j = W * mean window attention, then sinks + recent half + top rest.
  std::vector<std::vector<Position>> expected_positions(2);
  std::vector<std::vector<float>> expected_scores(2);
  for (int h = 0; h < 2; ++h) {
    HeadScratch s;
    kernels::load_keys(layer.views[static_cast<std::size_t>(h)], s);
    kernels::score_window(layer.views[static_cast<std::size_t>(h)], window.view, h, G, s);
    std::vector<float> a(s.score);
    for (auto& x : a) x *= static_cast<float>(W);
    std::vector<std::uint32_t> keep, scratch;
    kernels::select_top(a.data(), n, budget, Protection{4, budget / 2}, keep, scratch);
    for (auto j : keep) {
      expected_positions[static_cast<std::size_t>(h)].push_back(static_cast<Position>(j));
      expected_scores[static_cast<std::size_t>(h)].push_back(a[j]);
    }
  }

  SECTION("score buffer all zero: seeded") {
    H2O(o).compress(request_for(layer, window.view, Budget::entries(budget)), ws);
    for (std::size_t h = 0; h < 2; ++h) {
      CHECK(kept_positions(layer.views[h]) == expected_positions[h]);
      for (std::size_t slot = 0; slot < budget; ++slot) CHECK(layer.views[h].scores[slot] == expected_scores[h][slot]);
    }
  }
  SECTION("seeding off") {
    o.seed_scores = false;
    H2O(o).compress(request_for(layer, window.view, Budget::entries(budget)), ws);
    for (std::size_t h = 0; h < 2; ++h) {
      CHECK(kept_positions(layer.views[h]) == expected_positions[h]);
      for (std::size_t slot = 0; slot < budget; ++slot) CHECK(layer.views[h].scores[slot] == 0.0f);
    }
  }
  SECTION("no score buffer") {
    for (auto& v : layer.views) v.scores = nullptr;
    H2O(o).compress(request_for(layer, window.view, Budget::entries(budget)), ws);
    for (std::size_t h = 0; h < 2; ++h) CHECK(kept_positions(layer.views[h]) == expected_positions[h]);
  }
  SECTION("neither scores nor window is an error, and nothing changes") {
    WindowView none = window.view;
    none.num_tokens = 0;
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(H2O(o).compress(request_for(layer, none, Budget::entries(budget)), ws),
                      Catch::Contains("no accumulated scores") && Catch::Contains("all zero"));
    CHECK(snap.same_as(layer));
  }
  SECTION("a NaN accumulated score is an error") {
    layer.views[1].scores[7] = 1.0f;
    layer.views[1].scores[9] = std::numeric_limits<float>::quiet_NaN();
    const testing::Snapshot<float> snap(layer);
    CHECK_THROWS_WITH(H2O(o).compress(request_for(layer, window.view, Budget::entries(budget)), ws),
                      Catch::Contains("accumulated score of entry 9"));
    CHECK(snap.same_as(layer));
  }
}

TEST_CASE("TOVA keeps the top entries under the newest query, group-averaged, GQA-paired", "[eviction][tova]") {
  const int dim = 4, G = 2;
  const std::size_t n = 16;
  Layer<float> layer(2, dim, n);
  zero_layer(layer, n);
  for (std::size_t h = 0; h < 2; ++h) {
    spike(layer, h, 3, 0, 8.0f);
    spike(layer, h, 7, 0, 8.0f);
    spike(layer, h, 5, 1, 8.0f);
    spike(layer, h, 9, 1, 8.0f);
  }
  HandWindow window(2 * G, dim, {14, 15});
  // The older window token looks along axis 1 everywhere; the newest along axis 0 for KV head 0's
  // query heads (0, 1) and along axis 1 for KV head 1's (2, 3).
  for (int q = 0; q < 4; ++q) window.set(q, 0, 1, 4.0f);
  window.set(0, 1, 0, 4.0f);
  window.set(1, 1, 0, 4.0f);
  window.set(2, 1, 1, 4.0f);
  window.set(3, 1, 1, 4.0f);
  Workspace ws;

  SECTION("the paper's rule: one set for the layer, by all query heads' mean, nothing protected") {
    CHECK(TOVA().protection(window.view()).count(n) == 0);
    CHECK(TOVA().selects_per_layer());
    // Query head 2 now wants axis 0 as much as axis 1: over all four heads, 3 and 7 get more
    // than 5 and 9, and both KV heads keep {3, 7}, although KV head 1's own group prefers 5 and 9.
    window.set(2, 1, 0, 4.0f);
    const LayerPlan plan = TOVA().plan(request_for(layer, window.view(), Budget::entries(2)), ws);
    CHECK(plan.shared_selection);
    TOVA().compress(request_for(layer, window.view(), Budget::entries(2)), ws);
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{3, 7});
    CHECK(kept_positions(layer.views[1]) == std::vector<Position>{3, 7});
  }
  SECTION("select=head: a set per KV head, by its group's mean (GQA-paired)") {
    const auto tova = make_policy("TOVA:select=head");
    tova.compress(request_for(layer, window.view(), Budget::entries(2)), ws);
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{3, 7});  // newest query only
    CHECK(kept_positions(layer.views[1]) == std::vector<Position>{5, 9});  // query heads 2, 3, not 1
  }
  SECTION("sinks=4,recent=-1 protect 4 sinks and the window's length") {
    TOVAOptions o;
    o.sink_tokens = 4;
    o.recent_tokens = -1;
    o.per_layer = false;
    CHECK(TOVA(o).protection(window.view()).sinks == 4);
    CHECK(TOVA(o).protection(window.view()).recent == 2);
    TOVA(o).compress(request_for(layer, window.view(), Budget::entries(8)), ws);
    // Two free slots: entry 7, then the earliest of the equal rest, 4.
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{0, 1, 2, 3, 4, 7, 14, 15});
  }
  SECTION("mean over the group: an entry one query head wants beats one no head wants") {
    TOVAOptions o;
    o.per_layer = false;
    window.set(1, 1, 1, 4.0f);  // KV head 0: query head 0 wants 3 and 7, query head 1 wants 5 and 9
    TOVA(o).compress(request_for(layer, window.view(), Budget::entries(4)), ws);
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{3, 5, 7, 9});
  }
}

TEST_CASE("PyramidInfer weights recent queries more and shrinks budgets with depth", "[eviction][pyramid_infer]") {
  const int dim = 4;
  const std::size_t n = 12;
  HandWindow window(1, dim, {10, 11});
  window.set(0, 0, 0, 4.0f);  // older query wants entry 4
  window.set(0, 1, 1, 4.0f);  // newest query wants entry 6
  Workspace ws;
  for (const double weight : {1.2, 0.8}) {
    Layer<float> layer(1, dim, n);
    zero_layer(layer, n);
    spike(layer, 0, 4, 0, 8.0f);
    spike(layer, 0, 6, 1, 8.0f);
    PyramidInferOptions o;
    o.sink_tokens = 0;
    o.recent_ratio = 0.0;  // the newest entry alone is protected
    o.distance_weight = weight;
    PyramidInfer(o).compress(request_for(layer, window.view(), Budget::entries(2)), ws);
    INFO("distance_weight " << weight);
    CHECK(kept_positions(layer.views[0]) == (weight > 1.0 ? std::vector<Position>{6, 11}
                                                          : std::vector<Position>{4, 11}));
  }

  SECTION("the recent floor(0.2 n) + 1 entries and 4 sinks are protected") {
    Layer<float> layer(1, dim, n);
    zero_layer(layer, n);
    spike(layer, 0, 4, 0, 8.0f);
    spike(layer, 0, 6, 1, 8.0f);
    CHECK(PyramidInfer().recent_for(12) == 3);
    CHECK(PyramidInfer().recent_for(100) == 21);
    PyramidInfer().compress(request_for(layer, window.view(), Budget::entries(8)), ws);
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{0, 1, 2, 3, 6, 9, 10, 11});
    // A budget below them keeps the sinks and as many recent entries as fit.
    zero_layer(layer, n);
    PyramidInfer().compress(request_for(layer, window.view(), Budget::entries(5)), ws);
    CHECK(kept_positions(layer.views[0]) == std::vector<Position>{0, 1, 2, 3, 11});
  }

  SECTION("one kept set for the layer, by the mean over all query heads") {
    // KV head 0's query wants entry 4 a little, KV head 1's wants entry 6 a lot: both keep 6.
    Layer<float> layer(2, dim, n);
    zero_layer(layer, n);
    for (std::size_t h = 0; h < 2; ++h) {
      spike(layer, h, 4, 0, 8.0f);
      spike(layer, h, 6, 1, 8.0f);
    }
    HandWindow two(2, dim, {10, 11});
    two.set(0, 1, 0, 1.0f);
    two.set(1, 1, 1, 4.0f);
    PyramidInferOptions o;
    o.sink_tokens = 0;
    o.recent_ratio = 0.0;
    const LayerPlan plan = PyramidInfer(o).plan(request_for(layer, two.view(), Budget::entries(2)), ws);
    CHECK(plan.shared_selection);
    CHECK(plan.heads[0].keep == std::vector<std::uint32_t>{6, 11});
    CHECK(plan.heads[1].keep == std::vector<std::uint32_t>{6, 11});
    o.per_layer = false;  // select=head: KV head 0 keeps its own choice
    const LayerPlan own = PyramidInfer(o).plan(request_for(layer, two.view(), Budget::entries(2)), ws);
    CHECK(own.heads[0].keep == std::vector<std::uint32_t>{4, 11});
    CHECK(own.heads[1].keep == std::vector<std::uint32_t>{6, 11});
  }

  SECTION("compounded cosine layer budgets with the uniform total") {
    const int L = 8, d = 16;
    const std::size_t len = 400, base = 200;
    Window w(2, 8, d, len, 5);
    std::size_t total = 0;
    std::vector<std::size_t> lengths;
    for (int l = 0; l < L; ++l) {
      Layer<float> layer(2, d, len);
      layer.fill_random(len, 100 + static_cast<std::uint64_t>(l));
      auto r = request_for(layer, w.view, Budget::entries(base));
      r.layer = l;
      r.num_layers = L;
      PyramidInfer().compress(r, ws);
      CHECK(layer.views[0].length == layer.views[1].length);
      // 4 sinks + floor(0.2 * 400) + 1 recent = 85 protected.
      CHECK(layer.views[0].length == layer_budget(LayerSchedule::compound_cosine(0.9), l, L, base, len, 85));
      lengths.push_back(layer.views[0].length);
      total += layer.views[0].length;
    }
    CHECK(total == L * base);
    CHECK(std::is_sorted(lengths.rbegin(), lengths.rend()));
    CHECK(lengths.front() > lengths.back());
  }
}

TEST_CASE("PyramidInfer's layer budgets follow the official cosine decay, compounded, at 32 layers",
          "[eviction][pyramid_infer]") {
  // The authors' prefill: layer i keeps int(context_i * r_i) of its context for layer i + 1, with
  // r_i = 0.9 + 0.1 * (cos(pi i / 32) + 1) / 2 (configs/llama3_8b.json: decay 0.9, "cosine").
  const int L = 32;
  std::vector<double> official(L);
  long long context = 10'000'000;
  for (int i = 0; i < L; ++i) {
    official[static_cast<std::size_t>(i)] = static_cast<double>(context);
    const double r = 0.9 + 0.1 * (std::cos(std::numbers::pi * i / L) + 1.0) / 2.0;
    context = static_cast<long long>(static_cast<double>(context) * r);
  }
  double official_mean = 0.0;
  for (double c : official) official_mean += c / L;
  const std::size_t base = 4'000'000, length = 20'000'000;
  const auto ours = layer_budgets(LayerSchedule::compound_cosine(0.9), L, base, length, 0);
  std::size_t total = 0;
  for (int l = 0; l < L; ++l) {
    const double share = static_cast<double>(ours[static_cast<std::size_t>(l)]) / static_cast<double>(base);
    CHECK(share == Approx(official[static_cast<std::size_t>(l)] / official_mean).epsilon(1e-5));
    total += ours[static_cast<std::size_t>(l)];
  }
  CHECK(total == L * base);
  // 1.41x the mean budget at layer 0, 0.31x at layer 31 (decay^l would give 3.3x and 0.13x).
  CHECK(static_cast<double>(ours.front()) / static_cast<double>(base) == Approx(1.411).epsilon(1e-3));
  CHECK(static_cast<double>(ours.back()) / static_cast<double>(base) == Approx(0.313).epsilon(1e-3));
}

TEST_CASE("PyramidKV is SnapKV with linearly falling layer budgets", "[eviction][pyramidkv]") {
  const int L = 5, d = 16;
  const std::size_t len = 150, base = 50;
  Window w(4, 8, d, len, 7);
  Workspace ws1, ws2;
  std::size_t total = 0;
  std::size_t previous = len + 1;
  for (int l = 0; l < L; ++l) {
    Layer<float> a(2, d, len), b(2, d, len);
    a.fill_random(len, 200 + static_cast<std::uint64_t>(l));
    b.fill_random(len, 200 + static_cast<std::uint64_t>(l));
    auto r = request_for(a, w.view, Budget::entries(base));
    r.layer = l;
    r.num_layers = L;
    PyramidKV().compress(r, ws1);
    const std::size_t expected = layer_budget(LayerSchedule::pyramid(20.0), l, L, base, len, 12);
    const std::vector<std::size_t> budgets(2, expected);
    SnapKV().compress_with_budgets(request_for(b, w.view, Budget::entries(base)), ws2, budgets);
    for (std::size_t h = 0; h < 2; ++h) {
      CHECK(a.views[h].length == expected);
      CHECK(kept_positions(a.views[h]) == kept_positions(b.views[h]));
    }
    CHECK(expected <= previous);
    previous = expected;
    total += expected;
  }
  CHECK(total == L * base);
  CHECK(PyramidKV().options().beta == 20.0);
}

namespace {

struct PolicyCase {
  const char* spec;
  bool evicts;     // kept entries stay bit for bit (everything but AdaKV+SimCalKV)
  bool scheduled;  // per-layer budgets (PyramidKV, PyramidInfer)
  bool adaptive;   // per-head budgets (AdaKV)
};

const std::vector<PolicyCase>& policy_cases() {
  static const std::vector<PolicyCase> cases = {
      {"StreamingLLM", true, false, false}, {"H2O", true, false, false},          {"SnapKV", true, false, false},
      {"TOVA", true, false, false},         {"PyramidKV", true, true, false},     {"PyramidInfer", true, true, false},
      {"AdaKV+SnapKV", true, false, true},  {"AdaKV+SimCalKV", false, false, true}, {"AdaKV+H2O", true, false, true},
      {"AdaKV+TOVA", true, false, true},
  };
  return cases;
}

template <class T>
bool same_layer(const Layer<T>& a, const Layer<T>& b) {
  for (std::size_t h = 0; h < a.views.size(); ++h)
    if (a.views[h].length != b.views[h].length) return false;
  return std::memcmp(a.keys.data(), b.keys.data(), a.keys.size() * sizeof(T)) == 0 &&
         std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(T)) == 0 &&
         std::memcmp(a.bias.data(), b.bias.data(), a.bias.size() * sizeof(float)) == 0 &&
         std::memcmp(a.scores.data(), b.scores.data(), a.scores.size() * sizeof(float)) == 0 &&
         a.positions == b.positions;
}

}  // namespace

TEMPLATE_TEST_CASE("every eviction policy and allocator keeps the shared invariants", "[eviction][invariants]",
                   float, half) {
  const int heads = 4, G = 2, W = 8, dim = 32, L = 3, layer_index = 1;
  const std::size_t n = 200, budget = 80;
  const ThreadExecutor two(2);
  for (const auto& c : policy_cases()) {
    INFO("policy " << c.spec);
    const AnyPolicy policy = make_policy(c.spec);
    Layer<TestType> a(heads, dim, n), b(heads, dim, n);
    a.fill_random(n, 301);
    b.fill_random(n, 301);
    const testing::Snapshot<TestType> original(a);
    Window window(heads * G, W, dim, n, 302);
    Workspace ws1, ws2;
    auto ra = request_for(a, window.view, Budget::entries(budget));
    auto rb = request_for(b, window.view, Budget::entries(budget), &two);
    ra.layer = rb.layer = layer_index;
    ra.num_layers = rb.num_layers = L;
    const auto sa = policy.compress(ra, ws1);
    const auto sb = policy.compress(rb, ws2);

    // Determinism: the thread count changes nothing.
    CHECK(same_layer(a, b));
    CHECK(sa.entries_after == sb.entries_after);
    CHECK(sa.merged == sb.merged);

    // Budget: exact per head, or per layer for the allocators.
    std::size_t total = 0;
    for (const auto& head : a.views) total += head.length;
    CHECK(sa.entries_before == heads * n);
    CHECK(sa.entries_after == total);
    CHECK(sa.merged + sa.evicted == heads * n - total);
    if (c.scheduled) {
      const bool pyramidkv = std::string(c.spec) == "PyramidKV";
      const auto kind = pyramidkv ? LayerSchedule::pyramid() : LayerSchedule::compound_cosine();
      // PyramidInfer protects its 4 sinks and the recent floor(0.2 n) + 1 entries, the others the window.
      const std::size_t protected_count = pyramidkv ? 4 + W : 4 + std::min(PyramidInfer().recent_for(n), budget - 4);
      for (const auto& head : a.views)
        CHECK(head.length == layer_budget(kind, layer_index, L, budget, n, protected_count));
    } else if (c.adaptive) {
      CHECK(total == heads * budget);
      for (const auto& head : a.views) CHECK(head.length >= 4 + W);
    } else {
      for (const auto& head : a.views) CHECK(head.length == budget);
    }

    // Positions ascending; the sinks and the newest entry survive (TOVA protects none of them).
    for (const auto& head : a.views) {
      for (std::size_t j = 1; j < head.length; ++j) CHECK(head.positions[j - 1] < head.positions[j]);
      if (std::string(c.spec).find("TOVA") != std::string::npos) continue;
      for (Position p = 0; p < 4; ++p) CHECK(head.positions[p] == p);
      CHECK(head.positions[head.length - 1] == static_cast<Position>(n - 1));
    }
    if (c.evicts) {
      CHECK(sa.merged == 0);
      CHECK(kept_entries_untouched(a, original));
    }

    // Strong guarantee: NaN in one head's values throws and leaves every head as it was.
    Layer<TestType> bad(heads, dim, n);
    bad.fill_random(n, 303);
    *bad.views[2].value(50, 3) = TestType(std::numeric_limits<float>::quiet_NaN());
    const testing::Snapshot<TestType> snap(bad);
    auto rbad = request_for(bad, window.view, Budget::entries(budget), &two);
    rbad.layer = layer_index;
    rbad.num_layers = L;
    CHECK_THROWS_WITH(policy.compress(rbad, ws2), Catch::Contains("KV head 2") && Catch::Contains("value of entry 50"));
    CHECK(snap.same_as(bad));

    // A budget below the protected entries is an error, and changes nothing either (TOVA, as its
    // paper, protects nothing).
    if (!c.scheduled && std::string(c.spec).find("TOVA") == std::string::npos) {
      Layer<TestType> small(heads, dim, n);
      small.fill_random(n, 304);
      const testing::Snapshot<TestType> snap_small(small);
      auto rs = request_for(small, window.view, Budget::entries(3));
      CHECK_THROWS_AS(policy.compress(rs, ws1), Error);
      CHECK(snap_small.same_as(small));
    }
  }
}

TEST_CASE("eviction policies in the registry: names, options and errors", "[eviction][registry]") {
  for (const char* name : {"StreamingLLM", "H2O", "SnapKV", "TOVA", "PyramidKV", "PyramidInfer", "AdaKV+SnapKV",
                           "AdaKV+SimCalKV"}) {
    const auto names = policy_names();
    CHECK(std::find(names.begin(), names.end(), name) != names.end());
    CHECK(make_policy(name).name() == std::string_view(name));
  }
  CHECK(make_policy("snapkv:pooling=avg,pool_kernel=5").target<SnapKV>()->options().pooling == kernels::Pooling::avg);
  CHECK(make_policy("SnapKV:pool_kernel=5").target<SnapKV>()->options().pool_kernel == 5);
  CHECK(make_policy("h2o:recent=16,sinks=0").target<H2O>()->options().recent_tokens == 16);
  CHECK(make_policy("H2O:seed_scores=false").target<H2O>()->options().seed_scores == false);
  CHECK(make_policy("TOVA:sinks=0,recent=0").target<TOVA>()->options().sink_tokens == 0);
  CHECK(make_policy("StreamingLLM:sinks=8").target<StreamingLLM>()->options().sink_tokens == 8);
  CHECK(make_policy("PyramidKV:beta=10").target<PyramidKV>()->options().beta == 10.0);
  CHECK(make_policy("PyramidInfer:decay=0.8,distance_weight=1.5").target<PyramidInfer>()->options().decay == 0.8);
  CHECK(make_policy("PyramidInfer:schedule=geometric,recent_ratio=0.1,select=head").target<PyramidInfer>()->options().geometric);
  CHECK_THROWS_WITH(make_policy("PyramidInfer:select=cell"), Catch::Contains("select=cell is not one of: layer, head"));
  CHECK(make_policy("AdaKV+SnapKV:alpha=0.5").target<AdaKV<SnapKV>>()->options().alpha == 0.5);
  CHECK(make_policy("AdaKV+SnapKV:pooling=none").target<AdaKV<SnapKV>>()->inner().options().pooling ==
        kernels::Pooling::none);
  CHECK(make_policy("AdaKV+SimCalKV:bias=log_count").target<AdaKV<SimCalKV>>()->inner().options().bias ==
        BiasMode::log_count);
  // AdaKV+<Name> for any policy that takes per-head budgets.
  const auto h2o = make_policy("adakv+h2o:alpha=0.3,recent=8");
  CHECK(h2o.name() == "AdaKV+H2O");
  CHECK(h2o.spec() == "adakv+h2o:alpha=0.3,recent=8");
  REQUIRE(h2o.target<AdaKV<H2O>>());
  CHECK(h2o.target<AdaKV<H2O>>()->inner().options().recent_tokens == 8);
  CHECK(make_policy("AdaKV+TOVA").name() == "AdaKV+TOVA");
  CHECK(make_policy("AdaKV+PyramidInfer").name() == "AdaKV+PyramidInfer");
  CHECK(make_policy("AdaKV+KeepKV").name() == "AdaKV+KeepKV");  // merging policies compose too
  CHECK(make_policy("AdaKV+NlerpKV").name() == "AdaKV+NlerpKV");

  CHECK_THROWS_WITH(make_policy("SnapKV:colour=red"),
                    Catch::Contains("unknown option 'colour'") && Catch::Contains("pool_kernel"));
  CHECK_THROWS_WITH(make_policy("AdaKV+SnapKV:colour=red"),
                    Catch::Contains("unknown option 'colour'") && Catch::Contains("alpha") &&
                        Catch::Contains("pooling"));
  CHECK_THROWS_WITH(make_policy("AdaKV+H2O:colour=red"), Catch::Contains("AdaKV+H2O: unknown option 'colour'"));
  CHECK_THROWS_WITH(make_policy("AdaKV+Full"), Catch::Contains("not a policy that takes per-head budgets") &&
                                                   Catch::Contains("SnapKV"));
  CHECK_THROWS_WITH(make_policy("AdaKV+SnapKV:alpha=2"), Catch::Contains("outside [0, 1]"));
  CHECK_THROWS_WITH(make_policy("PyramidKV:beta=0.5"), Catch::Contains("outside"));
  CHECK_THROWS_WITH(make_policy("SnapKV:pooling=median"), Catch::Contains("not one of: none, max, avg"));
  CHECK_THROWS_WITH(make_policy("H2O:recent=-2"), Catch::Contains("outside"));
}

TEST_CASE("a short prompt compresses as far as its protection allows under a fractional budget", "[eviction][budget]") {
  // 75 entries, a 32-query window: 4 sinks + 32 recent = 36 protected; compress_ratio 0.75 asks for 19.
  const std::size_t n = 75;
  for (const auto& name : policy_names()) {
    if (name == "Full") continue;
    INFO(name);
    Layer<float> layer(2, 16, n);
    layer.fill_random(n, 11);
    Window window(4, 32, 16, n, 12);
    Workspace ws;
    const AnyPolicy policy = make_policy(name);
    const auto stats = policy.compress(request_for(layer, window.view, Budget::compress_ratio(0.75)), ws);
    for (const auto& head : layer.views) {
      CHECK(head.length < n);    // compressed ...
      CHECK(head.length >= 19);  // ... but never below what was asked
      CHECK(head.length <= 36);  // ... and no further than the protection needs
      if (name == "TOVA" || name == "SimCalKV-paper") continue;  // protect nothing, as their papers
      CHECK(head.positions[0] == 0);
      if (name == "ExpectedAttention") continue;  // protects the sinks only, as kvpress's press
      CHECK(head.positions[head.length - 1] == static_cast<Position>(n - 1));
    }
    CHECK(stats.entries_after < stats.entries_before);
  }
  // An explicit entry count below the protected entries is still refused, and the cache is unchanged.
  Layer<float> layer(1, 16, n);
  layer.fill_random(n, 13);
  Window window(1, 32, 16, n, 14);
  Workspace ws;
  const testing::Snapshot<float> snap(layer);
  CHECK_THROWS_WITH(SnapKV().compress(request_for(layer, window.view, Budget::entries(19)), ws),
                    Catch::Contains("below the 36 protected entries"));
  CHECK(snap.same_as(layer));
  // With a fractional budget SnapKV keeps exactly the protection: 4 sinks and the 32 most recent.
  SnapKV().compress(request_for(layer, window.view, Budget::compress_ratio(0.75)), ws);
  CHECK(layer.views[0].length == 36);
}

namespace {

/// The kvpress rule with nothing protected: the top `budget` scores (ties to the earlier entry), ascending.
std::vector<Position> naive_top(const std::vector<double>& score, std::size_t budget) {
  std::vector<std::size_t> order(score.size());
  for (std::size_t j = 0; j < order.size(); ++j) order[j] = j;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return score[a] > score[b]; });
  order.resize(budget);
  std::sort(order.begin(), order.end());
  return std::vector<Position>(order.begin(), order.end());
}

}  // namespace

TEST_CASE("KNorm and KeyDiff keep what kvpress's KnormPress and KeyDiffPress keep (nothing protected)",
          "[eviction][knorm][keydiff]") {
  const std::size_t n = 97;  // odd, not a multiple of anything
  const int d = 12;
  for (std::size_t budget : {1u, 13u, 48u, 96u}) {
    Layer<float> layer(2, d, n);
    layer.fill_random(n, 31 + budget);
    Window window(4, 1, d, n, 7);
    std::vector<std::vector<double>> knorm(2), keydiff(2);
    for (int h = 0; h < 2; ++h) {
      const auto& v = layer.views[static_cast<std::size_t>(h)];
      std::vector<double> anchor(d, 0.0), norm(n);
      for (std::size_t j = 0; j < n; ++j) {
        double sq = 0;
        for (int i = 0; i < d; ++i) sq += double(*v.key(j, i)) * *v.key(j, i);
        norm[j] = std::sqrt(sq);
        knorm[h].push_back(-norm[j]);
        for (int i = 0; i < d; ++i) anchor[i] += *v.key(j, i) / norm[j] / n;
      }
      double an = 0;
      for (double a : anchor) an += a * a;
      an = std::sqrt(an);
      for (std::size_t j = 0; j < n; ++j) {
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += *v.key(j, i) * anchor[i];
        keydiff[h].push_back(-dot / (norm[j] * an));
      }
    }
    Layer<float> copy(2, d, n);
    copy.fill_random(n, 31 + budget);
    Workspace ws;
    KNorm(KNormOptions{0, 0}).compress(request_for(layer, window.view, Budget::entries(budget)), ws);
    KeyDiff(KeyDiffOptions{0, 0}).compress(request_for(copy, window.view, Budget::entries(budget)), ws);
    for (std::size_t h = 0; h < 2; ++h) {
      INFO("budget " << budget << ", head " << h);
      CHECK(kept_positions(layer.views[h]) == naive_top(knorm[h], budget));
      CHECK(kept_positions(copy.views[h]) == naive_top(keydiff[h], budget));
    }
  }
  // Defaults: the library-wide protection, and through the registry with kvpress's own rule.
  CHECK(make_policy("KNorm").name() == "KNorm");
  CHECK(make_policy("KeyDiff:sinks=0,recent=0").target<KeyDiff>()->options().recent_tokens == 0);
  CHECK(KNorm().options().sink_tokens == 4);
}
