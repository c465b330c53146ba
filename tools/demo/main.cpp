// simcalkv-demo: the project's main job on bundled defaults. It builds a synthetic trace shaped
// like a real model's (tools/common/synthetic_trace.hpp), compresses its prompt with several
// policies in a bf16 KVCache (reporting the bytes really held before and after), and measures
// how far attention over the compressed cache moves from attention over the full one
// (tools/common/fidelity.hpp).
#include "flags.hpp"
#include "openmp_wait.hpp"
#include "fidelity.hpp"
#include "synthetic_trace.hpp"

#include <simcalkv/simcalkv.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

/// Bytes a bf16 KVCache holds for the trace's prompt before and after compressing every layer.
std::pair<std::size_t, std::size_t> cache_bytes(const simcalkv::io::Trace& trace, const simcalkv::AnyPolicy& policy,
                                                double compress_ratio, std::int64_t prompt, int window, const simcalkv::Executor& exec) {
  using namespace simcalkv;
  KVCache<bfloat16> cache({trace.num_layers, trace.num_kv_heads, trace.head_dim});
  const auto d = static_cast<std::size_t>(trace.head_dim);
  const auto P = static_cast<std::size_t>(prompt);
  for (int l = 0; l < trace.num_layers; ++l) {
    std::vector<float> k(static_cast<std::size_t>(trace.num_kv_heads) * P * d), v(k.size());
    for (int h = 0; h < trace.num_kv_heads; ++h)
      for (std::size_t t = 0; t < P; ++t) {
        std::copy_n(trace.key(l, h, static_cast<std::int64_t>(t)), d, k.data() + (h * P + t) * d);
        std::copy_n(trace.value(l, h, static_cast<std::int64_t>(t)), d, v.data() + (h * P + t) * d);
      }
    cache.append(l, P, k, v);
  }
  cache.shrink_to_fit();
  const std::size_t before = cache.reserved_bytes();
  std::vector<float> q(static_cast<std::size_t>(trace.num_q_heads) * static_cast<std::size_t>(window) * d);
  std::vector<Position> pos(static_cast<std::size_t>(window));
  for (int t = 0; t < window; ++t) pos[static_cast<std::size_t>(t)] = static_cast<Position>(prompt - window + t);
  Workspace ws;
  for (int l = 0; l < trace.num_layers; ++l) {
    for (int h = 0; h < trace.num_q_heads; ++h)
      for (int t = 0; t < window; ++t)
        std::copy_n(trace.query(l, h, prompt - window + t), d, q.data() + (static_cast<std::size_t>(h) * window + t) * d);
    LayerRequest<bfloat16> request;
    request.heads = cache.layer(l);
    request.window = make_window_view(q.data(), pos.data(), trace.num_q_heads, window, trace.head_dim);
    request.budget = Budget::entries(tools::fidelity_budget(compress_ratio, P, window));
    if (policy.name() == "Full") request.budget = Budget::entries(P);
    request.layer = l;
    request.num_layers = trace.num_layers;
    request.executor = &exec;
    policy.compress(request, ws);
  }
  cache.shrink_to_fit();
  return {before, cache.reserved_bytes()};
}

}  // namespace

int main(int argc, char** argv) {
  simcalkv::tools::prefer_passive_openmp_wait(argv);
  using namespace simcalkv;
  std::vector<std::string> policies = {"Full", "SimCalKV", "SnapKV", "StreamingLLM"};
  tools::SyntheticTraceConfig config;
  tools::FidelityOptions options;
  options.compress_ratios = {0.5, 0.75};
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  tools::Flags flags("simcalkv-demo", "[options]",
                     "A quick look at the library without a model: builds a synthetic trace shaped like a real "
                     "model's, compresses its prompt with each policy in a bf16 KVCache, and reports the bytes held "
                     "before and after and how far attention over the compressed cache moves from the full one. "
                     "(The main job on the bundled model is simcalkv-eval: scripts/eval.sh.)");
  flags.text_list("kv_method", &policies, "LIST", "policy specs (';' or ','), 'all' for every registered policy",
                  [](const std::string& v) { return tools::split_policy_list(v); })
      .alias("policies");
  flags.number_list("compress_ratio", &options.compress_ratios, tools::half_open(0, 1), "LIST",
                    "fractions of the prompt removed, comma-separated");
  flags.retired("keep", "give --compress_ratio, the fraction removed (1 - keep): --keep 0.25 is --compress_ratio 0.75");
  flags.number("n", &config.n, tools::closed(64, 1 << 20), "N", "tokens of the synthetic trace");
  flags.number("future", &options.future, tools::closed(1, 1 << 20), "N",
               "tokens after the prompt whose attention is measured");
  flags.number("window", &options.window, tools::closed(1, 1 << 20), "W",
               "observation window: the prompt's last W queries");
  flags.number("threads", &threads, tools::closed(1, 4096), "T", "worker threads; results do not depend on it")
      .shown_default("hardware threads");
  try {
    if (!flags.parse(argc, argv)) {
      std::fputs(flags.help().c_str(), stdout);
      return 0;
    }
    for (const auto& spec : policies) (void)make_policy(spec);  // an unknown name is a usage error
  } catch (const std::exception& e) {
    return flags.report(e);
  }

  try {
    const auto trace = tools::make_synthetic_trace(config);
    options.trace_name = "synthetic(seed=" + std::to_string(config.seed) + ")";
    std::vector<tools::FidelityPolicy> list;
    for (const auto& spec : policies) list.push_back({spec, make_policy(spec)});
    const ThreadExecutor exec(threads);
    std::printf("synthetic trace: %d layers, %d query heads, %d KV heads, head_dim %d, %lld tokens (prompt %lld)\n\n",
                trace.num_layers, trace.num_q_heads, trace.num_kv_heads, trace.head_dim,
                static_cast<long long>(trace.n), static_cast<long long>(trace.n - options.future));

    const auto report = tools::run_fidelity(trace, list, options, exec);
    std::printf("%-22s %6s %14s %14s %10s %16s %16s\n", "policy", "ratio", "KV bytes before", "KV bytes after", "saved",
                "attn err mean", "attn err p95");
    for (const auto& r : report.results) {
      const auto& policy = list[static_cast<std::size_t>(
                                    std::find_if(list.begin(), list.end(), [&](const auto& p) { return p.label == r.policy; }) -
                                    list.begin())]
                               .policy;
      const auto [before, after] = cache_bytes(trace, policy, r.compress_ratio, trace.n - options.future, options.window, exec);
      std::printf("%-22s %6.2f %14zu %14zu %9.1f%% %16.3e %16.3e\n", r.policy.c_str(), r.compress_ratio, before, after,
                  100.0 * (1.0 - static_cast<double>(after) / static_cast<double>(before)), r.rel_error_mean,
                  r.rel_error_p95);
    }
    std::printf("\nKV bytes: a bf16 KVCache after shrink_to_fit (keys, values, bias, positions).\n"
                "attn err: relative L2 error of attention outputs of the %d future tokens, compressed vs full cache.\n",
                options.future);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "simcalkv-demo: %s\n", e.what());
    return 1;
  }
  return 0;
}
