// simcalkv-generate: run a Hugging Face Llama / Qwen2 / Mistral checkpoint on the CPU with any
// registered KV-cache policy (the reference host engine, engine/).
//
//   simcalkv-generate (--prompt TEXT | --prompt_file F) [--kv_method SPEC --compress_ratio R] [options]
//
// `simcalkv-generate --help` lists the options (tools/common/flags.hpp parses them, as for every tool).
#include "flags.hpp"
#include "openmp_wait.hpp"
#include "session.hpp"
#include "tokenizer.hpp"

#include <simcalkv/executor.hpp>
#include <simcalkv/io/trace.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>

namespace {

#ifndef SIMCALKV_SOURCE_DIR
#define SIMCALKV_SOURCE_DIR "."
#endif

struct Args {
  std::string model = SIMCALKV_SOURCE_DIR "/models/simcalkv-tiny";
  std::string prompt, prompt_file, kv_method, dump_trace, kv_dtype = "f32", kv_layout = "compact";
  bool has_prompt = false, json = false, decode_compress = false, ignore_eos = false, special_tokens = true;
  bool bench = false;
  int max_new_tokens = 32, window = 32, threads = 0, chunk = 512;
  double compress_ratio = 0.5, temperature = 0.0, top_p = 1.0;
  std::size_t decode_slack = 16;
  unsigned long long seed = 0;
};

simcalkv::tools::Flags make_flags(Args& a) {
  namespace t = simcalkv::tools;
  t::Flags f("simcalkv-generate", "(--prompt TEXT | --prompt_file F) [options]",
             "Runs a Hugging Face Llama / Qwen2 / Mistral checkpoint on the CPU, optionally compressing its KV cache "
             "after the prompt (and, with --decode_compress, while decoding). Prints the answer; --json prints the "
             "answer with timings and cache sizes.");
  f.section("model and prompt");
  f.text("model_name", &a.model, "DIR", "checkpoint folder").alias("model").shown_default("models/simcalkv-tiny");
  f.custom("prompt", "TEXT", "the prompt", "", [&a](const std::string& v) { a.prompt = v, a.has_prompt = true; });
  f.text("prompt_file", &a.prompt_file, "F", "read the prompt from a file");
  f.flag("no_special_tokens", &a.special_tokens, "do not add the tokenizer's special tokens to the prompt", false);
  f.section("compression");
  f.text("kv_method", &a.kv_method, "SPEC", "a registry policy spec, e.g. SimCalKV or AdaKV+SnapKV")
      .shown_default("none: the full cache");
  f.number("compress_ratio", &a.compress_ratio, t::half_open(0, 1), "R", "fraction of the KV cache removed");
  f.number("window", &a.window, t::closed(1, 1 << 20), "W", "observation window: the prompt's last W queries");
  f.flag("decode_compress", &a.decode_compress, "also compress while decoding (needs --kv_method)");
  f.number("decode_slack", &a.decode_slack, t::closed(0, 1 << 20), "S",
           "decode growth past the budget before compressing again");
  f.choice("kv_dtype", &a.kv_dtype, {"f32", "bf16"}, "cache storage type");
  f.choice("kv_layout", &a.kv_layout, {"compact", "paged"},
           "a buffer per KV head, or 32-entry pages with a block table per KV head; the same tokens either way");
  f.section("decoding");
  f.number("max_new_tokens", &a.max_new_tokens, t::closed(0, 1 << 20), "N", "tokens to generate");
  f.number("temperature", &a.temperature, t::closed(0, 1e6), "T", "sampling temperature; 0 is greedy");
  f.number("top_p", &a.top_p, t::left_open(0, 1), "P", "nucleus sampling mass");
  f.number("seed", &a.seed, t::at_least(0), "S", "sampling seed");
  f.flag("ignore_eos", &a.ignore_eos, "keep generating after the end-of-sequence token");
  f.section("machine and output");
  f.number("chunk", &a.chunk, t::closed(1, 1 << 20), "N", "prefill chunk in tokens");
  f.number("threads", &a.threads, t::closed(0, 4096), "T", "OpenMP and Eigen threads; 0 keeps the default");
  f.flag("json", &a.json, "print the result as JSON");
  f.flag("bench", &a.bench, "add speed bounds (copy bandwidth, bytes per step) to the JSON result");
  f.text("dump_trace", &a.dump_trace, "FILE", "write the prompt's KV trace (safetensors) to FILE");
  return f;
}

/// Returns false when --help was asked for.
bool parse_args(int argc, char** argv, Args& a) {
  auto flags = make_flags(a);
  if (!flags.parse(argc, argv)) return false;
  using simcalkv::tools::UsageError;
  if (a.model.empty()) throw UsageError("--model_name needs a folder");
  if (a.has_prompt == !a.prompt_file.empty()) throw UsageError("give exactly one of --prompt and --prompt_file");
  if (a.decode_compress && a.kv_method.empty()) throw UsageError("--decode_compress needs --kv_method");
  if (flags.given("compress_ratio") && a.kv_method.empty())
    throw UsageError("--compress_ratio needs --kv_method (without one nothing is compressed), e.g. --kv_method SimCalKV");
  return true;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int pick(const std::vector<float>& logits, const Args& a, std::mt19937_64& rng) {
  if (a.temperature <= 0.0) return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return logits[static_cast<std::size_t>(x)] > logits[static_cast<std::size_t>(y)]; });
  const double mx = logits[static_cast<std::size_t>(order[0])];
  std::vector<double> p(order.size());
  double total = 0;
  for (std::size_t i = 0; i < order.size(); ++i)
    total += p[i] = std::exp((logits[static_cast<std::size_t>(order[i])] - mx) / a.temperature);
  std::size_t keep = 0;
  double cum = 0;
  while (keep < p.size()) {
    cum += p[keep++] / total;
    if (cum >= a.top_p) break;
  }
  std::discrete_distribution<std::size_t> d(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(keep));
  return order[d(rng)];
}

