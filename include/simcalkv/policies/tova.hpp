// simcalkv: TOVA (Oren et al., "Transformers are Multi-State RNNs", 2024), an eviction baseline.
//
// The rule, per head: score every entry by the attention the newest query gives it, softmax
// probabilities averaged over the G query heads of the group (the paper averages over heads), and
// keep the top scorers. Run at every decode step (DecodeDriver with zero slack) that is TOVA's
// "evict the entry with the lowest attention"; run once after prefill with budget B it keeps the
// top B under the last prompt query. "The newest query" is the window's last token (windows are in
// position order, oldest first).
//
// Protection: the paper protects nothing. We follow ALGORITHMS.md's library-wide protection
// instead: the first 4 entries (sinks) and the last W (the window's length) are never evicted.
// sinks=0,recent=0 gives the paper's rule exactly. Ties go to the earlier entry. Kept entries are
// moved, never rewritten.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policy.hpp"
#include "simcalkv/policy_options.hpp"

#include <span>
#include <string_view>

namespace simcalkv {

struct TOVAOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length
};

class TOVA : public UniformBudgets<TOVA> {
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

  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> budgets) const {
    detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
                    "TOVA: needs at least one window query (the newest token's)");
    const Protection p = protection(request.window);
    const WindowView last = last_query(request.window);
    const int group = request.group_size();
    return run_compression(request, workspace, name(), budgets, p,
                           [&](std::size_t h, const HeadView<T>& head, std::size_t budget, HeadScratch& s) {
                             plan_head(head, static_cast<int>(h), group, budget, p, last, s);
                           });
  }

  /// Plans one head into s.plan; `last` is the newest token's window (see last_query). Leaves the
  /// scores in s.score.
  template <StorageElement T>
  void plan_head(const HeadView<T>& head, int kv_head, int group, std::size_t budget, const Protection& protection,
                 const WindowView& last, HeadScratch& s) const {
    const std::size_t n = head.length;
    kernels::load_keys(head, s);
    kernels::score_window(head, last, kv_head, group, s);
    kernels::select_top(s.score.data(), n, budget, protection, s.indices, s.indices2);
    s.plan.set_keep(s.indices, n);
    s.plan.evicted = n - s.indices.size();
  }

  /// TOVAOptions from a registry option string: sinks, recent.
  static TOVAOptions read_options(PolicyOptions& o) {
    TOVAOptions options;
    options.sink_tokens = static_cast<std::size_t>(o.get_int("sinks", static_cast<long long>(options.sink_tokens)));
    options.recent_tokens = static_cast<int>(o.get_int("recent", options.recent_tokens, -1, 1LL << 30));
    return options;
  }

 private:
  TOVAOptions options_;
};

}  // namespace simcalkv
