// simcalkv-eval: per-sample rows, the paper's CSV and JSON summary per (dataset, method, ratio), and a sweep's
// comparison table (stdout and sweep.txt), sweep.csv and sweep.json.
#pragma once

#include "csv.hpp"
#include "datasets.hpp"

#include <simcalkv/policy.hpp>

#include <nlohmann/json.hpp>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace simcalkv::eval {

inline constexpr double bytes_per_MB = 1024.0 * 1024.0;  // the paper's measure_kv_memory: bytes / 1024**2

/// One (sample, method, ratio).
struct Row {
  std::string id;
  std::string reference;  // the reference, or the references as a JSON list
  std::size_t prompt_tokens = 0, truncated_tokens = 0;
  double prefill_seconds = 0;
  // full cache
  std::string answer_before;
  std::size_t new_tokens_before = 0;
  double time_before_s = 0, throughput_before = std::numeric_limits<double>::quiet_NaN();
  std::size_t kv_bytes_before = 0;
  std::vector<double> metrics_before;
  // compressed cache
  std::string answer_after;
  std::size_t new_tokens_after = 0;
  double decode_after_s = 0, compress_seconds = 0, throughput_after = std::numeric_limits<double>::quiet_NaN();
  std::size_t kv_bytes_after = 0;
  std::vector<double> metrics_after;
  double agreement = std::numeric_limits<double>::quiet_NaN();
  CompressionStats stats;
  std::string error;

  /// The paper's time_after_s: compression plus decoding on the compressed cache.
  [[nodiscard]] double time_after_s() const { return compress_seconds + decode_after_s; }
  [[nodiscard]] bool ok() const { return error.empty(); }
};

/// The rows of one (dataset, method, ratio).
struct Group {
  std::size_t dataset = 0;
  std::string method;
  double ratio = 0;
  std::vector<Row> rows;
};

/// Settings recorded in every summary.
struct RunInfo {
  std::string model_name;
  std::string split;
  std::string kv_dtype;
  std::string kv_layout = "compact";
  std::string prompt_style;
  long long max_input_tokens = -1;  // as given (-1: automatic)
  int max_new_tokens = -1;
  int window = 32;
  int threads = 0;
  unsigned long long seed = 0;
  double temperature = 0;
  bool interrupted = false;
};

inline std::string number_text(double x) {
  if (!std::isfinite(x)) return "";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

/// The ratio as the user wrote it: the shortest text that reads back as the same double (0.9999999 stays
/// 0.9999999, where %g would print 1).
inline std::string ratio_text(double r) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, r);
  return std::string(buf, res.ptr);
}

/// A method spec as a file-name part: letters, digits, '.', '_', '-', '+' and '=' kept, anything else '_'.
inline std::string method_tag(std::string_view spec) {
  std::string out;
  for (char c : spec) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                    c == '-' || c == '+' || c == '=';
    out += ok ? c : '_';
  }
  return out;
}

inline std::string group_stem(const Dataset& ds, const Group& g) {
  return ds.tag + "_" + method_tag(g.method) + "_" + ratio_text(g.ratio);
}
inline std::string csv_name(const Dataset& ds, const Group& g) { return "results_" + group_stem(ds, g) + ".csv"; }
inline std::string json_name(const Dataset& ds, const Group& g) { return "summary_" + group_stem(ds, g) + ".json"; }

/// How a dataset is named in outputs: the name given for the paper's datasets, the file's tag otherwise.
inline std::string dataset_label(const Dataset& ds) { return named_dataset(ds.name) ? ds.name : ds.tag; }

inline std::vector<std::string> csv_header(const Dataset& ds) {
  std::vector<std::string> h = {"id",          "dataset",       "kv_method",      "memory_before_MB",
                                "memory_after_MB", "time_before_s", "time_after_s",   "throughput_before_tokens_s",
                                "throughput_after_tokens_s",      "answer_before",  "answer_after",
                                "compress_ratio", "reference"};
  for (const auto& m : ds.metrics) {
    h.push_back(m + "_before");
    h.push_back(m + "_after");
  }
  for (const char* x : {"agreement", "kv_bytes_before", "kv_bytes_after", "compress_seconds", "prefill_seconds",
                        "prompt_tokens", "truncated_tokens", "new_tokens_before", "new_tokens_after", "entries_before",
                        "entries_after", "merged", "evicted", "error"})
    h.emplace_back(x);
  return h;
}

