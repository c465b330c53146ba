// Budget allocation: layer schedules (uniform, PyramidKV's pyramid, PyramidInfer's geometric, D2O's
// density), LayerScheduled, AdaKV's per-head budgets, and per-head lengths in a KVCache.
#include "support.hpp"

#include <simcalkv/budget_schedule.hpp>
#include <simcalkv/policies/adakv.hpp>
#include <simcalkv/policies/layer_scheduled.hpp>
#include <simcalkv/policies/pyramidkv.hpp>
#include <simcalkv/policies/h2o.hpp>
#include <simcalkv/policies/snapkv.hpp>
#include <simcalkv/policies/streaming_llm.hpp>

#include <catch2/catch.hpp>

#include <numeric>
#include <set>

using namespace simcalkv;
using testing::Layer;
using testing::Window;

namespace {

template <class T>
LayerRequest<T> request_for(std::span<HeadView<T>> heads, const WindowView& window, Budget budget,
                            const Executor* ex = nullptr) {
  LayerRequest<T> r;
  r.heads = heads;
  r.window = window;
  r.budget = budget;
  r.executor = ex;
  return r;
}

/// Multiplies head h's keys by `factor`: larger keys give sharper (more concentrated) attention.
template <class T>
void scale_keys(Layer<T>& layer, std::size_t h, float factor) {
  auto& v = layer.views[h];
  for (std::size_t j = 0; j < v.length; ++j)
    for (int i = 0; i < v.head_dim; ++i) *v.key(j, i) = T(factor * to_float(*v.key(j, i)));
}

std::size_t sum(const std::vector<std::size_t>& v) { return std::accumulate(v.begin(), v.end(), std::size_t{0}); }

}  // namespace

TEST_CASE("layer schedules: closed forms", "[allocation][schedule]") {
  CHECK(layer_budgets(LayerSchedule::uniform(), 4, 50, 100, 10) == std::vector<std::size_t>{50, 50, 50, 50});

  // PyramidKV: C = 40 unprotected, top layer C / 20 = 2, bottom 2C - 2 = 78, linear between.
  CHECK(layer_budgets(LayerSchedule::pyramid(20), 5, 48, 1000, 8) == std::vector<std::size_t>{86, 67, 48, 29, 10});
  // Bottom layer capped at the length (92 unprotected); the top then gets 2C - 92.
  CHECK(layer_budgets(LayerSchedule::pyramid(20), 5, 80, 100, 8) == std::vector<std::size_t>{100, 90, 80, 70, 60});
  CHECK(layer_budgets(LayerSchedule::pyramid(20), 1, 80, 100, 8) == std::vector<std::size_t>{80});
  // beta = 1 is uniform.
  CHECK(layer_budgets(LayerSchedule::pyramid(1), 3, 30, 100, 4) == std::vector<std::size_t>{30, 30, 30});

  // PyramidInfer: shares proportional to decay^l, total kept.
  CHECK(layer_budgets(LayerSchedule::geometric(0.5), 3, 70, 1000, 0) == std::vector<std::size_t>{120, 60, 30});
  // Layer 0 capped at the length; its excess goes to the others by weight (73.3, 36.7).
  CHECK(layer_budgets(LayerSchedule::geometric(0.5), 3, 70, 100, 0) == std::vector<std::size_t>{100, 73, 37});
  CHECK(layer_budgets(LayerSchedule::geometric(1.0), 3, 70, 100, 5) == std::vector<std::size_t>{70, 70, 70});

  // D2O: shares proportional to softmax(-statistic): 151.94, 55.90, 92.16 rounded to total 300.
  CHECK(layer_budgets(LayerSchedule::density({0.0, 1.0, 0.5}), 3, 100, 1000, 0) ==
        std::vector<std::size_t>{152, 56, 92});
  // Protected entries come on top of the shares.
  CHECK(layer_budgets(LayerSchedule::density({0.0, 1.0, 0.5}), 3, 110, 1000, 10) ==
        std::vector<std::size_t>{162, 66, 102});
  CHECK(layer_budget(LayerSchedule::density({0.0, 1.0, 0.5}), 1, 3, 100, 1000, 0) == 56);
}

