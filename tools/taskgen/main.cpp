// simcalkv-taskgen: writes offline RULER-style long-context task sets as JSONL (see taskgen.hpp).
// Usage: simcalkv-taskgen [--model DIR] [--haystack FILE] [--lengths 1024,2048] [--per-task N] [--seed S]
//                         [--tasks a,b,...] --out DIR
// Writes DIR/<task>_<length>.jsonl, one example a line: index, task, input, answer_prefix, outputs, metric
// (string_match_all: every output must appear in the prediction; string_match_part: any one), length (tokens
// of input + answer_prefix with the model's tokenizer) and target_length.
#include "taskgen.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#ifndef SIMCALKV_SOURCE_DIR
#define SIMCALKV_SOURCE_DIR "."
#endif

namespace {
std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  std::string model_dir = SIMCALKV_SOURCE_DIR "/models/simcalkv-tiny";
  std::string haystack = SIMCALKV_SOURCE_DIR "/data/corpus/haystack.txt";
  std::string out_dir;
  std::vector<int> lengths = {1024, 2048};
  std::vector<std::string> tasks = taskgen::task_names();
  int per_task = 20;
  std::uint64_t seed = 42;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto need = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--model") model_dir = need();
      else if (a == "--haystack") haystack = need();
      else if (a == "--out") out_dir = need();
      else if (a == "--per-task") per_task = std::stoi(need());
      else if (a == "--seed") seed = std::stoull(need());
      else if (a == "--tasks") tasks = split(need());
      else if (a == "--lengths") {
        lengths.clear();
        for (const auto& x : split(need())) lengths.push_back(std::stoi(x));
      } else if (a == "-h" || a == "--help") {
        std::cout << "usage: simcalkv-taskgen [--model DIR] [--haystack FILE] [--lengths 1024,2048] "
                     "[--per-task N] [--seed S] [--tasks niah_single,...] --out DIR\n";
        return 0;
      } else {
        throw std::runtime_error("unknown argument " + a);
      }
    }
    if (out_dir.empty()) throw std::runtime_error("--out DIR is required");
    const auto tok = engine::Tokenizer::load(std::filesystem::path(model_dir) / "tokenizer.json");
    std::ifstream in(haystack, std::ios::binary);
    if (!in) throw std::runtime_error(haystack + ": cannot open");
    std::stringstream buf;
    buf << in.rdbuf();
    const taskgen::Generator gen(tok, buf.str());
    std::filesystem::create_directories(out_dir);
    for (std::size_t t = 0; t < tasks.size(); ++t)
      for (int L : lengths) {
        const auto path = std::filesystem::path(out_dir) / (tasks[t] + "_" + std::to_string(L) + ".jsonl");
        std::ofstream out(path, std::ios::binary);
        for (int i = 0; i < per_task; ++i) {
          // each example's seed depends only on (seed, task name, length, index)
          std::uint64_t h = seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(L) * 1000003ULL + i;
          for (char c : tasks[t]) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ULL;
          out << taskgen::to_json(gen.make(tasks[t], L, h), i).dump() << "\n";
        }
        std::cerr << path.string() << ": " << per_task << " examples\n";
      }
  } catch (const std::exception& e) {
    std::cerr << "simcalkv-taskgen: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
