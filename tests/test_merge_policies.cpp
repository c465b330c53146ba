// The merging baselines: KeepKV, CaM, KVMerger, D2O, LerpKV / SlerpKV / NlerpKV, SimCalKV-paper. Each rule is pinned
// down on small hand-made caches (keys placed by angle so that similarities and scores are known),
// with the expected entries computed independently in double; shared invariants run on random layers.
#include "support.hpp"

#include <simcalkv/policies/cam.hpp>
#include <simcalkv/policies/d2o.hpp>
#include <simcalkv/policies/interpolation.hpp>
#include <simcalkv/policies/keepkv.hpp>
#include <simcalkv/policies/kvmerger.hpp>
#include <simcalkv/policies/simcalkv_paper.hpp>
#include <simcalkv/registry.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numbers>
#include <set>
#include <string>
#include <vector>

using namespace simcalkv;
using testing::Layer;

namespace {

constexpr double kPi = std::numbers::pi;

/// r (cos deg, sin deg)
std::vector<float> polar(double r, double degrees) {
  const double a = degrees * kPi / 180.0;
  return {static_cast<float>(r * std::cos(a)), static_cast<float>(r * std::sin(a))};
}

struct Entry {
  std::vector<float> key, value;
  float bias = 0.0f;
  float score = 0.0f;
};

/// Fills head h of `layer` with `entries` at positions 0..n-1.
void fill(Layer<float>& layer, std::size_t h, const std::vector<Entry>& entries) {
  auto& view = layer.views[h];
  for (std::size_t j = 0; j < entries.size(); ++j) {
    for (int i = 0; i < layer.dim; ++i) {
      *view.key(j, i) = entries[j].key[static_cast<std::size_t>(i)];
      *view.value(j, i) = entries[j].value[static_cast<std::size_t>(i)];
    }
    view.bias[j] = entries[j].bias;
    view.scores[j] = entries[j].score;
    view.positions[j] = static_cast<Position>(j);
  }
  view.length = entries.size();
}

/// Window queries [heads][W][dim] with their positions.
struct Queries {
  std::vector<float> q;
  std::vector<Position> positions;
  WindowView view;
  Queries(int heads, std::vector<std::vector<float>> per_token, std::vector<Position> pos)
      : positions(std::move(pos)) {
    const int W = static_cast<int>(positions.size());
    const int dim = static_cast<int>(per_token[0].size());
    // per_token is [heads * W] rows in [head][token] order.
    for (const auto& row : per_token) q.insert(q.end(), row.begin(), row.end());
    view = make_window_view(q.data(), positions.data(), heads, W, dim);
  }
};

/// A copy of one head's entries in double, taken before compression.
struct Ref {
  std::vector<std::vector<double>> k, v;
  std::vector<double> b, score;
  std::vector<Position> pos;
  explicit Ref(const HeadView<float>& h) {
    for (std::size_t j = 0; j < h.length; ++j) {
      std::vector<double> kj, vj;
      for (int i = 0; i < h.head_dim; ++i) {
        kj.push_back(*h.key(j, i));
        vj.push_back(*h.value(j, i));
      }
      k.push_back(kj);
      v.push_back(vj);
      b.push_back(h.bias[j]);
      score.push_back(h.scores[j]);
      pos.push_back(h.positions[j]);
    }
  }
  [[nodiscard]] std::size_t size() const { return k.size(); }
  /// exp(logit_j - max) for one query (causal, bias included), and the normaliser.
  [[nodiscard]] std::vector<double> exp_logits(const float* q, Position qpos, double* sum = nullptr) const {
    const double tau = 1.0 / std::sqrt(static_cast<double>(k[0].size()));
    std::vector<double> l(size(), -INFINITY);
    double m = -INFINITY;
    for (std::size_t j = 0; j < size(); ++j) {
      if (pos[j] > qpos) continue;
      double dot = 0;
      for (std::size_t i = 0; i < k[j].size(); ++i) dot += q[i] * k[j][i];
      l[j] = tau * dot + b[j];
      m = std::max(m, l[j]);
    }
    double z = 0;
    for (auto& x : l) {
      x = std::exp(x - m);
      z += x;
    }
    if (sum) *sum = z;
    return l;
  }
  /// Mean window attention over the queries of one KV head's group (SnapKV score).
  [[nodiscard]] std::vector<double> window_score(const WindowView& w, int kv_head, int group) const {
    std::vector<double> s(size(), 0.0);
    const int R = group * w.num_tokens;
    for (int g = 0; g < group; ++g)
      for (int t = 0; t < w.num_tokens; ++t) {
        double z = 0;
        const auto e = exp_logits(w.query(kv_head * group + g, t), w.positions[t], &z);
        for (std::size_t j = 0; j < size(); ++j) s[j] += e[j] / z / R;
      }
    return s;
  }
  /// Window mass sum_q exp(s_j(q) - m_q).
  [[nodiscard]] std::vector<double> window_mass(const WindowView& w, int kv_head, int group) const {
    std::vector<double> s(size(), 0.0);
    for (int g = 0; g < group; ++g)
      for (int t = 0; t < w.num_tokens; ++t) {
        const auto e = exp_logits(w.query(kv_head * group + g, t), w.positions[t]);
        for (std::size_t j = 0; j < size(); ++j) s[j] += e[j];
      }
    return s;
  }
};

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

/// sum_i w_i x_i / sum_i w_i
std::vector<double> weighted_mean(const std::vector<std::vector<double>>& xs, const std::vector<double>& w) {
  std::vector<double> out(xs[0].size(), 0.0);
  double total = 0;
  for (std::size_t m = 0; m < xs.size(); ++m) {
    total += w[m];
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += w[m] * xs[m][i];
  }
  for (auto& x : out) x /= total;
  return out;
}

std::vector<double> key_of(const HeadView<float>& h, std::size_t slot) {
  std::vector<double> out;
  for (int i = 0; i < h.head_dim; ++i) out.push_back(*h.key(slot, i));
  return out;
}
std::vector<double> value_of(const HeadView<float>& h, std::size_t slot) {
  std::vector<double> out;
  for (int i = 0; i < h.head_dim; ++i) out.push_back(*h.value(slot, i));
  return out;
}
std::vector<Position> positions_of(const HeadView<float>& h) {
  return std::vector<Position>(h.positions, h.positions + h.length);
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol = 1e-5) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("component " << i);
    CHECK(got[i] == Approx(want[i]).margin(tol).epsilon(tol));
  }
}

/// Slot `slot` holds the original entry `j` bit for bit.
void check_untouched(const HeadView<float>& h, std::size_t slot, const Ref& ref, std::size_t j) {
  INFO("slot " << slot << " entry " << j);
  CHECK(h.positions[slot] == ref.pos[j]);
  for (int i = 0; i < h.head_dim; ++i) {
    CHECK(*h.key(slot, i) == static_cast<float>(ref.k[j][static_cast<std::size_t>(i)]));
    CHECK(*h.value(slot, i) == static_cast<float>(ref.v[j][static_cast<std::size_t>(i)]));
  }
  CHECK(h.bias[slot] == static_cast<float>(ref.b[j]));
  CHECK(h.scores[slot] == static_cast<float>(ref.score[j]));
}

LayerRequest<float> request_for(Layer<float>& layer, const WindowView& window, Budget budget,
                                const Executor* ex = nullptr) {
  LayerRequest<float> r;
  r.heads = layer.span();
  r.window = window;
  r.budget = budget;
  r.executor = ex;
  return r;
}

Entry entry(double r, double degrees, std::vector<float> value, float bias = 0.0f, float score = 0.0f) {
  return Entry{polar(r, degrees), std::move(value), bias, score};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// KeepKV

namespace {

/// The KeepKV cache: sink 0, candidates 1..5, recent 6. Two window queries: the older favours
/// entries near 10 degrees, the newer those near 100 degrees. Entry 2 already holds 2 votes.
std::vector<Entry> keepkv_entries() {
  return {entry(1, 180, {1, 0}),        entry(1, 30, {0, 1}),  entry(2, 10, {2, 2}, std::log(2.0f)),
          entry(1, 90, {3, -1}),        entry(2, 100, {0, 4}), entry(0.5, -120, {5, 5}),
          entry(1, 200, {-1, -2})};
}

/// KeepKV's scores in double (the authors' rule, one query head): the selection score
/// sum_t linspace(1, dw)[t] a_j(t) and the merge weight exp(b_j) * mean_{t sees j} a_j(t), where
/// a_j(t) is the softmax over the entries t sees of q_t . k_j / sqrt(d), the votes left out.
struct KeepKVReference {
  std::vector<double> selection, weight;
};
KeepKVReference keepkv_reference(const Ref& ref, const WindowView& w, double dw) {
  const int W = w.num_tokens;
  const std::size_t n = ref.size();
  const double tau = 1.0 / std::sqrt(static_cast<double>(ref.k[0].size()));
  KeepKVReference out{std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  std::vector<double> seen(n, 0.0);
  for (int t = 0; t < W; ++t) {
    const double lin = W > 1 ? 1.0 + (dw - 1.0) * t / (W - 1) : 1.0;
    std::vector<double> e(n, 0.0);
    double z = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
      if (ref.pos[j] > w.positions[static_cast<std::size_t>(t)]) continue;
      double dot = 0;
      for (std::size_t i = 0; i < ref.k[j].size(); ++i) dot += w.query(0, t)[i] * ref.k[j][i];
      e[j] = std::exp(tau * dot);
      z += e[j];
      seen[j] += 1;
    }
    for (std::size_t j = 0; j < n; ++j) {
      out.selection[j] += lin * e[j] / z;
      out.weight[j] += e[j] / z;
    }
  }
  for (std::size_t j = 0; j < n; ++j) out.weight[j] = seen[j] > 0 ? std::exp(ref.b[j]) * out.weight[j] / seen[j] : 0.0;
  return out;
}

/// Top `count` of entries [first, last) by score (ties: earlier), ascending.
std::vector<std::size_t> top_of(const std::vector<double>& s, std::size_t first, std::size_t last, std::size_t count) {
  std::vector<std::size_t> idx;
  for (std::size_t j = first; j < last; ++j) idx.push_back(j);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return s[a] > s[b]; });
  idx.resize(count);
  std::sort(idx.begin(), idx.end());
  return idx;
}

}  // namespace

