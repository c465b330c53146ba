// One plan, four layouts: every policy's plan applied to paged blocks, dense per-layer tensors and
// shared cells gives the compact layout's entries and attention outputs, and an apply that fails
// leaves the layout exactly as it was.
#include "support.hpp"

#include <simcalkv/layouts/compact.hpp>
#include <simcalkv/layouts/dense.hpp>
#include <simcalkv/layouts/paged.hpp>
#include <simcalkv/layouts/shared_cells.hpp>
#include <simcalkv/kernels/attention.hpp>
#include <simcalkv/registry.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>

using namespace simcalkv;
using testing::Layer;
using testing::Rng;
using testing::Window;

namespace {

constexpr int kHeads = 2, kGroup = 2, kDim = 32, kWindow = 8;
constexpr std::size_t kLength = 150;

template <class T>
LayerRequest<T> request(std::span<HeadView<T>> heads, const WindowView& window, bool shared = false) {
  LayerRequest<T> r;
  r.heads = heads;
  r.window = window;
  r.budget = Budget::compress_ratio(0.5);
  r.layer = 1;
  r.num_layers = 4;
  r.shared_selection = shared;
  r.rope_theta = 10000.0;  // ExpectedAttention needs a RoPE base; these layers have none
  return r;
}

/// Everything a head holds, entry by entry, as floats: equal means the layouts agree exactly.
template <class T>
std::vector<float> contents(const HeadView<T>& h) {
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

/// Decode attention of a fixed query group over a head.
template <class T>
std::vector<float> attention(const HeadView<T>& h, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<float> q(static_cast<std::size_t>(kGroup * kDim)), out(q.size());
  for (auto& x : q) x = rng.normal();
  decode_attention(h, q, kGroup, out);
  return out;
}

template <class T>
void check_same_heads(std::span<const HeadView<T>> got, std::span<const HeadView<T>> want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t h = 0; h < got.size(); ++h) {
    INFO("KV head " << h);
    REQUIRE(got[h].length == want[h].length);
    CHECK(contents(got[h]) == contents(want[h]));
    const auto a = attention(got[h], 7 + h), b = attention(want[h], 7 + h);
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i] == Approx(b[i]).margin(1e-6));
  }
}

/// A paged copy of a layer: pages of 16 entries from a shuffled pool; heads_per_table 1 (a table
/// per head) or kHeads (vLLM's interleaved block).
template <class T>
struct PagedCopy {
  static constexpr int kPage = 16;
  std::vector<T> keys, values;
  std::vector<float> bias, scores;
  std::vector<Position> positions;
  std::vector<std::int32_t> table;
  std::vector<std::size_t> lengths;
  PagedLayer<T> layer;

  PagedCopy(const Layer<T>& src, int heads_per_table) {
    const std::size_t H = src.views.size(), tables = H / static_cast<std::size_t>(heads_per_table);
    const std::size_t pages_per_table = (kLength + kPage - 1) / kPage;
    const std::size_t pool = tables * pages_per_table + 3;
    const std::size_t rows = pool * kPage * static_cast<std::size_t>(heads_per_table);
    keys.assign(rows * kDim, T(0.0f));
    values.assign(rows * kDim, T(0.0f));
    bias.assign(rows, 0.0f);
    scores.assign(rows, 0.0f);
    positions.assign(rows, 0);
    std::vector<std::int32_t> order(pool);
    std::iota(order.begin(), order.end(), 0);
    std::reverse(order.begin(), order.end());  // pages far from their logical order
    std::rotate(order.begin(), order.begin() + 5, order.end());
    table.assign(tables * (pages_per_table + 2), -1);
    for (std::size_t t = 0, next = 0; t < tables; ++t)
      for (std::size_t p = 0; p < pages_per_table; ++p) table[t * (pages_per_table + 2) + p] = order[next++];
    lengths.resize(H);
    layer.keys = keys.data();
    layer.values = values.data();
    layer.key_stride = layer.value_stride = kDim;
    layer.bias = bias.data();
    layer.positions = positions.data();
    layer.scores = scores.data();
    layer.page_table = table.data();
    layer.table_stride = static_cast<std::ptrdiff_t>(pages_per_table + 2);
    layer.page_size = kPage;
    layer.heads_per_table = heads_per_table;
    layer.lengths = lengths.data();
    layer.num_seqs = H;
    layer.head_dim = kDim;
    std::vector<float> row(kDim);
    for (std::size_t h = 0; h < H; ++h) {
      const auto& v = src.views[h];
      lengths[h] = v.length;
      for (std::size_t j = 0; j < v.length; ++j) {
        const EntryRef<T> e = layer.entry(h, j);
        std::copy_n(v.key(j), kDim, e.key);
        std::copy_n(v.value(j), kDim, e.value);
        *e.bias = v.bias[j];
        *e.position = v.positions[j];
        *e.score = v.scores[j];
      }
    }
  }
};

