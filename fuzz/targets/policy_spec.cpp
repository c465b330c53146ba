// Policy specs as make_policy() and --kv_method take them ("SimCalKV:bias=log_count,search=local:64"): a policy
// that compresses a small layer to its budget with finite rows, or simcalkv::Error; the command-line splitter
// (tools/common/policy_list.hpp) either splits the text or names the empty or misplaced item.
#include "common.hpp"

#include "policy_list.hpp"

#include <simcalkv/simcalkv.hpp>

#include <cmath>
#include <random>

namespace {

struct SmallLayer {
  static constexpr int heads = 2, dim = 8, window = 4;
  static constexpr std::size_t n = 40;
  std::vector<float> k, v, bias, scores, q;
  std::vector<simcalkv::Position> pos, qpos;
  std::vector<simcalkv::HeadView<float>> views;
  SmallLayer() : k(heads * n * dim), v(k.size()), bias(heads * n), scores(heads * n), q(heads * 2 * window * dim), pos(heads * n) {
    std::mt19937 rng(1);
    std::normal_distribution<float> g;
    for (auto& x : k) x = g(rng);
    for (auto& x : v) x = g(rng);
    for (auto& x : q) x = g(rng);
    for (int h = 0; h < heads; ++h) {
      for (std::size_t j = 0; j < n; ++j) pos[h * n + j] = static_cast<simcalkv::Position>(j);
      views.push_back(simcalkv::make_head_view<float>(k.data() + h * n * dim, v.data() + h * n * dim, bias.data() + h * n,
                                                      pos.data() + h * n, scores.data() + h * n, n, n, dim));
    }
    for (int t = 0; t < window; ++t) qpos.push_back(static_cast<simcalkv::Position>(n - window + t));
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static simcalkv::fuzz::Tally tally("policy_spec");
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    (void)simcalkv::tools::split_policy_specs("--kv_method", text);
  } catch (const simcalkv::tools::UsageError&) {
  }
  try {
    const simcalkv::AnyPolicy policy = simcalkv::make_policy(text);
    SmallLayer layer;
    simcalkv::LayerRequest<float> request;
    request.heads = layer.views;
    request.window = simcalkv::make_window_view(layer.q.data(), layer.qpos.data(), 2 * SmallLayer::heads,
                                                SmallLayer::window, SmallLayer::dim);
    request.budget = simcalkv::Budget::compress_ratio(0.5);
    request.num_layers = 2;
    simcalkv::Workspace ws;
    try {
      policy.compress(request, ws);
      for (const auto& h : layer.views) {
        simcalkv::fuzz::expect(h.length <= SmallLayer::n, "a head grew");
        for (std::size_t j = 1; j < h.length; ++j)
          simcalkv::fuzz::expect(h.positions[j - 1] < h.positions[j], "positions not ascending");
        for (std::size_t j = 0; j < h.length; ++j)
          simcalkv::fuzz::expect(std::isfinite(h.bias[j]) || h.bias[j] == -INFINITY, "a NaN bias");
      }
    } catch (const simcalkv::Error&) {
      // a valid spec whose options do not fit this layer (a budget below its protection, say): refused, fine
    }
    ++tally.accepted;
  } catch (const simcalkv::Error&) {
    ++tally.refused;
  }
  return 0;
}
