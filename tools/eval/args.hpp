// simcalkv-eval: the command line. The paper's flags as the paper spells them (--model_name, --dataset, --split,
// --compress_ratio, --kv_method, --output_dir); every flag also with dashes (--model-name) and as --flag=value.
#pragma once

#include "datasets.hpp"

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

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

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

inline const char* usage_text() {
  return "usage: simcalkv-eval [--model_name DIR] [--dataset NAME_OR_FILE[,...]] [--split SPLIT]\n"
         "                     [--compress_ratio R[,R...]] [--kv_method NAME[:options][,...]|all] [--output_dir DIR]\n"
         "                     [--max_input_tokens N] [--max_new_tokens N] [--window W] [--threads T] [--seed S]\n"
         "                     [--data_dir DIR] [--kv_dtype f32|bf16] [--kv_layout compact|paged] [--chunk N]\n"
         "                     [--temperature T] [--top_p P]\n"
         "                     [--prompt_style longbench|paper] [--no_plot] [--quiet] [--list] [--help]\n"
         "\n"
         "With no arguments: the bundled model on the bundled long-context tasks (data/tasks/*_1024.jsonl, 5 samples\n"
         "each), full cache against SimCalKV and SnapKV at compress_ratio 0.5 (the fraction of the KV cache removed).\n"
         "\n"
         "  --model_name DIR        Hugging Face checkpoint folder (llama, qwen2, mistral) [models/simcalkv-tiny]\n"
         "  --dataset LIST          xsum, cnn_dailymail, piqa, openbookqa, winogrande, THUDM/LongBench/<task>\n"
         "                          (files under --data_dir), or JSONL files, folders, globs; comma-separated\n"
         "  --split SPLIT           hub slicing: test, test[:100], validation[10:20], train[:5%], test[-10:] [test[:5]]\n"
         "  --compress_ratio LIST   fractions of the cache removed, each in [0, 1) [0.5]\n"
         "  --kv_method LIST        policies as make_policy() names them, with options (SimCalKV:bias=log_count);\n"
         "                          'all' = every registered policy but Full [SimCalKV,SnapKV]\n"
         "  --output_dir DIR        CSV and JSON per (dataset, method, ratio); sweep table and plot [results]\n"
         "  --max_input_tokens N    longer prompts lose their middle (LongBench) [max_position_embeddings - answer]\n"
         "  --max_new_tokens N      answer length (the paper's nums_token) [per dataset]\n"
         "  --window W              observation window: the prompt's last W queries [32]\n"
         "  --threads T             threads (0: all cores); results do not depend on it [0]\n"
         "  --seed S                sampling seed (with --temperature > 0) [0]\n"
         "  --data_dir DIR          where named datasets are exported [data/hub]\n"
         "  --kv_dtype f32|bf16     KV cache storage [f32]\n"
         "  --kv_layout L           compact (a buffer per KV head) or paged (32-entry pages, a block table per\n"
         "                          KV head, freed pages reused); both give the same answers [compact]\n"
         "  --chunk N               prefill chunk [512]\n"
         "  --temperature T, --top_p P   sampling instead of greedy decoding [0, 1]\n"
         "  --prompt_style S        longbench (LongBench's dataset2prompt) or paper (qwen_eval.py's) [longbench]\n"
         "  --no_plot               no PNG for a sweep;  --quiet: no progress bar;  --list: datasets and policies\n";
}

namespace detail_args {

inline std::string normalise(const std::string& flag) {
  std::string f = flag.substr(2);
  std::replace(f.begin(), f.end(), '-', '_');
  return f;
}

inline std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

template <class N>
N number(const std::string& flag, const std::string& v, N lo, N hi) {
  N out{};
  try {
    std::size_t used = 0;
    if constexpr (std::is_floating_point_v<N>) out = static_cast<N>(std::stod(v, &used));
    else if constexpr (std::is_unsigned_v<N>) {
      if (!v.empty() && v[0] == '-') throw std::invalid_argument(v);
      out = static_cast<N>(std::stoull(v, &used));
    } else out = static_cast<N>(std::stoll(v, &used));
    if (used != v.size()) throw std::invalid_argument(v);
  } catch (const std::exception&) {
    throw UsageError("--" + flag + " expects a number, got '" + v + "'");
  }
  if constexpr (std::is_floating_point_v<N>)
    if (!std::isfinite(out)) throw UsageError("--" + flag + " expects a finite number, got '" + v + "'");
  if (out < lo || out > hi)
    throw UsageError("--" + flag + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v);
  return out;
}

}  // namespace detail_args

/// Splits --kv_method's list: commas separate methods, except that a piece shaped key=value (an '=' before any ':')
/// continues the previous method's options: "SimCalKV:bias=log_count,search=exact,SnapKV" is two methods.
inline std::vector<std::string> split_methods(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  auto flush = [&] {
    const auto a = cur.find_first_not_of(" \t"), b = cur.find_last_not_of(" \t");
    if (a != std::string::npos) {
      const std::string piece = cur.substr(a, b - a + 1);
      const auto eq = piece.find('='), colon = piece.find(':');
      const bool option = eq != std::string::npos && (colon == std::string::npos || eq < colon);
      if (option && !out.empty()) {
        out.back() += (out.back().find(':') == std::string::npos ? ":" : ",") + piece;
      } else if (option) {
        throw UsageError("--kv_method: '" + piece + "' is an option with no method before it");
      } else {
        out.push_back(piece);
      }
    }
    cur.clear();
  };
  for (char c : s) {
    if (c == ',') flush();
    else cur += c;
  }
  flush();
  if (out.empty()) throw UsageError("--kv_method is empty");
  return out;
}