TEST_CASE("layer schedules keep the total, the bounds and their shape", "[allocation][schedule]") {
  testing::Rng rng(5);
  auto pick = [&](std::size_t lo, std::size_t hi) {
    return lo + static_cast<std::size_t>(rng.uniform() * static_cast<float>(hi - lo + 1)) % (hi - lo + 1);
  };
  for (int trial = 0; trial < 300; ++trial) {
    const int L = static_cast<int>(pick(1, 40));
    const std::size_t length = pick(1, 600);
    const std::size_t P = pick(0, std::min<std::size_t>(40, length));
    const std::size_t base = pick(P, length);
    std::vector<double> statistic(static_cast<std::size_t>(L));
    for (auto& s : statistic) s = rng.uniform();
    for (const auto& schedule : {LayerSchedule::uniform(), LayerSchedule::pyramid(20), LayerSchedule::pyramid(3),
                                 LayerSchedule::geometric(0.9), LayerSchedule::geometric(0.5),
                                 LayerSchedule::density(statistic)}) {
      INFO("trial " << trial << " " << schedule_name(schedule.kind) << " L=" << L << " length=" << length
                    << " P=" << P << " base=" << base);
      const auto b = layer_budgets(schedule, L, base, length, P);
      REQUIRE(b.size() == static_cast<std::size_t>(L));
      CHECK(sum(b) == static_cast<std::size_t>(L) * base);
      for (auto x : b) {
        CHECK(x >= P);
        CHECK(x <= length);
      }
      if (schedule.kind == ScheduleKind::pyramid || schedule.kind == ScheduleKind::geometric)
        CHECK(std::is_sorted(b.rbegin(), b.rend()));
      if (schedule.kind == ScheduleKind::density)
        for (std::size_t i = 0; i < b.size(); ++i)
          for (std::size_t j = 0; j < b.size(); ++j)
            if (statistic[i] < statistic[j]) CHECK(b[i] + 1 >= b[j]);  // rounding may tie-break by one
      for (int l = 0; l < L; ++l)
        CHECK(layer_budget(schedule, l, L, base, length, P) == b[static_cast<std::size_t>(l)]);
    }
  }
}

TEST_CASE("layer schedules reject what they cannot use", "[allocation][schedule][validation]") {
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::pyramid(), 4, 120, 100, 8), Catch::Contains("exceeds the length"));
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::pyramid(), 4, 6, 100, 8), Catch::Contains("below the 8 protected"));
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::pyramid(0.5), 4, 50, 100, 8), Catch::Contains("beta must be at least 1"));
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::geometric(0.0), 4, 50, 100, 8), Catch::Contains("decay"));
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::geometric(1.5), 4, 50, 100, 8), Catch::Contains("decay"));
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::density({1.0, 2.0}), 4, 50, 100, 8),
                    Catch::Contains("needs 4 per-layer statistics, got 2"));
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::density({1.0, NAN}), 2, 50, 100, 8), Catch::Contains("NaN"));
  CHECK_THROWS_WITH(layer_budget(LayerSchedule::uniform(), 4, 4, 50, 100, 8), Catch::Contains("layer 4 is outside"));
  CHECK_THROWS_WITH(layer_budgets(LayerSchedule::uniform(), 0, 50, 100, 8), Catch::Contains("num_layers"));
  CHECK_THROWS_WITH(LayerScheduled<SnapKV>(SnapKV(), LayerSchedule::geometric(-1.0)), Catch::Contains("decay"));
}