TEST_CASE("KeepKV: recency-weighted scores without the votes choose the survivors; similar entries merge",
          "[merge][keepkv]") {
  // The naive reference of the authors' rule decides everything: survivors, matches at T = 0.8,
  // weights p * mean attention, summed votes.
  const auto q_old = polar(3.0, 10), q_new = polar(3.0, 100);
  Queries window(1, {q_old, q_new}, {5, 6});
  for (const double dw : {1.2, 3.0}) {
    INFO("distance_weight " << dw);
    Layer<float> layer(1, 2, 8);
    fill(layer, 0, keepkv_entries());
    const Ref ref(layer.views[0]);
    KeepKVOptions o;
    o.sink_tokens = 1;
    o.recent_tokens = 1;
    o.distance_weight = static_cast<float>(dw);
    Workspace ws;
    const auto stats = KeepKV(o).compress(request_for(layer, window.view, Budget::entries(5)), ws);
    const auto& h = layer.views[0];
    REQUIRE(h.length == 5);
    const auto want = keepkv_reference(ref, window.view, dw);
    std::vector<std::size_t> keep{0};
    for (auto j : top_of(want.selection, 1, 6, 3)) keep.push_back(j);
    keep.push_back(6);
    CHECK(positions_of(h) == std::vector<Position>(keep.begin(), keep.end()));
    // Per survivor, its set: itself and the removed entries whose best cosine (>= 0.8) is it.
    std::vector<std::vector<std::size_t>> sets(keep.size());
    std::size_t merged = 0;
    for (std::size_t e = 1; e < 6; ++e) {
      if (std::find(keep.begin(), keep.end(), e) != keep.end()) continue;
      std::size_t best = 0;
      for (std::size_t k = 1; k < keep.size(); ++k)
        if (cosine(ref.k[e], ref.k[keep[k]]) > cosine(ref.k[e], ref.k[keep[best]])) best = k;
      if (cosine(ref.k[e], ref.k[keep[best]]) >= 0.8) sets[best].push_back(e), ++merged;
    }
    CHECK(stats.merged == merged);
    CHECK(stats.evicted == 2 - merged);
    for (std::size_t k = 0; k < keep.size(); ++k) {
      if (sets[k].empty()) {
        check_untouched(h, k, ref, keep[k]);
        continue;
      }
      std::vector<std::vector<double>> ks{ref.k[keep[k]]}, vs{ref.v[keep[k]]};
      std::vector<double> w{want.weight[keep[k]]};
      double votes = std::exp(ref.b[keep[k]]);
      for (auto e : sets[k]) {
        ks.push_back(ref.k[e]);
        vs.push_back(ref.v[e]);
        w.push_back(want.weight[e]);
        votes += std::exp(ref.b[e]);
      }
      check_close(key_of(h, k), weighted_mean(ks, w));
      check_close(value_of(h, k), weighted_mean(vs, w));
      CHECK(h.bias[k] == Approx(std::log(votes)).epsilon(1e-6));
    }
    // The recency weight decides here: the newest query's favourite (entry 4) survives either way,
    // the older query's (entry 2, 10 degrees) only while the newest counts little more.
    if (dw == 1.2) CHECK(merged >= 1);
  }
}

TEST_CASE("KeepKV: the votes stay out of the selection score", "[merge][keepkv]") {
  // Entries 1 and 2 have the same key; entry 2 stands for 100 tokens (bias log 100). Without the
  // votes their scores tie and the earlier survives; entry 2 merges into it with its votes.
  std::vector<Entry> entries{entry(1, 180, {0, 0}), entry(2, 30, {1, 0}), entry(2, 30, {0, 1}, std::log(100.0f)),
                             entry(1, -90, {2, 2})};
  Queries window(1, {polar(2, 30)}, {3});
  Layer<float> layer(1, 2, 4);
  fill(layer, 0, entries);
  const Ref ref(layer.views[0]);
  KeepKVOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  Workspace ws;
  const auto stats = KeepKV(o).compress(request_for(layer, window.view, Budget::entries(3)), ws);
  const auto& h = layer.views[0];
  CHECK(positions_of(h) == std::vector<Position>{0, 1, 3});
  CHECK(stats.merged == 1);
  CHECK(h.bias[1] == Approx(std::log(101.0)).epsilon(1e-6));
  // Weights: p * mean attention, the two attentions equal, so 1 : 100.
  check_close(value_of(h, 1), {1.0 / 101, 100.0 / 101});
}

TEST_CASE("KeepKV: a lower threshold lets the dissimilar entry merge too", "[merge][keepkv]") {
  Queries window(1, {polar(3, 10), polar(3, 100)}, {6, 6});
  Layer<float> layer(1, 2, 8);
  fill(layer, 0, keepkv_entries());
  KeepKVOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  o.similarity_threshold = 0.7f;  // entry 5's best similarity is cos(40) = 0.77 (the recent entry)
  Workspace ws;
  const auto stats = KeepKV(o).compress(request_for(layer, window.view, Budget::entries(5)), ws);
  CHECK(stats.merged == 2);
  CHECK(stats.evicted == 0);
  CHECK(layer.views[0].bias[4] == Approx(std::log(2.0)).epsilon(1e-6));  // the recent entry took a vote
  CHECK(layer.views[0].bias[0] == 0.0f);
}

TEST_CASE("KeepKV runs at a decode step with a single query", "[merge][keepkv][decode]") {
  const int dim = 16;
  const std::size_t n = 60;
  Layer<float> layer(2, dim, n + 1);
  layer.fill_random(n, 3);
  testing::Window window(4, 1, dim, n, 4);  // G = 2, W = 1
  const KeepKV policy;                      // recent = the window: the newest entry
  Workspace ws;
  const auto stats = policy.compress(request_for(layer, window.view, Budget::entries(n - 1)), ws);
  CHECK(stats.entries_after == 2 * (n - 1));
  CHECK(stats.merged + stats.evicted == 2);
  for (const auto& h : layer.views) {
    REQUIRE(h.length == n - 1);
    CHECK(h.positions[h.length - 1] == static_cast<Position>(n - 1));
    for (std::size_t j = 0; j < h.length; ++j) CHECK((h.bias[j] == 0.0f || h.bias[j] == Approx(std::log(2.0f))));
  }
}

TEST_CASE("KeepKV scores and weights match the naive reference, recent entries corrected", "[merge][keepkv]") {
  // Three window queries at the last three positions over twelve entries with random votes: the
  // newest entries are seen by fewer queries, and their weight is the mean over those that see them.
  const int dim = 8;
  const std::size_t n = 12;
  Layer<float> layer(1, dim, n);
  layer.fill_random(n, 77);
  for (std::size_t j = 0; j < n; ++j) layer.views[0].bias[j] = std::log(1.0f + static_cast<float>(j % 3));
  testing::Window window(1, 3, dim, n, 78);
  const Ref ref(layer.views[0]);
  HeadScratch s;
  kernels::load_keys(layer.views[0], s);
  kernels::score_window(layer.views[0], window.view, 0, 1, s);
  std::vector<float> selection, weight;
  detail::keepkv_scores(layer.views[0], s, 1, 3, 1.2f, selection, weight);
  const auto want = keepkv_reference(ref, window.view, 1.2);
  for (std::size_t j = 0; j < n; ++j) {
    INFO("entry " << j);
    CHECK(selection[j] == Approx(want.selection[j]).epsilon(1e-5).margin(1e-9));
    CHECK(weight[j] == Approx(want.weight[j]).epsilon(1e-5).margin(1e-9));
  }
}

// ---------------------------------------------------------------------------------------------
// CaM

