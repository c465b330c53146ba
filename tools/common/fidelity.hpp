// simcalkv tools: how much a compression policy changes attention, measured on a KV trace.
//
// For every selected layer of a trace with n tokens, the first P = n - future tokens are the
// prompt. The prompt's keys and values go into a cache (float storage), which the policy
// compresses with the observation window of the prompt's last `window` queries (every query head,
// with their positions). The remaining `future` tokens' keys and values are then appended
// uncompressed at logical positions P .. n-1, and each future token's query (every query head)
// attends causally over the cache with the library's block attention: token P+i sees the
// prompt's surviving entries and the future entries up to itself.
//
// What is compared, per (query head, future token):
//   o_exact  exact attention over the uncompressed tokens 0..P+i, computed here in double
//            straight from the trace (Eigen matrix products, no library code);
//   o_full   the library's block attention over the uncompressed cache (the same code path as
//            o_policy, with no compression in between);
//   o_policy the library's block attention over the compressed cache.
// The error is rel_error = ||o_policy - o_full|| / ||o_exact||: the attention error compression
// causes, relative to the exact output. Because o_policy and o_full run the same code on the
// same inputs when nothing was removed, Full (or any policy at compress_ratio 0) gives exactly 0. The
// library's own float rounding, ||o_full - o_exact|| / ||o_exact||, is reported separately as
// reference_error (about 1e-7; compression errors are orders of magnitude larger, so measuring
// against o_exact instead would change no reported digit that matters).
//
// Budget per KV head: round((1 - compress_ratio) * P), as Budget::compress_ratio rounds it, raised to the protected count min(P, 4 + window) (the
// default 4 sinks + `window` recent entries every window-based policy keeps); Full keeps P.
// The mean and the 95th percentile (nearest rank) are over all (query head, token) pairs of the
// selected layers, and per layer. compress_seconds is steady_clock time around the compress
// calls only, summed over layers.
//
// Work is spread over the executor: the reference over (layer, query head), compression over KV
// heads (the executor is the request's), attention over KV heads. Every task writes only its own
// outputs and sums in a fixed order, so the numbers do not depend on the thread count.
#pragma once

#include "policy_list.hpp"

#include "simcalkv/simcalkv.hpp"
#include "simcalkv/io/trace.hpp"

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv::tools {

/// A policy under test and the name it is reported under (usually its spec string).
struct FidelityPolicy {
  std::string label;
  AnyPolicy policy;
};

struct FidelityOptions {
  std::vector<double> compress_ratios{0.5, 0.75, 0.9};  // fractions of the prompt removed, each in [0, 1)
  int future = 256;                          // tokens after the prompt whose attention is measured
  int window = 32;                           // observation window: the prompt's last queries
  std::vector<int> layers;                   // indices into the trace's held layers; empty: all
  int model_layers = 0;                      // layers of the model (per-layer budget schedules); 0: max layer id + 1
  double rope_theta = 0.0;                   // the model's rotary base; 0: the trace's "rope_theta", else 10000
  std::string trace_name;                    // reported as "trace"
};

struct LayerFidelity {
  int layer = 0;  // the trace's layer id
  double rel_error_mean = 0;
  double rel_error_p95 = 0;
  double rel_error_max = 0;
};

struct FidelityResult {
  std::string policy;
  double compress_ratio = 0.0;   // fraction of the prompt removed
  std::size_t budget = 0;         // entries per KV head asked for
  double kept_fraction = 1.0;     // entries after compression / prompt entries, all heads
  double rel_error_mean = 0;
  double rel_error_p95 = 0;
  double rel_error_max = 0;
  std::vector<LayerFidelity> per_layer;
  double compress_seconds = 0;
  std::size_t merged = 0;
  std::size_t evicted = 0;
};

struct FidelityReport {
  std::string trace;
  std::int64_t n = 0;
  std::int64_t prompt_len = 0;
  int future = 0;
  int window = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  std::vector<int> layers;       // the trace's layer ids that were measured
  int threads = 1;
  double reference_error_max = 0;  // max ||o_full - o_exact|| / ||o_exact||: the library's rounding
  std::vector<FidelityResult> results;
};

/// Protected entries every window policy keeps by default: 4 sinks + `window` recent.
inline std::size_t fidelity_protected_count(std::size_t prompt_len, int window) {
  return std::min(prompt_len, static_cast<std::size_t>(4 + std::max(window, 0)));
}

/// round((1 - compress_ratio) * prompt_len), at least the protected count, at most prompt_len.
inline std::size_t fidelity_budget(double compress_ratio, std::size_t prompt_len, int window) {
  const auto rounded = Budget::compress_ratio(compress_ratio).for_length(prompt_len);
  return std::min(prompt_len, std::max(rounded, fidelity_protected_count(prompt_len, window)));
}

/// Splits a --kv_method list (split_policy_specs' rule); "all" expands to every registered name.
inline std::vector<std::string> split_policy_list(const std::string& text) {
  const auto specs = split_policy_specs("--kv_method", text);
  std::vector<std::string> out;
  for (const auto& s : specs) {
    if (to_lower(s) == "all") {
      for (const auto& name : policy_names()) out.push_back(name);
    } else {
      out.push_back(s);
    }
  }
  return out;
}

namespace detail_fidelity {

/// Nearest-rank percentile of `values` (copied and partially sorted).
inline double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(values.size())));
  const std::size_t index = std::min(values.size() - 1, rank == 0 ? 0 : rank - 1);
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(index), values.end());
  return values[index];
}

