// simcalkv-perplexity: held-out perplexity of a checkpoint in the reference host engine (engine/),
// computed exactly as tools/train/train_model.py defines it:
//   ids = tokenizer.encode(text file, no special tokens); window w = ids[L*w, L*(w+1)) (a last partial window
//   is dropped); each window is prefilled on its own (fresh KV cache, no compression) with the logits of every
//   position; NLL of tokens 1..L-1 given the tokens before them; perplexity = exp(total NLL / scored tokens).
// Usage: simcalkv-perplexity [--model_name DIR] [--text FILE] [--window L] [--windows N|all] [--threads T]
//                            [--expect P]   (--expect P: exit 1 unless |ppl - P| / P <= 2%; --help lists all)
#include "flags.hpp"
#include "openmp_wait.hpp"
#include "session.hpp"
#include "tokenizer.hpp"

#include <simcalkv/executor.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#ifndef SIMCALKV_SOURCE_DIR
#define SIMCALKV_SOURCE_DIR "."
#endif

int main(int argc, char** argv) {
  simcalkv::tools::prefer_passive_openmp_wait(argv);
  std::string model_dir = SIMCALKV_SOURCE_DIR "/models/simcalkv-tiny";
  std::string text_path = SIMCALKV_SOURCE_DIR "/data/corpus/heldout_eval.txt";
  int L = 2048;
  long long max_windows = 2;
  double expect = 0.0;
  int threads = 0;
  namespace t = simcalkv::tools;
  t::Flags flags("simcalkv-perplexity", "[options]",
                 "Held-out perplexity of a checkpoint in the reference engine, as tools/train/train_model.py defines "
                 "it: the text is cut into windows of --window tokens, each prefilled alone with a fresh full cache; "
                 "perplexity = exp(mean NLL of tokens 1..L-1 of every window). Prints one JSON line.");
  flags.text("model_name", &model_dir, "DIR", "checkpoint folder").alias("model").shown_default("models/simcalkv-tiny");
  flags.text("text", &text_path, "FILE", "held-out text").shown_default("data/corpus/heldout_eval.txt");
  flags.number("window", &L, t::closed(2, 1 << 20), "L", "tokens per window");
  flags.custom("windows", "N|all", "windows scored (from the start of the text)", "2", [&](const std::string& v) {
    max_windows = v == "all" ? -1 : t::parse_number<long long>("--windows", v, t::at_least(1));
  });
  flags.number("threads", &threads, t::closed(0, 4096), "T", "OpenMP and Eigen threads; 0 keeps the default");
  flags.number("expect", &expect, t::above(0), "PPL", "exit 1 unless the perplexity is within 2% of PPL")
      .shown_default("no check");
  try {
    if (!flags.parse(argc, argv)) {
      std::cout << flags.help();
      return 0;
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