TEST_CASE("CaM: evicted values are spread over the next m kept values with probability min(1, a/mean)",
          "[merge][cam]") {
  // Sink 0, candidates 1..7, recent 8, 9. The query sits at position 5, so entries 6..9 get no
  // attention: 6 and 7 are evicted with probability 0. The mean is over the m kept entries that
  // follow the evicted one (those that would receive it), as the paper and kvpress's CAMPress.
  std::vector<Entry> entries;
  const double angles[] = {180, 0, 20, 40, 60, 80, 100, 120, 140, 160};
  const double radii[] = {1, 1.5, 3, 1, 3, 0.5, 1, 1, 1, 1};
  for (int j = 0; j < 10; ++j)
    entries.push_back(entry(radii[j], angles[j], {static_cast<float>(j), static_cast<float>(10 - 2 * j)}));
  Queries window(1, {polar(2, 30)}, {5});

  for (std::uint64_t seed : {0ull, 1ull, 2ull, 3ull, 12345ull}) {
    Layer<float> layer(1, 2, 10);
    fill(layer, 0, entries);
    const Ref ref(layer.views[0]);
    CaMOptions o;
    o.sink_tokens = 1;
    o.recent_tokens = 2;
    o.merge_span = 3;
    o.seed = seed;
    Workspace ws;
    LayerRequest<float> request = request_for(layer, window.view, Budget::entries(6));
    request.layer = 5;
    const auto stats = CaM(o).compress(request, ws);
    const auto& h = layer.views[0];
    REQUIRE(h.length == 6);

    const auto a = ref.window_score(window.view, 0, 1);
    const auto top = top_of(a, 1, 8, 3);
    std::vector<std::size_t> keep{0};
    keep.insert(keep.end(), top.begin(), top.end());
    keep.push_back(8);
    keep.push_back(9);
    CHECK(top == std::vector<std::size_t>{1, 2, 4});  // norm 1.5 at 0 degrees beats norm 1 at 40
    std::vector<Position> want_positions(keep.begin(), keep.end());
    CHECK(positions_of(h) == want_positions);

    std::vector<std::vector<double>> values;
    for (auto j : keep) values.push_back(ref.v[j]);
    std::size_t merged = 0;
    for (std::size_t e : {3, 5, 6, 7}) {
      std::size_t slot = 0;
      while (keep[slot] < e) ++slot;
      double mean = 0;
      const std::size_t last = std::min(keep.size(), slot + 3);
      for (std::size_t k = slot; k < last; ++k) mean += a[keep[k]] / static_cast<double>(last - slot);
      const double p = mean > 0 ? std::min(1.0, a[e] / mean) : (a[e] > 0 ? 1.0 : 0.0);
      if (e >= 6) CHECK(p == 0.0);
      if (!(CaM::draw(seed, 5, 0, static_cast<Position>(e)) < p)) continue;
      ++merged;
      for (std::size_t k = slot; k < std::min(keep.size(), slot + 3); ++k)
        for (std::size_t i = 0; i < 2; ++i) values[k][i] += ref.v[e][i] / 3.0;
    }
    INFO("seed " << seed);
    CHECK(stats.merged == merged);
    CHECK(stats.evicted == 4 - merged);
    for (std::size_t k = 0; k < keep.size(); ++k) {
      check_close(value_of(h, k), values[k]);
      for (std::size_t i = 0; i < 2; ++i)
        CHECK(*h.key(k, static_cast<int>(i)) == static_cast<float>(ref.k[keep[k]][i]));
      CHECK(h.bias[k] == 0.0f);
    }
  }
}

TEST_CASE("CaM: a certain merge reaches only the kept entries that follow; keys and biases stay", "[merge][cam]") {
  // Candidates 1..3 with one kept; the evicted entry 3 out-scores the entry after it, its whole
  // merge window (p = 1), and has only the recent entry after it: with m = 4 that entry gets
  // v_3 / 4 and the rest is lost.
  std::vector<Entry> entries{entry(1, 180, {1, 1}, 0.5f), entry(1, 0, {2, 0}), entry(3, 30, {0, 2}),
                             entry(2.5, 30, {4, 8}), entry(1, -90, {1, -1})};
  Queries window(1, {polar(2, 30)}, {4});
  Layer<float> layer(1, 2, 5);
  fill(layer, 0, entries);
  const Ref ref(layer.views[0]);
  CaMOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  o.merge_span = 4;
  Workspace ws;
  const auto stats = CaM(o).compress(request_for(layer, window.view, Budget::entries(3)), ws);
  const auto& h = layer.views[0];
  REQUIRE(positions_of(h) == std::vector<Position>{0, 2, 4});
  const auto a = ref.window_score(window.view, 0, 1);
  REQUIRE(a[3] > a[4]);  // p = 1 for entry 3, whose window is entry 4 alone
  // Entry 1: p = a_1 / mean(a_2, a_4), its window; whether it merges depends on the draw for seed 0.
  const bool one_merges = CaM::draw(0, 0, 0, 1) < a[1] / ((a[2] + a[4]) / 2);
  CHECK(stats.merged == (one_merges ? 2u : 1u));
  std::vector<double> v2 = ref.v[2], v4 = ref.v[4];
  for (std::size_t i = 0; i < 2; ++i) {
    v4[i] += ref.v[3][i] / 4;
    if (one_merges) {
      v2[i] += ref.v[1][i] / 4;
      v4[i] += ref.v[1][i] / 4;
    }
  }
  check_close(value_of(h, 1), v2);
  check_close(value_of(h, 2), v4);
  if (!one_merges) check_untouched(h, 1, ref, 2);
  check_untouched(h, 0, ref, 0);  // nothing comes before the sink's slot
  CHECK(h.bias[2] == 0.0f);
  CHECK(key_of(h, 2) == ref.k[4]);
}

TEST_CASE("CaM: the same seed repeats exactly, another seed may differ", "[merge][cam][determinism]") {
  const int dim = 32;
  const std::size_t n = 400;
  testing::Window window(8, 8, dim, n, 12);
  auto run = [&](std::uint64_t seed, const Executor* ex) {
    auto layer = std::make_unique<Layer<float>>(2, dim, n);
    layer->fill_random(n, 11);
    CaMOptions o;
    o.seed = seed;
    Workspace ws;
    CaM(o).compress(request_for(*layer, window.view, Budget::keep_fraction(0.3), ex), ws);
    return std::vector<float>(layer->values.begin(), layer->values.end());
  };
  const ThreadExecutor two(2);
  const auto a = run(42, nullptr);
  CHECK(a == run(42, nullptr));
  CHECK(a == run(42, &two));
  bool differs = false;
  for (std::uint64_t seed = 43; seed < 53 && !differs; ++seed) differs = run(seed, nullptr) != a;
  CHECK(differs);
  // The draw is a pure function of (seed, layer, head, position).
  CHECK(CaM::draw(1, 2, 3, 4) == CaM::draw(1, 2, 3, 4));
  CHECK(CaM::draw(1, 2, 3, 4) != CaM::draw(1, 2, 3, 5));
  CHECK(CaM::draw(1, 2, 3, 4) != CaM::draw(1, 2, 4, 4));
  CHECK(CaM::draw(1, 2, 3, 4) != CaM::draw(1, 3, 3, 4));
  CHECK(CaM::draw(1, 2, 3, 4) != CaM::draw(2, 2, 3, 4));
  double mean = 0;
  for (int p = 0; p < 10000; ++p) mean += CaM::draw(9, 0, 0, p);
  CHECK(mean / 10000 == Approx(0.5).margin(0.02));
}

// ---------------------------------------------------------------------------------------------
// KVMerger

namespace {

/// Gaussian-kernel merge of entries `set` around `pivot` (sigma <= 0: adaptive).
void gaussian_merge(const Ref& ref, const std::vector<std::size_t>& set, std::size_t pivot, double sigma,
                    std::vector<double>& key, std::vector<double>& value) {
  std::vector<double> dist;
  double sum = 0;
  for (auto j : set) {
    double sq = 0;
    for (std::size_t i = 0; i < ref.k[j].size(); ++i) sq += std::pow(ref.k[j][i] - ref.k[pivot][i], 2);
    dist.push_back(sq);
    sum += std::sqrt(sq);
  }
  if (sigma <= 0) sigma = sum / (std::sqrt(2.0) * static_cast<double>(set.size()));
  std::vector<double> g;
  std::vector<std::vector<double>> ks, vs;
  for (std::size_t m = 0; m < set.size(); ++m) {
    g.push_back(std::exp(-dist[m] / (2 * sigma * sigma)));
    ks.push_back(ref.k[set[m]]);
    vs.push_back(ref.v[set[m]]);
  }
  key = weighted_mean(ks, g);
  value = weighted_mean(vs, g);
}

std::vector<Entry> kvmerger_entries() {
  // Runs of neighbouring keys with cosine >= 0.8 (36.9 degrees): [1..5], [6..8], [9, 10]; 0, 11, 12
  // stand alone. Entries 2, 4, 7 have norm 3 and score highest.
  const double angles[] = {180, 0, 10, 18, 30, 38, 90, 100, 110, -90, -80, 150, 45};
  std::vector<Entry> e;
  for (int j = 0; j < 13; ++j) {
    const double r = (j == 2 || j == 4 || j == 7) ? 3.0 : 1.0;
    e.push_back(entry(r, angles[j], {static_cast<float>(j), static_cast<float>(j * j % 7)}, 0.0f,
                      0.25f * static_cast<float>(j)));
  }
  return e;
}

}  // namespace

