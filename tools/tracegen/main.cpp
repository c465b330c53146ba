// simcalkv-tracegen: writes a synthetic KV trace (see tools/common/synthetic_trace.hpp).
//
//   simcalkv-tracegen --out FILE [--layers 4] [--q-heads 8] [--kv-heads 2] [--head-dim 128]
//                     [--n 2048] [--seed 1] [--dtype f32|f16|bf16] [--rope-theta 10000]
//
// Exit status: 0 on success, 1 if generating or writing fails, 2 on a bad command line.
#include "simcalkv/error.hpp"
#include "simcalkv/io/trace.hpp"
#include "synthetic_trace.hpp"

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

constexpr const char* usage =
    "usage: simcalkv-tracegen --out FILE [options]\n"
    "\n"
    "Writes a synthetic KV trace (safetensors, simcalkv-trace format v1) with topic drift,\n"
    "repeated tokens, outlier key channels, attention sinks and RoPE applied.\n"
    "\n"
    "options:\n"
    "  --out FILE          output path (required)\n"
    "  --layers N          number of layers (default 4)\n"
    "  --q-heads N         query heads per layer (default 8)\n"
    "  --kv-heads N        key/value heads per layer, dividing --q-heads (default 2)\n"
    "  --head-dim N        head dimension, even (default 128)\n"
    "  --n N               tokens (default 2048)\n"
    "  --seed N            random seed (default 1)\n"
    "  --dtype T           f32, f16 or bf16 (default f32)\n"
    "  --rope-theta X      RoPE base (default 10000)\n"
    "  --help              show this message\n";

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

float parse_float(std::string_view flag, std::string_view text) {
  const std::string s(text);
  char* end = nullptr;
  const double value = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(value) || value <= 1.0 ||
      value > std::numeric_limits<float>::max()) {
    throw UsageError{std::string(flag) + " expects a number > 1, got '" + s + "'"};
  }
  return static_cast<float>(value);
}

}  // namespace

int main(int argc, char** argv) {
  using simcalkv::io::DType;
  simcalkv::tools::SyntheticTraceConfig config;
  std::optional<std::string> out;
  DType dtype = DType::F32;

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
      if (flag == "--out") {
        const std::string_view path = take();
        if (path.empty()) throw UsageError{"--out needs a non-empty path"};
        out = std::string(path);
      } else if (flag == "--layers") {
        config.num_layers = parse_int<int>(flag, take(), 1);
      } else if (flag == "--q-heads") {
        config.num_q_heads = parse_int<int>(flag, take(), 1);
      } else if (flag == "--kv-heads") {
        config.num_kv_heads = parse_int<int>(flag, take(), 1);
      } else if (flag == "--head-dim") {
        config.head_dim = parse_int<int>(flag, take(), 2);
      } else if (flag == "--n") {
        config.n = parse_int<std::int64_t>(flag, take(), 1);
      } else if (flag == "--seed") {
        config.seed = parse_int<std::uint64_t>(flag, take(), 0);
      } else if (flag == "--rope-theta") {
        config.rope_theta = parse_float(flag, take());
      } else if (flag == "--dtype") {
        const std::string_view t = take();
        if (t == "f32") dtype = DType::F32;
        else if (t == "f16") dtype = DType::F16;
        else if (t == "bf16") dtype = DType::BF16;
        else throw UsageError{"--dtype expects f32, f16 or bf16, got '" + std::string(t) + "'"};
      } else {
        throw UsageError{"unknown option '" + std::string(flag) + "'"};
      }
    }
    if (!out) throw UsageError{"--out FILE is required"};
    if (config.head_dim % 2 != 0) throw UsageError{"--head-dim must be even (RoPE pairs channels)"};
    if (config.num_q_heads % config.num_kv_heads != 0) {
      throw UsageError{"--q-heads (" + std::to_string(config.num_q_heads) + ") must be a multiple of --kv-heads (" +
                       std::to_string(config.num_kv_heads) + ")"};
    }
  } catch (const UsageError& e) {
    std::fprintf(stderr, "simcalkv-tracegen: %s\n(run simcalkv-tracegen --help for usage)\n", e.message.c_str());
    return 2;
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
