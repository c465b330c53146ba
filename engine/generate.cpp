// simcalkv-generate: run a Hugging Face Llama / Qwen2 / Mistral checkpoint on the CPU with any
// registered KV-cache policy (the reference host engine, engine/).
//
//   simcalkv-generate [--model DIR] (--prompt TEXT | --prompt-file F) [--max-new-tokens N]
//       (--model defaults to the bundled models/simcalkv-tiny)
//       [--kv-method NAME[:options]] [--compress-ratio R] [--window W] [--threads T] [--json]
//       [--dump-trace FILE] [--kv-dtype f32|bf16] [--chunk N] [--decode-compress] [--decode-slack S]
//       [--temperature T] [--top-p P] [--seed S] [--ignore-eos] [--no-special-tokens] [--bench]
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
  bool ratio_given = false;
  int max_new_tokens = 32, window = 32, threads = 0, chunk = 512;
  double compress_ratio = 0.5, temperature = 0.0, top_p = 1.0;
  std::size_t decode_slack = 16;
  unsigned long long seed = 0;
};

const char* usage_text() {
  return "usage: simcalkv-generate (--prompt TEXT | --prompt-file F) [options]\n"
         "Runs a Hugging Face Llama / Qwen2 / Mistral checkpoint on the CPU, optionally compressing its KV cache.\n"
         "  --model DIR            checkpoint folder (default: the bundled models/simcalkv-tiny)\n"
         "  --prompt TEXT          the prompt\n"
         "  --prompt-file F        read the prompt from a file\n"
         "  --max-new-tokens N     tokens to generate, >= 0 (default 32)\n"
         "  --kv-method NAME       a registry policy spec, e.g. SimCalKV or AdaKV+SnapKV (default: none)\n"
         "  --compress-ratio R     fraction of the cache removed, in [0, 1) (default 0.5)\n"
         "  --window W             observation window: last W prompt queries, > 0 (default 32)\n"
         "  --threads T            OpenMP and Eigen threads, >= 0; 0 keeps the default (default 0)\n"
         "  --json                 print the result as JSON\n"
         "  --dump-trace FILE      write the prompt's KV trace (safetensors) to FILE\n"
         "  --kv-dtype f32|bf16    cache storage type (default f32)\n"
         "  --kv-layout L          compact (a buffer per KV head) or paged (32-entry pages, a block table\n"
         "                         per KV head); the same tokens either way (default compact)\n"
         "  --chunk N              prefill chunk in tokens, > 0 (default 512)\n"
         "  --decode-compress      also compress while decoding (needs --kv-method)\n"
         "  --decode-slack S       decode growth past the budget before compressing again (default 16)\n"
         "  --temperature T        sampling temperature, >= 0; 0 is greedy (default 0)\n"
         "  --top-p P              nucleus sampling mass, in (0, 1] (default 1)\n"
         "  --seed S               sampling seed (default 0)\n"
         "  --ignore-eos           keep generating after the end-of-sequence token\n"
         "  --no-special-tokens    do not add the tokenizer's special tokens to the prompt\n"
         "  --bench                add speed bounds (copy bandwidth, bytes per step) to the JSON result\n"
         "  --help, -h             this text\n";
}

struct HelpRequested {};

[[noreturn]] void usage_error(const std::string& msg) {
  throw engine::EngineError(msg + " (simcalkv-generate --help lists the options)");
}