/// Multi-threaded memcpy bandwidth over `bytes`-sized buffers, STREAM's convention (bytes read +
/// bytes written per second).
double copy_bandwidth(std::size_t bytes) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    const long long blocks = 256;
    const std::size_t bs = bytes / blocks;
#pragma omp parallel for schedule(static)
    for (long long b = 0; b < blocks; ++b)
      std::memcpy(dst.data() + static_cast<std::size_t>(b) * bs, src.data() + static_cast<std::size_t>(b) * bs, bs);
    const double s = seconds_since(t0);
    best = std::max(best, 2.0 * static_cast<double>(bs * blocks) / s);
  }
  volatile char sink = dst[bytes / 2];
  (void)sink;
  return best;
}

template <simcalkv::StorageElement T>
nlohmann::json run(const Args& a, const engine::Model& model, const engine::Tokenizer& tok, const std::string& text) {
  const auto& c = model.config;
  nlohmann::json out;
  const auto ids = tok.encode(text, a.special_tokens);
  if (ids.empty()) throw engine::EngineError("the prompt has no tokens");
  for (int id : ids)
    if (id >= c.vocab_size)
      throw engine::EngineError("tokenizer id " + std::to_string(id) + " is outside the model's vocabulary (" +
                                std::to_string(c.vocab_size) + ")");
  engine::SessionOptions so;
  so.chunk = a.chunk;
  so.window = a.window;
  so.track_scores = a.decode_compress;
  so.layout = a.kv_layout == "paged" ? engine::KVLayout::paged : engine::KVLayout::compact;
  engine::Session<T> s(model, so);
#ifdef _OPENMP
  const simcalkv::OpenMPExecutor executor(a.threads);
  const simcalkv::Executor* exec = &executor;
#else
  const simcalkv::Executor* exec = nullptr;
#endif
  simcalkv::io::Trace trace;
  auto t0 = std::chrono::steady_clock::now();
  auto logits = s.prefill(ids, {.all_logits = false, .trace = a.dump_trace.empty() ? nullptr : &trace});
  const double prefill_s = seconds_since(t0);
  if (!a.dump_trace.empty()) {
    trace.metadata["source"] = "simcalkv-generate";
    trace.metadata["model"] = a.model;
    trace.metadata["model_type"] = c.model_type;
    trace.metadata["rope_theta"] = std::to_string(c.rope_theta);  // for policies that undo RoPE
    simcalkv::io::write_trace(a.dump_trace, trace);
  }
  const std::size_t kv_before = s.kv_used_bytes();
  double compress_s = 0;
  nlohmann::json compression = nullptr;
  if (!a.kv_method.empty()) {
    const auto policy = simcalkv::make_policy(a.kv_method);
    t0 = std::chrono::steady_clock::now();
    const auto st = s.compress(policy, simcalkv::Budget::compress_ratio(a.compress_ratio), exec);
    compress_s = seconds_since(t0);
    compression = {{"policy", policy.spec()},      {"entries_before", st.entries_before},
                   {"entries_after", st.entries_after}, {"merged", st.merged}, {"evicted", st.evicted}};
    // A short prompt: the ratio's budget fell below the protected entries, which the policy then kept (stages.hpp).
    const std::size_t heads = static_cast<std::size_t>(model.config.num_layers) * model.config.num_kv_heads;
    const std::size_t asked = heads * simcalkv::Budget::compress_ratio(a.compress_ratio).for_length(ids.size());
    if (st.entries_after > asked) {
      const std::string note = "the " + std::to_string(ids.size()) + "-token prompt kept " +
                               std::to_string(st.entries_after / heads) + " entries per KV head, not " +
                               std::to_string(asked / heads) + ": " + std::string(policy.name()) +
                               " protects its sinks and recent entries (the last --window queries' tokens); a smaller "
                               "--window lets it compress further";
      std::fprintf(stderr, "simcalkv-generate: note: %s\n", note.c_str());
      compression["note"] = note;
    }
    if (a.decode_compress) {
      simcalkv::DecodeOptions dopt;
      dopt.budget = simcalkv::Budget::entries(simcalkv::Budget::compress_ratio(a.compress_ratio).for_length(ids.size()));
      dopt.slack = a.decode_slack;
      dopt.window = a.window;
      s.enable_decode_driver(policy, dopt, exec);
    }
  }
  const std::size_t kv_after = s.kv_used_bytes();

  std::mt19937_64 rng(a.seed);
  std::vector<int> gen;
  std::string streamed;
  t0 = std::chrono::steady_clock::now();
  int decode_steps = 0;
  for (int i = 0; i < a.max_new_tokens; ++i) {
    const int next = pick(logits, a, rng);
    gen.push_back(next);
    if (!a.json) {
      // Special tokens (the end-of-text marker) end or shape the answer; they are not its text.
      const std::string piece = tok.decode_bytes(std::span<const int>(&next, 1), /*skip_special_tokens=*/true);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    const bool eos = std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), next) != c.eos_token_ids.end();
    if ((eos && !a.ignore_eos) || i + 1 == a.max_new_tokens) break;
    logits = s.decode(next);
    ++decode_steps;
  }
  const double decode_s = seconds_since(t0);
  if (!a.json) std::printf("\n");

  out["prompt_tokens"] = ids.size();
  out["prompt_ids"] = ids;  // what the prompt encoded to, for hosts that compare generations
  out["generated_ids"] = gen;
  out["text"] = tok.decode(gen, /*skip_special_tokens=*/true);
  out["prefill_seconds"] = prefill_s;
  out["compress_seconds"] = compress_s;
  out["decode_tokens_per_second"] = decode_steps > 0 && decode_s > 0 ? decode_steps / decode_s : 0.0;
  out["kv_bytes_before"] = kv_before;
  out["kv_bytes_after"] = kv_after;
  out["kv_bytes_end"] = s.kv_used_bytes();
  out["kv_dtype"] = a.kv_dtype;
  out["kv_layout"] = a.kv_layout;
  out["compression"] = compression;
  if (a.decode_compress) {
    const auto ds = s.decode_compression_stats();
    out["decode_compression"] = {{"entries_before", ds.entries_before}, {"entries_after", ds.entries_after},
                                 {"merged", ds.merged}, {"evicted", ds.evicted}};
  }
  if (a.bench) {
    // Bound: every step reads all weights once (as float) and the KV cache (keys and values).
    const double bw = copy_bandwidth(std::size_t(512) << 20);
    const double wbytes = static_cast<double>(model.weights.bytes());
    const double kv_mid = 2.0 * static_cast<double>(c.num_layers * c.num_kv_heads * c.head_dim) * sizeof(T) *
                          (static_cast<double>(s.kv_total_entries()) / (c.num_layers * c.num_kv_heads) -
                           decode_steps / 2.0);
    const double prefill_tps = ids.size() / prefill_s;
    const int chunks = static_cast<int>((ids.size() + static_cast<std::size_t>(a.chunk) - 1) / static_cast<std::size_t>(a.chunk));
    out["bench"] = {
        {"copy_bandwidth_gb_per_s", bw / 1e9},
        {"weight_bytes", wbytes},
        {"kv_bytes_read_per_decode_step", kv_mid},
        {"decode_steps", decode_steps},
        {"decode_bound_tokens_per_second", bw / (wbytes + kv_mid)},
        {"prefill_tokens_per_second", prefill_tps},
        {"prefill_chunks", chunks},
        // per chunk: the weights once plus (at most) the prompt's KV
        {"prefill_bound_tokens_per_second",
         ids.size() / (chunks * (wbytes + static_cast<double>(kv_before)) / bw)},
    };
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  simcalkv::tools::prefer_passive_openmp_wait(argv);
  try {
    Args a;
    try {
      if (!parse_args(argc, argv, a)) {
        Args defaults;
        std::fputs(make_flags(defaults).help().c_str(), stdout);
        return 0;
      }
    } catch (const simcalkv::tools::UsageError& e) {
      Args defaults;
      return make_flags(defaults).report(e);
    }
#ifdef _OPENMP
    if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
    if (a.threads > 0) Eigen::setNbThreads(a.threads);
    std::string text = a.prompt;
    if (!a.prompt_file.empty()) {
      std::ifstream in(a.prompt_file, std::ios::binary);
      if (!in) throw engine::EngineError(a.prompt_file + ": cannot open the prompt file");
      std::stringstream buf;
      buf << in.rdbuf();
      text = buf.str();
    }
    const auto model = engine::Model::load(a.model);
    const auto tok = engine::Tokenizer::load(std::filesystem::path(a.model) / "tokenizer.json");
    tok.check_fits(model.config, a.model);
    for (const auto& w : model.warnings) std::fprintf(stderr, "simcalkv-generate: note: %s\n", w.c_str());
    for (const auto& w : tok.warnings()) std::fprintf(stderr, "simcalkv-generate: note: %s\n", w.c_str());
    const auto out = a.kv_dtype == "bf16" ? run<simcalkv::bfloat16>(a, model, tok, text) : run<float>(a, model, tok, text);
    if (a.json) std::printf("%s\n", out.dump().c_str());
    else
      std::fprintf(stderr, "prompt %zu tokens, prefill %.3fs, compress %.3fs, decode %.1f tok/s, KV %zu -> %zu bytes\n",
                   out["prompt_tokens"].get<std::size_t>(), out["prefill_seconds"].get<double>(),
                   out["compress_seconds"].get<double>(), out["decode_tokens_per_second"].get<double>(),
                   out["kv_bytes_before"].get<std::size_t>(), out["kv_bytes_after"].get<std::size_t>());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "simcalkv-generate: error: %s\n", e.what());
    return 1;
  }
}
