// simcalkv-perplexity: held-out perplexity of a checkpoint in the reference host engine (engine/),
// computed exactly as tools/train/train_model.py defines it:
//   ids = tokenizer.encode(text file, no special tokens); window w = ids[L*w, L*(w+1)) (a last partial window
//   is dropped); each window is prefilled on its own (fresh KV cache, no compression) with the logits of every
//   position; NLL of tokens 1..L-1 given the tokens before them; perplexity = exp(total NLL / scored tokens).
// Usage: simcalkv-perplexity [--model DIR] [--text FILE] [--window L] [--windows N|all] [--threads T] [--expect P]
//   --expect P: exit 1 unless |ppl - P| / P <= 2%.
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
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto need = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "simcalkv-perplexity: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") model_dir = need();
    else if (a == "--text") text_path = need();
    else if (a == "--window") L = std::stoi(need());
    else if (a == "--windows") {
      const std::string v = need();
      max_windows = v == "all" ? -1 : std::stoll(v);
    } else if (a == "--threads") (void)need();  // the engine's matmuls use Eigen's threads (OMP_NUM_THREADS)
    else if (a == "--expect") expect = std::stod(need());
    else if (a == "-h" || a == "--help") {
      std::cout << "usage: simcalkv-perplexity [--model DIR] [--text FILE] [--window L] [--windows N|all] "
                   "[--expect PPL]\n";
      return 0;
    } else {
      std::cerr << "simcalkv-perplexity: unknown argument " << a << "\n";
      return 2;
    }
  }
  try {
    if (L < 2) throw std::runtime_error("--window must be at least 2");
    const auto model = engine::Model::load(model_dir);
    const auto tok = engine::Tokenizer::load(std::filesystem::path(model_dir) / "tokenizer.json");
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