TEST_CASE("LayerScheduled applies a schedule to any policy", "[allocation][scheduled]") {
  const int L = 4, dim = 16;
  const std::size_t n = 160, base = 60;
  Window window(4, 8, dim, n, 3);
  Workspace ws;
  for (int l = 0; l < L; ++l) {
    INFO("layer " << l);
    Layer<float> a(2, dim, n), b(2, dim, n), c(2, dim, n);
    a.fill_random(n, 10 + static_cast<std::uint64_t>(l));
    b.fill_random(n, 10 + static_cast<std::uint64_t>(l));
    c.fill_random(n, 10 + static_cast<std::uint64_t>(l));
    auto ra = request_for(a.span(), window.view, Budget::entries(base));
    auto rb = request_for(b.span(), window.view, Budget::entries(base));
    auto rc = request_for(c.span(), window.view, Budget::entries(base));
    ra.layer = rb.layer = rc.layer = l;
    ra.num_layers = rb.num_layers = rc.num_layers = L;
    // LayerScheduled<SnapKV> with the pyramid schedule is PyramidKV.
    LayerScheduled<SnapKV>(SnapKV(), LayerSchedule::pyramid()).compress(ra, ws);
    PyramidKV().compress(rb, ws);
    CHECK(testing::Snapshot<float>(a).same_as(b));
    const std::size_t expected = layer_budget(LayerSchedule::pyramid(), l, L, base, n, 12);
    CHECK(a.views[0].length == expected);
    // A type-erased policy without per-head budgets gets the layer's budget as request.budget.
    const LayerScheduled<AnyPolicy> erased(make_policy("StreamingLLM"), LayerSchedule::geometric(0.7));
    erased.compress(rc, ws);
    // (Type-erased, the schedule cannot see the policy's protection, so it assumes none.)
    CHECK(c.views[1].length == layer_budget(LayerSchedule::geometric(0.7), l, L, base, n, 0));
    CHECK(erased.name() == "StreamingLLM");
  }
  SECTION("type-erased, unequal per-head budgets reach the policy") {
    Layer<float> a(2, dim, n), b(2, dim, n);
    a.fill_random(n, 99);
    b.fill_random(n, 99);
    a.views[1].length = b.views[1].length = n - 10;
    const LayerScheduled<AnyPolicy> erased(make_policy("SnapKV"), LayerSchedule::uniform());
    const std::vector<std::size_t> budgets{50, 40};
    erased.compress_with_budgets(request_for(a.span(), window.view, Budget::entries(40)), ws, budgets);
    SnapKV().compress_with_budgets(request_for(b.span(), window.view, Budget::entries(40)), ws, budgets);
    CHECK(a.views[0].length == 50);
    CHECK(a.views[1].length == 40);
    CHECK(testing::Snapshot<float>(a).same_as(b));
  }
}

namespace {

/// Pooled window scores of every head as AdaKV(SnapKV) sees them.
std::vector<std::vector<float>> snap_scores(Layer<float>& layer, const WindowView& window, int group,
                                            const Protection& protection) {
  std::vector<std::vector<float>> out(layer.views.size());
  for (std::size_t h = 0; h < layer.views.size(); ++h) {
    HeadScratch s;
    kernels::load_keys(layer.views[h], s);
    kernels::score_window(layer.views[h], window, static_cast<int>(h), group, s);
    detail::pooled_prefix_scores(s.score, layer.views[h].length, protection.recent, kernels::Pooling::max, 7, out[h]);
  }
  return out;
}

}  // namespace

