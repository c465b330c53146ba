// simcalkv-perplexity: two measures of a checkpoint in the reference host engine (engine/).
//
// Without --kv_method: held-out perplexity, exactly as tools/train/train_model.py defines it:
//   ids = tokenizer.encode(text file, no special tokens); window w = ids[L*w, L*(w+1)) (a last partial window
//   is dropped); each window is prefilled on its own (fresh KV cache, no compression) with the logits of every
//   position; NLL of tokens 1..L-1 given the tokens before them; perplexity = exp(total NLL / scored tokens).
//   simcalkv-perplexity [--model_name DIR] [--text FILE] [--window L] [--windows N|all] [--expect P]
//
// With --kv_method: the quality of compressed caches on the whole model (model_quality.hpp): windows of
//   P + C + 1 tokens; prefill P with the full cache, compress every layer, feed the C continuation tokens
//   teacher-forced; per method and ratio the mean KL(full || compressed), top-1 agreement with the full cache
//   and perplexity, the full cache as a row.
//   simcalkv-perplexity --kv_method LIST [--compress_ratio LIST] [--prompt_tokens P] [--continuation_tokens C]
//                       [--windows N|all] [--json FILE]
// --help lists every option.
#include "../eval/csv.hpp"
#include "flags.hpp"
#include "model_quality.hpp"
#include "policy_list.hpp"
#include "openmp_wait.hpp"
#include "session.hpp"
#include "tokenizer.hpp"

#include <simcalkv/executor.hpp>
#include <simcalkv/registry.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

#ifndef SIMCALKV_SOURCE_DIR
#define SIMCALKV_SOURCE_DIR "."
#endif