/// A shared-cell copy of a layer (llama.cpp's: one K row per cell holding every head).
template <class T>
struct CellsCopy {
  std::vector<T> k, v;
  std::vector<float> bias;
  std::vector<Position> cell_positions;
  std::vector<std::uint8_t> used;
  SharedCellsLayer<T> layer;

  CellsCopy(const Layer<T>& src, bool v_transposed, std::size_t kv_size) {
    const std::size_t H = src.views.size(), row = H * kDim;
    k.assign(kv_size * row, T(0.0f));
    v.assign(kv_size * row, T(0.0f));
    bias.assign(H * kv_size, 0.0f);
    cell_positions.assign(kv_size, 0);
    used.assign(kv_size, 0);
    layer.k = k.data();
    layer.k_row_stride = static_cast<std::ptrdiff_t>(row);
    layer.v = v.data();
    layer.v_transposed = v_transposed;
    layer.v_row_stride = v_transposed ? static_cast<std::ptrdiff_t>(kv_size) : static_cast<std::ptrdiff_t>(row);
    layer.bias = bias.data();
    layer.cell_positions = cell_positions.data();
    layer.cell_used = used.data();
    layer.kv_size = kv_size;
    layer.n_kv_heads = static_cast<int>(H);
    layer.head_dim = kDim;
    for (std::size_t j = 0; j < src.views[0].length; ++j) {
      used[j] = 1;
      cell_positions[j] = src.views[0].positions[j];
      for (std::size_t h = 0; h < H; ++h) {
        const auto& view = src.views[h];
        for (int i = 0; i < kDim; ++i) {
          layer.key(j, h)[i] = *view.key(j, i);
          layer.value(j, h)[static_cast<std::ptrdiff_t>(i) * layer.value_dim_stride()] = *view.value(j, i);
        }
        bias[h * kv_size + j] = view.bias[j];
      }
    }
  }
};

template <class T>
void fill(Layer<T>& layer, std::uint64_t seed, bool equal_lengths = false) {
  layer.fill_random(kLength, seed);
  // Unequal head lengths make per-head budgets and tables differ (a layer-wide selection, TOVA's
  // and PyramidInfer's, needs them equal).
  if (!equal_lengths) layer.views[1].length = kLength - 9;
}

bool per_head_budgets(const std::string& name) { return name.rfind("AdaKV+", 0) == 0; }