inline double mean(const std::vector<double>& values) {
  double sum = 0.0;
  for (double v : values) sum += v;
  return values.empty() ? 0.0 : sum / static_cast<double>(values.size());
}

inline double max_of(const std::vector<double>& values) {
  double m = 0.0;
  for (double v : values) m = std::max(m, v);
  return m;
}

/// Everything measured for one layer that does not depend on the policy.
struct LayerReference {
  std::vector<double> exact;      // [num_q_heads][future][d]
  std::vector<double> exact_norm; // [num_q_heads][future]
  std::vector<float> full;        // [num_q_heads][future][d]: the library over the uncompressed cache
};

/// Exact attention of the future queries of every query head, in double, from the trace alone.
inline void exact_attention(const io::Trace& trace, int layer, std::int64_t prompt_len, const Executor& exec,
                            LayerReference& ref) {
  using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int d = trace.head_dim;
  const std::int64_t n = trace.n;
  const std::int64_t m = n - prompt_len;
  const auto um = static_cast<std::size_t>(m), ud = static_cast<std::size_t>(d);
  ref.exact.assign(static_cast<std::size_t>(trace.num_q_heads) * um * ud, 0.0);
  ref.exact_norm.assign(static_cast<std::size_t>(trace.num_q_heads) * um, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  exec.parallel_for(static_cast<std::size_t>(trace.num_q_heads), [&](std::size_t qh) {
    const int kv = trace.kv_head_of(static_cast<int>(qh));
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> qf(
        trace.query(layer, static_cast<int>(qh), prompt_len), m, d);
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> kf(
        trace.key(layer, kv, 0), n, d);
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> vf(
        trace.value(layer, kv, 0), n, d);
    const MatrixD q = qf.cast<double>();
    const MatrixD k = kf.cast<double>();
    const MatrixD v = vf.cast<double>();
    MatrixD logits = scale * (q * k.transpose());  // [m][n]
    for (std::int64_t i = 0; i < m; ++i) {
      const std::int64_t visible = prompt_len + i + 1;  // tokens 0 .. P+i
      double mx = -std::numeric_limits<double>::infinity();
      for (std::int64_t j = 0; j < visible; ++j) mx = std::max(mx, logits(i, j));
      double z = 0.0;
      for (std::int64_t j = 0; j < visible; ++j) {
        logits(i, j) = std::exp(logits(i, j) - mx);
        z += logits(i, j);
      }
      for (std::int64_t j = visible; j < n; ++j) logits(i, j) = 0.0;
      logits.row(i) /= z;
    }
    Eigen::Map<MatrixD> out(ref.exact.data() + qh * um * ud, m, d);
    out.noalias() = logits * v;
    for (std::size_t i = 0; i < um; ++i) ref.exact_norm[qh * um + i] = out.row(static_cast<Eigen::Index>(i)).norm();
  });
}

/// A one-layer float cache holding the trace's first `prompt_len` tokens of `layer`.
inline KVCache<float> prompt_cache(const io::Trace& trace, int layer, std::int64_t prompt_len) {
  const int d = trace.head_dim;
  KVCache<float> cache({1, trace.num_kv_heads, d}, static_cast<std::size_t>(trace.n), /*track_scores=*/true);
  const auto rows = static_cast<std::size_t>(prompt_len) * static_cast<std::size_t>(d);
  std::vector<float> keys(static_cast<std::size_t>(trace.num_kv_heads) * rows), values(keys.size());
  for (int h = 0; h < trace.num_kv_heads; ++h) {
    std::copy_n(trace.key(layer, h, 0), rows, keys.data() + static_cast<std::size_t>(h) * rows);
    std::copy_n(trace.value(layer, h, 0), rows, values.data() + static_cast<std::size_t>(h) * rows);
  }
  cache.append(0, static_cast<std::size_t>(prompt_len), std::span<const float>(keys), std::span<const float>(values));
  return cache;
}

/// Appends the future tokens and runs block attention of every future query over the cache;
/// out is [num_q_heads][future][d].
inline void future_attention(const io::Trace& trace, int layer, std::int64_t prompt_len, KVCache<float>& cache,
                             const Executor& exec, std::vector<float>& out) {
  const int d = trace.head_dim;
  const int G = trace.group_size();
  const std::int64_t m = trace.n - prompt_len;
  const auto um = static_cast<std::size_t>(m), ud = static_cast<std::size_t>(d);
  const std::size_t rows = um * ud;
  std::vector<float> keys(static_cast<std::size_t>(trace.num_kv_heads) * rows), values(keys.size());
  for (int h = 0; h < trace.num_kv_heads; ++h) {
    std::copy_n(trace.key(layer, h, prompt_len), rows, keys.data() + static_cast<std::size_t>(h) * rows);
    std::copy_n(trace.value(layer, h, prompt_len), rows, values.data() + static_cast<std::size_t>(h) * rows);
  }
  const Position first = cache.next_position(0);
  cache.append(0, um, std::span<const float>(keys), std::span<const float>(values));
  std::vector<Position> positions(um);
  for (std::size_t i = 0; i < um; ++i) positions[i] = first + static_cast<Position>(i);

  out.assign(static_cast<std::size_t>(trace.num_q_heads) * rows, 0.0f);
  auto heads = cache.layer(0);
  exec.parallel_for(heads.size(), [&](std::size_t h) {
    std::vector<float> queries(static_cast<std::size_t>(G) * rows);  // [G][m][d]
    for (int g = 0; g < G; ++g)
      std::copy_n(trace.query(layer, static_cast<int>(h) * G + g, prompt_len), rows,
                  queries.data() + static_cast<std::size_t>(g) * rows);
    block_attention(heads[h], std::span<const float>(queries), G, std::span<const Position>(positions),
                    std::span<float>(out.data() + h * static_cast<std::size_t>(G) * rows, static_cast<std::size_t>(G) * rows));
  });
}

/// rel_error per (query head, token): ||got - full|| / ||exact||.
inline void errors_against(const LayerReference& ref, const std::vector<float>& got, std::size_t d,
                           std::vector<double>& errors) {
  const std::size_t rows = ref.exact_norm.size();
  errors.resize(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    double num = 0.0;
    for (std::size_t i = 0; i < d; ++i) {
      const double diff = static_cast<double>(got[r * d + i]) - static_cast<double>(ref.full[r * d + i]);
      num += diff * diff;
    }
    errors[r] = std::sqrt(num) / std::max(ref.exact_norm[r], 1e-30);
  }
}

}  // namespace detail_fidelity

