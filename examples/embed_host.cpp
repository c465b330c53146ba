// How a host engine with its own KV buffers uses simcalkv: describe each KV head with a HeadView
// over the host's memory, compress a layer after prefill, then run decode attention with the
// per-entry bias (or pass the bias to the host's own kernel as an additive mask).
#include <simcalkv/simcalkv.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  constexpr int kv_heads = 2, q_heads = 8, dim = 64, window = 16;
  constexpr std::size_t prompt = 1024, capacity = 2048;

  // The host's own buffers: [kv_head][capacity][dim] keys and values, plus bias and positions.
  std::vector<float> keys(kv_heads * capacity * dim), values(keys.size());
  std::vector<float> bias(kv_heads * capacity, 0.0f);
  std::vector<simcalkv::Position> positions(kv_heads * capacity);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (auto& x : keys) x = normal(rng);
  for (auto& x : values) x = normal(rng);
  for (std::size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<simcalkv::Position>(i % capacity);

  std::vector<simcalkv::HeadView<float>> heads;
  for (int h = 0; h < kv_heads; ++h)
    heads.push_back(simcalkv::make_head_view<float>(keys.data() + h * capacity * dim, values.data() + h * capacity * dim,
                                                    bias.data() + h * capacity, positions.data() + h * capacity,
                                                    /*scores=*/nullptr, prompt, capacity, dim));

  // The last `window` post-RoPE queries of each query head, kept during prefill.
  std::vector<float> window_queries(q_heads * window * dim);
  std::vector<simcalkv::Position> window_positions(window);
  for (auto& x : window_queries) x = normal(rng);
  for (int t = 0; t < window; ++t) window_positions[t] = static_cast<simcalkv::Position>(prompt - window + t);

  simcalkv::LayerRequest<float> request;
  request.heads = heads;
  request.window = simcalkv::make_window_view(window_queries.data(), window_positions.data(), q_heads, window, dim);
  request.budget = simcalkv::Budget::compress_ratio(0.75);  // the paper's convention: remove 75%

  simcalkv::Workspace workspace;  // reuse across layers and calls
  const simcalkv::SimCalKV policy;
  const auto stats = policy.compress(request, workspace);
  std::printf("entries %zu -> %zu (%zu merged, %zu evicted)\n", stats.entries_before, stats.entries_after,
              stats.merged, stats.evicted);

  // Decode: the G = 4 query heads of KV head 0 attend over the compressed head, bias included.
  std::vector<float> q(4 * dim), out(4 * dim);
  for (auto& x : q) x = normal(rng);
  simcalkv::decode_attention(heads[0], q, 4, out);
  std::printf("out[0] = %.4f; the next token's RoPE position is still %zu\n", out[0], prompt);
  return 0;
}
