// simcalkv-tracegen: writes a synthetic KV trace (see tools/common/synthetic_trace.hpp).
//
//   simcalkv-tracegen --out FILE [--layers 4] [--q_heads 8] [--kv_heads 2] [--head_dim 128]
//                     [--n 2048] [--seed 1] [--dtype f32|f16|bf16] [--rope_theta 10000]
//
// Exit status: 0 on success, 1 if generating or writing fails, 2 on a bad command line.
#include "simcalkv/error.hpp"
#include "simcalkv/io/trace.hpp"
#include "flags.hpp"
#include "synthetic_trace.hpp"

#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace {

/// Physical memory of this machine in bytes (0 if unknown).
double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  using simcalkv::io::DType;
  simcalkv::tools::SyntheticTraceConfig config;
  std::optional<std::string> out;
  DType dtype = DType::F32;

  namespace t = simcalkv::tools;
  std::string out_file, dtype_name = "f32";
  t::Flags flags("simcalkv-tracegen", "--out FILE [options]",
                 "Writes a synthetic KV trace (safetensors, simcalkv-trace format v1) with topic drift, repeated "
                 "tokens, outlier key channels, attention sinks and RoPE applied. Exit status: 0 on success, 1 if "
                 "generating or writing fails, 2 on a bad command line.");
  flags.text("out", &out_file, "FILE", "output path (required)");
  flags.number("layers", &config.num_layers, t::closed(1, 1024), "N", "number of layers");
  flags.number("q_heads", &config.num_q_heads, t::closed(1, 1024), "N", "query heads per layer");
  flags.number("kv_heads", &config.num_kv_heads, t::closed(1, 1024), "N", "key/value heads per layer, dividing --q_heads");
  flags.number("head_dim", &config.head_dim, t::closed(2, 4096), "N", "head dimension, even");
  flags.number("n", &config.n, t::closed(1, 1 << 24), "N", "tokens");
  flags.number("seed", &config.seed, t::at_least(0), "S", "random seed");
  flags.choice("dtype", &dtype_name, {"f32", "f16", "bf16"}, "storage type of the written tensors");
  flags.number("rope_theta", &config.rope_theta, t::above(1), "X", "RoPE base");

  try {
    if (!flags.parse(argc, argv)) {
      std::fputs(flags.help().c_str(), stdout);
      return 0;
    }
    if (!out_file.empty()) out = out_file;
    dtype = dtype_name == "f16" ? DType::F16 : dtype_name == "bf16" ? DType::BF16 : DType::F32;
    if (!std::isfinite(config.rope_theta)) throw t::UsageError("--rope_theta is too large for a float");
    if (!out) throw t::UsageError("--out FILE is required");
    if (config.head_dim % 2 != 0) throw t::UsageError("--head_dim must be even (RoPE pairs channels)");
    if (config.num_q_heads % config.num_kv_heads != 0) {
      throw t::UsageError("--q_heads (" + std::to_string(config.num_q_heads) + ") must be a multiple of --kv_heads (" +
                       std::to_string(config.num_kv_heads) + ")");
    }
    // Queries, keys and values are generated as float before writing: refuse what this machine cannot hold
    // instead of ending in std::bad_alloc.
    const double bytes = 4.0 * config.num_layers * (config.num_q_heads + 2.0 * config.num_kv_heads) *
                         static_cast<double>(config.n) * config.head_dim;
    const double memory = physical_memory_bytes();
    if (memory > 0 && bytes > 0.5 * memory) {
      char msg[256];
      std::snprintf(msg, sizeof msg, "the trace would need %.1f GiB in memory, more than half of this machine's %.1f GiB; "
                    "lower --n, --layers or the heads", bytes / (1 << 30), memory / (1 << 30));
      throw t::UsageError(msg);
    }
  } catch (const t::UsageError& e) {
    return flags.report(e);
  }

  try {
    const simcalkv::io::Trace trace = simcalkv::tools::make_synthetic_trace(config);
    simcalkv::io::write_trace(*out, trace, dtype);
    std::fprintf(stderr, "simcalkv-tracegen: wrote %s (%d layers, %d q heads, %d kv heads, head_dim %d, n %lld, %s, seed %llu)\n",
                 out->c_str(), config.num_layers, config.num_q_heads, config.num_kv_heads, config.head_dim,
                 static_cast<long long>(config.n), simcalkv::io::dtype_name(dtype),
                 static_cast<unsigned long long>(config.seed));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "simcalkv-tracegen: %s\n", e.what());
    return 1;
  }
  return 0;
}
