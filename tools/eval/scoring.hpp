// simcalkv-eval: metric names to scores. The names of tools/eval/metrics.hpp (rouge1, rouge2, rougeL, rougeLsum,
// qa_f1, qa_f1_zh, exact_match, accuracy, string_match_all, string_match_part, bleu, code_sim) plus LongBench's
// classification, retrieval, retrieval_zh, count and rouge_zh (longbench_metrics.hpp). Single-answer metrics take the
// best score over the references (as LongBench does); string_match_all / string_match_part use them all at once.
#pragma once

#include "longbench_metrics.hpp"
#include "metrics.hpp"

#include <algorithm>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace simcalkv::eval {

inline const std::vector<std::string>& longbench_extra_metrics() {
  static const std::vector<std::string> v = {"classification", "retrieval", "retrieval_zh", "count", "rouge_zh"};
  return v;
}

/// Every metric name a dataset (or a JSONL line's "metric") may use; "rouge" stands for the four ROUGE scores.
inline const std::vector<std::string>& known_metric_names() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> n = {"rouge1",          "rouge2",           "rougeL",           "rougeLsum",
                                  "qa_f1",           "qa_f1_zh",         "exact_match",      "accuracy",
                                  "string_match_all", "string_match_part", "bleu",             "code_sim"};
    for (const auto& e : longbench_extra_metrics()) n.push_back(e);
    return n;
  }();
  return v;
}

inline bool is_known_metric(std::string_view name) {
  const auto& k = known_metric_names();
  return std::find(k.begin(), k.end(), name) != k.end();
}

inline std::string known_metric_list() {
  std::string s;
  for (const auto& n : known_metric_names()) s += (s.empty() ? "" : ", ") + n;
  return s + " (or rouge = rouge1, rouge2, rougeL, rougeLsum)";
}

/// The score of `prediction` under metric `name` against the references (and LongBench's class list).
inline double score_metric(std::string_view name, std::string_view prediction, std::span<const std::string> references,
                           std::span<const std::string> all_classes, bool use_stemmer) {
  if (references.empty()) return 0.0;
  auto best = [&](auto&& f) {
    double b = 0.0;
    for (const auto& r : references) b = std::max(b, static_cast<double>(f(r)));
    return b;
  };
  if (name == "classification")
    return best([&](const std::string& r) { return longbench::classification_score(prediction, r, all_classes); });
  if (name == "retrieval")
    return best([&](const std::string& r) { return longbench::retrieval_score(prediction, r, "Paragraph "); });
  if (name == "retrieval_zh")
    return best([&](const std::string& r) { return longbench::retrieval_score(prediction, r, "段落"); });
  if (name == "count") return best([&](const std::string& r) { return longbench::count_score(prediction, r); });
  if (name == "rouge_zh") return best([&](const std::string& r) { return longbench::rouge_zh(prediction, r); });
  return score(metric_from_name(name), prediction, references, use_stemmer);
}

/// How closely the compressed cache's answer follows the full cache's: ROUGE-L F of after against before
/// (1 when they are identical, empty included).
inline double agreement(std::string_view after, std::string_view before) {
  if (after == before) return 1.0;
  return rouge(after, before, false).rougeL;
}

}  // namespace simcalkv::eval