template <class N>
N parse_number(const std::string& flag, const std::string& v) {
  try {
    std::size_t used = 0;
    N out;
    if constexpr (std::is_floating_point_v<N>) out = static_cast<N>(std::stod(v, &used));
    else out = static_cast<N>(std::stoll(v, &used));
    if (used != v.size()) throw std::invalid_argument(v);
    return out;
  } catch (const std::exception&) {
    usage_error(flag + " expects a number, got '" + v + "'");
  }
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(f + " needs a value");
      return argv[++i];
    };
    if (f == "--model") a.model = value();
    else if (f == "--prompt") a.prompt = value(), a.has_prompt = true;
    else if (f == "--prompt-file") a.prompt_file = value();
    else if (f == "--max-new-tokens") a.max_new_tokens = parse_number<int>(f, value());
    else if (f == "--kv-method") a.kv_method = value();
    else if (f == "--compress-ratio") a.compress_ratio = parse_number<double>(f, value()), a.ratio_given = true;
    else if (f == "--window") a.window = parse_number<int>(f, value());
    else if (f == "--threads") a.threads = parse_number<int>(f, value());
    else if (f == "--json") a.json = true;
    else if (f == "--dump-trace") a.dump_trace = value();
    else if (f == "--kv-dtype") a.kv_dtype = value();
    else if (f == "--kv-layout") a.kv_layout = value();
    else if (f == "--chunk") a.chunk = parse_number<int>(f, value());
    else if (f == "--decode-compress") a.decode_compress = true;
    else if (f == "--decode-slack") a.decode_slack = parse_number<std::size_t>(f, value());
    else if (f == "--temperature") a.temperature = parse_number<double>(f, value());
    else if (f == "--top-p") a.top_p = parse_number<double>(f, value());
    else if (f == "--seed") a.seed = parse_number<unsigned long long>(f, value());
    else if (f == "--ignore-eos") a.ignore_eos = true;
    else if (f == "--no-special-tokens") a.special_tokens = false;
    else if (f == "--bench") a.bench = true;
    else if (f == "--help" || f == "-h") throw HelpRequested{};
    else usage_error("unknown option '" + f + "'");
  }
  if (a.model.empty()) usage_error("--model needs a folder");
  if (a.has_prompt == !a.prompt_file.empty()) usage_error("give exactly one of --prompt and --prompt-file");
  if (a.max_new_tokens < 0) usage_error("--max-new-tokens must be >= 0");
  if (a.window <= 0) usage_error("--window must be positive");
  if (a.chunk <= 0) usage_error("--chunk must be positive");
  if (a.threads < 0) usage_error("--threads must be >= 0");
  if (!(a.compress_ratio >= 0.0 && a.compress_ratio < 1.0)) usage_error("--compress-ratio must be in [0, 1)");
  if (!(a.top_p > 0.0 && a.top_p <= 1.0)) usage_error("--top-p must be in (0, 1]");
  if (!(a.temperature >= 0.0)) usage_error("--temperature must be >= 0");
  if (a.kv_dtype != "f32" && a.kv_dtype != "bf16") usage_error("--kv-dtype must be f32 or bf16");
  if (a.kv_layout != "compact" && a.kv_layout != "paged") usage_error("--kv-layout must be compact or paged");
  if (a.decode_compress && a.kv_method.empty()) usage_error("--decode-compress needs --kv-method");
  if (a.ratio_given && a.kv_method.empty())
    usage_error("--compress-ratio needs --kv-method (without one nothing is compressed), e.g. --kv-method SimCalKV");
  return a;
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
    const Args a = parse_args(argc, argv);
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
    for (const auto& w : tok.warnings()) std::fprintf(stderr, "simcalkv-generate: note: %s\n", w.c_str());
    const auto out = a.kv_dtype == "bf16" ? run<simcalkv::bfloat16>(a, model, tok, text) : run<float>(a, model, tok, text);
    if (a.json) std::printf("%s\n", out.dump().c_str());
    else
      std::fprintf(stderr, "prompt %zu tokens, prefill %.3fs, compress %.3fs, decode %.1f tok/s, KV %zu -> %zu bytes\n",
                   out["prompt_tokens"].get<std::size_t>(), out["prefill_seconds"].get<double>(),
                   out["compress_seconds"].get<double>(), out["decode_tokens_per_second"].get<double>(),
                   out["kv_bytes_before"].get<std::size_t>(), out["kv_bytes_after"].get<std::size_t>());
    return 0;
  } catch (const HelpRequested&) {
    std::fputs(usage_text(), stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "simcalkv-generate: error: %s\n", e.what());
    return 1;
  }
}