template <class T>
void every_policy_on_every_layout() {
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 3);
  for (const auto& name : policy_names()) {
    DYNAMIC_SECTION(name) {
      const AnyPolicy policy = make_policy(name);
      Workspace ws;
      Layer<T> compact(kHeads, kDim, kLength);
      const bool equal = policy.selects_per_layer();
      fill(compact, 11, equal);

      SECTION("paged, a table per head and one per request") {
        for (const int heads_per_table : {1, kHeads}) {
          INFO("heads_per_table " << heads_per_table);
          Layer<T> source(kHeads, kDim, kLength);
          fill(source, 11, equal);
          PagedCopy<T> paged(source, heads_per_table);
          Staging<T> staging;
          const auto result = compress_paged(policy, paged.layer, request<T>({}, window.view), ws, staging);
          Layer<T> want(kHeads, kDim, kLength);
          fill(want, 11, equal);
          const auto stats = policy.compress(request<T>(want.span(), window.view), ws);
          CHECK(result.stats.entries_after == stats.entries_after);
          auto& got = stage_paged(paged.layer, staging);
          check_same_heads<T>(got, want.views);
          // Freed pages: those past what the longest head of each table still reaches.
          std::size_t freed = 0;
          for (std::size_t t = 0; t < kHeads / static_cast<std::size_t>(heads_per_table); ++t) {
            std::size_t before = 0, after = 0;
            for (int h = 0; h < heads_per_table; ++h) {
              const std::size_t s = t * static_cast<std::size_t>(heads_per_table) + static_cast<std::size_t>(h);
              before = std::max(before, (source.views[s].length + 15) / 16);
              after = std::max(after, (want.views[s].length + 15) / 16);
            }
            freed += before - after;
          }
          CHECK(result.freed_pages.size() == freed);
          for (const auto page : result.freed_pages)
            CHECK(std::find(paged.table.begin(), paged.table.end(), page) == paged.table.end());
        }
      }

      SECTION("dense: one length per layer") {
        Layer<T> source(kHeads, kDim, kLength);
        source.fill_random(kLength, 12);  // equal lengths, as a dense tensor has
        std::vector<Position> positions(source.positions);
        DenseLayer<T> dense{source.keys.data(), source.values.data(), source.bias.data(), positions.data(),
                            nullptr, kLength, kLength, kHeads, kDim};
        auto views = dense.views();
        const LayerPlan plan = policy.plan(request<T>(std::span<HeadView<T>>(views), window.view), ws);
        Layer<T> want(kHeads, kDim, kLength);
        want.fill_random(kLength, 12);
        policy.compress(request<T>(want.span(), window.view), ws);
        bool equal_lengths = true;
        for (std::size_t h = 1; h < plan.num_heads(); ++h) equal_lengths = equal_lengths && plan.kept(h) == plan.kept(0);
        if (equal_lengths) {
          apply_plan(plan, dense);
          CHECK(dense.length == want.views[0].length);
          check_same_heads<T>(dense.views(), want.views);
        } else {
          CHECK(per_head_budgets(name));
          const std::vector<float> before(source.keys.begin(), source.keys.end());
          CHECK_THROWS_WITH(apply_plan(plan, dense), Catch::Contains("a dense cache has one length per layer"));
          CHECK(dense.length == kLength);
          CHECK(std::vector<float>(source.keys.begin(), source.keys.end()) == before);
        }
      }

      SECTION("shared cells: one kept set per layer, masked in place") {
        for (const bool v_transposed : {false, true}) {
          INFO("v_transposed " << v_transposed);
          Layer<T> source(kHeads, kDim, kLength);
          source.fill_random(kLength, 13);
          CellsCopy<T> cells(source, v_transposed, kLength + 10);
          Staging<T> staging;
          auto& views = stage_shared_cells(cells.layer, staging);
          Layer<T> want(kHeads, kDim, kLength);
          want.fill_random(kLength, 13);
          if (per_head_budgets(name)) {
            CHECK_THROWS_WITH(policy.plan(request<T>(std::span<HeadView<T>>(views), window.view, true), ws),
                              Catch::Contains("exclude each other"));
            continue;
          }
          const LayerPlan plan = policy.plan(request<T>(std::span<HeadView<T>>(views), window.view, true), ws);
          CHECK(plan.shared_selection);
          apply_plan(plan, cells.layer);
          policy.compress(request<T>(want.span(), window.view, true), ws);
          auto& live = stage_shared_cells(cells.layer, staging);
          check_same_heads<T>(live, want.views);
          // A cell this (only) layer masked is free; the host's one call frees exactly those.
          const std::vector<SharedCellsLayer<T>> layers{cells.layer};
          const auto freeable = freeable_cells<T>(layers);
          CHECK(freeable.size() == kLength - want.views[0].length);
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("every policy's plan gives the compact layout's entries on paged, dense and shared-cell layouts",
          "[layouts]") {
  SECTION("half") { every_policy_on_every_layout<half>(); }
  SECTION("float") { every_policy_on_every_layout<float>(); }
}

TEST_CASE("a plan that does not fit a layout is refused and the layout is unchanged", "[layouts][errors]") {
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 3);
  Workspace ws;
  Layer<float> layer(kHeads, kDim, kLength);
  layer.fill_random(kLength, 5);
  const SnapKV snap;
  const LayerPlan plan = snap.plan(request<float>(layer.span(), window.view), ws);
  const testing::Snapshot<float> before(layer);

  SECTION("compact: a head that changed length since planning") {
    layer.views[1].length -= 1;
    const testing::Snapshot<float> changed(layer);
    CHECK_THROWS_WITH(apply_plan(plan, layer.span()),
                      Catch::Contains("KV head 1 has 149 entries but was planned with 150"));
    CHECK(changed.same_as(layer));
  }
  SECTION("compact: another head count") {
    CHECK_THROWS_WITH(apply_plan(plan, layer.span().first(1)), Catch::Contains("the plan has 2 KV heads, the layer 1"));
    CHECK(before.same_as(layer));
  }
  SECTION("compact: a malformed plan") {
    LayerPlan bad = plan;
    std::swap(bad.heads[0].keep[3], bad.heads[0].keep[4]);
    CHECK_THROWS_WITH(apply_plan(bad, layer.span()), Catch::Contains("ascending"));
    CHECK(before.same_as(layer));
  }
  SECTION("paged: a sequence reaching a page its table lacks") {
    PagedCopy<float> paged(layer, 1);
    paged.table[2] = -1;
    const auto keys = paged.keys;
    CHECK_THROWS_WITH(apply_plan(plan, paged.layer), Catch::Contains("sequence 0 reaches page slot 2"));
    CHECK(paged.keys == keys);
  }
  SECTION("shared cells: a per-head plan") {
    CellsCopy<float> cells(layer, false, kLength);
    const auto bias = cells.bias;
    const auto k = cells.k;
    CHECK_THROWS_WITH(apply_plan(plan, cells.layer), Catch::Contains("must keep one set for all of them"));
    CHECK(cells.bias == bias);
    CHECK(cells.k == k);
  }
  SECTION("shared selection needs equal lengths") {
    layer.views[1].length -= 1;
    CHECK_THROWS_WITH(snap.plan(request<float>(layer.span(), window.view, true), ws),
                      Catch::Contains("a shared selection needs equal lengths and budgets"));
  }
}

TEST_CASE("a shared selection keeps one set, selected by the heads' mean score", "[layouts][shared]") {
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 3);
  Workspace ws;
  Layer<float> layer(kHeads, kDim, kLength);
  layer.fill_random(kLength, 8);
  TOVAOptions per_head;  // planned per head below; the shared plan comes from the request's flag
  per_head.per_layer = false;
  const TOVA tova(per_head);
  const LayerPlan plan = tova.plan(request<float>(layer.span(), window.view, true), ws);
  REQUIRE(plan.heads[0].keep == plan.heads[1].keep);
  // Each head's own TOVA score (its group's last-query attention), planned head by head.
  std::vector<float> score(kLength, 0.0f);
  Workspace ws2;
  for (int h = 0; h < kHeads; ++h) {
    const LayerPlan own = tova.plan(request<float>(layer.span().subspan(static_cast<std::size_t>(h), 1),
                                                   [&] {
                                                     WindowView w = window.view;
                                                     w.queries = window.view.query(h * kGroup, 0);
                                                     w.num_query_heads = kGroup;
                                                     return w;
                                                   }()),
                                    ws2);
    REQUIRE(own.heads.size() == 1);
    const auto& s = ws2.head(0);
    for (std::size_t j = 0; j < kLength; ++j) score[j] += s.selection_score[j] / kHeads;
  }
  // The kept set is the top of the heads' mean score.
  const auto& keep = plan.heads[0].keep;
  float lowest_kept = 1e30f, highest_removed = -1e30f;
  for (std::size_t j = 0, k = 0; j < kLength; ++j) {
    if (k < keep.size() && keep[k] == j) {
      lowest_kept = std::min(lowest_kept, score[j]);
      ++k;
    } else {
      highest_removed = std::max(highest_removed, score[j]);
    }
  }
  CHECK(lowest_kept >= highest_removed);
}

TEST_CASE("a plan flattened to the plain view the GPU reads comes back the same and applies the same",
          "[layouts][plan_view]") {
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 3);
  for (const auto& name : policy_names()) {
    DYNAMIC_SECTION(name) {
      const AnyPolicy policy = make_policy(name);
      Workspace ws;
      Layer<half> a(kHeads, kDim, kLength), b(kHeads, kDim, kLength);
      fill(a, 21, policy.selects_per_layer());
      fill(b, 21, policy.selects_per_layer());
      const LayerPlan plan = policy.plan(request<half>(a.span(), window.view), ws);
      const FlatLayerPlan flat = flatten(plan);
      const LayerPlanView view = flat.view();
      REQUIRE(view.num_seqs == kHeads);
      std::size_t slots = 0;
      for (std::size_t h = 0; h < plan.num_heads(); ++h) {
        CHECK(view.first_slot[h] == static_cast<std::int32_t>(slots));
        CHECK(view.kept[h] == static_cast<std::int32_t>(plan.kept(h)));
        slots += plan.kept(h);
      }
      CHECK(flat.slots() == slots);
      const LayerPlan back = unflatten(view, flat.length_before, plan.policy);
      REQUIRE(back.num_heads() == plan.num_heads());
      for (std::size_t h = 0; h < plan.num_heads(); ++h) {
        INFO("KV head " << h);
        const HeadPlan &p = plan.heads[h], &q = back.heads[h];
        CHECK(q.keep == p.keep);
        CHECK(q.row_of_slot == p.row_of_slot);
        CHECK(q.row_updates == p.row_updates);
        CHECK(std::equal(q.row_keys.begin(), q.row_keys.end(), p.row_keys.begin()));
        CHECK(std::equal(q.row_values.begin(), q.row_values.end(), p.row_values.begin()));
        CHECK(q.row_bias == p.row_bias);
        CHECK(q.row_score == p.row_score);
        CHECK(q.slot_scores == p.slot_scores);
        CHECK(q.identity == p.identity);
      }
      apply_plan<half>(plan, a.span());
      apply_plan<half>(back, b.span());
      check_same_heads<half>(b.views, a.views);
    }
  }
}
