// simcalkv: KNorm (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
// Compression", EMNLP 2024, arXiv:2406.11430; kvpress's KnormPress), an eviction baseline.
//
// The rule, per KV head: keys with a low L2 norm draw high attention, so score entry j by -||k_j||
// and keep the top scorers. No queries are needed (the window may hold zero tokens).
//
// Protection: the paper and kvpress protect nothing. We follow docs/algorithms.md's library-wide
// protection instead (the first 4 entries and the last W, the window's length), so that KNorm is
// compared with the other policies on the same footing; sinks=0,recent=0 gives kvpress's rule
// exactly. Ties go to the earlier entry. Kept entries are moved, never rewritten.
#pragma once

#include "simcalkv/policy_options.hpp"
#include "simcalkv/stages.hpp"

#include <cmath>
#include <string_view>
#include <vector>

namespace simcalkv {

struct KNormOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length
};

class KNorm : public StagedPolicy<KNorm> {
 public:
  KNorm() = default;
  explicit KNorm(const KNormOptions& options) : options_(options) {
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument, "KNorm: recent must be -1 or more");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "KNorm"; }
  [[nodiscard]] const KNormOptions& options() const noexcept { return options_; }

  /// Score: minus the key's L2 norm (accumulated in double, as the norm of a long key loses digits in float).
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto d = static_cast<std::size_t>(ctx.head.head_dim);
    std::vector<float> row(d);
    s.selection_score.resize(ctx.head.length);
    for (std::size_t j = 0; j < ctx.head.length; ++j) {
      ctx.head.load_key(j, row.data());
      double sq = 0.0;
      for (float x : row) sq += static_cast<double>(x) * x;
      s.selection_score[j] = static_cast<float>(-std::sqrt(sq));
    }
  }

  /// KNormOptions from a registry option string: sinks, recent.
  static KNormOptions read_options(PolicyOptions& o) {
    KNormOptions options;
    read_protection(o, options);
    return options;
  }

 private:
  KNormOptions options_;
};

}  // namespace simcalkv