/// Measures every policy at every kept fraction (see the file comment). Throws simcalkv::Error on
/// bad options and whatever a policy throws.
inline FidelityReport run_fidelity(const io::Trace& trace, const std::vector<FidelityPolicy>& policies,
                                   const FidelityOptions& options, const Executor& exec) {
  using detail::require;
  using namespace detail_fidelity;
  trace.validate();
  require(options.window >= 1, ErrorCode::invalid_argument, "fidelity: window must be at least 1, got ",
          options.window);
  require(options.future >= 1, ErrorCode::invalid_argument, "fidelity: future must be at least 1, got ",
          options.future);
  require(static_cast<std::int64_t>(options.future) + options.window <= trace.n, ErrorCode::invalid_argument,
          "fidelity: the trace has ", trace.n, " tokens, fewer than future (", options.future, ") + window (",
          options.window, ")");
  require(!policies.empty(), ErrorCode::invalid_argument, "fidelity: no policies to measure");
  require(!options.compress_ratios.empty(), ErrorCode::invalid_argument, "fidelity: no compression ratios");
  for (double r : options.compress_ratios)
    require(std::isfinite(r) && r >= 0.0 && r < 1.0, ErrorCode::invalid_argument,
            "fidelity: compress_ratio (fraction removed) must be in [0, 1), got ", r);

  std::vector<int> selected = options.layers;
  if (selected.empty())
    for (int l = 0; l < trace.num_layers; ++l) selected.push_back(l);
  for (int l : selected)
    require(l >= 0 && l < trace.num_layers, ErrorCode::invalid_argument, "fidelity: layer index ", l,
            " out of range; the trace holds ", trace.num_layers, " layers");
  auto layer_id = [&](int l) {
    return trace.layer_ids.size() == static_cast<std::size_t>(trace.num_layers) ? trace.layer_ids[static_cast<std::size_t>(l)] : l;
  };
  int model_layers = options.model_layers;
  if (model_layers <= 0)
    for (int l : selected) model_layers = std::max(model_layers, layer_id(l) + 1);

  const std::int64_t P = trace.n - options.future;
  const auto d = static_cast<std::size_t>(trace.head_dim);
  const std::size_t per_layer_rows = static_cast<std::size_t>(trace.num_q_heads) * static_cast<std::size_t>(options.future);

  FidelityReport report;
  report.trace = options.trace_name;
  report.n = trace.n;
  report.prompt_len = P;
  report.future = options.future;
  report.window = options.window;
  report.num_q_heads = trace.num_q_heads;
  report.num_kv_heads = trace.num_kv_heads;
  report.head_dim = trace.head_dim;
  for (int l : selected) report.layers.push_back(layer_id(l));
  report.threads = exec.concurrency();

  // One result per (policy, compress_ratio), in that order; errors collected per layer.
  const std::size_t configs = policies.size() * options.compress_ratios.size();
  std::vector<std::vector<std::vector<double>>> errors(configs);  // [config][layer][rows]
  report.results.resize(configs);
  std::vector<std::size_t> before(configs, 0), after(configs, 0);
  for (std::size_t p = 0; p < policies.size(); ++p)
    for (std::size_t k = 0; k < options.compress_ratios.size(); ++k) {
      auto& r = report.results[p * options.compress_ratios.size() + k];
      r.policy = policies[p].label;
      r.compress_ratio = options.compress_ratios[k];
      const bool full = policies[p].policy.name() == "Full";
      r.budget = full ? static_cast<std::size_t>(P) : fidelity_budget(r.compress_ratio, static_cast<std::size_t>(P), options.window);
    }

  std::vector<Position> window_positions(static_cast<std::size_t>(options.window));
  for (int t = 0; t < options.window; ++t)
    window_positions[static_cast<std::size_t>(t)] = static_cast<Position>(P - options.window + t);

  Workspace workspace;
  LayerReference ref;
  std::vector<float> got;
  for (int l : selected) {
    exact_attention(trace, l, P, exec, ref);
    {
      KVCache<float> cache = prompt_cache(trace, l, P);
      future_attention(trace, l, P, cache, exec, ref.full);
    }
    for (std::size_t r = 0; r < per_layer_rows; ++r) {
      double num = 0.0;
      for (std::size_t i = 0; i < d; ++i) {
        const double diff = static_cast<double>(ref.full[r * d + i]) - ref.exact[r * d + i];
        num += diff * diff;
      }
      report.reference_error_max = std::max(report.reference_error_max, std::sqrt(num) / std::max(ref.exact_norm[r], 1e-30));
    }

    // ExpectedAttention undoes RoPE: the base the trace was made with (simcalkv-generate records it).
    double rope_theta = options.rope_theta > 0.0 ? options.rope_theta : 10000.0;
    if (options.rope_theta <= 0.0 && trace.metadata.count("rope_theta")) {
      const std::string& text = trace.metadata.at("rope_theta");
      char* end = nullptr;
      rope_theta = std::strtod(text.c_str(), &end);
      require(end && *end == '\0' && !text.empty() && std::isfinite(rope_theta) && rope_theta > 1.0,
              ErrorCode::invalid_argument, "fidelity: the trace's rope_theta '", text, "' is not a number above 1");
    }
    const WindowView window = make_window_view(trace.query(l, 0, P - options.window), window_positions.data(),
                                               trace.num_q_heads, options.window, trace.head_dim);
    // make_window_view assumes [heads][window][d]; the trace is [heads][n][d].
    WindowView strided = window;
    strided.head_stride = static_cast<std::ptrdiff_t>(trace.n) * trace.head_dim;

    for (std::size_t c = 0; c < configs; ++c) {
      const auto& policy = policies[c / options.compress_ratios.size()];
      auto& result = report.results[c];
      KVCache<float> cache = prompt_cache(trace, l, P);
      LayerRequest<float> request;
      request.heads = cache.layer(0);
      request.window = strided;
      request.budget = Budget::entries(result.budget);
      request.layer = layer_id(l);
      request.num_layers = model_layers;
      request.executor = &exec;
      request.rope_theta = rope_theta;
      const auto start = std::chrono::steady_clock::now();
      const CompressionStats stats = policy.policy.compress(request, workspace);
      const auto stop = std::chrono::steady_clock::now();
      result.compress_seconds += std::chrono::duration<double>(stop - start).count();
      result.merged += stats.merged;
      result.evicted += stats.evicted;
      before[c] += stats.entries_before;
      after[c] += stats.entries_after;
      future_attention(trace, l, P, cache, exec, got);
      errors[c].emplace_back();
      errors_against(ref, got, d, errors[c].back());
    }
  }

  for (std::size_t c = 0; c < configs; ++c) {
    auto& result = report.results[c];
    std::vector<double> all;
    for (std::size_t i = 0; i < selected.size(); ++i) {
      const auto& e = errors[c][i];
      all.insert(all.end(), e.begin(), e.end());
      result.per_layer.push_back({report.layers[i], mean(e), percentile(e, 0.95), max_of(e)});
    }
    result.rel_error_mean = mean(all);
    result.rel_error_p95 = percentile(all, 0.95);
    result.rel_error_max = max_of(all);
    result.kept_fraction = before[c] ? static_cast<double>(after[c]) / static_cast<double>(before[c]) : 1.0;
  }
  return report;
}