TEST_CASE("AdaKV: per-head budgets sum to the layer's, keep the floor and follow the scores", "[allocation][adakv]") {
  const int heads = 4, G = 2, W = 8, dim = 32;
  const std::size_t n = 300, base = 60, P = 4 + W;
  Layer<float> layer(heads, dim, n);
  layer.fill_random(n, 21);
  scale_keys(layer, 0, 4.0f);  // peaked attention
  scale_keys(layer, 3, 0.1f);  // nearly flat attention
  Window window(heads * G, W, dim, n, 22);
  const auto scores = snap_scores(layer, window.view, G, Protection{4, static_cast<std::size_t>(W)});
  Workspace ws;

  for (const double alpha : {0.0, 0.2, 0.5, 1.0}) {
    INFO("alpha " << alpha);
    AdaKVOptions o;
    o.alpha = alpha;
    const AdaKV<SnapKV> ada(SnapKV(), o);
    const auto budgets = ada.allocate(request_for(layer.span(), window.view, Budget::entries(base)), ws,
                                      std::vector<std::size_t>(heads, base));
    CHECK(sum(budgets) == heads * base);
    const auto floor = P + static_cast<std::size_t>(std::ceil(alpha * static_cast<double>(base - P) - 1e-9));
    for (auto b : budgets) {
      CHECK(b >= floor);
      CHECK(static_cast<double>(b) >= alpha * static_cast<double>(base));
      CHECK(b <= n);
    }
    if (alpha == 1.0) CHECK(budgets == std::vector<std::size_t>(heads, base));
    if (alpha < 1.0) {
      // Joint top-K: the nearly flat head's scores (all about 1/n) lose to the other heads'
      // peaks, so it keeps only its floor, and the sharpest head gains.
      CHECK(budgets[3] == floor);
      CHECK(budgets[0] > base);
    }

    // Compress, then check the kept sets are the joint top under the floors: a head that got more
    // than its floor has no kept entry scoring below any other head's evicted entry.
    Layer<float> copy(heads, dim, n);
    copy.fill_random(n, 21);
    scale_keys(copy, 0, 4.0f);
    scale_keys(copy, 3, 0.1f);
    const auto stats = ada.compress(request_for(copy.span(), window.view, Budget::entries(base)), ws);
    CHECK(stats.entries_after == heads * base);
    std::vector<float> min_kept(heads, INFINITY), max_evicted(heads, -INFINITY);
    for (std::size_t h = 0; h < static_cast<std::size_t>(heads); ++h) {
      CHECK(copy.views[h].length == budgets[h]);
      std::vector<char> kept(n, 0);
      for (std::size_t slot = 0; slot < copy.views[h].length; ++slot)
        kept[static_cast<std::size_t>(copy.views[h].positions[slot])] = 1;
      for (std::size_t j = 4; j + W < n; ++j) {
        if (kept[j]) min_kept[h] = std::min(min_kept[h], scores[h][j]);
        else max_evicted[h] = std::max(max_evicted[h], scores[h][j]);
      }
    }
    for (std::size_t h = 0; h < static_cast<std::size_t>(heads); ++h) {
      if (budgets[h] <= floor) continue;
      for (std::size_t other = 0; other < static_cast<std::size_t>(heads); ++other)
        CHECK(min_kept[h] >= max_evicted[other]);
    }
  }

  SECTION("alpha outside [0, 1] is an error") {
    AdaKVOptions o;
    o.alpha = 1.5;
    CHECK_THROWS_WITH(AdaKV<SnapKV>(SnapKV(), o), Catch::Contains("alpha must be in [0, 1]"));
  }
  SECTION("budgets outside [protected, length] are errors") {
    const AdaKV<SnapKV> ada;
    const std::vector<std::size_t> low{60, 60, 5, 60}, high{60, n + 1, 60, 60};
    CHECK_THROWS_WITH(ada.allocate(request_for(layer.span(), window.view, Budget::entries(base)), ws, low),
                      Catch::Contains("KV head 2: budget 5 is below the 12 protected"));
    CHECK_THROWS_WITH(ada.allocate(request_for(layer.span(), window.view, Budget::entries(base)), ws, high),
                      Catch::Contains("KV head 1: budget 301 exceeds the length 300"));
  }
}

TEST_CASE("AdaKV composes: SimCalKV inside, a pyramid schedule outside", "[allocation][adakv]") {
  const int heads = 4, G = 2, W = 8, dim = 32, L = 4;
  const std::size_t n = 240, base = 64;
  Window window(heads * G, W, dim, n, 32);
  Workspace ws;

  Layer<float> a(heads, dim, n);
  a.fill_random(n, 31);
  scale_keys(a, 1, 3.0f);
  const auto stats = make_policy("AdaKV+SimCalKV").compress(request_for(a.span(), window.view, Budget::entries(base)), ws);
  CHECK(stats.entries_after == heads * base);
  CHECK(stats.merged > 0);
  std::set<std::size_t> lengths;
  for (const auto& v : a.views) lengths.insert(v.length);
  CHECK(lengths.size() > 1);

  // Ada-Pyramid: the layer's budget from the pyramid, split over heads adaptively.
  const LayerScheduled<AdaKV<SnapKV>> ada_pyramid(AdaKV<SnapKV>(), LayerSchedule::pyramid());
  for (int l = 0; l < L; ++l) {
    Layer<float> b(heads, dim, n);
    b.fill_random(n, 40 + static_cast<std::uint64_t>(l));
    scale_keys(b, 2, 3.0f);
    auto r = request_for(b.span(), window.view, Budget::entries(base));
    r.layer = l;
    r.num_layers = L;
    const auto s = ada_pyramid.compress(r, ws);
    CHECK(s.entries_after == heads * layer_budget(LayerSchedule::pyramid(), l, L, base, n, 4 + W));
  }
}