inline std::string group_csv(const Dataset& ds, const Group& g) {
  std::string out = csv_row(csv_header(ds));
  const std::string label = dataset_label(ds);
  for (const auto& r : g.rows) {
    std::vector<std::string> f = {r.id,
                                  label,
                                  g.method,
                                  number_text(static_cast<double>(r.kv_bytes_before) / bytes_per_MB),
                                  r.ok() ? number_text(static_cast<double>(r.kv_bytes_after) / bytes_per_MB) : "",
                                  number_text(r.time_before_s),
                                  r.ok() ? number_text(r.time_after_s()) : "",
                                  number_text(r.throughput_before),
                                  r.ok() ? number_text(r.throughput_after) : "",
                                  r.answer_before,
                                  r.answer_after,
                                  ratio_text(g.ratio),
                                  r.reference};
    for (std::size_t m = 0; m < ds.metrics.size(); ++m) {
      f.push_back(number_text(m < r.metrics_before.size() ? r.metrics_before[m] : NAN));
      f.push_back(r.ok() && m < r.metrics_after.size() ? number_text(r.metrics_after[m]) : "");
    }
    f.push_back(r.ok() ? number_text(r.agreement) : "");
    f.push_back(std::to_string(r.kv_bytes_before));
    f.push_back(r.ok() ? std::to_string(r.kv_bytes_after) : "");
    f.push_back(r.ok() ? number_text(r.compress_seconds) : "");
    f.push_back(number_text(r.prefill_seconds));
    f.push_back(std::to_string(r.prompt_tokens));
    f.push_back(std::to_string(r.truncated_tokens));
    f.push_back(std::to_string(r.new_tokens_before));
    f.push_back(r.ok() ? std::to_string(r.new_tokens_after) : "");
    f.push_back(std::to_string(r.stats.entries_before));
    f.push_back(std::to_string(r.stats.entries_after));
    f.push_back(std::to_string(r.stats.merged));
    f.push_back(std::to_string(r.stats.evicted));
    f.push_back(r.error);
    out += csv_row(f);
  }
  return out;
}

/// Means of a group over its rows whose compression worked (before and after over the same rows).
struct GroupStats {
  std::size_t samples = 0, failed = 0;
  std::vector<double> before, after;  // per metric
  double agreement = NAN, memory_before_MB = NAN, memory_after_MB = NAN, time_before = NAN, time_after = NAN;
  double throughput_before = NAN, throughput_after = NAN, compress_seconds = NAN, prefill_seconds = NAN;
  double kv_bytes_before = NAN, kv_bytes_after = NAN, new_tokens_before = NAN, new_tokens_after = NAN;
  [[nodiscard]] double quality_before() const { return before.empty() ? NAN : before[0]; }
  [[nodiscard]] double quality_after() const { return after.empty() ? NAN : after[0]; }
};

namespace detail_report {
struct Mean {
  double sum = 0;
  std::size_t n = 0;
  void add(double x) {
    if (std::isfinite(x)) sum += x, ++n;
  }
  [[nodiscard]] double get() const { return n ? sum / static_cast<double>(n) : NAN; }
};
inline nlohmann::json num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }
}  // namespace detail_report

