// simcalkv-taskgen: writes offline RULER-style long-context task sets as JSONL (see taskgen.hpp).
// Usage: simcalkv-taskgen --out DIR [--model_name DIR] [--haystack FILE] [--lengths 1024,2048] [--per_task N]
//                         [--seed S] [--tasks a,b,...]   (simcalkv-taskgen --help lists them)
// Writes DIR/<task>_<length>.jsonl, one example a line: index, task, input, answer_prefix, outputs, metric
// (string_match_all: every output must appear in the prediction; string_match_part: any one), length (tokens
// of input + answer_prefix with the model's tokenizer) and target_length.
#include "flags.hpp"
#include "taskgen.hpp"

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#ifndef SIMCALKV_SOURCE_DIR
#define SIMCALKV_SOURCE_DIR "."
#endif

int main(int argc, char** argv) {
  std::string model_dir = SIMCALKV_SOURCE_DIR "/models/simcalkv-tiny";
  std::string haystack = SIMCALKV_SOURCE_DIR "/data/corpus/haystack.txt";
  std::string out_dir;
  std::vector<int> lengths = {1024, 2048};
  std::vector<std::string> tasks = taskgen::task_names();
  int per_task = 20;
  std::uint64_t seed = 42;
  namespace t = simcalkv::tools;
  std::string all_tasks;
  for (const auto& name : tasks) all_tasks += (all_tasks.empty() ? "" : ",") + name;
  t::Flags flags("simcalkv-taskgen", "--out DIR [options]",
                 "Writes offline RULER-style long-context task sets, DIR/<task>_<length>.jsonl, one example a line "
                 "(index, task, input, answer_prefix, outputs, metric, length, target_length). Lengths are counted "
                 "with the model's tokenizer.");
  flags.text("model_name", &model_dir, "DIR", "the checkpoint whose tokenizer counts the lengths")
      .alias("model")
      .shown_default("models/simcalkv-tiny");
  flags.text("haystack", &haystack, "FILE", "text the needles are hidden in").shown_default("data/corpus/haystack.txt");
  flags.text("out", &out_dir, "DIR", "output folder (required)");
  flags.number_list("lengths", &lengths, t::closed(64, 1 << 20), "LIST", "target prompt lengths in tokens");
  flags.number("per_task", &per_task, t::closed(1, 1000000), "N", "examples per task and length");
  flags.number("seed", &seed, t::at_least(0), "S", "seed; each example depends only on (seed, task, length, index)");
  flags.custom("tasks", "LIST", "task names, comma-separated", all_tasks, [&](const std::string& v) {
    tasks = t::split_commas("--tasks", v);
    const auto known = taskgen::task_names();
    for (const auto& name : tasks)
      if (std::find(known.begin(), known.end(), name) == known.end())
        throw t::UsageError("--tasks: unknown task '" + name + "' (tasks: " + all_tasks + ")");
  });
  try {
    if (!flags.parse(argc, argv)) {
      std::cout << flags.help();
      return 0;
    }
    if (out_dir.empty()) throw t::UsageError("--out DIR is required");
  } catch (const t::UsageError& e) {
    return flags.report(e);
  }
  try {
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