TEST_CASE("AdaKV heads really hold different lengths and KVCache frees the memory", "[allocation][adakv][kv_cache]") {
  const int kv_heads = 4, q_heads = 8, dim = 64, W = 8;
  const std::size_t n = 256, base = 64;
  KVCache<bfloat16> cache({1, kv_heads, dim});
  testing::Rng rng(7);
  std::vector<float> k(kv_heads * n * dim), v(k.size());
  for (std::size_t h = 0; h < static_cast<std::size_t>(kv_heads); ++h)
    for (std::size_t i = 0; i < n * dim; ++i) {
      // Head 0 sharp, head 3 flat: different budgets.
      const float scale = h == 0 ? 3.0f : h == 3 ? 0.05f : 1.0f;
      k[h * n * dim + i] = scale * rng.normal();
      v[h * n * dim + i] = rng.normal();
    }
  cache.append(0, n, k, v);
  const auto before = cache.reserved_bytes();
  Window window(q_heads, W, dim, n, 8);
  Workspace ws;
  const auto stats = AdaKV<SnapKV>().compress(request_for(cache.layer(0), window.view, Budget::entries(base)), ws);
  CHECK(stats.entries_after == kv_heads * base);
  CHECK(cache.total_entries() == kv_heads * base);
  std::set<std::size_t> lengths;
  for (int h = 0; h < kv_heads; ++h) lengths.insert(cache.head(0, h).length);
  CHECK(lengths.size() > 1);
  CHECK(cache.head(0, 3).length == 12 + 11);  // the flat head: protected + ceil(0.2 * 52)
  CHECK(cache.head(0, 0).length > base);
  cache.shrink_to_fit();
  CHECK(cache.reserved_bytes() == cache.used_bytes());
  CHECK(cache.reserved_bytes() * 4 == before);  // 4 x 256 -> 256 entries in all
  for (int h = 0; h < kv_heads; ++h) CHECK(cache.head(0, h).capacity == cache.head(0, h).length);
  CHECK(cache.next_position(0) == static_cast<Position>(n));
}

TEST_CASE("D2O's layer statistic: normalised head variance of window attention", "[allocation][d2o]") {
  const int dim = 16, W = 4;
  const std::size_t n = 64;
  Window window(2, W, dim, n, 51);
  Workspace ws;
  Layer<float> layer(2, dim, n);
  layer.fill_random(n, 52);
  for (std::size_t j = 0; j < n; ++j)
    for (int i = 0; i < dim; ++i) *layer.views[0].key(j, i) = 0.0f;  // flat attention: low variance
  scale_keys(layer, 1, 4.0f);                                        // sharp attention: high variance
  const auto r = request_for(layer.span(), window.view, Budget::entries(n));
  const double mixed = d2o_layer_statistic(r, ws);
  CHECK(mixed == Approx(0.5).margin(1e-3));  // heads normalise to 0 and ~1
  // A single KV head normalises to zero (D2O normalises across heads).
  Layer<float> single(1, dim, n);
  single.fill_random(n, 53);
  Window one(1, W, dim, n, 54);
  CHECK(d2o_layer_statistic(request_for(single.span(), one.view, Budget::entries(n)), ws) == 0.0);
  // Statistics in, budgets out: the sparser layer gets less.
  const auto b = layer_budgets(LayerSchedule::density({mixed, 0.0}), 2, 32, n, 8);
  CHECK(b[0] < b[1]);
  CHECK(b[0] + b[1] == 64);
  WindowView none = window.view;
  none.num_tokens = 0;
  CHECK_THROWS_WITH(d2o_layer_statistic(request_for(layer.span(), none, Budget::entries(n)), ws),
                    Catch::Contains("needs an observation window"));
}