inline GroupStats group_stats(const Dataset& ds, const Group& g) {
  using detail_report::Mean;
  GroupStats s;
  std::vector<Mean> b(ds.metrics.size()), a(ds.metrics.size());
  Mean agr, mb, ma, tb, ta, thb, tha, cs, ps, kb, ka, nb, na;
  for (const auto& r : g.rows) {
    if (!r.ok()) {
      ++s.failed;
      continue;
    }
    ++s.samples;
    for (std::size_t m = 0; m < ds.metrics.size(); ++m) {
      if (m < r.metrics_before.size()) b[m].add(r.metrics_before[m]);
      if (m < r.metrics_after.size()) a[m].add(r.metrics_after[m]);
    }
    agr.add(r.agreement);
    mb.add(static_cast<double>(r.kv_bytes_before) / bytes_per_MB);
    ma.add(static_cast<double>(r.kv_bytes_after) / bytes_per_MB);
    tb.add(r.time_before_s);
    ta.add(r.time_after_s());
    thb.add(r.throughput_before);
    tha.add(r.throughput_after);
    cs.add(r.compress_seconds);
    ps.add(r.prefill_seconds);
    kb.add(static_cast<double>(r.kv_bytes_before));
    ka.add(static_cast<double>(r.kv_bytes_after));
    nb.add(static_cast<double>(r.new_tokens_before));
    na.add(static_cast<double>(r.new_tokens_after));
  }
  for (std::size_t m = 0; m < ds.metrics.size(); ++m) {
    s.before.push_back(b[m].get());
    s.after.push_back(a[m].get());
  }
  s.agreement = agr.get();
  s.memory_before_MB = mb.get();
  s.memory_after_MB = ma.get();
  s.time_before = tb.get();
  s.time_after = ta.get();
  s.throughput_before = thb.get();
  s.throughput_after = tha.get();
  s.compress_seconds = cs.get();
  s.prefill_seconds = ps.get();
  s.kv_bytes_before = kb.get();
  s.kv_bytes_after = ka.get();
  s.new_tokens_before = nb.get();
  s.new_tokens_after = na.get();
  return s;
}

inline nlohmann::json group_json(const Dataset& ds, const Group& g, const RunInfo& info) {
  using detail_report::num;
  const auto s = group_stats(ds, g);
  nlohmann::json mb = nlohmann::json::object(), ma = nlohmann::json::object();
  for (std::size_t m = 0; m < ds.metrics.size(); ++m) {
    mb[ds.metrics[m]] = num(s.before[m]);
    ma[ds.metrics[m]] = num(s.after[m]);
  }
  nlohmann::json j;
  // the paper's keys
  j["dataset"] = dataset_label(ds);
  j["kv_method"] = g.method;
  j["model_name"] = info.model_name;
  j["compress_ratio"] = g.ratio;
  j["metrics_before"] = mb;
  j["metrics_after"] = ma;
  j["avg_memory_saving_MB"] = num(s.memory_before_MB - s.memory_after_MB);
  j["time_before"] = num(s.time_before);
  j["time_after"] = num(s.time_after);
  j["avg_time_saving_s"] = num(s.time_before - s.time_after);
  j["throughput_before"] = num(s.throughput_before);
  j["throughput_after"] = num(s.throughput_after);
  j["avg_throughput_improvement_tokens_s"] = num(s.throughput_after - s.throughput_before);
  // ours
  j["kv_bytes_before"] = num(s.kv_bytes_before);
  j["kv_bytes_after"] = num(s.kv_bytes_after);
  j["compress_seconds"] = num(s.compress_seconds);
  j["agreement"] = num(s.agreement);
  j["main_metric"] = ds.metrics.empty() ? "" : ds.metrics[0];
  j["memory_before_MB"] = num(s.memory_before_MB);
  j["memory_after_MB"] = num(s.memory_after_MB);
  j["prefill_seconds"] = num(s.prefill_seconds);
  j["new_tokens_before"] = num(s.new_tokens_before);
  j["new_tokens_after"] = num(s.new_tokens_after);
  j["samples"] = s.samples;
  j["failed"] = s.failed;
  for (const auto& r : g.rows)
    if (!r.ok()) {
      j["first_error"] = r.error;
      break;
    }
  j["dataset_file"] = ds.path;
  j["format"] = std::string(format_name(ds.format));
  if (!ds.task.empty()) j["task"] = ds.task;
  j["split"] = info.split;
  j["max_new_tokens"] = info.max_new_tokens >= 0 ? info.max_new_tokens : ds.max_new_tokens;
  j["max_input_tokens"] = info.max_input_tokens;
  j["window"] = info.window;
  j["kv_dtype"] = info.kv_dtype;
  j["kv_layout"] = info.kv_layout;
  j["prompt_style"] = info.prompt_style;
  j["threads"] = info.threads;
  j["seed"] = info.seed;
  j["temperature"] = info.temperature;
  j["interrupted"] = info.interrupted;
  j["csv"] = csv_name(ds, g);
  return j;
}

