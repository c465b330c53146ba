// Library calls that would give wrong results are refused with a message naming the problem, and the
// cache is left exactly as it was: aliased buffers, a window from another sequence, budgets out of range.
#include <catch2/catch.hpp>

#include "support.hpp"

#include <simcalkv/simcalkv.hpp>

#include <cstdint>
#include <limits>

using namespace simcalkv;
using testing::Layer;
using testing::Window;

namespace {

LayerRequest<float> request_over(std::span<HeadView<float>> heads, const WindowView& window, Budget budget) {
  LayerRequest<float> r;
  r.heads = heads;
  r.window = window;
  r.budget = budget;
  r.rope_theta = 10000.0;  // ExpectedAttention needs a RoPE base; these layers have none
  return r;
}

std::string error_of(const AnyPolicy& policy, const LayerRequest<float>& request) {
  Workspace ws;
  try {
    policy.compress(request, ws);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("bad calls: aliased buffers are refused by every policy, the cache untouched", "[errors][alias]") {
  const std::size_t n = 64;
  const int d = 8;
  for (const auto& name : policy_names()) {
    INFO(name);
    const AnyPolicy policy = make_policy(name);
    Layer<float> layer(2, d, n);
    layer.fill_random(n, 3);
    Window window(4, 8, d, n, 4);
    const testing::Snapshot<float> snap(layer);
    std::vector<HeadView<float>> heads(layer.views.begin(), layer.views.end());

    auto values_on_keys = heads;
    values_on_keys[0].values = values_on_keys[0].keys;
    CHECK_THAT(error_of(policy, request_over(values_on_keys, window.view, Budget::compress_ratio(0.5))),
               Catch::Contains("KV head 0: its keys and values buffers overlap"));

    auto shared_bias = heads;
    shared_bias[1].bias = shared_bias[0].bias;
    CHECK_THAT(error_of(policy, request_over(shared_bias, window.view, Budget::compress_ratio(0.5))),
               Catch::Contains("the bias of KV head 0 and the bias of KV head 1 overlap"));

    auto bias_on_positions = heads;
    bias_on_positions[0].bias = reinterpret_cast<float*>(bias_on_positions[0].positions);
    CHECK_THAT(error_of(policy, request_over(bias_on_positions, window.view, Budget::compress_ratio(0.5))),
               Catch::Contains("KV head 0: its bias and positions buffers overlap"));

    CHECK(snap.same_as(layer));
  }
}

TEST_CASE("bad calls: rows interleaved in one tensor, as llama.cpp lays out heads, are not aliasing", "[errors][alias]") {
  // One K and one V tensor [cells][heads * d]: head h's key of cell c at (c * heads + h) * d.
  const int heads = 2, d = 8;
  const std::size_t n = 48;
  std::vector<float> k(n * heads * d), v(k.size()), bias(n * heads, 0.0f);
  std::vector<Position> pos(n * heads);
  testing::Rng rng(5);
  for (auto& x : k) x = rng.normal();
  for (auto& x : v) x = rng.normal();
  std::vector<HeadView<float>> views;
  for (int h = 0; h < heads; ++h) {
    HeadView<float> view = make_head_view<float>(k.data() + h * d, v.data() + h * d, bias.data() + h * n,
                                                 pos.data() + h * n, nullptr, n, n, d);
    view.key_token_stride = view.value_token_stride = heads * d;
    for (std::size_t j = 0; j < n; ++j) view.positions[j] = static_cast<Position>(j);
    views.push_back(view);
  }
  Window window(4, 8, d, n, 6);
  Workspace ws;
  const auto stats = SnapKV().compress(request_over(views, window.view, Budget::compress_ratio(0.5)), ws);
  CHECK(stats.entries_after == 48u);
  // ... but a second head placed one element into the first head's row does alias.
  views[1].keys = views[0].keys + 1;
  CHECK_THAT(error_of(make_policy("SnapKV"), request_over(views, window.view, Budget::compress_ratio(0.5))),
             Catch::Contains("the keys of KV head 0 and the keys of KV head 1 overlap"));
}

TEST_CASE("bad calls: a window wholly before the cache is another sequence's", "[errors]") {
  const std::size_t n = 64;
  Layer<float> layer(1, 8, n);
  layer.fill_random(n, 7);
  for (std::size_t j = 0; j < n; ++j) layer.views[0].positions[j] = static_cast<Position>(1000 + j);
  Window window(1, 8, 8, n, 8);  // positions 56..63
  const testing::Snapshot<float> snap(layer);
  CHECK_THAT(error_of(make_policy("SimCalKV"), request_over(layer.views, window.view, Budget::compress_ratio(0.5))),
             Catch::Contains("the window's last query is at position 63, before KV head 0's first entry (position "
                             "1000)"));
  CHECK(snap.same_as(layer));
}

TEST_CASE("bad calls: budgets out of range are named exactly, by Full too", "[errors][budget]") {
  const std::size_t n = 32;
  Layer<float> layer(1, 8, n);
  layer.fill_random(n, 9);
  Window window(1, 4, 8, n, 10);
  CHECK(Budget::entries(std::numeric_limits<std::size_t>::max() - 4).count() ==
        std::numeric_limits<std::size_t>::max() - 4);
  for (const char* name : {"Full", "SimCalKV", "SnapKV"}) {
    INFO(name);
    CHECK_THAT(error_of(make_policy(name), request_over(layer.views, window.view,
                                                        Budget::entries(std::numeric_limits<std::size_t>::max() - 4))),
               Catch::Contains("budget 18446744073709551611 exceeds the head's length 32"));
    CHECK_THAT(error_of(make_policy(name), request_over(layer.views, window.view, Budget::entries(n + 1))),
               Catch::Contains("budget 33 exceeds the head's length 32"));
  }
  Workspace ws;
  const std::vector<std::size_t> too_big{n + 3};
  auto request = request_over(layer.views, window.view, Budget::entries(n));
  CHECK_THROWS_WITH(Full().compress_with_budgets(request, ws, too_big), Catch::Contains("budget 35 exceeds the length 32"));
}
