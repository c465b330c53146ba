#include "support.hpp"

#include <catch2/catch.hpp>

using namespace simcalkv;

TEMPLATE_TEST_CASE("KVCache appends, tracks positions and accounts bytes exactly", "[kv_cache]", float, half, bfloat16) {
  KVCache<TestType> cache({2, 3, 8}, 4);
  const std::size_t entry = 2 * 8 * sizeof(TestType) + sizeof(float) + sizeof(Position);
  CHECK(cache.entry_bytes() == entry);
  CHECK(cache.used_bytes() == 0);
  CHECK(cache.reserved_bytes() == 2 * 3 * 4 * entry);

  std::vector<float> k(3 * 5 * 8), v(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = 0.25f * static_cast<float>(i % 17);
    v[i] = -0.5f * static_cast<float>(i % 13);
  }
  cache.append(1, 5, k, v);  // grows past capacity 4
  CHECK(cache.next_position(1) == 5);
  CHECK(cache.next_position(0) == 0);
  CHECK(cache.head(1, 2).length == 5);
  CHECK(cache.head(1, 2).capacity >= 5);
  CHECK(cache.used_bytes() == 3 * 5 * entry);
  // Head 2, token 3, dim 4 came from k[(2*5+3)*8+4].
  CHECK(to_float(*cache.head(1, 2).key(3, 4)) == to_float(from_float<TestType>(k[(2 * 5 + 3) * 8 + 4])));
  CHECK(to_float(*cache.head(1, 0).value(4, 7)) == to_float(from_float<TestType>(v[4 * 8 + 7])));
  for (int h = 0; h < 3; ++h)
    for (std::size_t j = 0; j < 5; ++j) CHECK(cache.head(1, h).positions[j] == static_cast<Position>(j));

  // Removing entries does not change the logical position; appends continue from it.
  cache.head(1, 0).length = 2;
  cache.append(1, 1, std::span<const float>(k).first(24), std::span<const float>(v).first(24));
  CHECK(cache.head(1, 0).positions[2] == 5);
  CHECK(cache.next_position(1) == 6);

  cache.shrink_to_fit();
  CHECK(cache.reserved_bytes() == cache.used_bytes());
  CHECK(cache.used_bytes() == (3 + 6 + 6) * entry);
}

TEST_CASE("KVCache rejects bad input and leaves itself unchanged", "[kv_cache][validation]") {
  KVCache<float> cache({1, 2, 4});
  std::vector<float> k(2 * 4), v(2 * 4);
  CHECK_THROWS_WITH(cache.append(0, 2, k, v), Catch::Contains("expected 16 floats"));
  k[3] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(cache.append(0, 1, k, v), Catch::Contains("NaN or Inf"));
  CHECK(cache.head(0, 0).length == 0);
  CHECK(cache.next_position(0) == 0);
  CHECK_THROWS_WITH(cache.head(3, 0), Catch::Contains("layer 3 out of range"));
  CHECK_THROWS_WITH((KVCache<float>({0, 1, 4})), Catch::Contains("must be positive"));
}

TEST_CASE("a policy compresses a KVCache layer through its views and memory is freed", "[kv_cache][simcalkv]") {
  const int dim = 64, kv_heads = 2, q_heads = 8, W = 8;
  const std::size_t n = 256;
  KVCache<bfloat16> cache({1, kv_heads, dim});
  testing::Rng rng(3);
  std::vector<float> k(kv_heads * n * dim), v(k.size());
  for (auto& x : k) x = rng.normal();
  for (auto& x : v) x = rng.normal();
  cache.append(0, n, k, v);
  const auto before = cache.reserved_bytes();
  testing::Window window(q_heads, W, dim, n, 4);
  LayerRequest<bfloat16> request;
  request.heads = cache.layer(0);
  request.window = window.view;
  request.budget = Budget::compress_ratio(0.75);
  Workspace ws;
  const auto stats = SimCalKV().compress(request, ws);
  CHECK(stats.entries_after == kv_heads * 64);
  cache.shrink_to_fit();
  CHECK(cache.reserved_bytes() * 4 == before);  // 256 -> 64 entries per head
  CHECK(cache.next_position(0) == static_cast<Position>(n));
}
