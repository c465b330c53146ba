// The core invariant of SimCalKV, shown: with a single window query, `calibrated` merging
// reproduces that query's attention output exactly (up to float rounding), whatever the keys;
// the other bias modes do not. Prints the relative L2 error per bias mode.
#include <simcalkv/simcalkv.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  using namespace simcalkv;
  constexpr int dim = 128;
  constexpr std::size_t n = 2048;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> base_keys(n * dim), base_values(n * dim), query(dim);
  std::vector<float> drift(dim);
  for (auto& x : drift) x = normal(rng);
  for (std::size_t j = 0; j < n; ++j)
    for (int i = 0; i < dim; ++i) {
      drift[i] = 0.9f * drift[i] + 0.45f * normal(rng);  // neighbouring keys alike, as with RoPE
      base_keys[j * dim + i] = drift[i];
      base_values[j * dim + i] = normal(rng);
    }
  for (auto& x : query) x = normal(rng);
  const Position last = static_cast<Position>(n - 1);

  std::printf("n = %zu, head_dim = %d, one window query, 4 sinks, budget 25%%\n", n, dim);
  for (auto mode : {BiasMode::calibrated, BiasMode::bounded, BiasMode::log_count, BiasMode::none}) {
    std::vector<float> keys = base_keys, values = base_values, bias(n, 0.0f);
    std::vector<Position> positions(n);
    for (std::size_t j = 0; j < n; ++j) positions[j] = static_cast<Position>(j);
    HeadView<float> head = make_head_view<float>(keys.data(), values.data(), bias.data(), positions.data(), nullptr, n, n, dim);
    std::vector<float> before(dim), after(dim);
    decode_attention(head, query, 1, before);

    SimCalKVOptions options;
    options.recent_tokens = 1;
    options.bias = mode;
    LayerRequest<float> request;
    request.heads = std::span<HeadView<float>>(&head, 1);
    request.window = make_window_view(query.data(), &last, 1, 1, dim);
    request.budget = Budget::keep_fraction(0.25);
    Workspace ws;
    const auto stats = SimCalKV(options).compress(request, ws);
    decode_attention(head, query, 1, after);
    double num = 0, den = 0;
    for (int i = 0; i < dim; ++i) {
      num += double(after[i] - before[i]) * double(after[i] - before[i]);
      den += double(before[i]) * double(before[i]);
    }
    std::printf("  bias=%-10s entries %zu -> %zu, relative error of the query's output %.3e\n", bias_mode_name(mode),
                stats.entries_before, stats.entries_after, std::sqrt(num / den));
  }
  return 0;
}