TEST_CASE("KVMerger: runs of similar neighbours merge into their kept entry with Gaussian weights",
          "[merge][kvmerger]") {
  Queries window(1, {polar(std::sqrt(2.0), 60)}, {12});
  for (const float sigma : {0.0f, 0.5f}) {
    Layer<float> layer(1, 2, 13);
    fill(layer, 0, kvmerger_entries());
    const Ref ref(layer.views[0]);
    KVMergerOptions o;
    o.sink_tokens = 1;
    o.recent_tokens = 1;
    o.sigma = sigma;
    Workspace ws;
    const auto stats = KVMerger(o).compress(request_for(layer, window.view, Budget::entries(5)), ws);
    const auto& h = layer.views[0];
    INFO("sigma " << sigma);
    REQUIRE(positions_of(h) == std::vector<Position>{0, 2, 4, 7, 12});
    // Run [1..5] holds kept 2 and 4; its weakest link between them is (3, 4) at 12 degrees, so the
    // sets are {1, 2, 3} -> 2 and {4, 5} -> 4. {6, 7, 8} -> 7. {9, 10} and {11} have no kept entry.
    CHECK(stats.merged == 5);
    CHECK(stats.evicted == 3);
    std::vector<double> k, v;
    gaussian_merge(ref, {1, 2, 3}, 2, sigma, k, v);
    check_close(key_of(h, 1), k);
    check_close(value_of(h, 1), v);
    CHECK(h.scores[1] == Approx(0.25 * (1 + 2 + 3)));
    gaussian_merge(ref, {4, 5}, 4, sigma, k, v);
    check_close(key_of(h, 2), k);
    check_close(value_of(h, 2), v);
    gaussian_merge(ref, {6, 7, 8}, 7, sigma, k, v);
    check_close(key_of(h, 3), k);
    check_close(value_of(h, 3), v);
    for (std::size_t slot = 0; slot < 5; ++slot) CHECK(h.bias[slot] == 0.0f);  // no bias
    check_untouched(h, 0, ref, 0);
    check_untouched(h, 4, ref, 12);
  }
}

TEST_CASE("KVMerger: the pivot is the set's best scorer even when the kept entry is a protected one",
          "[merge][kvmerger]") {
  // One run 0..3; only the recent entry 3 is kept (budget 1), so the whole run merges into its slot
  // around entry 2, the highest-attention member.
  std::vector<Entry> entries{entry(1, 0, {1, 0}), entry(1, 5, {0, 1}), entry(3, 10, {2, 2}),
                             entry(0.2, 15, {-1, 3}, 0.75f)};
  Queries window(1, {polar(2, 10)}, {3});
  Layer<float> layer(1, 2, 4);
  fill(layer, 0, entries);
  const Ref ref(layer.views[0]);
  KVMergerOptions o;
  o.sink_tokens = 0;
  o.recent_tokens = 1;
  Workspace ws;
  const auto stats = KVMerger(o).compress(request_for(layer, window.view, Budget::entries(1)), ws);
  const auto& h = layer.views[0];
  REQUIRE(positions_of(h) == std::vector<Position>{3});
  CHECK(stats.merged == 3);
  std::vector<double> k, v;
  gaussian_merge(ref, {0, 1, 2, 3}, 2, 0.0, k, v);
  check_close(key_of(h, 0), k);
  check_close(value_of(h, 0), v);
  CHECK(h.bias[0] == 0.75f);  // the survivor's own bias, untouched
}

// ---------------------------------------------------------------------------------------------
// D2O

namespace {

std::vector<Entry> d2o_entries() {
  // Kept by score (norm 3): 1 (0 deg), 3 (60), 5 (120). Removed: 2 (5 deg, cos 5 to entry 1),
  // 4 (70, cos 10 to entry 3), 6 (145, cos 25 to entry 5). Sink 0 at 180, recent 7 at -90.
  const double angles[] = {180, 0, 5, 60, 70, 120, 145, -90};
  std::vector<Entry> e;
  for (int j = 0; j < 8; ++j) {
    const double r = (j == 1 || j == 3 || j == 5) ? 3.0 : 1.0;
    e.push_back(entry(r, angles[j], {static_cast<float>(2 * j), static_cast<float>(1 - j)}));
  }
  return e;
}

void d2o_expected(const Ref& ref, std::size_t c, const std::vector<std::size_t>& merged, std::vector<double>& key,
                  std::vector<double>& value) {
  std::vector<std::vector<double>> ks{ref.k[c]}, vs{ref.v[c]};
  std::vector<double> w{std::numbers::e};
  for (auto e : merged) {
    ks.push_back(ref.k[e]);
    vs.push_back(ref.v[e]);
    w.push_back(std::exp(cosine(ref.k[e], ref.k[c])));
  }
  key = weighted_mean(ks, w);
  value = weighted_mean(vs, w);
}

}  // namespace

TEST_CASE("D2O: merges beat the mean best similarity, weighted by exp(similarity) against e", "[merge][d2o]") {
  Queries window(1, {polar(std::sqrt(2.0), 60)}, {7});
  Layer<float> layer(1, 2, 8);
  fill(layer, 0, d2o_entries());
  const Ref ref(layer.views[0]);
  D2OOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  Workspace ws;
  const auto stats = D2O(o).compress(request_for(layer, window.view, Budget::entries(5)), ws);
  const auto& h = layer.views[0];
  REQUIRE(positions_of(h) == std::vector<Position>{0, 1, 3, 5, 7});
  // tau = mean(cos 5, cos 10, cos 25) = 0.962: entries 2 and 4 merge, 6 (cos 25 = 0.906) is evicted.
  const double tau = (std::cos(5 * kPi / 180) + std::cos(10 * kPi / 180) + std::cos(25 * kPi / 180)) / 3;
  REQUIRE(std::cos(10 * kPi / 180) > tau);
  REQUIRE(std::cos(25 * kPi / 180) < tau);
  CHECK(stats.merged == 2);
  CHECK(stats.evicted == 1);
  std::vector<double> k, v;
  d2o_expected(ref, 1, {2}, k, v);
  check_close(key_of(h, 1), k);
  check_close(value_of(h, 1), v);
  d2o_expected(ref, 3, {4}, k, v);
  check_close(key_of(h, 2), k);
  check_close(value_of(h, 2), v);
  check_untouched(h, 0, ref, 0);
  check_untouched(h, 3, ref, 5);
  check_untouched(h, 4, ref, 7);
  for (std::size_t slot = 0; slot < 5; ++slot) CHECK(h.bias[slot] == 0.0f);
}

TEST_CASE("D2O: with a previous threshold the EMA of the mean best similarity decides", "[merge][d2o]") {
  Queries window(1, {polar(std::sqrt(2.0), 60)}, {7});
  Layer<float> layer(1, 2, 8);
  fill(layer, 0, d2o_entries());
  const Ref ref(layer.views[0]);
  D2OOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  o.previous_threshold = 0.99f;
  // tau = 0.7 * mean(cos 5, cos 10, cos 25) + 0.3 * 0.99 = 0.9707 (the code's EMA of
  // max_values.mean()): entries 2 (cos 5) and 4 (cos 10) merge, 6 is evicted. An EMA of the
  // largest best similarity would give 0.9943 and merge entry 2 alone.
  const D2O policy(o);
  const double mean = (std::cos(5 * kPi / 180) + std::cos(10 * kPi / 180) + std::cos(25 * kPi / 180)) / 3;
  CHECK(policy.threshold(mean) == Approx(0.7 * mean + 0.3 * 0.99).epsilon(1e-6));
  Workspace ws;
  const auto stats = policy.compress(request_for(layer, window.view, Budget::entries(5)), ws);
  CHECK(stats.merged == 2);
  CHECK(stats.evicted == 1);
  std::vector<double> k, v;
  d2o_expected(ref, 1, {2}, k, v);
  check_close(key_of(layer.views[0], 1), k);
  d2o_expected(ref, 3, {4}, k, v);
  check_close(key_of(layer.views[0], 2), k);
  check_untouched(layer.views[0], 3, ref, 5);
}

TEST_CASE("D2O: one decision for the layer, from the heads' mean of each removed entry's similarity",
          "[merge][d2o]") {
  // Head 0 as above (removed similarities cos 5, cos 10, cos 25); head 1's removed entries sit
  // 30, 2 and 2 degrees from their nearest kept keys. tau = the mean of all six = 0.9587; the
  // heads' means per removed index are 0.931, 0.992 and 0.953, so only the second removed entry
  // of each head merges. Deciding head by head would merge two entries in each.
  Queries window(2, {polar(std::sqrt(2.0), 60), polar(std::sqrt(2.0), 60)}, {7});
  Layer<float> layer(2, 2, 8);
  fill(layer, 0, d2o_entries());
  std::vector<Entry> other;
  const double angles[] = {180, 0, 30, 60, 62, 120, 122, -90};
  for (int j = 0; j < 8; ++j)
    other.push_back(entry((j == 1 || j == 3 || j == 5) ? 3.0 : 1.0, angles[j], {static_cast<float>(j), 1.0f}));
  fill(layer, 1, other);
  const Ref ref0(layer.views[0]), ref1(layer.views[1]);
  D2OOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  Workspace ws;
  const auto stats = D2O(o).compress(request_for(layer, window.view, Budget::entries(5)), ws);
  REQUIRE(positions_of(layer.views[0]) == std::vector<Position>{0, 1, 3, 5, 7});
  REQUIRE(positions_of(layer.views[1]) == std::vector<Position>{0, 1, 3, 5, 7});
  CHECK(stats.merged == 2);
  CHECK(stats.evicted == 4);
  std::vector<double> k, v;
  d2o_expected(ref0, 3, {4}, k, v);
  check_close(key_of(layer.views[0], 2), k);
  check_untouched(layer.views[0], 1, ref0, 1);  // entry 2 (cos 5) evicted with head 1's entry 2
  d2o_expected(ref1, 3, {4}, k, v);
  check_close(key_of(layer.views[1], 2), k);
  check_untouched(layer.views[1], 3, ref1, 5);  // entry 6 (cos 2) evicted with head 0's entry 6
}

