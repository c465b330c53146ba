// simcalkv: the compact layout. Every KV head owns its rows (HeadView): surviving entries move
// down in place, so a head's live entries stay packed at the front and it really shrinks to its
// own budget (per-head budgets free memory; KVCache::shrink_to_fit returns it).
//
// Every layout applies a plan in two steps: fits() checks the plan against the cache and throws
// on any mismatch before anything is written; the writing step is noexcept. So a failed apply
// leaves the cache exactly as it was.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/plan.hpp"
#include "simcalkv/scratch.hpp"

#include <cstring>
#include <span>
#include <string>

namespace simcalkv {

namespace detail {

/// Throws unless head plan `p` (of KV head h) can be applied to a head of `length` entries.
inline void check_head_plan(const HeadPlan& p, std::size_t h, std::size_t length, std::size_t capacity,
                            int head_dim, int plan_dim, const std::string& where) {
  require(p.length_before == length, ErrorCode::invalid_argument, where, ": KV head ", h, " has ", length,
          " entries but was planned with ", p.length_before);
  require(head_dim == plan_dim, ErrorCode::invalid_argument, where, ": KV head ", h, " has head_dim ", head_dim,
          " but the plan has ", plan_dim);
  require(p.keep.size() <= length && p.keep.size() <= capacity, ErrorCode::invalid_argument, where, ": KV head ", h,
          " keeps ", p.keep.size(), " of ", length, " entries");
  require(p.row_of_slot.size() == p.keep.size() && (p.slot_scores.empty() || p.slot_scores.size() == p.keep.size()),
          ErrorCode::invalid_argument, where, ": KV head ", h, ": malformed plan (per-slot arrays differ in size)");
  for (std::size_t k = 0; k < p.keep.size(); ++k) {
    require(p.keep[k] < length && (k == 0 || p.keep[k - 1] < p.keep[k]), ErrorCode::invalid_argument, where,
            ": KV head ", h, ": kept entries must be ascending and below the length");
    require(p.row_of_slot[k] < static_cast<std::int32_t>(p.rows()), ErrorCode::invalid_argument, where,
            ": KV head ", h, ": slot ", k, " names a row the plan does not have");
  }
  const auto d = static_cast<std::size_t>(plan_dim);
  require(p.row_keys.size() == p.rows() * d && p.row_values.size() == p.rows() * d &&
              p.row_bias.size() == p.rows() && p.row_score.size() == p.rows(),
          ErrorCode::invalid_argument, where, ": KV head ", h, ": malformed plan (row arrays differ in size)");
}

/// Writes head plan `p` through `entries`, an object with move(from, to), store_key(slot, row),
/// store_value(slot, row), set_bias(slot, b), set_score(slot, s) and has_scores(). Kept indices are
/// ascending, so slot <= source and moving in order is safe in place.
template <class Entries>
void write_head_plan(const HeadPlan& p, std::size_t head_dim, Entries& entries) noexcept {
  if (p.identity) return;
  for (std::size_t slot = 0; slot < p.keep.size(); ++slot) {
    entries.move(p.keep[slot], slot);
    const auto row = p.row_of_slot[slot];
    if (row < 0) continue;
    const auto r = static_cast<std::size_t>(row);
    const auto updates = p.row_updates[r];
    if (updates & HeadPlan::key) entries.store_key(slot, p.row_keys.data() + r * head_dim);
    if (updates & HeadPlan::value) entries.store_value(slot, p.row_values.data() + r * head_dim);
    if (updates & HeadPlan::bias) entries.set_bias(slot, p.row_bias[r]);
    if ((updates & HeadPlan::score) && entries.has_scores()) entries.set_score(slot, p.row_score[r]);
  }
  if (entries.has_scores())
    for (std::size_t slot = 0; slot < p.slot_scores.size(); ++slot) entries.set_score(slot, p.slot_scores[slot]);
}

/// A HeadView's entries for write_head_plan: row-major rows move as whole rows (bit for bit, as
/// move_entry does).
template <StorageElement T>
struct HeadViewEntries {
  const HeadView<T>& h;
  void move(std::size_t from, std::size_t to) const noexcept {
    if (from == to) return;
    if (h.keys_contiguous() && h.values_contiguous()) {
      const auto bytes = static_cast<std::size_t>(h.head_dim) * sizeof(T);
      // Distinct entries never overlap (validate_layout); T is trivially copyable.
      std::memcpy(static_cast<void*>(h.key(to)), static_cast<const void*>(h.key(from)), bytes);
      std::memcpy(static_cast<void*>(h.value(to)), static_cast<const void*>(h.value(from)), bytes);
      h.bias[to] = h.bias[from];
      h.positions[to] = h.positions[from];
      if (h.scores) h.scores[to] = h.scores[from];
    } else {
      h.move_entry(from, to);
    }
  }
  void store_key(std::size_t slot, const float* row) const noexcept { h.store_key(slot, row); }
  void store_value(std::size_t slot, const float* row) const noexcept { h.store_value(slot, row); }
  void set_bias(std::size_t slot, float b) const noexcept { h.bias[slot] = b; }
  void set_score(std::size_t slot, float s) const noexcept { h.scores[slot] = s; }
  [[nodiscard]] bool has_scores() const noexcept { return h.scores != nullptr; }
};

}  // namespace detail

/// Throws unless `plan` fits `heads` (the heads it was planned from, unchanged since).
template <StorageElement T>
void check_plan_fits(const LayerPlan& plan, std::span<const HeadView<T>> heads, const std::string& where) {
  detail::require(plan.heads.size() == heads.size(), ErrorCode::invalid_argument, where, ": the plan has ",
                  plan.heads.size(), " KV heads, the layer ", heads.size());
  for (std::size_t h = 0; h < heads.size(); ++h)
    detail::check_head_plan(plan.heads[h], h, heads[h].length, heads[h].capacity, heads[h].head_dim, plan.head_dim,
                            where);
}

/// Applies `plan` to compact per-head buffers: each head's survivors move to its front and its
/// length becomes its own kept count. Returns what the plan did.
template <StorageElement T>
CompressionStats apply_plan(const LayerPlan& plan, std::span<HeadView<T>> heads) {
  check_plan_fits<T>(plan, heads, plan.policy + " (compact layout)");
  for (std::size_t h = 0; h < heads.size(); ++h) {
    const detail::HeadViewEntries<T> entries{heads[h]};
    detail::write_head_plan(plan.heads[h], static_cast<std::size_t>(plan.head_dim), entries);
    heads[h].length = plan.heads[h].keep.size();
  }
  return plan.stats();
}

/// apply_plan(), then the plan's buffers go back to the workspace for the next call.
template <StorageElement T>
CompressionStats apply_and_recycle(LayerPlan&& plan, std::span<HeadView<T>> heads, Workspace& workspace) {
  const CompressionStats stats = apply_plan(plan, heads);
  workspace.recycle(std::move(plan));
  return stats;
}

}  // namespace simcalkv
