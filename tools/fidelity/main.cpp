// simcalkv-fidelity: attention error of compression policies on a KV trace (tools/common/fidelity.hpp).
//
//   simcalkv-fidelity (--trace FILE | --synthetic [--n N] [--seed S]) [--policies LIST] [--policy SPEC]...
//                     [--keep 0.5,0.25,0.1] [--future 256] [--window 32] [--layers LIST] [--threads T]
//                     [--json OUT]
//
// Exit status: 0 on success, 1 if reading the trace or measuring fails, 2 on a bad command line
// (unknown flag, bad number, unknown policy or policy option).
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

constexpr const char* usage =
    "usage: simcalkv-fidelity (--trace FILE | --synthetic) [options]\n"
    "\n"
    "Compresses the prompt (all tokens but the last --future) of every selected layer with each\n"
    "policy and kept fraction, appends the future tokens uncompressed and reports the relative L2\n"
    "error of their attention outputs (every query head, causal) against the uncompressed cache.\n"
    "\n"
    "input (one of):\n"
    "  --trace FILE        a simcalkv trace (safetensors; see simcalkv-tracegen)\n"
    "  --synthetic         generate the default synthetic trace in memory (4 layers, 8 q heads,\n"
    "                      2 kv heads, head_dim 128)\n"
    "  --n N               tokens of the synthetic trace (default 2048)\n"
    "  --seed S            seed of the synthetic trace (default 1)\n"
    "\n"
    "options:\n"
    "  --policies LIST     policy specs, or 'all' for every registered policy (default all).\n"
    "                      Specs are separated by ';' or ','; a ','-piece of the form key=value\n"
    "                      continues the previous spec's options, so\n"
    "                      'SimCalKV:bias=none,search=exact,SnapKV' is two specs.\n"
    "  --policy SPEC       one policy spec, taken verbatim (repeatable; adds to --policies)\n"
    "  --keep LIST         kept fractions in (0, 1], comma-separated (default 0.5,0.25,0.1)\n"
    "  --future N          tokens after the prompt whose attention is measured (default 256)\n"
    "  --window N          observation window: the prompt's last N queries (default 32)\n"
    "  --layers LIST       layer numbers to measure, comma-separated (default all)\n"
    "  --threads T         worker threads (default: hardware threads); results do not depend on it\n"
    "  --json OUT          also write the results as JSON to OUT\n"
    "  --help              show this message\n"
    "\n"
    "Budget per KV head: round(keep * prompt), at least 4 + window (the protected entries).\n";

struct UsageError {
  std::string message;
};

template <class Int>
Int parse_int(std::string_view flag, std::string_view text, Int min_value) {
  Int value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value < min_value) {
    throw UsageError{std::string(flag) + " expects an integer >= " + std::to_string(min_value) + ", got '" +
                     std::string(text) + "'"};
  }
  return value;
}

std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(sep, start), text.size());
    out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::vector<double> parse_keep(std::string_view text) {
  std::vector<double> out;
  for (std::string_view item : split(text, ',')) {
    const std::string s(item);
    char* end = nullptr;
    const double value = s.empty() ? NAN : std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(value) || value <= 0.0 || value > 1.0)
      throw UsageError{"--keep expects fractions in (0, 1], got '" + s + "'"};
    out.push_back(value);
  }
  return out;
}

std::vector<int> parse_layers(std::string_view text) {
  std::vector<int> out;
  for (std::string_view item : split(text, ',')) {
    const int layer = parse_int<int>("--layers", item, 0);
    for (int seen : out)
      if (seen == layer) throw UsageError{"--layers lists layer " + std::to_string(layer) + " twice"};
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
  bool policies_given = false;
  simcalkv::tools::FidelityOptions options;
  std::optional<std::vector<int>> layers;
  int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  bool n_given = false, seed_given = false;
  std::vector<simcalkv::tools::FidelityPolicy> policies;

  try {
    for (int i = 1; i < argc; ++i) {
      std::string_view arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::fputs(usage, stdout);
        return 0;
      }
      if (arg.substr(0, 2) != "--") throw UsageError{"unexpected argument '" + std::string(arg) + "'"};
      std::string_view flag = arg;
      std::optional<std::string_view> value;
      if (const auto eq = arg.find('='); eq != std::string_view::npos) {
        flag = arg.substr(0, eq);
        value = arg.substr(eq + 1);
      }
      auto take = [&]() -> std::string_view {
        if (value) return *value;
        if (i + 1 >= argc) throw UsageError{std::string(flag) + " needs a value"};
        return argv[++i];
      };
      auto no_value = [&] {
        if (value) throw UsageError{std::string(flag) + " takes no value"};
      };
      if (flag == "--trace") {
        const std::string_view path = take();
        if (path.empty()) throw UsageError{"--trace needs a non-empty path"};
        trace_path = std::string(path);
      } else if (flag == "--synthetic") {
        no_value();
        synthetic = true;
      } else if (flag == "--n") {
        synth.n = parse_int<std::int64_t>(flag, take(), 2);
        n_given = true;
      } else if (flag == "--seed") {
        synth.seed = parse_int<std::uint64_t>(flag, take(), 0);
        seed_given = true;
      } else if (flag == "--policies") {
        for (auto& s : simcalkv::tools::split_policy_list(take())) specs.push_back(s);
        policies_given = true;
      } else if (flag == "--policy") {
        const std::string_view spec = take();
        if (spec.empty()) throw UsageError{"--policy needs a spec"};
        specs.emplace_back(spec);
        policies_given = true;
      } else if (flag == "--keep") {
        options.keep = parse_keep(take());
      } else if (flag == "--future") {
        options.future = parse_int<int>(flag, take(), 1);
      } else if (flag == "--window") {
        options.window = parse_int<int>(flag, take(), 1);
      } else if (flag == "--layers") {
        layers = parse_layers(take());
      } else if (flag == "--threads") {
        threads = parse_int<int>(flag, take(), 1);
      } else if (flag == "--json") {
        const std::string_view path = take();
        if (path.empty()) throw UsageError{"--json needs a non-empty path"};
        json_path = std::string(path);
      } else {
        throw UsageError{"unknown option '" + std::string(flag) + "'"};
      }
    }
    if (synthetic == trace_path.has_value()) throw UsageError{"give exactly one of --trace FILE and --synthetic"};
    if (!synthetic && (n_given || seed_given)) throw UsageError{"--n and --seed apply to --synthetic only"};
    if (!policies_given) specs = simcalkv::policy_names();
    if (specs.empty()) throw UsageError{"--policies lists no policy"};
    for (const auto& spec : specs) {
      try {
        policies.push_back({spec, simcalkv::make_policy(spec)});
      } catch (const simcalkv::Error& e) {
        throw UsageError{e.what()};
      }
    }
  } catch (const UsageError& e) {
    std::fprintf(stderr, "simcalkv-fidelity: %s\n(run simcalkv-fidelity --help for usage)\n", e.message.c_str());
    return 2;
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
