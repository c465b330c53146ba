// simcalkv-eval: the command line. The paper's flags as the paper spells them (--model_name, --dataset, --split,
// --compress_ratio, --kv_method, --output_dir); every flag also with dashes (--model-name) and as --flag=value.
#pragma once

#include "datasets.hpp"
#include "flags.hpp"
#include "policy_list.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef SIMCALKV_SOURCE_DIR
#define SIMCALKV_SOURCE_DIR "."
#endif

namespace simcalkv::eval {

using UsageError = tools::UsageError;

struct Args {
  std::string model_name = SIMCALKV_SOURCE_DIR "/models/simcalkv-tiny";
  std::string dataset = SIMCALKV_SOURCE_DIR "/data/tasks/*_1024.jsonl";
  std::string split = "test[:5]";
  std::vector<double> compress_ratios = {0.5};
  std::vector<std::string> kv_methods = {"SimCalKV", "SnapKV"};
  std::string output_dir = "results";
  long long max_input_tokens = -1;  // -1: the model's max_position_embeddings less the answer length
  int max_new_tokens = -1;          // -1: each dataset's own
  int window = 32;
  int threads = 0;                  // 0: every core
  unsigned long long seed = 0;
  std::string data_dir = SIMCALKV_SOURCE_DIR "/data/hub";
  std::string kv_dtype = "f32";
  std::string kv_layout = "compact";
  int chunk = 512;
  double temperature = 0.0;
  double top_p = 1.0;
  PromptStyle prompt_style = PromptStyle::longbench;
  bool plot = true;
  bool progress = true;
  bool help = false;
  bool list = false;
  std::string plot_script = SIMCALKV_SOURCE_DIR "/scripts/plot_eval.py";
};

/// Declares the command line over `a`; its defaults are a's initial values.
inline tools::Flags make_flags(Args& a) {
  tools::Flags f("simcalkv-eval", "[options]",
                 "With no arguments: the bundled model on the bundled long-context tasks (data/tasks/*_1024.jsonl, 5 "
                 "samples each), the full cache against SimCalKV and SnapKV at compress_ratio 0.5 (the fraction of the "
                 "KV cache removed). Writes a CSV and a JSON summary per (dataset, method, ratio).");
  f.section("what to run");
  f.text("model_name", &a.model_name, "DIR", "Hugging Face checkpoint folder (llama, qwen2, mistral)")
      .alias("model")
      .shown_default("models/simcalkv-tiny");
  f.custom("dataset", "LIST",
           "xsum, cnn_dailymail, piqa, openbookqa, winogrande, THUDM/LongBench/<task> (files under --data_dir), or "
           "JSONL files, folders, globs; comma-separated",
           "data/tasks/*_1024.jsonl", [&a](const std::string& v) {
             tools::split_commas("--dataset", v);  // refuses empty items; the datasets are resolved later
             a.dataset = v;
           });
  f.text("split", &a.split, "SPLIT", "hub slicing: test, test[:100], validation[10:20], train[:5%], test[-10:]");
  f.number_list("compress_ratio", &a.compress_ratios, tools::half_open(0, 1), "LIST",
                "fractions of the KV cache removed, comma-separated");
  f.text_list("kv_method", &a.kv_methods, "LIST",
              "policies as make_policy() names them, with options (SimCalKV:bias=log_count); 'all' = every "
              "registered policy but Full",
              [](const std::string& v) { return tools::split_policy_specs("--kv_method", v); });
  f.text("output_dir", &a.output_dir, "DIR", "CSV and JSON per (dataset, method, ratio); sweep table and plot");
  f.text("data_dir", &a.data_dir, "DIR", "where named datasets are exported").shown_default("data/hub");
  f.section("generation");
  f.number("max_input_tokens", &a.max_input_tokens, tools::closed(0, 1LL << 30), "N",
           "longer prompts lose their middle (LongBench)")
      .shown_default("max_position_embeddings - answer");
  f.number("max_new_tokens", &a.max_new_tokens, tools::closed(1, 1 << 20), "N", "answer length (the paper's nums_token)")
      .alias("nums_token")
      .shown_default("per dataset");
  f.number("window", &a.window, tools::closed(1, 1 << 20), "W", "observation window: the prompt's last W queries");
  f.number("chunk", &a.chunk, tools::closed(1, 1 << 20), "N", "prefill chunk in tokens");
  f.number("temperature", &a.temperature, tools::closed(0, 1e6), "T", "sampling temperature; 0 is greedy");
  f.number("top_p", &a.top_p, tools::left_open(0, 1), "P", "nucleus sampling mass");
  f.number("seed", &a.seed, tools::at_least(0), "S", "sampling seed (with --temperature > 0)");
  f.custom("prompt_style", "longbench|paper", "LongBench's dataset2prompt, or the paper's qwen_eval.py prompts",
           "longbench", [&a](const std::string& v) {
             if (v == "longbench") a.prompt_style = PromptStyle::longbench;
             else if (v == "paper") a.prompt_style = PromptStyle::paper;
             else throw UsageError("--prompt_style must be longbench or paper, got '" + v + "'");
           });
  f.section("cache and machine");
  f.choice("kv_dtype", &a.kv_dtype, {"f32", "bf16"}, "KV cache storage");
  f.choice("kv_layout", &a.kv_layout, {"compact", "paged"},
           "a buffer per KV head, or 32-entry pages with a block table per KV head (freed pages reused); both give "
           "the same answers");
  f.number("threads", &a.threads, tools::closed(0, 4096), "T", "threads (0: all cores); results do not depend on it");
  f.section("output");
  f.flag("no_plot", &a.plot, "no PNG for a sweep", false);
  f.flag("quiet", &a.progress, "no progress bar", false);
  f.flag("list", &a.list, "list the datasets and policies, then exit");
  f.text("plot_script", &a.plot_script, "FILE", "the sweep's plotting script").shown_default("scripts/plot_eval.py");
  return f;
}

inline std::string usage_text() {
  Args defaults;
  return make_flags(defaults).help();
}

/// Splits --kv_method's list (tools/common/policy_list.hpp: "SimCalKV:bias=log_count,search=exact,SnapKV" is two).
inline std::vector<std::string> split_methods(const std::string& s) {
  return tools::split_policy_specs("--kv_method", s);
}

inline Args parse_args(const std::vector<std::string>& argv) {
  Args a;
  auto flags = make_flags(a);
  a.help = !flags.parse(argv);
  if (a.dataset.empty()) throw UsageError("--dataset is empty");
  if (a.output_dir.empty()) throw UsageError("--output_dir is empty");
  return a;
}

}  // namespace simcalkv::eval
