// simcalkv: TOVA (Oren et al., "Transformers are Multi-State RNNs", 2024), an eviction baseline.
//
// The rule, per head: score every entry by the attention the newest query gives it, softmax
// probabilities averaged over the G query heads of the group (the paper averages over heads), and
// keep the top scorers. Run at every decode step (DecodeDriver with zero slack) that is TOVA's
// "evict the entry with the lowest attention"; run once after prefill with budget B it keeps the
// top B under the last prompt query. "The newest query" is the window's last token (windows are in
// position order, oldest first).
//
// Protection: the paper protects nothing. We follow docs/algorithms.md's library-wide protection
// instead: the first 4 entries (sinks) and the last W (the window's length) are never evicted.
// sinks=0,recent=0 gives the paper's rule exactly. Ties go to the earlier entry. Kept entries are
// moved, never rewritten.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <span>
#include <string_view>

namespace simcalkv {

struct TOVAOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length
};

class TOVA : public StagedPolicy<TOVA> {
 public:
  TOVA() = default;
  explicit TOVA(const TOVAOptions& options) : options_(options) {
    detail::require(options.recent_tokens >= -1, ErrorCode::invalid_argument, "TOVA: recent must be -1 or more");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "TOVA"; }
  [[nodiscard]] const TOVAOptions& options() const noexcept { return options_; }
  [[nodiscard]] Protection protection(const WindowView& window) const noexcept {
    return make_protection(options_.sink_tokens, options_.recent_tokens, window.num_tokens);
  }

  /// The window's newest token alone (all query heads).
  static WindowView last_query(const WindowView& window) noexcept {
    WindowView last = window;
    if (window.num_tokens > 0) {
      last.queries = window.query(0, window.num_tokens - 1);
      last.positions = window.positions + (window.num_tokens - 1);
      last.num_tokens = 1;
    }
    return last;
  }

  [[nodiscard]] WindowView scoring_window(const WindowView& window) const noexcept { return last_query(window); }
  template <StorageElement T>
  void check_request(const LayerRequest<T>& request) const {
    detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
                    "TOVA: needs at least one window query (the newest token's)");
  }

  /// Score: the newest query's attention (ctx.window is last_query's), group-averaged.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    s.selection_score.assign(s.score.begin(), s.score.end());
  }

  /// TOVAOptions from a registry option string: sinks, recent.
  static TOVAOptions read_options(PolicyOptions& o) {
    TOVAOptions options;
    read_protection(o, options);
    return options;
  }

 private:
  TOVAOptions options_;
};

}  // namespace simcalkv
