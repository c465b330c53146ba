// simcalkv-eval: the paper's evaluation harness (qwen_eval.py) on the reference engine (engine/).
//
//   simcalkv-eval --model_name DIR --dataset NAME_OR_FILE --split SPLIT --compress_ratio R --kv_method NAME
//                 --output_dir DIR [--max_input_tokens N] [--max_new_tokens N] [--window W] [--threads T] ...
//
// Per sample: the prompt is prefilled once and answered with the full cache ("before"); then for every method x ratio
// the post-prefill cache is restored, compressed and answered again ("after"). Writes, per (dataset, method, ratio),
// results_<dataset>_<method>_<ratio>.csv (one row per sample, the paper's columns first) and
// summary_<dataset>_<method>_<ratio>.json (the paper's keys first); then sweep.csv / sweep.json / sweep.txt, the
// comparison table on stdout and, for a sweep, sweep.png (scripts/plot_eval.py). docs/eval.md has the details.
#include "openmp_wait.hpp"
#include "args.hpp"
#include "datasets.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "runner.hpp"
#include "scoring.hpp"
#include "split.hpp"

#include <algorithm>
#include <simcalkv/executor.hpp>
#include <simcalkv/registry.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using namespace simcalkv::eval;
namespace fs = std::filesystem;

std::atomic<bool> g_stop{false};

extern "C" void on_signal(int) { g_stop.store(true); }

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;  // a second Ctrl-C ends the process at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

void print_list() {
  std::printf("datasets (files under --data_dir, see docs/eval.md):\n");
  std::printf("  xsum, cnn_dailymail, piqa, openbookqa, winogrande\n");
  std::printf("  THUDM/LongBench/<task>: %s\n", longbench_task_list().c_str());
  std::printf("  or JSONL files / folders / globs (generic prompt+reference, data/tasks, or the hub layouts)\n\n");
  std::printf("policies (--kv_method NAME[:options]; 'all' = every one but Full):\n");
  for (const auto& e : simcalkv::policy_registry()) std::printf("  %-16s %s\n", e.name.c_str(), e.summary.c_str());
  std::printf("  AdaKV+<policy>   per-head budgets inside a layer around any policy above\n\n");
  std::printf("metrics: %s\n", known_metric_list().c_str());
}

std::vector<std::string> expand_methods(const std::vector<std::string>& given) {
  std::vector<std::string> out;
  for (const auto& m : given) {
    std::string lower = m;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "all") {
      for (const auto& n : simcalkv::policy_names())
        if (n != "Full") out.push_back(n);
    } else {
      out.push_back(m);
    }
  }
  std::vector<std::string> unique;
  for (const auto& m : out)
    if (std::find(unique.begin(), unique.end(), m) == unique.end()) unique.push_back(m);
  return unique;
}

struct Plan {
  Args args;
  Split split;
  std::vector<std::string> methods;
  std::vector<simcalkv::AnyPolicy> policies;
  std::vector<Dataset> datasets;
  long long max_pos = 0;
};

std::string reference_text(const Sample& s) {
  if (s.references.size() == 1) return s.references[0];
  return nlohmann::json(s.references).dump();
}

