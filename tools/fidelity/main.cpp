// simcalkv-fidelity: attention error of compression policies on a KV trace (tools/common/fidelity.hpp).
//
//   simcalkv-fidelity (--trace FILE | --synthetic) [--kv_method LIST] [--compress_ratio 0.5,0.75,0.9] [options]
//
// `simcalkv-fidelity --help` lists the options. Exit status: 0 on success, 1 if reading the trace or measuring
// fails, 2 on a bad command line (unknown flag, bad number, unknown policy or policy option).
#include "flags.hpp"
#include "openmp_wait.hpp"
#include "fidelity.hpp"
#include "synthetic_trace.hpp"

#include "simcalkv/io/trace.hpp"
#include "simcalkv/simcalkv.hpp"

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace {

const char* const about =
    "Compresses the prompt (all tokens but the last --future) of every selected layer with each policy and "
    "compression ratio, appends the future tokens uncompressed and reports the relative L2 error of their "
    "attention outputs (every query head, causal) against the uncompressed cache. Budget per KV head: "
    "round((1 - compress_ratio) * prompt), at least 4 + window (the protected entries). Exit status: 0 on "
    "success, 1 if reading the trace or measuring fails, 2 on a bad command line.";

std::vector<int> parse_layers(const std::string& text) {
  std::vector<int> out;
  for (const auto& item : simcalkv::tools::split_commas("--layers", text)) {
    const int layer = simcalkv::tools::parse_number<int>("--layers", item, simcalkv::tools::at_least(0));
    for (int seen : out)
      if (seen == layer) throw simcalkv::tools::UsageError("--layers lists layer " + std::to_string(layer) + " twice");
    out.push_back(layer);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  simcalkv::tools::prefer_passive_openmp_wait(argv);
  std::optional<std::string> trace_path, json_path;
  bool synthetic = false;
  simcalkv::tools::SyntheticTraceConfig synth;
  std::vector<std::string> specs;
  simcalkv::tools::FidelityOptions options;
  std::optional<std::vector<int>> layers;
  int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<simcalkv::tools::FidelityPolicy> policies;

  namespace t = simcalkv::tools;
  std::string trace_file, json_file;
  t::Flags flags("simcalkv-fidelity", "(--trace FILE | --synthetic) [options]", about);
  flags.section("input (one of)");
  flags.text("trace", &trace_file, "FILE", "a simcalkv trace (safetensors; see simcalkv-tracegen)");
  flags.flag("synthetic", &synthetic,
             "generate the default synthetic trace in memory (4 layers, 8 q heads, 2 kv heads, head_dim 128)");
  flags.number("n", &synth.n, t::closed(2, 1 << 20), "N", "tokens of the synthetic trace");
  flags.number("seed", &synth.seed, t::at_least(0), "S", "seed of the synthetic trace");
  flags.section("what to measure");
  flags.custom("kv_method", "LIST",
               "policy specs separated by ';' or ',' (a ','-piece key=value continues the previous spec's options: "
               "'SimCalKV:bias=none,search=exact,SnapKV' is two specs), or 'all' for every registered policy",
               "all", [&](const std::string& v) {
                 for (auto& s : t::split_policy_list(v)) specs.push_back(s);
               })
      .alias("policies");
  flags.custom("policy", "SPEC", "one policy spec, taken verbatim; repeatable, adds to --kv_method", "",
               [&](const std::string& v) {
                 if (v.empty()) throw t::UsageError("--policy needs a spec");
                 specs.push_back(v);
               })
      .repeatable();
  flags.number_list("compress_ratio", &options.compress_ratios, t::half_open(0, 1), "LIST",
                    "fractions of the prompt removed, comma-separated");
  flags.retired("keep", "give --compress_ratio, the fraction removed (1 - keep): --keep 0.25 is --compress_ratio 0.75");
  flags.number("future", &options.future, t::closed(1, 1 << 20), "N",
               "tokens after the prompt whose attention is measured");
  flags.number("window", &options.window, t::closed(1, 1 << 20), "W", "observation window: the prompt's last W queries");
  flags.custom("layers", "LIST", "layer numbers to measure, comma-separated", "all",
               [&](const std::string& v) { layers = parse_layers(v); });
  flags.number("threads", &threads, t::closed(1, 4096), "T", "worker threads; results do not depend on it")
      .shown_default("hardware threads");
  flags.text("json", &json_file, "OUT", "also write the results as JSON to OUT");

  try {
    if (!flags.parse(argc, argv)) {
      std::fputs(flags.help().c_str(), stdout);
      return 0;
    }
    if (flags.given("trace")) {
      if (trace_file.empty()) throw t::UsageError("--trace needs a non-empty path");
      trace_path = trace_file;
    }
    if (flags.given("json")) {
      if (json_file.empty()) throw t::UsageError("--json needs a non-empty path");
      json_path = json_file;
    }
    const bool n_given = flags.given("n"), seed_given = flags.given("seed");
    const bool policies_given = flags.given("kv_method") || flags.given("policy");
    if (synthetic == trace_path.has_value()) throw t::UsageError("give exactly one of --trace FILE and --synthetic");
    if (!synthetic && (n_given || seed_given)) throw t::UsageError("--n and --seed apply to --synthetic only");
    if (!policies_given) specs = simcalkv::policy_names();
    if (specs.empty()) throw t::UsageError("--kv_method lists no policy");
    for (const auto& spec : specs) {
      try {
        policies.push_back({spec, simcalkv::make_policy(spec)});
      } catch (const simcalkv::Error& e) {
        throw t::UsageError(e.what());
      }
    }
  } catch (const t::UsageError& e) {
    return flags.report(e);
  }

  try {
    // Parallelism comes from the executor; Eigen's own OpenMP threads would oversubscribe.
    Eigen::setNbThreads(1);
    simcalkv::io::Trace trace;
    if (synthetic) {
      trace = simcalkv::tools::make_synthetic_trace(synth);
      options.trace_name = "synthetic:n=" + std::to_string(synth.n) + ",seed=" + std::to_string(synth.seed);
      if (layers) {
        for (int l : *layers)
          if (l >= trace.num_layers)
            throw simcalkv::Error(simcalkv::ErrorCode::invalid_argument,
                                  "layer " + std::to_string(l) + " requested, the synthetic trace has " +
                                      std::to_string(trace.num_layers) + " layers");
        options.layers = *layers;
      }
      options.model_layers = trace.num_layers;
    } else {
      trace = simcalkv::io::read_trace(*trace_path, layers);
      options.trace_name = *trace_path;
      const simcalkv::io::SafetensorsFile file(*trace_path);
      options.model_layers = std::atoi(file.metadata_value("num_layers").c_str());
    }
    if (static_cast<std::int64_t>(options.future) + options.window > trace.n) {
      throw simcalkv::Error(simcalkv::ErrorCode::invalid_argument,
                            "the trace has " + std::to_string(trace.n) + " tokens, fewer than --future (" +
                                std::to_string(options.future) + ") + --window (" + std::to_string(options.window) +
                                "); lower --future");
    }
    const simcalkv::ThreadExecutor exec(threads);
    const auto report = simcalkv::tools::run_fidelity(trace, policies, options, exec);
    std::fputs(simcalkv::tools::format_table(report).c_str(), stdout);
    if (json_path) {
      std::ofstream out(*json_path);
      if (!out) throw simcalkv::Error(simcalkv::ErrorCode::io, "cannot open '" + *json_path + "' for writing");
      out << simcalkv::tools::to_json(report).dump(2) << "\n";
      if (!out) throw simcalkv::Error(simcalkv::ErrorCode::io, "writing '" + *json_path + "' failed");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "simcalkv-fidelity: %s\n", e.what());
    return 1;
  }
  return 0;
}