/// The report as JSON: {"trace","n","future","window","results":[{"policy","compress_ratio","budget",
/// "rel_error_mean","rel_error_p95","per_layer":[{"layer","rel_error_mean","rel_error_p95"}],
/// "compress_seconds"}]} plus a few more descriptive fields.
inline nlohmann::json to_json(const FidelityReport& report) {
  nlohmann::json j;
  j["trace"] = report.trace;
  j["n"] = report.n;
  j["prompt_len"] = report.prompt_len;
  j["future"] = report.future;
  j["window"] = report.window;
  j["num_q_heads"] = report.num_q_heads;
  j["num_kv_heads"] = report.num_kv_heads;
  j["head_dim"] = report.head_dim;
  j["layers"] = report.layers;
  j["threads"] = report.threads;
  j["reference_error_max"] = report.reference_error_max;
  j["error_definition"] = "||o_policy - o_full|| / ||o_exact|| per (query head, future token); p95 nearest rank";
  nlohmann::json results = nlohmann::json::array();
  for (const auto& r : report.results) {
    nlohmann::json e;
    e["policy"] = r.policy;
    e["compress_ratio"] = r.compress_ratio;
    e["budget"] = r.budget;
    e["kept_fraction"] = r.kept_fraction;
    e["rel_error_mean"] = r.rel_error_mean;
    e["rel_error_p95"] = r.rel_error_p95;
    e["rel_error_max"] = r.rel_error_max;
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : r.per_layer)
      layers.push_back({{"layer", l.layer},
                        {"rel_error_mean", l.rel_error_mean},
                        {"rel_error_p95", l.rel_error_p95},
                        {"rel_error_max", l.rel_error_max}});
    e["per_layer"] = std::move(layers);
    e["compress_seconds"] = r.compress_seconds;
    e["merged"] = r.merged;
    e["evicted"] = r.evicted;
    results.push_back(std::move(e));
  }
  j["results"] = std::move(results);
  return j;
}