/// One line of a sweep: a (dataset, method, ratio), or the mean over datasets ("ALL").
struct SweepLine {
  std::string dataset, method, metric;
  double ratio = 0;
  GroupStats s;
  std::size_t datasets = 1;
};

/// Lines per (dataset, method, ratio) and, with several datasets, their macro mean per (method, ratio) under
/// dataset "ALL" (each dataset's main metric).
inline std::vector<SweepLine> sweep_lines(const std::vector<Dataset>& datasets, const std::vector<Group>& groups,
                                          const std::vector<std::string>& methods, const std::vector<double>& ratios) {
  using detail_report::Mean;
  std::vector<SweepLine> out;
  for (const auto& g : groups) {
    const auto& ds = datasets[g.dataset];
    SweepLine l;
    l.dataset = dataset_label(ds);
    l.method = g.method;
    l.ratio = g.ratio;
    l.metric = ds.metrics.empty() ? "" : ds.metrics[0];
    l.s = group_stats(ds, g);
    out.push_back(std::move(l));
  }
  if (datasets.size() < 2) return out;
  const std::size_t per_dataset = out.size();
  for (const auto& m : methods)
    for (double r : ratios) {
      SweepLine all;
      all.dataset = "ALL";
      all.method = m;
      all.ratio = r;
      Mean qb, qa, agr, mb, ma, tb, ta, thb, tha, cs, ps, kb, ka, nb, na;
      std::set<std::string> metrics;
      std::size_t n = 0;
      for (std::size_t i = 0; i < per_dataset; ++i) {
        const auto& l = out[i];
        if (l.method != m || l.ratio != r) continue;
        all.s.failed += l.s.failed;
        if (l.s.samples == 0) continue;
        ++n;
        metrics.insert(l.metric);
        all.s.samples += l.s.samples;
        qb.add(l.s.quality_before());
        qa.add(l.s.quality_after());
        agr.add(l.s.agreement);
        mb.add(l.s.memory_before_MB);
        ma.add(l.s.memory_after_MB);
        tb.add(l.s.time_before);
        ta.add(l.s.time_after);
        thb.add(l.s.throughput_before);
        tha.add(l.s.throughput_after);
        cs.add(l.s.compress_seconds);
        ps.add(l.s.prefill_seconds);
        kb.add(l.s.kv_bytes_before);
        ka.add(l.s.kv_bytes_after);
        nb.add(l.s.new_tokens_before);
        na.add(l.s.new_tokens_after);
      }
      for (const auto& x : metrics) all.metric += (all.metric.empty() ? "" : "|") + x;
      all.datasets = n;
      all.s.before = {qb.get()};
      all.s.after = {qa.get()};
      all.s.agreement = agr.get();
      all.s.memory_before_MB = mb.get();
      all.s.memory_after_MB = ma.get();
      all.s.time_before = tb.get();
      all.s.time_after = ta.get();
      all.s.throughput_before = thb.get();
      all.s.throughput_after = tha.get();
      all.s.compress_seconds = cs.get();
      all.s.prefill_seconds = ps.get();
      all.s.kv_bytes_before = kb.get();
      all.s.kv_bytes_after = ka.get();
      all.s.new_tokens_before = nb.get();
      all.s.new_tokens_after = na.get();
      out.push_back(std::move(all));
    }
  return out;
}

inline nlohmann::json sweep_line_json(const SweepLine& l) {
  using detail_report::num;
  const auto& s = l.s;
  const double saved = 1.0 - s.memory_after_MB / s.memory_before_MB;
  return {{"dataset", l.dataset},
          {"kv_method", l.method},
          {"compress_ratio", l.ratio},
          {"main_metric", l.metric},
          {"quality_before", num(s.quality_before())},
          {"quality_after", num(s.quality_after())},
          {"agreement", num(s.agreement)},
          {"memory_before_MB", num(s.memory_before_MB)},
          {"memory_after_MB", num(s.memory_after_MB)},
          {"memory_saved_fraction", num(saved)},
          {"compress_seconds", num(s.compress_seconds)},
          {"time_before_s", num(s.time_before)},
          {"time_after_s", num(s.time_after)},
          {"throughput_before_tokens_s", num(s.throughput_before)},
          {"throughput_after_tokens_s", num(s.throughput_after)},
          {"prefill_seconds", num(s.prefill_seconds)},
          {"samples", s.samples},
          {"failed", s.failed},
          {"datasets", l.datasets}};
}