inline Args parse_args(const std::vector<std::string>& argv) {
  using namespace detail_args;
  Args a;
  static const std::vector<std::string> with_value = {
      "model_name", "model",       "dataset",     "split",  "compress_ratio", "kv_method", "output_dir",
      "max_input_tokens", "max_new_tokens", "nums_token", "window", "threads", "seed", "data_dir", "kv_dtype", "kv_layout",
      "chunk",      "temperature", "top_p",       "prompt_style", "plot_script"};
  static const std::vector<std::string> switches = {"no_plot", "quiet", "help", "list"};
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string raw = argv[i];
    if (raw == "-h") {
      a.help = true;
      continue;
    }
    if (raw.size() < 3 || raw.compare(0, 2, "--") != 0)
      throw UsageError("unexpected argument '" + raw + "' (options start with --; see --help)");
    std::string flag = raw, value;
    bool inline_value = false;
    if (const auto eq = raw.find('='); eq != std::string::npos) {
      flag = raw.substr(0, eq);
      value = raw.substr(eq + 1);
      inline_value = true;
    }
    const std::string f = normalise(flag);
    const bool takes = std::find(with_value.begin(), with_value.end(), f) != with_value.end();
    const bool sw = std::find(switches.begin(), switches.end(), f) != switches.end();
    if (!takes && !sw) {
      std::string best;
      std::size_t bd = 4;
      for (const auto* list : {&with_value, &switches})
        for (const auto& k : *list)
          if (const auto d = edit_distance(f, k); d < bd) bd = d, best = k;
      throw UsageError("unknown option '" + flag + "'" + (best.empty() ? "" : " (did you mean --" + best + "?)") +
                       "; see --help");
    }
    if (sw) {
      if (inline_value) throw UsageError("--" + f + " takes no value");
      if (f == "no_plot") a.plot = false;
      else if (f == "quiet") a.progress = false;
      else if (f == "help") a.help = true;
      else if (f == "list") a.list = true;
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argv.size()) throw UsageError("--" + f + " needs a value");
      value = argv[++i];
    }
    if (f == "model_name" || f == "model") a.model_name = value;
    else if (f == "dataset") a.dataset = value;
    else if (f == "split") a.split = value;
    else if (f == "output_dir") a.output_dir = value;
    else if (f == "data_dir") a.data_dir = value;
    else if (f == "plot_script") a.plot_script = value;
    else if (f == "kv_method") a.kv_methods = split_methods(value);
    else if (f == "compress_ratio") {
      a.compress_ratios.clear();
      for (const auto& r : split_list(value)) {
        const double x = number<double>(f, r, 0.0, 1.0);
        if (!(x < 1.0)) throw UsageError("--compress_ratio is the fraction removed and must be below 1, got " + r);
        if (std::find(a.compress_ratios.begin(), a.compress_ratios.end(), x) == a.compress_ratios.end())
          a.compress_ratios.push_back(x);
      }
      if (a.compress_ratios.empty()) throw UsageError("--compress_ratio is empty");
    } else if (f == "max_input_tokens") a.max_input_tokens = number<long long>(f, value, 0, 1LL << 30);
    else if (f == "max_new_tokens" || f == "nums_token") a.max_new_tokens = number<int>(f, value, 0, 1 << 20);
    else if (f == "window") a.window = number<int>(f, value, 1, 1 << 20);
    else if (f == "threads") a.threads = number<int>(f, value, 0, 4096);
    else if (f == "seed") a.seed = number<unsigned long long>(f, value, 0, ~0ULL);
    else if (f == "chunk") a.chunk = number<int>(f, value, 1, 1 << 20);
    else if (f == "temperature") a.temperature = number<double>(f, value, 0.0, 1e6);
    else if (f == "top_p") {
      a.top_p = number<double>(f, value, 0.0, 1.0);
      if (!(a.top_p > 0)) throw UsageError("--top_p must be in (0, 1], got " + value);
    } else if (f == "kv_dtype") {
      if (value != "f32" && value != "bf16") throw UsageError("--kv_dtype must be f32 or bf16, got '" + value + "'");
      a.kv_dtype = value;
    } else if (f == "kv_layout") {
      if (value != "compact" && value != "paged")
        throw UsageError("--kv_layout must be compact or paged, got '" + value + "'");
      a.kv_layout = value;
    } else if (f == "prompt_style") {
      if (value == "longbench") a.prompt_style = PromptStyle::longbench;
      else if (value == "paper") a.prompt_style = PromptStyle::paper;
      else throw UsageError("--prompt_style must be longbench or paper, got '" + value + "'");
    }
  }
  if (a.dataset.empty()) throw UsageError("--dataset is empty");
  if (a.output_dir.empty()) throw UsageError("--output_dir is empty");
  return a;
}

}  // namespace simcalkv::eval
