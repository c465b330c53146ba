// simcalkv: KeyDiff (Park et al., "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context
// LLM Inference in Resource-Constrained Environments", arXiv:2504.15364; kvpress's KeyDiffPress),
// an eviction baseline.
//
// The rule, per KV head: the anchor is the mean of the head's L2-normalised keys; an entry whose key
// points the anchor's way is redundant, so score entry j by -cos(k_j, anchor) and keep the top
// scorers (the most distinctive keys). No queries are needed. A zero key or a zero anchor has
// cosine 0, as torch's cosine_similarity gives with its epsilon.
//
// Departures, on purpose: the paper compresses block by block as the prompt streams in (kvpress
// offers that as BlockPress around KeyDiffPress); we score the whole prompt at once, as
// KeyDiffPress alone does -- compress per prefill chunk from the host to get the block-wise rule.
// The paper and kvpress protect nothing; we keep docs/algorithms.md's library-wide protection (4
// sinks and the last W entries), and sinks=0,recent=0 gives kvpress's rule exactly. Ties go to the
// earlier entry. Kept entries are moved, never rewritten.
#pragma once

#include "simcalkv/policy_options.hpp"
#include "simcalkv/stages.hpp"

#include <cmath>
#include <string_view>
#include <vector>

namespace simcalkv {

struct KeyDiffOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length
};

class KeyDiff : public StagedPolicy<KeyDiff> {
 public:
  KeyDiff() = default;
  explicit KeyDiff(const KeyDiffOptions& options) : options_(options) {
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument, "KeyDiff: recent must be -1 or more");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "KeyDiff"; }
  [[nodiscard]] const KeyDiffOptions& options() const noexcept { return options_; }

  /// Score: minus the cosine between the key and the mean normalised key of the head.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto d = static_cast<std::size_t>(ctx.head.head_dim);
    const std::size_t n = ctx.head.length;
    std::vector<float> row(d);
    std::vector<double> anchor(d, 0.0), norms(n);
    for (std::size_t j = 0; j < n; ++j) {
      ctx.head.load_key(j, row.data());
      double sq = 0.0;
      for (float x : row) sq += static_cast<double>(x) * x;
      norms[j] = std::sqrt(sq);
      if (norms[j] > 0)
        for (std::size_t i = 0; i < d; ++i) anchor[i] += row[i] / norms[j];
    }
    double anchor_norm = 0.0;
    for (double& a : anchor) {
      a /= static_cast<double>(n);
      anchor_norm += a * a;
    }
    anchor_norm = std::sqrt(anchor_norm);
    s.selection_score.resize(n);
    for (std::size_t j = 0; j < n; ++j) {
      if (!(norms[j] > 0) || !(anchor_norm > 0)) {
        s.selection_score[j] = 0.0f;
        continue;
      }
      ctx.head.load_key(j, row.data());
      double dot = 0.0;
      for (std::size_t i = 0; i < d; ++i) dot += row[i] * anchor[i];
      s.selection_score[j] = static_cast<float>(-dot / (norms[j] * anchor_norm));
    }
  }

  /// KeyDiffOptions from a registry option string: sinks, recent.
  static KeyDiffOptions read_options(PolicyOptions& o) {
    KeyDiffOptions options;
    read_protection(o, options);
    return options;
  }

 private:
  KeyDiffOptions options_;
};

}  // namespace simcalkv