// ---------------------------------------------------------------------------------------------
// LerpKV / SlerpKV / NlerpKV

TEST_CASE("interpolation kernels: lerp, slerp with linear norms, nlerp, and the degenerate cases",
          "[merge][interpolation]") {
  auto interp = [](Interpolation m, std::vector<float> a, std::vector<float> b, float t) {
    std::vector<float> out(a.size());
    kernels::interpolate(m, a.data(), b.data(), t, out.data(), a.size());
    return std::vector<double>(out.begin(), out.end());
  };
  check_close(interp(Interpolation::linear, {1, 0}, {0, 2}, 0.25f), {0.75, 0.5});
  // Slerp turns the direction by t of the angle; the norm goes linearly from 2 to 4.
  const double r2 = 1 / std::sqrt(2.0);
  check_close(interp(Interpolation::spherical, {2, 0}, {0, 4}, 0.5f), {3 * r2, 3 * r2});
  const double n13 = 2 + 2.0 / 3;
  check_close(interp(Interpolation::spherical, {2, 0}, {0, 4}, 1.0f / 3),
              {n13 * std::cos(kPi / 6), n13 * std::sin(kPi / 6)});
  // An obtuse angle: 0 to 150 degrees, t = 0.4 -> 60 degrees.
  {
    const auto a = polar(1, 0), b = polar(3, 150);
    check_close(interp(Interpolation::spherical, a, b, 0.4f), {1.8 * std::cos(kPi / 3), 1.8 * std::sin(kPi / 3)});
  }
  check_close(interp(Interpolation::normalized_linear, {2, 0}, {0, 4}, 0.5f), {3 / std::sqrt(5.0), 6 / std::sqrt(5.0)});
  // Endpoints.
  check_close(interp(Interpolation::spherical, {2, 1}, {-1, 3}, 0.0f), {2, 1});
  check_close(interp(Interpolation::spherical, {2, 1}, {-1, 3}, 1.0f), {-1, 3});
  // Parallel vectors: the norms still interpolate linearly.
  check_close(interp(Interpolation::spherical, {1, 0, 0}, {3, 0, 0}, 0.5f), {2, 0, 0});
  check_close(interp(Interpolation::normalized_linear, {1, 0, 0}, {3, 0, 0}, 0.5f), {2, 0, 0});
  {
    const auto a = polar(1, 0), b = polar(2, 1e-5);  // nearly parallel
    const auto got = interp(Interpolation::spherical, a, b, 0.5f);
    check_close(got, {1.5, 1.5 * 0.5e-5 * kPi / 180}, 1e-6);
  }
  // Antiparallel: turns through a fixed perpendicular, keeps the interpolated norm.
  check_close(interp(Interpolation::spherical, {1, 0, 0}, {-3, 0, 0}, 0.5f), {0, 2, 0});
  check_close(interp(Interpolation::spherical, {0, 0, 2}, {0, 0, -2}, 0.5f), {2, 0, 0});
  check_close(interp(Interpolation::spherical, {1, 0, 0}, {-1, 0, 0}, 1.0f), {-1, 0, 0}, 1e-6);
  check_close(interp(Interpolation::normalized_linear, {1, 0, 0}, {-1, 0, 0}, 0.5f), {0, 1, 0});
  {
    const auto got = interp(Interpolation::spherical, {1, 0, 0}, {-1, 1e-9f, 0}, 0.3f);
    double norm = 0;
    for (double x : got) norm += x * x;
    CHECK(std::sqrt(norm) == Approx(1.0).epsilon(1e-6));
  }
  // A zero vector has no direction: plain linear interpolation.
  check_close(interp(Interpolation::spherical, {0, 0}, {2, 2}, 0.25f), {0.5, 0.5});
  // The output may alias the first input.
  std::vector<float> a{2, 0}, b{0, 4};
  kernels::interpolate(Interpolation::spherical, a.data(), b.data(), 0.5f, a.data(), 2);
  check_close(std::vector<double>(a.begin(), a.end()), {3 * r2, 3 * r2});
}

namespace {

std::vector<Entry> interpolation_entries() {
  // Kept: 0 (sink), 2 and 4 (norm 3, top scores), 6 (recent). Entries 1 and 3 go to 2 (cos 10 and
  // cos 20), entry 5 goes to 6 (cos 40).
  return {entry(1, 180, {1, 1}),  entry(1, 10, {2, -1}), entry(3, 20, {0, 3}), entry(1, 40, {-2, 1}),
          entry(3, 100, {5, 5}),  entry(1, -100, {1, 4}), entry(1, -60, {-3, 0})};
}

/// 2-D references: slerp turns the angle along the shorter arc with a linear norm.
std::vector<double> slerp2(const std::vector<double>& a, const std::vector<double>& b, double t) {
  const double ra = std::hypot(a[0], a[1]), rb = std::hypot(b[0], b[1]);
  const double pa = std::atan2(a[1], a[0]);
  double delta = std::atan2(b[1], b[0]) - pa;
  while (delta > kPi) delta -= 2 * kPi;
  while (delta < -kPi) delta += 2 * kPi;
  const double r = (1 - t) * ra + t * rb, p = pa + t * delta;
  return {r * std::cos(p), r * std::sin(p)};
}
std::vector<double> lerp2(const std::vector<double>& a, const std::vector<double>& b, double t) {
  return {(1 - t) * a[0] + t * b[0], (1 - t) * a[1] + t * b[1]};
}
std::vector<double> nlerp2(const std::vector<double>& a, const std::vector<double>& b, double t) {
  auto x = lerp2(a, b, t);
  const double r = (1 - t) * std::hypot(a[0], a[1]) + t * std::hypot(b[0], b[1]);
  const double nx = std::hypot(x[0], x[1]);
  return {x[0] * r / nx, x[1] * r / nx};
}

template <class Policy>
void check_interpolation_policy(
    const std::function<std::vector<double>(const std::vector<double>&, const std::vector<double>&, double)>& f) {
  Queries window(1, {polar(std::sqrt(2.0), 60)}, {6});
  Layer<float> layer(1, 2, 7);
  fill(layer, 0, interpolation_entries());
  const Ref ref(layer.views[0]);
  InterpolationKVOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  Workspace ws;
  const auto stats = Policy(o).compress(request_for(layer, window.view, Budget::entries(4)), ws);
  const auto& h = layer.views[0];
  REQUIRE(positions_of(h) == std::vector<Position>{0, 2, 4, 6});
  CHECK(stats.merged == 3);
  CHECK(stats.evicted == 0);
  const auto w = ref.window_mass(window.view, 0, 1);
  // Into 2: fold 1 then 3 (position order), t from the accumulated mass.
  const double t1 = w[1] / (w[2] + w[1]), t3 = w[3] / (w[2] + w[1] + w[3]);
  check_close(key_of(h, 1), f(f(ref.k[2], ref.k[1], t1), ref.k[3], t3));
  check_close(value_of(h, 1), f(f(ref.v[2], ref.v[1], t1), ref.v[3], t3));
  CHECK(h.scores[1] == 0.0f);
  // Into 6: entry 5.
  const double t5 = w[5] / (w[6] + w[5]);
  check_close(key_of(h, 3), f(ref.k[6], ref.k[5], t5));
  check_close(value_of(h, 3), f(ref.v[6], ref.v[5], t5));
  check_untouched(h, 0, ref, 0);
  check_untouched(h, 2, ref, 4);
  for (std::size_t slot = 0; slot < 4; ++slot) CHECK(h.bias[slot] == 0.0f);

  // With a threshold of 0.9 entry 5 (cos 40 = 0.77) is evicted instead.
  Layer<float> again(1, 2, 7);
  fill(again, 0, interpolation_entries());
  o.similarity_threshold = 0.9f;
  const auto s2 = Policy(o).compress(request_for(again, window.view, Budget::entries(4)), ws);
  CHECK(s2.merged == 2);
  CHECK(s2.evicted == 1);
  check_untouched(again.views[0], 3, ref, 6);
}

}  // namespace

