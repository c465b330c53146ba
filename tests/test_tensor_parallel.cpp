// A layer's KV heads split over ranks (tensor_parallel.hpp): per-head policies give the single-process
// plan on every shard, global AdaKV (scores gathered from every shard, one reallocation) gives the
// single-process AdaKV plan bit for bit, and per-shard AdaKV gives AdaKV of the shard's sub-layer.
#include "support.hpp"

#include <simcalkv/registry.hpp>
#include <simcalkv/tensor_parallel.hpp>

#include <catch2/catch.hpp>

using namespace simcalkv;
using testing::Layer;
using testing::Rng;
using testing::Window;

namespace {

constexpr int kHeads = 8, kGroup = 2, kDim = 32, kWindow = 8;
constexpr std::size_t kLength = 190;

void fill(Layer<half>& layer) {
  layer.fill_random(kLength, 5);
  Rng rng(6);
  for (auto& s : layer.scores) s = rng.uniform();  // H2O reads accumulated scores
  for (int h = 0; h < kHeads; ++h) layer.views[static_cast<std::size_t>(h)].length = kLength - 7 * static_cast<std::size_t>(h);
}

LayerRequest<half> request(std::span<HeadView<half>> heads, const WindowView& window) {
  LayerRequest<half> r;
  r.heads = heads;
  r.window = window;
  r.budget = Budget::compress_ratio(0.6);
  r.rope_theta = 10000.0;
  return r;
}

/// The sub-request of one shard: its heads and its query heads' window rows.
LayerRequest<half> shard_request(Layer<half>& layer, const Window& window, const HeadShard& shard) {
  WindowView w = window.view;
  w.queries += static_cast<std::ptrdiff_t>(shard.first_head) * kGroup * w.head_stride;
  w.num_query_heads = static_cast<int>(shard.num_heads) * kGroup;
  auto r = request(layer.span().subspan(shard.first_head, shard.num_heads), w);
  r.first_kv_head = shard.first_head;  // the heads keep their identity (CaM's draws)
  return r;
}

void check_same(const HeadPlan& got, const HeadPlan& want) {
  CHECK(got.keep == want.keep);
  CHECK(got.row_of_slot == want.row_of_slot);
  CHECK(got.row_keys == want.row_keys);
  CHECK(got.row_values == want.row_values);
  CHECK(got.row_bias == want.row_bias);
  CHECK(got.row_score == want.row_score);
}

}  // namespace

TEST_CASE("tensor parallel: a shard's heads are planned as in one process", "[tensor_parallel]") {
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 7);
  for (const std::string name :
       {"SnapKV", "SimCalKV", "StreamingLLM", "H2O", "KeepKV", "CaM", "KVMerger", "ExpectedAttention", "Merging+SnapKV"}) {
    DYNAMIC_SECTION(name) {
      const AnyPolicy policy = make_policy(name);
      Layer<half> layer(kHeads, kDim, kLength);
      fill(layer);
      Workspace ws;
      const LayerPlan whole = policy.plan(request(layer.span(), window.view), ws);
      for (const int ranks : {2, 4}) {
        for (int rank = 0; rank < ranks; ++rank) {
          INFO(ranks << " ranks, rank " << rank);
          const HeadShard shard = HeadShard::of(kHeads, ranks, rank);
          const LayerPlan part = policy.plan(shard_request(layer, window, shard), ws);
          REQUIRE(part.num_heads() == shard.num_heads);
          for (std::size_t h = 0; h < shard.num_heads; ++h) check_same(part.heads[h], whole.heads[shard.first_head + h]);
        }
      }
    }
  }
}

