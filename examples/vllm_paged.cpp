// A vLLM-shaped host: one key cache and one value cache per layer,
// [num_blocks][block_size][num_kv_heads][head_size], a block table and a sequence length per
// request, and a block allocator's free list. After prefill the layer is compressed through the
// block table (per-head budgets: AdaKV), the blocks no head of the request reaches any more go
// back to the allocator, and decode attention runs over the blocks (simcalkv's paged attention).
// The outputs must equal the compact layout's under the same plan.
#include "host_common.hpp"

#include <cstdint>

int main() {
  const example::Prefill prefill(11);
  const int H = prefill.kv_heads, D = prefill.dim, G = prefill.group(), block_size = 16;
  const std::size_t num_blocks = 64, blocks_needed = (prefill.tokens + block_size - 1) / block_size;
  // The block manager's free list, handed out from the back; the request takes what it needs.
  std::vector<std::int32_t> free_blocks;
  for (std::size_t b = num_blocks; b > 0; --b) free_blocks.push_back(static_cast<std::int32_t>(b - 1));
  std::vector<std::int32_t> block_table(blocks_needed + 8, -1);
  for (std::size_t b = 0; b < blocks_needed; ++b) block_table[b] = free_blocks.back(), free_blocks.pop_back();

  const std::size_t rows = num_blocks * block_size * static_cast<std::size_t>(H);
  std::vector<float> key_cache(rows * static_cast<std::size_t>(D)), value_cache(key_cache.size());
  std::vector<float> bias(rows, 0.0f);
  std::vector<simcalkv::Position> positions(rows, 0);
  std::vector<std::size_t> seq_lens(static_cast<std::size_t>(H), prefill.tokens);  // per KV head of the request

  simcalkv::PagedLayer<float> layer;
  layer.keys = key_cache.data();
  layer.values = value_cache.data();
  layer.key_stride = layer.value_stride = D;  // a row is one head's head_size elements
  layer.bias = bias.data();
  layer.positions = positions.data();
  layer.page_table = block_table.data();
  layer.table_stride = static_cast<std::ptrdiff_t>(block_table.size());
  layer.page_size = block_size;
  layer.heads_per_table = H;  // the heads of a request share its table, interleaved in a block
  layer.lengths = seq_lens.data();
  layer.num_seqs = static_cast<std::size_t>(H);
  layer.head_dim = D;
  // reshape_and_cache: token t of KV head h into slot t of the request's blocks.
  for (int h = 0; h < H; ++h)
    for (std::size_t t = 0; t < prefill.tokens; ++t) {
      const auto e = layer.entry(static_cast<std::size_t>(h), t);
      std::copy_n(prefill.key(h, t), D, e.key);
      std::copy_n(prefill.value(h, t), D, e.value);
      *e.position = static_cast<simcalkv::Position>(t);
    }

  const auto policy = simcalkv::make_policy("AdaKV+SimCalKV");
  const auto budget = simcalkv::Budget::compress_ratio(0.75);
  simcalkv::LayerRequest<float> request;
  request.window = prefill.window_view();
  request.budget = budget;
  simcalkv::Workspace ws;
  simcalkv::Staging<float> staging;
  const auto result = simcalkv::compress_paged(policy, layer, request, ws, staging);
  free_blocks.insert(free_blocks.end(), result.freed_pages.begin(), result.freed_pages.end());
  std::printf("vLLM blocks: heads keep %zu and %zu of %zu tokens; %zu of %zu blocks back on the free list\n",
              seq_lens[0], seq_lens[1], prefill.tokens, result.freed_pages.size(), blocks_needed);

  example::CompactReference reference(prefill, policy, budget, /*shared=*/false);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  double worst = 0.0;
  for (int h = 0; h < H; ++h) {
    std::vector<float> q(static_cast<std::size_t>(G * D)), out(q.size());
    for (auto& x : q) x = normal(rng);
    simcalkv::decode_attention(layer, static_cast<std::size_t>(h), q, G, out);
    worst = std::max(worst, example::max_abs_diff(out, reference.attend(h, q, G)));
  }
  return example::report("vLLM paged blocks", worst, 1e-5);
}