namespace simcalkv::tools {

/// The compressed-cache measurement (--kv_method): windows of P + C + 1 tokens from the start of the text.
inline int run_model_quality(const engine::Model& model, const std::vector<int>& ids, const std::vector<std::string>& specs,
                             const std::vector<double>& ratios, int P, int C, int W, int chunk, long long max_windows,
                             const std::string& json_file, const std::string& model_dir, const std::string& text_path) {
  const std::size_t span = static_cast<std::size_t>(P) + static_cast<std::size_t>(C) + 1;
  long long nw = static_cast<long long>(ids.size() / span);
  if (max_windows >= 0) nw = std::min(nw, max_windows);
  if (nw == 0)
    throw std::runtime_error("the text has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                             std::to_string(span) + " (prompt + continuation + 1)");
  std::vector<AnyPolicy> policies;
  for (const auto& sp : specs) policies.push_back(make_policy(sp));
  engine::SessionOptions so;
  so.window = W;
  so.chunk = chunk;
  std::vector<QualityTotals> totals(1 + policies.size() * ratios.size());
  const auto t0 = std::chrono::steady_clock::now();
  for (long long w = 0; w < nw; ++w) {
    const std::span<const int> win(ids.data() + static_cast<std::size_t>(w) * span, span);
    measure_window<float>(model, so, win, P, policies, ratios, totals);
    std::fprintf(stderr, "window %lld/%lld (%.1f s)\n", w + 1, nw,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const auto num = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  nlohmann::json results = nlohmann::json::array();
  bool any_failed = false;
  std::printf("%-44s %6s %9s %7s %10s\n", "policy", "ratio", "kl", "top1", "perplexity");
  const auto row = [&](const std::string& name, double ratio, const QualityTotals& q) {
    nlohmann::json r = {{"policy", name},           {"compress_ratio", ratio},    {"kl", num(q.mean_kl())},
                        {"top1_agreement", num(q.top1())}, {"perplexity", num(q.perplexity())},
                        {"windows", q.windows},         {"tokens", q.tokens}};
    if (q.failed_windows > 0) {
      r["failed_windows"] = q.failed_windows;
      r["error"] = q.last_error;
    }
    if (q.windows == 0) any_failed = true;
    results.push_back(std::move(r));
    if (q.windows == 0)
      std::printf("%-44s %6.2f  failed: %s\n", name.c_str(), ratio, q.last_error.c_str());
    else
      std::printf("%-44s %6.2f %9.5f %7.4f %10.3f%s\n", name.c_str(), ratio, q.mean_kl(), q.top1(), q.perplexity(),
                  q.failed_windows ? "  (some windows failed)" : "");
  };
  row("Full", 0.0, totals[0]);
  for (std::size_t p = 0; p < specs.size(); ++p)
    for (std::size_t r = 0; r < ratios.size(); ++r) row(specs[p], ratios[r], totals[1 + p * ratios.size() + r]);
  for (std::size_t i = 1; i < totals.size(); ++i)
    if (totals[i].windows == 0)
      std::fprintf(stderr, "simcalkv-perplexity: %s at %g failed on every window: %s\n",
                   specs[(i - 1) / ratios.size()].c_str(), ratios[(i - 1) % ratios.size()], totals[i].last_error.c_str());
  if (!json_file.empty()) {
    const nlohmann::json doc = {
        {"model", model_dir},
        {"text", text_path},
        {"prompt_tokens", P},
        {"continuation_tokens", C},
        {"observation_window", W},
        {"windows", nw},
        {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()},
        {"results", results}};
    eval::write_file_atomic(json_file, doc.dump(2) + "\n");
  }
  return any_failed ? 1 : 0;
}

}  // namespace simcalkv::tools

int main(int argc, char** argv) {
  simcalkv::tools::prefer_passive_openmp_wait(argv);
  std::string model_dir = SIMCALKV_SOURCE_DIR "/models/simcalkv-tiny";
  std::string text_path = SIMCALKV_SOURCE_DIR "/data/corpus/heldout_eval.txt";
  int L = 2048;
  long long max_windows = 2;
  double expect = 0.0;
  int threads = 0;
  std::vector<std::string> specs;
  std::vector<double> ratios = {0.5, 0.75, 0.9};
  int prompt_tokens = 512, continuation_tokens = 64, observation_window = 32, chunk = 512;
  std::string json_file;
  namespace t = simcalkv::tools;
  t::Flags flags("simcalkv-perplexity", "[options]",
                 "Without --kv_method: held-out perplexity of a checkpoint in the reference engine, as "
                 "tools/train/train_model.py defines it: the text is cut into windows of --window tokens, each "
                 "prefilled alone with a fresh full cache; perplexity = exp(mean NLL of tokens 1..L-1 of every window). "
                 "Prints one JSON line.\n\nWith --kv_method: the quality of compressed caches on the whole model. The "
                 "text is cut into windows of P + C + 1 tokens; P are prefilled with the full cache, every layer is "
                 "compressed with the method, and the next C tokens are fed teacher-forced on the compressed cache. Per "
                 "method and ratio: mean KL(full || compressed) of the next-token distributions, top-1 agreement with the "
                 "full cache and perplexity of the true tokens, the full cache as a row. Prints a table.");
  flags.text("model_name", &model_dir, "DIR", "checkpoint folder").alias("model").shown_default("models/simcalkv-tiny");
  flags.text("text", &text_path, "FILE", "held-out text").shown_default("data/corpus/heldout_eval.txt");
  flags.custom("windows", "N|all", "windows scored (from the start of the text)", "2 (with --kv_method: 8)",
               [&](const std::string& v) {
                 max_windows = v == "all" ? -1 : t::parse_number<long long>("--windows", v, t::at_least(1));
               });
  flags.number("threads", &threads, t::closed(0, 4096), "T",
               "OpenMP and Eigen threads; 0 keeps the default; results do not depend on it");
  flags.section("held-out perplexity (without --kv_method)");
  flags.number("window", &L, t::closed(2, 1 << 20), "L", "tokens per window");
  flags.number("expect", &expect, t::above(0), "PPL", "exit 1 unless the perplexity is within 2% of PPL")
      .shown_default("no check");
  flags.section("compressed caches (with --kv_method)");
  flags.custom("kv_method", "LIST",
               "policy specs separated by ';' or ',' (a ','-piece key=value continues the previous spec's options), or "
               "'all' for every registered policy",
               "", [&](const std::string& v) {
                 for (auto& sp : t::split_policy_specs("--kv_method", v)) {
                   if (simcalkv::to_lower(sp) == "all")
                     for (const auto& name : simcalkv::policy_names()) specs.push_back(name);
                   else
                     specs.push_back(sp);
                 }
               });
  flags.number_list("compress_ratio", &ratios, t::half_open(0, 1), "LIST", "fractions of the prompt removed");
  flags.number("prompt_tokens", &prompt_tokens, t::closed(1, 1 << 20), "P", "tokens prefilled and compressed");
  flags.number("continuation_tokens", &continuation_tokens, t::closed(1, 1 << 20), "C",
               "tokens scored teacher-forced after the compression");
  flags.number("observation_window", &observation_window, t::closed(1, 1 << 20), "W",
               "the prompt's last W queries the policies score with");
  flags.number("chunk", &chunk, t::closed(1, 1 << 20), "N", "prefill chunk in tokens");
  flags.text("json", &json_file, "FILE", "also write the results as JSON");
  bool quality = false;
  try {
    if (!flags.parse(argc, argv)) {
      std::cout << flags.help();
      return 0;
    }
    quality = flags.given("kv_method");
    for (const char* f : {"compress_ratio", "prompt_tokens", "continuation_tokens", "observation_window", "chunk", "json"})
      if (!quality && flags.given(f)) throw t::UsageError(std::string("--") + f + " needs --kv_method");
    for (const char* f : {"window", "expect"})
      if (quality && flags.given(f)) throw t::UsageError(std::string("--") + f + " is for the held-out perplexity (without --kv_method)");
    if (quality && flags.given("json") && json_file.empty()) throw t::UsageError("--json needs a non-empty path");
    if (quality && !flags.given("windows")) max_windows = 8;
    for (const auto& sp : specs) {
      try {
        (void)simcalkv::make_policy(sp);
      } catch (const simcalkv::Error& e) {
        throw t::UsageError(e.what());
      }
    }
  } catch (const t::UsageError& e) {
    return flags.report(e);
  }
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
#endif
  if (threads > 0) Eigen::setNbThreads(threads);
  try {
    const auto model = engine::Model::load(model_dir);
    for (const auto& w : model.warnings) std::cerr << "simcalkv-perplexity: note: " << w << "\n";
    const auto tok = engine::Tokenizer::load(std::filesystem::path(model_dir) / "tokenizer.json");
    tok.check_fits(model.config, model_dir);
    std::ifstream in(text_path, std::ios::binary);
    if (!in) throw std::runtime_error(text_path + ": cannot open");
    std::stringstream buf;
    buf << in.rdbuf();
    const auto ids = tok.encode(buf.str(), false);
    if (quality)
      return t::run_model_quality(model, ids, specs, ratios, prompt_tokens, continuation_tokens, observation_window,
                                  chunk, max_windows, json_file, model_dir, text_path);
    long long nw = static_cast<long long>(ids.size()) / L;
    if (max_windows >= 0) nw = std::min(nw, max_windows);
    if (nw == 0) throw std::runtime_error("the text has fewer tokens than one window");
    const int V = model.config.vocab_size;
    double nll = 0.0;
    long long scored = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (long long w = 0; w < nw; ++w) {
      const std::span<const int> win(ids.data() + w * L, static_cast<std::size_t>(L));
      engine::Session<float> s(model);
      engine::PrefillOptions po;
      po.all_logits = true;
      const auto logits = s.prefill(win, po);
      double wn = 0.0;
      for (int t = 0; t + 1 < L; ++t) {
        const float* row = logits.data() + static_cast<std::size_t>(t) * V;
        double mx = row[0];
        for (int v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
        double se = 0.0;
        for (int v = 0; v < V; ++v) se += std::exp(static_cast<double>(row[v]) - mx);
        wn += -(static_cast<double>(row[win[static_cast<std::size_t>(t) + 1]]) - mx - std::log(se));
      }
      nll += wn;
      scored += L - 1;
      std::fprintf(stderr, "window %lld/%lld ppl %.4f (running %.4f)\n", w + 1, nw, std::exp(wn / (L - 1)),
                   std::exp(nll / static_cast<double>(scored)));
    }
    const double ppl = std::exp(nll / static_cast<double>(scored));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("{\"model\": \"%s\", \"text\": \"%s\", \"tokens\": %zu, \"window\": %d, \"windows\": %lld, "
                "\"scored_tokens\": %lld, \"perplexity\": %.6f, \"seconds\": %.1f",
                model_dir.c_str(), text_path.c_str(), ids.size(), L, nw, scored, ppl, secs);
    if (expect > 0) std::printf(", \"expected\": %.6f, \"relative_difference\": %.6f", expect, (ppl - expect) / expect);
    std::printf("}\n");
    if (expect > 0 && std::abs(ppl - expect) / expect > 0.02) {
      std::fprintf(stderr, "simcalkv-perplexity: %.4f is more than 2%% from %.4f\n", ppl, expect);
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "simcalkv-perplexity: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