TEST_CASE("tensor parallel: global AdaKV over gathered scores is the single-process AdaKV", "[tensor_parallel]") {
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 7);
  for (const std::string name : {"AdaKV+SnapKV", "AdaKV+SimCalKV", "AdaKV+H2O", "AdaKV+SimCalKV:search=exact"}) {
    DYNAMIC_SECTION(name) {
      const AnyPolicy policy = make_policy(name);
      REQUIRE(policy.reallocates());
      Layer<half> layer(kHeads, kDim, kLength);
      fill(layer);
      Workspace ws;
      const LayerPlan whole = policy.plan(request(layer.span(), window.view), ws);
      for (const int ranks : {2, 4}) {
        INFO(ranks << " ranks");
        // Every rank scores its heads; the host gathers them in rank order.
        std::vector<LayerScores> gathered;
        for (int rank = 0; rank < ranks; ++rank)
          gathered.push_back(policy.score_layer(shard_request(layer, window, HeadShard::of(kHeads, ranks, rank)), ws));
        const std::vector<std::size_t> budgets = global_budgets(policy, gathered, window.view);
        REQUIRE(budgets.size() == static_cast<std::size_t>(kHeads));
        bool moved_across_ranks = false;
        for (int rank = 0; rank < ranks; ++rank) {
          const HeadShard shard = HeadShard::of(kHeads, ranks, rank);
          const auto sub = shard_request(layer, window, shard);
          const LayerPlan part = plan_shard(policy, sub, ws, shard.slice(std::span<const std::size_t>(budgets)));
          const auto uniform = uniform_head_budgets(sub);
          std::size_t kept = 0, even = 0;
          for (std::size_t h = 0; h < shard.num_heads; ++h) {
            INFO("rank " << rank << ", head " << h);
            CHECK(part.kept(h) == whole.kept(shard.first_head + h));
            check_same(part.heads[h], whole.heads[shard.first_head + h]);
            kept += part.kept(h);
            even += uniform[h];
          }
          moved_across_ranks = moved_across_ranks || kept != even;
        }
        // The case means something only if AdaKV moved budget from one rank's heads to another's.
        CHECK(moved_across_ranks);
      }
    }
  }
}

TEST_CASE("tensor parallel: per-shard AdaKV reallocates among the shard's heads only", "[tensor_parallel]") {
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 7);
  const AnyPolicy policy = make_policy("AdaKV+SimCalKV");
  Layer<half> layer(kHeads, kDim, kLength);
  fill(layer);
  Workspace ws;
  for (int rank = 0; rank < 2; ++rank) {
    const HeadShard shard = HeadShard::of(kHeads, 2, rank);
    const auto sub = shard_request(layer, window, shard);
    const LayerPlan part = policy.plan(sub, ws);
    const auto base = uniform_head_budgets(sub);
    std::size_t kept = 0, budget = 0;
    for (std::size_t h = 0; h < shard.num_heads; ++h) kept += part.kept(h), budget += base[h];
    CHECK(kept == budget);  // the shard's share of the layer's budget, exactly
  }
}

TEST_CASE("tensor parallel: bad shards and non-reallocating policies are refused by name", "[tensor_parallel][errors]") {
  CHECK_THROWS_WITH(HeadShard::of(8, 3, 0), Catch::Contains("8 KV heads do not split evenly over 3 ranks"));
  CHECK_THROWS_WITH(HeadShard::of(8, 2, 2), Catch::Contains("rank 2 is outside [0, 2)"));
  const Window window(kHeads * kGroup, kWindow, kDim, kLength, 7);
  Layer<half> layer(kHeads, kDim, kLength);
  fill(layer);
  Workspace ws;
  const AnyPolicy snapkv = make_policy("SnapKV");
  CHECK_FALSE(snapkv.reallocates());
  CHECK_THROWS_WITH(snapkv.score_layer(request(layer.span(), window.view), ws),
                    Catch::Contains("SnapKV does not move budget between heads"));
  for (const char* name : {"TOVA", "PyramidInfer", "D2O"}) {
    INFO(name);
    CHECK(make_policy(name).decides_across_heads());
    CHECK_THROWS_WITH(require_shardable(make_policy(name), 2), Catch::Contains("decides over every KV head"));
    CHECK_NOTHROW(require_shardable(make_policy(name), 1));
  }
  for (const char* name : {"SnapKV", "SimCalKV", "CaM", "AdaKV+SimCalKV", "KeepKV"}) {
    INFO(name);
    CHECK_FALSE(make_policy(name).decides_across_heads());
    CHECK_NOTHROW(require_shardable(make_policy(name), 4));
  }
  const AnyPolicy ada = make_policy("AdaKV+SnapKV");
  LayerScores broken = ada.score_layer(request(layer.span(), window.view), ws);
  broken.scores.pop_back();
  CHECK_THROWS_WITH(ada.reallocate_scores(broken, window.view), Catch::Contains("scores for heads of"));
  const std::vector<std::size_t> three(3, 10);
  CHECK_THROWS_WITH(plan_shard(ada, request(layer.span(), window.view), ws, three),
                    Catch::Contains("3 budgets for a shard of 8 KV heads"));
}