/// A readable table of the report.
inline std::string format_table(const FidelityReport& report) {
  std::ostringstream out;
  out << "trace " << (report.trace.empty() ? "(in memory)" : report.trace) << ": n=" << report.n
      << " prompt=" << report.prompt_len << " future=" << report.future << " window=" << report.window
      << " q_heads=" << report.num_q_heads << " kv_heads=" << report.num_kv_heads << " head_dim=" << report.head_dim
      << " layers=" << report.layers.size() << " threads=" << report.threads << "\n";
  std::size_t width = 6;
  for (const auto& r : report.results) width = std::max(width, r.policy.size());
  char line[512];
  std::snprintf(line, sizeof line, "%-*s  %5s  %6s  %6s  %12s  %12s  %12s  %10s\n", static_cast<int>(width), "policy",
                "ratio", "budget", "kept", "err_mean", "err_p95", "err_max", "compress_s");
  out << line;
  for (const auto& r : report.results) {
    std::snprintf(line, sizeof line, "%-*s  %5.3f  %6zu  %6.3f  %12.4e  %12.4e  %12.4e  %10.4f\n",
                  static_cast<int>(width), r.policy.c_str(), r.compress_ratio, r.budget, r.kept_fraction, r.rel_error_mean,
                  r.rel_error_p95, r.rel_error_max, r.compress_seconds);
    out << line;
  }
  char tail[160];
  std::snprintf(tail, sizeof tail,
                "error = ||o_policy - o_full|| / ||o_exact|| per (query head, token); library rounding vs exact: max %.2e\n",
                report.reference_error_max);
  out << tail;
  return out.str();
}

}  // namespace simcalkv::tools
