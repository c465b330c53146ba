// The C++ library's own answer for python/tests/test_ops.py: reads one layer from a binary file,
// compresses it with make_policy(spec) through KVCache and AnyPolicy::compress (the path C++ hosts
// take, not the extension's), runs decode attention over the result, and prints what it kept.
//
// Input (little-endian): int32 H, n, d, Hq, W; float64 ratio; int32 spec length, spec bytes;
// float32 keys [H][n][d], values [H][n][d], window queries [Hq][W][d], decode query [Hq][d].
// Entry positions are 0..n-1, the window's n-W..n-1, the decode query's n.
// Output: per head "head h kept k" then lines "i bias key... value..." (%.9g), then one line
// "out" with the decode attention output [Hq][d].
#include "simcalkv/kernels/attention.hpp"
#include "simcalkv/kv_cache.hpp"
#include "simcalkv/registry.hpp"

#include <cstdio>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {
template <class T>
T read(std::ifstream& in) {
  T v{};
  in.read(reinterpret_cast<char*>(&v), sizeof v);
  if (!in) throw std::runtime_error("reference_compress: truncated input");
  return v;
}
std::vector<float> read_floats(std::ifstream& in, std::size_t n) {
  std::vector<float> v(n);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)));
  if (!in) throw std::runtime_error("reference_compress: truncated input");
  return v;
}
}  // namespace

int main(int argc, char** argv) try {
  if (argc != 2) {
    std::fprintf(stderr, "usage: reference_compress INPUT\n");
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  const int H = read<int32_t>(in), n = read<int32_t>(in), d = read<int32_t>(in), Hq = read<int32_t>(in),
            W = read<int32_t>(in);
  const double ratio = read<double>(in);
  std::string spec(static_cast<std::size_t>(read<int32_t>(in)), '\0');
  in.read(spec.data(), static_cast<std::streamsize>(spec.size()));
  const auto hd = static_cast<std::size_t>(d);
  const auto keys = read_floats(in, static_cast<std::size_t>(H) * n * hd);
  const auto values = read_floats(in, static_cast<std::size_t>(H) * n * hd);
  const auto queries = read_floats(in, static_cast<std::size_t>(Hq) * W * hd);
  const auto decode_query = read_floats(in, static_cast<std::size_t>(Hq) * hd);

  simcalkv::KVCache<float> cache({1, H, d});
  cache.append(0, static_cast<std::size_t>(n), std::span<const float>(keys), std::span<const float>(values));
  std::vector<simcalkv::Position> window_positions(static_cast<std::size_t>(W));
  for (int t = 0; t < W; ++t) window_positions[static_cast<std::size_t>(t)] = n - W + t;
  simcalkv::LayerRequest<float> request;
  request.heads = cache.layer(0);
  request.window = simcalkv::make_window_view(queries.data(), window_positions.data(), Hq, W, d);
  request.budget = simcalkv::Budget::compress_ratio(ratio);
  simcalkv::Workspace workspace;
  const auto policy = simcalkv::make_policy(spec);
  policy.compress(request, workspace);

  const int G = Hq / H;
  std::vector<float> out(static_cast<std::size_t>(Hq) * hd);
  for (int h = 0; h < H; ++h) {
    const auto& head = cache.layer(0)[static_cast<std::size_t>(h)];
    std::printf("head %d kept %zu\n", h, head.length);
    for (std::size_t j = 0; j < head.length; ++j) {
      std::printf("%d %.9g", head.positions[j], head.bias[j]);
      std::vector<float> row(hd);
      head.load_key(j, row.data());
      for (float x : row) std::printf(" %.9g", static_cast<double>(x));
      head.load_value(j, row.data());
      for (float x : row) std::printf(" %.9g", static_cast<double>(x));
      std::printf("\n");
    }
    const auto rows = static_cast<std::size_t>(G) * hd;
    simcalkv::decode_attention(head, std::span<const float>(decode_query.data() + h * rows, rows), G,
                               std::span<float>(out.data() + h * rows, rows));
  }
  std::printf("out");
  for (float x : out) std::printf(" %.9g", static_cast<double>(x));
  std::printf("\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