TEST_CASE("LerpKV folds removed entries into their most similar kept entry by mass", "[merge][interpolation]") {
  check_interpolation_policy<LerpKV>(lerp2);
  // Linear folding is the mass-weighted average.
  Queries window(1, {polar(std::sqrt(2.0), 60)}, {6});
  Layer<float> layer(1, 2, 7);
  fill(layer, 0, interpolation_entries());
  const Ref ref(layer.views[0]);
  InterpolationKVOptions o;
  o.sink_tokens = 1;
  o.recent_tokens = 1;
  Workspace ws;
  LerpKV(o).compress(request_for(layer, window.view, Budget::entries(4)), ws);
  const auto w = ref.window_mass(window.view, 0, 1);
  check_close(key_of(layer.views[0], 1), weighted_mean({ref.k[2], ref.k[1], ref.k[3]}, {w[2], w[1], w[3]}));
}
TEST_CASE("SlerpKV folds by spherical interpolation", "[merge][interpolation]") {
  check_interpolation_policy<SlerpKV>(slerp2);
}
TEST_CASE("NlerpKV folds by normalised linear interpolation", "[merge][interpolation]") {
  check_interpolation_policy<NlerpKV>(nlerp2);
}

// ---------------------------------------------------------------------------------------------
// Shared invariants

namespace {

struct Named {
  std::string name;
  AnyPolicy policy;
};

std::vector<Named> all_policies() {
  return {{"KeepKV", AnyPolicy(KeepKV{})},  {"CaM", AnyPolicy(CaM{})},         {"KVMerger", AnyPolicy(KVMerger{})},
          {"D2O", AnyPolicy(D2O{})},        {"LerpKV", AnyPolicy(LerpKV{})},   {"SlerpKV", AnyPolicy(SlerpKV{})},
          {"NlerpKV", AnyPolicy(NlerpKV{})}};
}

template <class P>
CompressionStats with_budgets(const P& policy, const LayerRequest<float>& r, Workspace& ws,
                              std::span<const std::size_t> budgets) {
  return policy.compress_with_budgets(r, ws, budgets);
}

}  // namespace

TEST_CASE("every merging policy keeps the budget, sorted positions and protected entries; the rest is untouched",
          "[merge][invariants]") {
  const int dim = 32, G = 4, W = 8;
  const std::size_t n = 300, budget = 90;
  for (const auto& [name, policy] : all_policies()) {
    INFO(name);
    CHECK(policy.name() == name);
    Layer<float> layer(2, dim, n);
    layer.fill_random(n, 5);
    for (std::size_t j = 0; j < n; ++j) layer.views[1].scores[j] = 0.01f * static_cast<float>(j % 17);
    const testing::Snapshot<float> original(layer);
    testing::Window window(2 * G, W, dim, n, 6);
    Workspace ws;
    const auto stats = policy.compress(request_for(layer, window.view, Budget::entries(budget)), ws);
    CHECK(stats.entries_before == 2 * n);
    CHECK(stats.entries_after == 2 * budget);
    CHECK(stats.merged + stats.evicted == 2 * (n - budget));
    CHECK(stats.merged > 0);
    for (std::size_t h = 0; h < 2; ++h) {
      const auto& head = layer.views[h];
      REQUIRE(head.length == budget);
      for (std::size_t j = 1; j < head.length; ++j) CHECK(head.positions[j - 1] < head.positions[j]);
      const std::set<Position> kept(head.positions, head.positions + head.length);
      for (Position p = 0; p < 4; ++p) CHECK(kept.count(p) == 1);
      for (Position p = static_cast<Position>(n) - W; p < static_cast<Position>(n); ++p) CHECK(kept.count(p) == 1);
      const auto& plan = ws.head(h).plan;
      std::size_t untouched = 0;
      for (std::size_t slot = 0; slot < head.length; ++slot) {
        const auto src = h * n + static_cast<std::size_t>(head.positions[slot]);
        std::vector<float> row(dim);
        if (plan.row_of_slot[slot] >= 0) {
          // Rewritten entries: finite; only KeepKV writes a bias.
          head.load_value(slot, row.data());
          CHECK(all_finite(row.data(), row.size()));
          if (name != "KeepKV") CHECK(head.bias[slot] == original.bias[src]);
          if (name == "CaM")  // CaM rewrites values only
            CHECK(std::memcmp(head.key(slot), original.keys.data() + src * dim, dim * sizeof(float)) == 0);
          continue;
        }
        ++untouched;
        CHECK(std::memcmp(head.key(slot), original.keys.data() + src * dim, dim * sizeof(float)) == 0);
        CHECK(std::memcmp(head.value(slot), original.values.data() + src * dim, dim * sizeof(float)) == 0);
        CHECK(std::memcmp(&head.bias[slot], &original.bias[src], sizeof(float)) == 0);
        CHECK(std::memcmp(&head.scores[slot], &original.scores[src], sizeof(float)) == 0);
      }
      CHECK(untouched > 0);
    }
  }
}

