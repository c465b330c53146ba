// simcalkv: StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
// ICLR 2024), an eviction baseline.
//
// The rule, per head: keep the first S entries (the attention sinks) and the B - S most recent
// ones; evict everything in between. No scores are needed, so the window's queries are ignored
// (the window must still describe the layer's query heads; zero tokens is fine). Kept entries are
// moved, never rewritten. Default S = 4, the paper's four initial tokens.
#pragma once

#include "simcalkv/policy.hpp"
#include "simcalkv/policy_options.hpp"

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct StreamingLLMOptions {
  std::size_t sink_tokens = 4;  // S; the rest of the budget goes to the most recent entries
};

class StreamingLLM : public UniformBudgets<StreamingLLM> {
 public:
  StreamingLLM() = default;
  explicit StreamingLLM(const StreamingLLMOptions& options) : options_(options) {}

  [[nodiscard]] std::string_view name() const noexcept { return "StreamingLLM"; }
  [[nodiscard]] const StreamingLLMOptions& options() const noexcept { return options_; }
  /// Entries no budget may remove: the sinks (the recent part is whatever the budget leaves).
  [[nodiscard]] Protection protection(const WindowView& /*window*/) const noexcept {
    return Protection{options_.sink_tokens, 0};
  }

  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> budgets) const {
    return run_compression(request, workspace, name(), budgets, protection(request.window),
                           [&](std::size_t, const HeadView<T>& head, std::size_t budget, HeadScratch& s) {
                             plan_head(head, budget, s);
                           });
  }

  /// Plans one head into s.plan: sinks plus the most recent, `budget` entries in all.
  template <StorageElement T>
  void plan_head(const HeadView<T>& head, std::size_t budget, HeadScratch& s) const {
    const std::size_t n = head.length;
    const std::size_t sinks = std::min({options_.sink_tokens, budget, n});
    s.indices.clear();
    for (std::size_t j = 0; j < sinks; ++j) s.indices.push_back(static_cast<std::uint32_t>(j));
    for (std::size_t j = n - (budget - sinks); j < n; ++j) s.indices.push_back(static_cast<std::uint32_t>(j));
    s.plan.set_keep(s.indices, n);
    s.plan.evicted = n - s.indices.size();
  }

  /// StreamingLLMOptions from a registry option string: sinks.
  static StreamingLLMOptions read_options(PolicyOptions& o) {
    StreamingLLMOptions options;
    options.sink_tokens = static_cast<std::size_t>(o.get_int("sinks", static_cast<long long>(options.sink_tokens)));
    return options;
  }

 private:
  StreamingLLMOptions options_;
};

}  // namespace simcalkv
