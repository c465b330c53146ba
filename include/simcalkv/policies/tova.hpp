// simcalkv: TOVA (Oren et al., "Transformers are Multi-State RNNs", 2024), an eviction baseline.
//
// The rule, as the paper and its code (schwartz-lab-NLP/TOVA) state it: score every entry by the
// attention the newest query gives it, softmax probabilities averaged over all the layer's query
// heads, and keep the top scorers: one kept set for the whole layer, shared by every KV head.
// Run at every decode step (DecodeDriver with zero slack) that is TOVA's "evict the entry with the
// lowest attention"; run once after prefill with budget B it keeps the top B under the last
// prompt query. "The newest query" is the window's last token (windows are in position order,
// oldest first). Nothing is protected (sinks=0, recent=0), as in the paper.
//
// Options that depart on purpose, off by default: select=head keeps a set per KV head (the score
// then averages the G query heads of that KV head's group; AdaKV+TOVA always selects per head,
// since per-head budgets exclude one shared set); sinks=S,recent=R protect the first S and the
// last R entries (docs/algorithms.md's library-wide protection; R=-1 is the window's length).
// Ties go to the earlier entry. Kept entries are moved, never rewritten.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <span>
#include <string_view>

namespace simcalkv {

struct TOVAOptions {
  std::size_t sink_tokens = 0;  // the paper protects nothing
  int recent_tokens = 0;        // -1: the window's length
  bool per_layer = true;        // one kept set for the layer (the paper); false: one per KV head
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
  static WindowView last_query(const WindowView& window) noexcept { return newest_query(window); }

  /// The paper scores the layer's heads together and keeps one set for all of them.
  [[nodiscard]] bool selects_per_layer() const noexcept { return options_.per_layer; }

  [[nodiscard]] WindowView scoring_window(const WindowView& window) const noexcept { return last_query(window); }
  template <StorageElement T>
  void check_request(const LayerRequest<T>& request) const {
    detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument,
                    "TOVA: needs at least one window query (the newest token's)");
  }

  /// Score: the newest query's attention (ctx.window is last_query's), averaged over the group's
  /// query heads; the layer-wide selection averages these over the KV heads, so over all heads.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    s.selection_score.assign(s.score.begin(), s.score.end());
  }

  /// TOVAOptions from a registry option string: sinks, recent, select (layer|head).
  static TOVAOptions read_options(PolicyOptions& o) {
    TOVAOptions options;
    read_protection(o, options);
    options.per_layer = o.get_choice("select", "layer", {"layer", "head"}) == "layer";
    return options;
  }

 private:
  TOVAOptions options_;
};

}  // namespace simcalkv
