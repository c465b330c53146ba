// simcalkv: CaM (Zhang et al., "CaM: Cache Merging for Memory-efficient LLMs Inference", ICML
// 2024), a merging baseline.
//
// The rule, per head and per call:
//  1. Keep set: the protected entries plus the highest window-attention scorers, up to the budget
//     (scores as SnapKV: mean window attention over the GQA group).
//  2. Every removed entry e, in position order, is merged with probability
//         p_e = min(1, a_e / mean_{c in R_e} a_c),   R_e = the m kept entries after e,
//     (a = window score): the mean over the entries that would receive the merge, as the paper's
//     merge probability and kvpress's CAMPress (clamp(A_i / avg(A_{j:j+m}), 0, 1)) have it, not
//     over every kept entry (whose mean the sinks inflate). A merged entry's value is spread over R_e
//     in position order: each of them gets + v_e / m. Keys are dropped and no bias is added; the
//     receivers keep their keys, biases and scores. Where fewer than m kept entries follow e, each
//     of those gets v_e / m and the rest of v_e is lost, as in the authors' code, whose slice
//     value_states[e+1 : e+1+m] += v_e / m runs off the end of the cache.
//  3. The Bernoulli draw is a counter-based hash of (seed, layer, KV head, the entry's position),
//     so results repeat exactly for a seed and do not depend on the thread count or on which other
//     entries are in the cache.
// Defaults: m = 32 (the authors' code, merge_budget = 32, in local_cam_mask, and kvpress's).
// Departures: the selection is SnapKV's window score with our protection (kvpress scores with its
// base press and compresses while decoding; DecodeDriver does the latter with this rule).
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/policy_options.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct CaMOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;      // -1: as many as the window has queries
  std::size_t merge_span = 32;  // m: kept entries after an evicted one that share its value
  std::uint64_t seed = 0;
};

class CaM : public WindowScored<CaM> {
 public:
  CaM() = default;
  explicit CaM(const CaMOptions& options) : options_(options) {
    detail::require(options.merge_span > 0, ErrorCode::invalid_argument, "CaM: merge span must be positive");
  }

  [[nodiscard]] std::string_view name() const noexcept { return "CaM"; }
  [[nodiscard]] const CaMOptions& options() const noexcept { return options_; }

  /// The uniform number in [0, 1) that decides whether the entry at `position` merges.
  [[nodiscard]] static double draw(std::uint64_t seed, int layer, int kv_head, Position position) noexcept {
    std::uint64_t h = mix(seed ^ 0x243F6A8885A308D3ull);
    h = mix(h ^ static_cast<std::uint64_t>(static_cast<std::uint32_t>(layer)));
    h = mix(h ^ (static_cast<std::uint64_t>(static_cast<std::uint32_t>(kv_head)) << 32));
    h = mix(h ^ static_cast<std::uint64_t>(static_cast<std::uint32_t>(position)));
    return static_cast<double>(h >> 11) * 0x1.0p-53;
  }

  /// Merge: each removed entry, with a probability from its attention, shares its value over
  /// the `merge_span` kept entries after it.
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    const auto& head = ctx.head;
    const int layer = ctx.layer, kv_head = ctx.global_kv_head;  // the same draw on any rank
    const auto d = static_cast<std::size_t>(head.head_dim);
    const std::size_t n = head.length;
    const auto& keep = s.selection.keep;
    const auto& removed = s.selection.removed;
    HeadPlan& plan = s.plan;
    plan.set_keep(keep, n);

    // Prefix sums of the kept entries' scores, for the mean over each merge window.
    std::vector<double> kept_prefix(keep.size() + 1, 0.0);
    for (std::size_t k = 0; k < keep.size(); ++k) kept_prefix[k + 1] = kept_prefix[k] + s.score[keep[k]];

    // Which removed entries merge, and the first kept slot after each.
    std::vector<std::int32_t>& merges = s.matching.target;  // per removed entry: first receiving slot or -1
    merges.assign(removed.size(), -1);
    std::size_t slot = 0;
    for (std::size_t c = 0; c < removed.size(); ++c) {
      const std::uint32_t e = removed[c];
      while (slot < keep.size() && keep[slot] < e) ++slot;
      if (slot == keep.size()) continue;  // no kept entry after e: nothing receives it
      const std::size_t last = std::min(keep.size(), slot + options_.merge_span);
      const double window_mean = (kept_prefix[last] - kept_prefix[slot]) / static_cast<double>(last - slot);
      const double a = s.score[e];
      const double p = window_mean > 0.0 ? std::min(1.0, a / window_mean) : (a > 0.0 ? 1.0 : 0.0);
      if (draw(options_.seed, layer, kv_head, head.positions[e]) < p) merges[c] = static_cast<std::int32_t>(slot);
    }

    // Rows for the receivers, in slot order: the value becomes its own plus the shares it gets.
    std::vector<char> receives(keep.size(), 0);
    for (std::size_t c = 0; c < removed.size(); ++c) {
      if (merges[c] < 0) continue;
      const auto first = static_cast<std::size_t>(merges[c]);
      const std::size_t last = std::min(keep.size(), first + options_.merge_span);
      for (std::size_t k = first; k < last; ++k) receives[k] = 1;
    }
    for (std::size_t k = 0; k < keep.size(); ++k) {
      if (!receives[k]) continue;
      const std::size_t r = plan.add_row(k, HeadPlan::value, head.head_dim);
      head.load_value(keep[k], plan.row_values.data() + r * d);
    }
    std::vector<float> value(d);
    const float share = 1.0f / static_cast<float>(options_.merge_span);
    for (std::size_t c = 0; c < removed.size(); ++c) {
      if (merges[c] < 0) {
        ++plan.evicted;
        continue;
      }
      ++plan.merged;
      head.load_value(removed[c], value.data());
      const auto first = static_cast<std::size_t>(merges[c]);
      const std::size_t last = std::min(keep.size(), first + options_.merge_span);
      for (std::size_t k = first; k < last; ++k) {
        const auto r = static_cast<std::size_t>(plan.row_of_slot[k]);
        kernels::axpy(share, value.data(), plan.row_values.data() + r * d, d);
      }
    }
  }

  /// CaMOptions from a registry option string: sinks, recent, span, seed.
  static CaMOptions read_options(PolicyOptions& o) {
    CaMOptions c;
    read_protection(o, c);
    c.merge_span = static_cast<std::size_t>(o.get_int("span", static_cast<long long>(c.merge_span), 1));
    c.seed = static_cast<std::uint64_t>(o.get_int("seed", static_cast<long long>(c.seed), 0, (1LL << 62)));
    return c;
  }

 private:
  /// splitmix64's finaliser: a bijective mix of 64 bits.
  static constexpr std::uint64_t mix(std::uint64_t x) noexcept {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  }

  CaMOptions options_;
};

}  // namespace simcalkv
