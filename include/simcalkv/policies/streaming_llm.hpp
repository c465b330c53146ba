// simcalkv: StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
// ICLR 2024), an eviction baseline.
//
// The rule, per head: keep the first S entries (the attention sinks) and the B - S most recent
// ones; evict everything in between. No scores are needed, so the window's queries are ignored
// (the window must still describe the layer's query heads; zero tokens is fine). Kept entries are
// moved, never rewritten. Default S = 4, the paper's four initial tokens.
#pragma once

#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct StreamingLLMOptions {
  std::size_t sink_tokens = 4;  // S; the rest of the budget goes to the most recent entries
};

class StreamingLLM : public StagedPolicy<StreamingLLM> {
 public:
  StreamingLLM() = default;
  explicit StreamingLLM(const StreamingLLMOptions& options) : options_(options) {}

  [[nodiscard]] std::string_view name() const noexcept { return "StreamingLLM"; }
  [[nodiscard]] const StreamingLLMOptions& options() const noexcept { return options_; }
  /// Entries no budget may remove: the sinks (the recent part is whatever the budget leaves).
  [[nodiscard]] Protection protection(const WindowView& /*window*/) const noexcept {
    return Protection{options_.sink_tokens, 0};
  }

  /// Score: recency. With the sinks protected, the top scorers are the most recent entries.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    detail::require(ctx.head.length <= (std::size_t{1} << 24), ErrorCode::invalid_argument, name(),
                    ": more than 2^24 entries, whose indices a float score cannot order exactly");
    s.selection_score.resize(ctx.head.length);
    for (std::size_t j = 0; j < ctx.head.length; ++j) s.selection_score[j] = static_cast<float>(j);
  }

  /// StreamingLLMOptions from a registry option string: sinks.
  static StreamingLLMOptions read_options(PolicyOptions& o) {
    StreamingLLMOptions options;
    read_protection(o, options);
    return options;
  }

 private:
  StreamingLLMOptions options_;
};

}  // namespace simcalkv