inline std::string sweep_csv(const std::vector<SweepLine>& lines) {
  static const std::vector<std::string> keys = {
      "dataset",          "kv_method",       "compress_ratio",        "main_metric",      "quality_before",
      "quality_after",    "agreement",       "memory_before_MB",      "memory_after_MB",  "memory_saved_fraction",
      "compress_seconds", "time_before_s",   "time_after_s",          "throughput_before_tokens_s",
      "throughput_after_tokens_s",           "prefill_seconds",       "samples",          "failed",
      "datasets"};
  std::string out = csv_row(keys);
  for (const auto& l : lines) {
    const auto j = sweep_line_json(l);
    std::vector<std::string> f;
    for (const auto& k : keys) {
      const auto& v = j[k];
      if (v.is_string()) f.push_back(v.get<std::string>());
      else if (v.is_null()) f.emplace_back();
      else if (v.is_number_float()) f.push_back(k == "compress_ratio" ? ratio_text(v.get<double>()) : number_text(v.get<double>()));
      else f.push_back(v.dump());
    }
    out += csv_row(f);
  }
  return out;
}

/// The comparison table: the "ALL" lines when there are several datasets, else the dataset's lines.
inline std::string sweep_table(const std::vector<SweepLine>& lines, std::size_t datasets, std::size_t samples) {
  std::vector<const SweepLine*> shown;
  for (const auto& l : lines)
    if ((datasets > 1) == (l.dataset == "ALL")) shown.push_back(&l);
  if (shown.empty()) return "";
  std::size_t mw = 13;
  for (const auto* l : shown) mw = std::max(mw, l->method.size());
  auto f3 = [](double x) {
    char b[32];
    if (!std::isfinite(x)) return std::string("-");
    std::snprintf(b, sizeof b, "%.3f", x);
    return std::string(b);
  };
  auto f1 = [](double x) {
    char b[32];
    if (!std::isfinite(x)) return std::string("-");
    std::snprintf(b, sizeof b, "%.1f", x);
    return std::string(b);
  };
  std::string out;
  char buf[512];
  const std::string metric = shown.front()->metric;
  std::snprintf(buf, sizeof buf, "quality: %s, mean over %zu dataset%s and %zu sample%s; before = the full cache\n",
                metric.c_str(), datasets, datasets == 1 ? "" : "s", samples, samples == 1 ? "" : "s");
  out += buf;
  std::snprintf(buf, sizeof buf, "%-*s %6s %7s %7s %9s %21s %11s %19s %9s\n", static_cast<int>(mw), "method", "ratio",
                "before", "after", "agreement", "KV MB before->after", "compress ms", "decode tok/s b->a",
                "failed");
  out += buf;
  for (const auto* l : shown) {
    const auto& s = l->s;
    const std::string mem = f3(s.memory_before_MB) + "->" + f3(s.memory_after_MB) + " (" +
                            (std::isfinite(s.memory_after_MB) ? std::to_string(static_cast<int>(std::lround(
                                                                    100 * (1 - s.memory_after_MB / s.memory_before_MB))))
                                                              : std::string("-")) +
                            "%)";
    const std::string tps = f1(s.throughput_before) + "->" + f1(s.throughput_after);
    std::snprintf(buf, sizeof buf, "%-*s %6s %7s %7s %9s %21s %11s %19s %9zu\n", static_cast<int>(mw),
                  l->method.c_str(), ratio_text(l->ratio).c_str(), f3(s.quality_before()).c_str(),
                  f3(s.quality_after()).c_str(), f3(s.agreement).c_str(), mem.c_str(),
                  f1(1000 * s.compress_seconds).c_str(), tps.c_str(), s.failed);
    out += buf;
  }
  return out;
}

}  // namespace simcalkv::eval