template <simcalkv::StorageElement T>
int run(const Plan& plan, const engine::Model& model, const engine::Tokenizer& tok) {
  const Args& a = plan.args;
  const fs::path out_dir = a.output_dir;
  fs::create_directories(out_dir);
#ifdef _OPENMP
  const simcalkv::OpenMPExecutor executor(a.threads);
  const simcalkv::Executor* exec = &executor;
#else
  const simcalkv::ThreadExecutor executor(a.threads > 0 ? a.threads : 1);
  const simcalkv::Executor* exec = &executor;
#endif
  // Score buffers accumulated over the whole prefill only when a method selects by them (H2O):
  // they cost 4 bytes an entry and serialise a chunk's attention per KV head.
  const bool track_scores = std::any_of(plan.policies.begin(), plan.policies.end(),
                                        [](const simcalkv::AnyPolicy& p) { return p.reads_accumulated_scores(); });
  Runner<T> runner(model, tok,
                   {a.window, a.chunk, exec,
                    a.kv_layout == "paged" ? engine::KVLayout::paged : engine::KVLayout::compact, &g_stop,
                    track_scores});

  const std::size_t M = plan.methods.size(), R = a.compress_ratios.size();
  std::vector<Group> groups;
  for (std::size_t d = 0; d < plan.datasets.size(); ++d)
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t r = 0; r < R; ++r) groups.push_back(Group{d, plan.methods[m], a.compress_ratios[r], {}});
  auto group_of = [&](std::size_t d, std::size_t m, std::size_t r) -> Group& { return groups[(d * M + m) * R + r]; };

  RunInfo info;
  info.model_name = a.model_name;
  info.split = a.split;
  info.kv_dtype = a.kv_dtype;
  info.kv_layout = a.kv_layout;
  info.prompt_style = a.prompt_style == PromptStyle::paper ? "paper" : "longbench";
  info.max_input_tokens = a.max_input_tokens;
  info.max_new_tokens = a.max_new_tokens;
  info.window = a.window;
  info.threads = a.threads;
  info.seed = a.seed;
  info.temperature = a.temperature;

  auto write_dataset = [&](std::size_t d) {
    const auto& ds = plan.datasets[d];
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t r = 0; r < R; ++r) {
        const auto& g = group_of(d, m, r);
        write_file_atomic(out_dir / csv_name(ds, g), group_csv(ds, g));
        write_file_atomic(out_dir / json_name(ds, g), group_json(ds, g, info).dump(2) + "\n");
      }
  };

  // Until the run ends, every file it writes says "interrupted": true, so a run killed (SIGKILL, a second
  // Ctrl-C) between two samples leaves files that do not pass for a finished one.
  info.interrupted = true;

  std::size_t total_samples = 0;
  for (const auto& ds : plan.datasets) total_samples += ds.samples.size();
  const std::size_t units_per_sample = 1 + M * R;
  Progress progress(total_samples * units_per_sample, total_samples, a.progress);
  std::size_t units = 0, sample_no = 0, finished = 0;
  std::map<std::string, std::string> first_errors;  // group stem -> message
  std::map<std::string, std::string> first_notes;   // group stem -> a compression held above its ratio
  std::vector<bool> started(plan.datasets.size(), false);

  for (std::size_t d = 0; d < plan.datasets.size() && !g_stop; ++d) {
    const auto& ds = plan.datasets[d];
    started[d] = true;
    const int max_new = a.max_new_tokens >= 0 ? a.max_new_tokens : ds.max_new_tokens;
    std::size_t max_in = 0;
    if (a.max_input_tokens >= 0) max_in = static_cast<std::size_t>(a.max_input_tokens);
    else if (plan.max_pos > 0) max_in = static_cast<std::size_t>(std::max<long long>(2, plan.max_pos - max_new));
    for (std::size_t i = 0; i < ds.samples.size() && !g_stop; ++i) {
      const auto& sample = ds.samples[i];
      ++sample_no;
      progress.update(units, sample_no, ds.tag);
      DecodeSettings dec;
      dec.max_new_tokens = max_new;
      dec.temperature = a.temperature;
      dec.top_p = a.top_p;
      dec.seed = mix(a.seed ^ mix(d * 0x100000001ULL + i));
      const BeforeResult before = runner.before(sample.prompt, max_in, dec);
      if (before.gen.interrupted) break;
      ++units;
      progress.update(units, sample_no, ds.tag);
      const std::string answer_before = scored_answer(ds, before.gen.text);
      std::vector<double> metrics_before;
      for (const auto& m : ds.metrics)
        metrics_before.push_back(score_metric(m, answer_before, sample.references, sample.all_classes, ds.use_stemmer));

      std::vector<Row> rows;
      bool interrupted = false;
      for (std::size_t m = 0; m < M && !interrupted; ++m)
        for (std::size_t r = 0; r < R; ++r) {
          AfterResult after = runner.after(plan.policies[m], a.compress_ratios[r], dec);
          if (after.gen.interrupted) {
            interrupted = true;
            break;
          }
          Row row;
          row.id = sample.id;
          row.reference = reference_text(sample);
          row.prompt_tokens = before.prompt_tokens;
          row.truncated_tokens = before.truncated_tokens;
          row.prefill_seconds = before.prefill_seconds;
          row.answer_before = before.gen.text;
          row.new_tokens_before = before.gen.ids.size();
          row.time_before_s = before.gen.seconds;
          row.throughput_before = before.gen.tokens_per_second();
          row.kv_bytes_before = before.kv_bytes;
          row.metrics_before = metrics_before;
          row.stats = after.stats;
          row.error = after.error;
          if (after.error.empty()) {
            row.answer_after = after.gen.text;
            row.new_tokens_after = after.gen.ids.size();
            row.decode_after_s = after.gen.seconds;
            row.compress_seconds = after.compress_seconds;
            row.throughput_after = after.gen.tokens_per_second();
            row.kv_bytes_after = after.kv_bytes;
            const std::string answer_after = scored_answer(ds, after.gen.text);
            for (const auto& name : ds.metrics)
              row.metrics_after.push_back(
                  score_metric(name, answer_after, sample.references, sample.all_classes, ds.use_stemmer));
            row.agreement = agreement(after.gen.text, before.gen.text);
            // A prompt shorter than the protection (sinks + --window) keeps more than the ratio asks: say so once.
            const std::size_t heads = static_cast<std::size_t>(model.config.num_layers) * model.config.num_kv_heads;
            const std::size_t asked =
                heads * simcalkv::Budget::compress_ratio(a.compress_ratios[r]).for_length(before.prompt_tokens);
            if (after.stats.entries_after > asked)
              first_notes.emplace(group_stem(ds, group_of(d, m, r)),
                                  "sample " + sample.id + " (" + std::to_string(before.prompt_tokens) + " tokens) kept " +
                                      std::to_string(after.stats.entries_after / heads) + " entries per KV head, not " +
                                      std::to_string(asked / heads));
          } else {
            first_errors.emplace(group_stem(ds, group_of(d, m, r)), after.error);
          }
          rows.push_back(std::move(row));
          ++units;
          progress.update(units, sample_no, ds.tag);
        }
      if (interrupted) break;
      // only whole samples (every method and ratio) are kept, so every group covers the same samples
      for (std::size_t m = 0, k = 0; m < M; ++m)
        for (std::size_t r = 0; r < R; ++r, ++k) group_of(d, m, r).rows.push_back(std::move(rows[k]));
      ++finished;
      write_dataset(d);
      progress.update(units, sample_no, ds.tag, true);
    }
  }
  progress.finish();
  info.interrupted = g_stop.load();
  for (std::size_t d = 0; d < plan.datasets.size(); ++d)
    if (started[d]) write_dataset(d);  // an interrupted run writes no file for a dataset it never reached

  for (const auto& [stem, msg] : first_notes)
    std::fprintf(stderr, "simcalkv-eval: note: %s: %s: the policy protects its sinks and the last --window (%d) "
                 "entries; a smaller --window compresses short prompts further\n", stem.c_str(), msg.c_str(), a.window);
  for (const auto& [stem, msg] : first_errors)
    std::fprintf(stderr, "simcalkv-eval: warning: compression failed for %s (those rows have an error and no answer): %s\n",
                 stem.c_str(), msg.c_str());
  if (!first_errors.empty())
    std::fprintf(stderr, "simcalkv-eval: note: every policy keeps the first 4 and the last --window (%d) entries; for "
                 "short prompts pass a smaller --window, or the policy's sinks= / recent= options\n", a.window);

  const auto lines = sweep_lines(plan.datasets, groups, plan.methods, a.compress_ratios);
  nlohmann::json sj;
  sj["model_name"] = a.model_name;
  sj["split"] = a.split;
  std::vector<std::string> labels;
  for (const auto& ds : plan.datasets) labels.push_back(dataset_label(ds));
  sj["datasets"] = labels;
  sj["kv_methods"] = plan.methods;
  sj["compress_ratios"] = a.compress_ratios;
  sj["samples"] = finished;
  sj["interrupted"] = info.interrupted;
  sj["seconds"] = progress.elapsed();
  sj["rows"] = nlohmann::json::array();
  for (const auto& l : lines) sj["rows"].push_back(sweep_line_json(l));
  write_file_atomic(out_dir / "sweep.json", sj.dump(2) + "\n");
  write_file_atomic(out_dir / "sweep.csv", sweep_csv(lines));
  const std::string table = sweep_table(lines, plan.datasets.size(), finished);
  write_file_atomic(out_dir / "sweep.txt", table);
  std::fputs(table.c_str(), stdout);
  std::fflush(stdout);

  const bool sweep = M > 1 || R > 1;
  if (sweep && a.plot && finished > 0) {
    // python3 on the PATH first; Debian's own (where python3-matplotlib installs) when that one lacks matplotlib
    const std::string args = " " + shell_quote(a.plot_script) + " " + shell_quote((out_dir / "sweep.json").string()) +
                             " " + shell_quote((out_dir / "sweep.png").string());
    int rc = std::system(("python3" + args + " 2>/dev/null").c_str());
    if (rc != 0 && fs::exists("/usr/bin/python3")) rc = std::system(("/usr/bin/python3" + args).c_str());
    if (rc != 0)
      std::fprintf(stderr, "simcalkv-eval: warning: no plot (%s failed; it needs python3 and python3-matplotlib)\n",
                   a.plot_script.c_str());
    else
      std::fprintf(stderr, "simcalkv-eval: plot %s\n", (out_dir / "sweep.png").string().c_str());
  }
  std::fprintf(stderr, "simcalkv-eval: %zu sample%s in %s; results in %s\n", finished, finished == 1 ? "" : "s",
               format_duration(progress.elapsed()).c_str(), out_dir.string().c_str());
  if (info.interrupted) {
    std::fprintf(stderr, "simcalkv-eval: interrupted: the files hold the %zu finished sample%s\n", finished,
                 finished == 1 ? "" : "s");
    return 130;
  }
  // A (dataset, method, ratio) with no successful row measured nothing: the run failed, whatever it wrote.
  std::size_t failed_groups = 0;
  for (const auto& g : groups)
    if (!g.rows.empty() && std::all_of(g.rows.begin(), g.rows.end(), [](const Row& r) { return !r.error.empty(); }))
      ++failed_groups;
  if (failed_groups > 0) {
    std::fprintf(stderr, "simcalkv-eval: error: %zu of %zu (dataset, method, ratio) runs failed on every sample (the "
                 "warnings above say why); the files record the errors\n", failed_groups, groups.size());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  simcalkv::tools::prefer_passive_openmp_wait(argv);
  Plan plan;
  try {
    plan.args = parse_args(std::vector<std::string>(argv + 1, argv + argc));
    const Args& a = plan.args;
    if (a.help) {
      std::fputs(usage_text().c_str(), stdout);
      return 0;
    }
    if (a.list) {
      print_list();
      return 0;
    }
    plan.split = parse_split(a.split);
    plan.methods = expand_methods(a.kv_methods);
    for (const auto& m : plan.methods) {
      try {
        plan.policies.push_back(simcalkv::make_policy(m));
      } catch (const simcalkv::Error& e) {
        throw UsageError("--kv_method '" + m + "': " + std::string(e.what()));
      }
    }
    if (a.temperature <= 0 && a.top_p < 1.0)
      std::fprintf(stderr, "simcalkv-eval: note: --top_p has no effect with greedy decoding (--temperature 0)\n");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "simcalkv-eval: error: %s\n(simcalkv-eval --help lists the options)\n", e.what());
    return 2;
  } catch (const SplitError& e) {
    std::fprintf(stderr, "simcalkv-eval: error: %s\n", e.what());
    return 2;
  }
  try {
    const Args& a = plan.args;
#ifdef _OPENMP
    if (a.threads > 0) omp_set_num_threads(a.threads);
#endif
    if (a.threads > 0) Eigen::setNbThreads(a.threads);
    DatasetOptions dopt;
    dopt.data_dir = a.data_dir;
    dopt.prompt_style = a.prompt_style;
    plan.datasets = resolve_datasets(a.dataset, plan.split, dopt);
    const auto model = engine::Model::load(a.model_name);
    const auto tok = engine::Tokenizer::load(fs::path(a.model_name) / "tokenizer.json");
    tok.check_fits(model.config, a.model_name);
    for (const auto& w : model.warnings) std::fprintf(stderr, "simcalkv-eval: note: %s\n", w.c_str());
    for (const auto& w : tok.warnings()) std::fprintf(stderr, "simcalkv-eval: note: %s\n", w.c_str());
    plan.max_pos = model.config.max_position_embeddings;  // checked by the config parser; 0 when absent
    std::size_t samples = 0;
    for (const auto& ds : plan.datasets) {
      samples += ds.samples.size();
      for (const auto& w : ds.warnings) std::fprintf(stderr, "simcalkv-eval: warning: %s\n", w.c_str());
      if (ds.samples.empty())
        std::fprintf(stderr, "simcalkv-eval: warning: --split %s selects no record of %s (%zu records)\n",
                     a.split.c_str(), ds.path.c_str(), ds.records);
    }
    std::vector<std::string> ratios;
    for (double r : a.compress_ratios) ratios.push_back(ratio_text(r));
    std::fprintf(stderr,
                 "simcalkv-eval: %s (%s, %d layers, %d/%d heads), %zu dataset%s, %zu samples; methods %s; "
                 "compress_ratio %s; %s KV\n",
                 a.model_name.c_str(), model.config.model_type.c_str(), model.config.num_layers, model.config.num_heads,
                 model.config.num_kv_heads, plan.datasets.size(), plan.datasets.size() == 1 ? "" : "s", samples,
                 join(plan.methods).c_str(), join(ratios).c_str(), a.kv_dtype.c_str());
    install_signal_handlers();
    return a.kv_dtype == "bf16" ? run<simcalkv::bfloat16>(plan, model, tok) : run<float>(plan, model, tok);
  } catch (const DatasetError& e) {
    std::fprintf(stderr, "simcalkv-eval: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "simcalkv-eval: error: %s\n", e.what());
    return 1;
  }
}