TEST_CASE("merging policies: results do not depend on the thread count", "[merge][determinism]") {
  const int dim = 32;
  const std::size_t n = 257;
  const ThreadExecutor two(2);
  for (const auto& [name, policy] : all_policies()) {
    INFO(name);
    Layer<float> a(4, dim, n), b(4, dim, n);
    a.fill_random(n, 41);
    b.fill_random(n, 41);
    testing::Window window(8, 16, dim, n, 42);
    Workspace ws1, ws2;
    const auto s1 = policy.compress(request_for(a, window.view, Budget::compress_ratio(0.7)), ws1);
    const auto s2 = policy.compress(request_for(b, window.view, Budget::compress_ratio(0.7), &two), ws2);
    CHECK(s1.merged == s2.merged);
    CHECK(s1.evicted == s2.evicted);
    CHECK(std::memcmp(a.keys.data(), b.keys.data(), a.keys.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(a.bias.data(), b.bias.data(), a.bias.size() * sizeof(float)) == 0);
    CHECK(a.positions == b.positions);
    // And a second run on fresh buffers repeats exactly.
    Layer<float> c(4, dim, n);
    c.fill_random(n, 41);
    Workspace ws3;
    policy.compress(request_for(c, window.view, Budget::compress_ratio(0.7)), ws3);
    CHECK(std::memcmp(a.values.data(), c.values.data(), a.values.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("merging policies: a NaN in one head throws and leaves every head as it was", "[merge][validation]") {
  const int dim = 16;
  const std::size_t n = 120;
  for (const auto& [name, policy] : all_policies()) {
    INFO(name);
    Layer<float> layer(3, dim, n);
    layer.fill_random(n, 8);
    *layer.views[1].value(77, 3) = std::numeric_limits<float>::quiet_NaN();
    const testing::Snapshot<float> snap(layer);
    testing::Window window(3, 4, dim, n, 9);
    Workspace ws;
    const ThreadExecutor two(2);
    try {
      policy.compress(request_for(layer, window.view, Budget::keep_fraction(0.5), &two), ws);
      FAIL("no exception");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::non_finite);
      CHECK(std::string(e.what()).find(name) != std::string::npos);
    }
    CHECK(snap.same_as(layer));
    // A budget below the protected entries is refused up front, too.
    *layer.views[1].value(77, 3) = 0.0f;
    const testing::Snapshot<float> snap2(layer);
    CHECK_THROWS_AS(policy.compress(request_for(layer, window.view, Budget::entries(6)), ws), Error);
    CHECK(snap2.same_as(layer));
  }
}

TEST_CASE("merging policies take per-head budgets", "[merge][budgets]") {
  const int dim = 16;
  const std::size_t n = 150;
  const std::vector<std::size_t> budgets{40, 100};
  testing::Window window(4, 8, dim, n, 22);
  auto check = [&](auto policy) {
    Layer<float> layer(2, dim, n);
    layer.fill_random(n, 21);
    Workspace ws;
    const auto stats = with_budgets(policy, request_for(layer, window.view, Budget::keep_fraction(1.0)), ws, budgets);
    INFO(policy.name());
    CHECK(layer.views[0].length == 40);
    CHECK(layer.views[1].length == 100);
    CHECK(stats.entries_after == 140);
    const std::vector<std::size_t> too_few{40};
    CHECK_THROWS_AS(with_budgets(policy, request_for(layer, window.view, Budget::keep_fraction(1.0)), ws, too_few),
                    Error);
  };
  check(KeepKV{});
  check(CaM{});
  check(KVMerger{});
  check(D2O{});
  check(LerpKV{});
  check(SlerpKV{});
  check(NlerpKV{});
}

TEST_CASE("merging policies: transposed value layout compresses exactly like rows", "[merge][layout]") {
  const int dim = 32;
  const std::size_t n = 160;
  testing::Window window(2, 8, dim, n, 32);
  for (const auto& [name, policy] : all_policies()) {
    INFO(name);
    Layer<float> rows(2, dim, n, testing::ValueLayout::rows);
    Layer<float> transposed(2, dim, n, testing::ValueLayout::transposed);
    rows.fill_random(n, 31);
    transposed.fill_random(n, 31);
    Workspace ws1, ws2;
    policy.compress(request_for(rows, window.view, Budget::keep_fraction(0.4)), ws1);
    policy.compress(request_for(transposed, window.view, Budget::keep_fraction(0.4)), ws2);
    for (std::size_t h = 0; h < 2; ++h) {
      const auto& a = rows.views[h];
      const auto& b = transposed.views[h];
      REQUIRE(a.length == b.length);
      for (std::size_t j = 0; j < a.length; ++j) {
        CHECK(a.positions[j] == b.positions[j]);
        CHECK(a.bias[j] == b.bias[j]);
        for (int i = 0; i < dim; ++i) {
          CHECK(*a.key(j, i) == *b.key(j, i));
          CHECK(*a.value(j, i) == *b.value(j, i));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("merging policies compress 16-bit caches", "[merge][dtype]", half, bfloat16) {
  const int dim = 64;
  const std::size_t n = 200;
  testing::Window window(2, 8, dim, n, 52);
  for (const auto& [name, policy] : all_policies()) {
    INFO(name);
    Layer<TestType> layer(2, dim, n);
    layer.fill_random(n, 51);
    LayerRequest<TestType> r;
    r.heads = layer.span();
    r.window = window.view;
    r.budget = Budget::keep_fraction(0.5);
    Workspace ws;
    const auto stats = policy.compress(r, ws);
    CHECK(stats.entries_after == 200);
    for (const auto& h : layer.views) {
      CHECK(h.length == 100);
      std::vector<float> row(dim);
      for (std::size_t j = 0; j < h.length; ++j) {
        h.load_value(j, row.data());
        CHECK(all_finite(row.data(), row.size()));
      }
    }
  }
}

TEST_CASE("merging policies refuse an empty window and bad options", "[merge][validation]") {
  Layer<float> layer(1, 8, 40);
  layer.fill_random(40, 1);
  LayerRequest<float> r;
  r.heads = layer.span();
  r.window = make_window_view(nullptr, nullptr, 1, 0, 8);
  r.budget = Budget::keep_fraction(0.9);
  Workspace ws;
  for (const auto& [name, policy] : all_policies()) {
    INFO(name);
    CHECK_THROWS_WITH(policy.compress(r, ws), Catch::Contains("observation window"));
  }
  KeepKVOptions k;
  k.distance_weight = 0.0f;
  CHECK_THROWS_AS(KeepKV(k), Error);
  CaMOptions c;
  c.merge_span = 0;
  CHECK_THROWS_AS(CaM(c), Error);
  KVMergerOptions m;
  m.sigma = -1.0f;
  CHECK_THROWS_AS(KVMerger(m), Error);
  D2OOptions d;
  d.beta = 1.5f;
  CHECK_THROWS_AS(D2O(d), Error);
  InterpolationKVOptions i;
  i.similarity_threshold = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(SlerpKV(i), Error);
}

// ---------------------------------------------------------------------------------------------
// Registry and composition

TEST_CASE("registry builds the merging policies with their options", "[merge][registry]") {
  for (const char* name : {"KeepKV", "CaM", "KVMerger", "D2O", "LerpKV", "SlerpKV", "NlerpKV"}) {
    INFO(name);
    CHECK(make_policy(name).name() == name);
    CHECK(make_policy(to_lower(name)).name() == name);
  }
  {
    const auto p = make_policy("keepkv:threshold=0.7,distance_weight=1.5,sinks=2,recent=3,search=local,radius=16");
    const auto* k = p.target<KeepKV>();
    REQUIRE(k);
    CHECK(k->options().similarity_threshold == 0.7f);
    CHECK(k->options().distance_weight == 1.5f);
    CHECK(k->options().sink_tokens == 2);
    CHECK(k->options().recent_tokens == 3);
    CHECK(k->options().search == SimilaritySearch::local);
    CHECK(k->options().search_radius == 16);
  }
  {
    const auto policy = make_policy("CaM:seed=99,span=8");
    const auto* c = policy.target<CaM>();
    REQUIRE(c);
    CHECK(c->options().seed == 99);
    CHECK(c->options().merge_span == 8);
    const auto defaults = make_policy("CaM");
    CHECK(defaults.target<CaM>()->options().merge_span == 32);
  }
  {
    const auto policy = make_policy("KVMerger:threshold=0.6,sigma=0.25");
    const auto* m = policy.target<KVMerger>();
    REQUIRE(m);
    CHECK(m->options().similarity_threshold == 0.6f);
    CHECK(m->options().sigma == 0.25f);
  }
  {
    const auto policy = make_policy("D2O:beta=0.5,tau=0.9,self_weight=1");
    const auto* d = policy.target<D2O>();
    REQUIRE(d);
    CHECK(d->options().beta == 0.5f);
    CHECK(d->options().previous_threshold == 0.9f);
    CHECK(d->options().self_weight == 1.0f);
    const auto defaults = make_policy("D2O");
    CHECK(std::isnan(defaults.target<D2O>()->options().previous_threshold));
  }
  {
    const auto policy = make_policy("SlerpKV:threshold=0.5,search=local,radius=8");
    const auto* s = policy.target<SlerpKV>();
    REQUIRE(s);
    CHECK(s->options().similarity_threshold == 0.5f);
    CHECK(s->options().search == SimilaritySearch::local);
    CHECK(make_policy("NlerpKV").target<NlerpKV>());
    CHECK(make_policy("LerpKV").target<LerpKV>());
    CHECK_FALSE(make_policy("LerpKV").target<SlerpKV>());
  }
  CHECK_THROWS_WITH(make_policy("KeepKV:colour=red"), Catch::Contains("unknown option 'colour'") &&
                                                          Catch::Contains("threshold") && Catch::Contains("distance_weight"));
  CHECK_THROWS_WITH(make_policy("KeepKV:distance_weight=0"), Catch::Contains("outside"));
  CHECK_THROWS_WITH(make_policy("CaM:span=0"), Catch::Contains("outside"));
  CHECK_THROWS_WITH(make_policy("D2O:search=fast"), Catch::Contains("not one of: exact, local"));
}

TEST_CASE("merging policies compose with AdaKV's per-head budgets", "[merge][budgets]") {
  const int dim = 32;
  const std::size_t n = 240, budget = 80;
  testing::Window window(8, 8, dim, n, 62);
  auto check = [&](auto policy) {
    INFO(policy.name());
    Layer<float> layer(4, dim, n);
    layer.fill_random(n, 61);
    Workspace ws;
    const auto stats = policy.compress(request_for(layer, window.view, Budget::entries(budget)), ws);
    CHECK(stats.entries_after == 4 * budget);
    std::size_t total = 0;
    for (const auto& h : layer.views) {
      total += h.length;
      CHECK(h.length >= 16);  // at least the 4 sinks + 8 recent and the floor
      for (std::size_t j = 1; j < h.length; ++j) CHECK(h.positions[j - 1] < h.positions[j]);
    }
    CHECK(total == 4 * budget);
  };
  check(AdaKV<KeepKV>{});
  check(AdaKV<CaM>{});
  check(AdaKV<KVMerger>{});
  check(AdaKV<D2O>{});
  check(AdaKV<SlerpKV>{});
}

// ---------------------------------------------------------------------------------------------
// SimCalKV-paper

TEST_CASE("SimCalKV-paper: the paper code's rule against a naive reference", "[merge][simcalkv_paper]") {
  // Accumulated scores keep {0, 2, 5, 7}; nothing is protected. Removed 1 (20 deg) goes to 7
  // (5 deg), 4 (120) to 2 (100), 6 (80) to 5 (95); 3 (225 deg) has a negative cosine to every
  // survivor and is evicted. Two query heads share the KV head; the window's older token looks
  // along 0 degrees, its newest along 90: only the newest weighs the values.
  const double angles[] = {0, 20, 100, 225, 120, 95, 80, 5};
  const double radii[] = {1, 1, 1, 1, 1, 1.5, 1, 1};
  const float scores[] = {5, 1, 4, 0.5f, 2, 3, 0.1f, 6};
  std::vector<Entry> entries;
  for (int j = 0; j < 8; ++j)
    entries.push_back(entry(radii[j], angles[j], {static_cast<float>(j), static_cast<float>(j * j) / 4},
                            j == 2 ? 0.25f : 0.0f, scores[j]));
  Queries window(2, {polar(2, 0), polar(2, 90), polar(1, 0), polar(1, 80)}, {6, 7});
  Layer<float> layer(1, 2, 8);
  fill(layer, 0, entries);
  const Ref ref(layer.views[0]);
  Workspace ws;
  const auto stats = make_policy("SimCalKV-paper").compress(request_for(layer, window.view, Budget::entries(4)), ws);
  const auto& h = layer.views[0];
  REQUIRE(positions_of(h) == std::vector<Position>{0, 2, 5, 7});
  CHECK(stats.merged == 3);
  CHECK(stats.evicted == 1);

  // Naive reference: masses under the newest token's two queries, key (mean of the set + k_c) / 2,
  // value weighted by the masses, bias b_c + ln 2.
  std::vector<double> mass(8, 0.0);
  for (int g = 0; g < 2; ++g) {
    const auto e = ref.exp_logits(window.view.query(g, 1), 7);
    for (std::size_t j = 0; j < 8; ++j) mass[j] += e[j];
  }
  const std::vector<std::pair<std::size_t, std::size_t>> merges{{7, 1}, {2, 4}, {5, 6}};
  const std::size_t slot_of[8] = {0, 0, 1, 0, 0, 2, 0, 3};
  for (const auto& [c, e] : merges) {
    INFO("survivor " << c << " takes " << e);
    for (std::size_t other : {0u, 2u, 5u, 7u})
      if (other != c) CHECK(cosine(ref.k[e], ref.k[c]) > cosine(ref.k[e], ref.k[other]));
    std::vector<double> key(2), value(2);
    for (std::size_t i = 0; i < 2; ++i) {
      key[i] = (ref.k[e][i] + ref.k[c][i]) / 2;
      value[i] = (mass[e] * ref.v[e][i] + mass[c] * ref.v[c][i]) / (mass[e] + mass[c]);
    }
    check_close(key_of(h, slot_of[c]), key);
    check_close(value_of(h, slot_of[c]), value);
    CHECK(h.bias[slot_of[c]] == Approx(ref.b[c] + std::log(2.0)).epsilon(1e-6));
  }
  check_untouched(h, 0, ref, 0);
  for (std::size_t other : {0u, 2u, 5u, 7u}) CHECK(cosine(ref.k[3], ref.k[other]) < 0);
}

TEST_CASE("SimCalKV-paper: several entries into one survivor average their keys; no window scores, the window's",
          "[merge][simcalkv_paper]") {
  // No accumulated scores: the window's attention selects. Entries 1 and 2 both go to 0.
  std::vector<Entry> entries{entry(3, 0, {1, 0}), entry(1, 10, {0, 1}), entry(1, 20, {2, 2}), entry(3, 90, {4, 4})};
  Queries window(1, {polar(2, 45)}, {3});
  Layer<float> layer(1, 2, 4);
  fill(layer, 0, entries);
  const Ref ref(layer.views[0]);
  Workspace ws;
  const auto stats = SimCalKVPaper().compress(request_for(layer, window.view, Budget::entries(2)), ws);
  const auto& h = layer.views[0];
  REQUIRE(positions_of(h) == std::vector<Position>{0, 3});
  CHECK(stats.merged == 2);
  const auto mass = ref.exp_logits(window.view.query(0, 0), 3);
  std::vector<double> key(2), value(2);
  for (std::size_t i = 0; i < 2; ++i) {
    key[i] = ((ref.k[1][i] + ref.k[2][i]) / 2 + ref.k[0][i]) / 2;
    value[i] = (mass[0] * ref.v[0][i] + mass[1] * ref.v[1][i] + mass[2] * ref.v[2][i]) / (mass[0] + mass[1] + mass[2]);
  }
  check_close(key_of(h, 0), key);
  check_close(value_of(h, 0), value);
  CHECK(h.bias[0] == Approx(std::log(2.0)).epsilon(1e-6));
  check_untouched(h, 1, ref, 3);
  CHECK(make_policy("SimCalKV-paper").reads_accumulated_scores());
}

// ---------------------------------------------------------------------------------------------
// Merging+<policy>: kvpress's MergingPress

TEST_CASE("Merging+SnapKV: kvpress's merge-on-evict rule against a naive reference", "[merge][value_merging]") {
  const int dim = 8;
  for (const std::size_t n : {std::size_t{37}, std::size_t{64}}) {
    for (const char* search : {"exact", "local"}) {
      INFO("n " << n << " search " << search);
      Layer<float> layer(1, dim, n), plain(1, dim, n);
      layer.fill_random(n, 91);
      plain.fill_random(n, 91);
      testing::Window window(2, 4, dim, n, 92);
      const Ref ref(layer.views[0]);
      Workspace ws;
      const std::string options = std::string(":search=") + search;
      const auto stats = make_policy("Merging+SnapKV" + options).compress(request_for(layer, window.view, Budget::entries(n / 3)), ws);
      make_policy("SnapKV").compress(request_for(plain, window.view, Budget::entries(n / 3)), ws);
      const auto& h = layer.views[0];
      // The inner policy selects, unchanged.
      REQUIRE(positions_of(h) == positions_of(plain.views[0]));
      std::vector<std::size_t> keep;
      for (std::size_t k = 0; k < h.length; ++k) keep.push_back(static_cast<std::size_t>(h.positions[k]));
      // Reference: each removed entry to its most similar kept key (exact: all of them; the local
      // search's radius of 64 covers every kept entry at these lengths), weight max(u, 0) |v_e| /
      // (|v_e| + |v_c| + 1e-6); v_c' = (v_c + sum w v_e) / (1 + sum w).
      std::vector<std::vector<double>> sum(keep.size(), std::vector<double>(dim, 0.0));
      std::vector<double> total(keep.size(), 0.0);
      std::size_t merged = 0;
      for (std::size_t e = 0; e < n; ++e) {
        if (std::find(keep.begin(), keep.end(), e) != keep.end()) continue;
        std::size_t best = 0;
        for (std::size_t k = 1; k < keep.size(); ++k)
          if (cosine(ref.k[e], ref.k[keep[k]]) > cosine(ref.k[e], ref.k[keep[best]])) best = k;
        const double u = cosine(ref.k[e], ref.k[keep[best]]);
        if (u < 0) continue;
        double ne = 0, nc = 0;
        for (int i = 0; i < dim; ++i) ne += ref.v[e][i] * ref.v[e][i], nc += ref.v[keep[best]][i] * ref.v[keep[best]][i];
        ne = std::sqrt(ne), nc = std::sqrt(nc);
        const double w = u * ne / (ne + nc + 1e-6);
        for (int i = 0; i < dim; ++i) sum[best][static_cast<std::size_t>(i)] += w * ref.v[e][static_cast<std::size_t>(i)];
        total[best] += w;
        ++merged;
      }
      CHECK(stats.merged == merged);
      CHECK(merged > 0);
      for (std::size_t k = 0; k < keep.size(); ++k) {
        std::vector<double> want(dim);
        for (std::size_t i = 0; i < static_cast<std::size_t>(dim); ++i)
          want[i] = (ref.v[keep[k]][i] + sum[k][i]) / (1.0 + total[k]);
        check_close(value_of(h, k), want, 1e-5);
        CHECK(key_of(h, k) == ref.k[keep[k]]);  // keys stay
        CHECK(h.bias[k] == ref.b[keep[k]]);
      }
    }
  }
  CHECK(make_policy("merging+knorm").name() == "Merging+KNorm");
  CHECK_THROWS_WITH(make_policy("Merging+SimCalKV"), Catch::Contains("Merging composes with"));
  CHECK_THROWS_WITH(make_policy("Merging+SnapKV:threshold=2"), Catch::Contains("outside"));
}

TEST_CASE("D2O's layer level: density budgets from every layer's statistic, layers 0, 1 and L-1 whole",
          "[merge][d2o][layers]") {
  const int L = 6, dim = 16;
  const std::size_t n = 120, base = 50;
  testing::Window window(8, 8, dim, n, 7);
  std::vector<std::unique_ptr<Layer<float>>> layers;
  std::vector<double> statistics;
  Workspace ws;
  for (int l = 0; l < L; ++l) {
    layers.push_back(std::make_unique<Layer<float>>(4, dim, n));
    // Heads of unequal sharpness (key scales), unequal across layers: the statistic (the heads'
    // min-max normalised attention variances, averaged) differs from layer to layer.
    auto& layer = *layers.back();
    layer.fill_random(n, 40 + static_cast<std::uint64_t>(l));
    for (std::size_t h = 0; h < 4; ++h) {
      const float scale = h == 0 ? 0.2f : h == 3 ? 3.0f : 0.3f + 0.45f * static_cast<float>((l * (h + 1)) % 5);
      for (std::size_t j = 0; j < n; ++j)
        for (int i = 0; i < dim; ++i) *layer.views[h].key(j, i) *= scale;
    }
    auto r = request_for(*layers.back(), window.view, Budget::entries(base));
    r.layer = l;
    r.num_layers = L;
    statistics.push_back(layer_statistic(r, ws));
  }
  std::set<std::size_t> budgets;
  for (int l = 2; l < L - 1; ++l) budgets.insert(layer_budget(LayerSchedule::density(statistics), l, L, base, n, 12));
  CHECK(budgets.size() > 1);  // the layers differ
  const AnyPolicy d2o = make_policy("D2O");
  CHECK(d2o.wants_layer_statistics());
  CHECK_FALSE(make_policy("D2O:layers=uniform").wants_layer_statistics());
  CHECK_FALSE(make_policy("SnapKV").wants_layer_statistics());
  const std::size_t P = 4 + 8;
  for (int l = 0; l < L; ++l) {
    INFO("layer " << l);
    auto r = request_for(*layers[static_cast<std::size_t>(l)], window.view, Budget::entries(base));
    r.layer = l;
    r.num_layers = L;
    r.layer_statistics = statistics;
    d2o.compress(r, ws);
    const std::size_t want = (l <= 1 || l == L - 1)
                                 ? n
                                 : layer_budget(LayerSchedule::density(statistics), l, L, base, n, P);
    for (const auto& h : layers[static_cast<std::size_t>(l)]->views) CHECK(h.length == want);
  }
  // Without statistics every layer keeps the base budget; a wrong count is refused.
  Layer<float> plain(4, dim, n);
  plain.fill_random(n, 3);
  auto r = request_for(plain, window.view, Budget::entries(base));
  r.layer = 1;
  r.num_layers = L;
  const testing::Snapshot<float> snap(plain);
  std::vector<double> three(3, 0.0);
  r.layer_statistics = three;
  CHECK_THROWS_WITH(d2o.compress(r, ws), Catch::Contains("3 layer statistics for 6 layers"));
  CHECK(snap.same_as(plain));
  r.layer_statistics = {};
  d2o.compress(r, ws);
  for (const auto& h : plain.views) CHECK(h.length == base);
}
