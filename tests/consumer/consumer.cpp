// Builds against the installed headers only and checks one compression end to end.
#include <simcalkv/simcalkv.hpp>

#include <cstdio>
#include <vector>

int main() {
  simcalkv::KVCache<simcalkv::bfloat16> cache({1, 1, 16});
  std::vector<float> k(64 * 16), v(64 * 16), q(4 * 16);
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>((i * 7919) % 97) / 97.0f - 0.5f;
    v[i] = static_cast<float>((i * 104729) % 89) / 89.0f - 0.5f;
  }
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(i % 5) * 0.1f;
  cache.append(0, 64, k, v);
  std::vector<simcalkv::Position> pos{60, 61, 62, 63};
  simcalkv::LayerRequest<simcalkv::bfloat16> request;
  request.heads = cache.layer(0);
  request.window = simcalkv::make_window_view(q.data(), pos.data(), 1, 4, 16);
  request.budget = simcalkv::Budget::compress_ratio(0.5);
  simcalkv::Workspace ws;
  const auto stats = simcalkv::SimCalKV().compress(request, ws);
  std::printf("consumer: %zu -> %zu entries, kernels: %s\n", stats.entries_before, stats.entries_after,
              simcalkv::kernels::active().arch);
  return stats.entries_after == 32 ? 0 : 1;
}
