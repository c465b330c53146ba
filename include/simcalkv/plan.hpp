// simcalkv: what a policy decides for one layer, independent of where the cache lives.
//
// A LayerPlan names, per KV head, the entries that survive (by their index in the head before
// compression) and the rows that are rewritten (merged keys and values, calibrated biases,
// accumulated scores). Planning only reads the cache; a layout (layouts/*.hpp) then applies the
// plan to the host's own memory: compact per-head buffers, paged blocks, shared cells or dense
// per-layer tensors. The same plan applied to any of them gives the same attention outputs.
#pragma once

#include "simcalkv/plan_view.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace simcalkv {

/// What one call did to one layer, summed over its heads.
struct CompressionStats {
  std::size_t entries_before = 0;
  std::size_t entries_after = 0;
  std::size_t merged = 0;   // entries folded into a surviving entry
  std::size_t evicted = 0;  // entries dropped without a trace

  CompressionStats& operator+=(const CompressionStats& o) noexcept {
    entries_before += o.entries_before;
    entries_after += o.entries_after;
    merged += o.merged;
    evicted += o.evicted;
    return *this;
  }
};

/// The plan of one KV head: which entries survive (ascending indices, in slot order) and what
/// the rewritten ones hold. Rows are float; storage narrowing happens when a layout applies them.
struct HeadPlan {
  enum Update : std::uint8_t { key = update_key, value = update_value, bias = update_bias, score = update_score };

  std::vector<std::uint32_t> keep;
  std::vector<std::int32_t> row_of_slot;  // per kept slot: -1 (untouched) or a row below
  std::vector<std::uint8_t> row_updates;  // per row: Update bits
  std::vector<float> row_keys;            // [rows][head_dim]
  std::vector<float> row_values;          // [rows][head_dim]
  std::vector<float> row_bias;            // [rows]
  std::vector<float> row_score;           // [rows]
  /// Empty, or one accumulated score per kept slot, written after the rows (H2O seeds the
  /// scores of the window it selected by into a cache that had none).
  std::vector<float> slot_scores;
  std::size_t length_before = 0;
  std::size_t merged = 0;
  std::size_t evicted = 0;
  bool identity = true;  // nothing changes

  void reset(std::size_t length) {
    keep.clear();
    row_of_slot.clear();
    row_updates.clear();
    row_keys.clear();
    row_values.clear();
    row_bias.clear();
    row_score.clear();
    slot_scores.clear();
    length_before = length;
    merged = evicted = 0;
    identity = true;
  }
  /// Keeps every entry.
  void keep_all() {
    keep.resize(length_before);
    for (std::size_t j = 0; j < length_before; ++j) keep[j] = static_cast<std::uint32_t>(j);
    row_of_slot.assign(length_before, -1);
  }
  /// Keeps `survivors` (ascending) with no rewritten rows yet; the rest count as evicted until a
  /// merge stage says otherwise.
  void set_keep(std::span<const std::uint32_t> survivors, std::size_t length) {
    keep.assign(survivors.begin(), survivors.end());
    row_of_slot.assign(keep.size(), -1);
    length_before = length;
    identity = keep.size() == length;
  }
  /// Starts a rewritten row for kept slot `slot`; returns the row index.
  std::size_t add_row(std::size_t slot, std::uint8_t updates, int head_dim) {
    const auto row = row_updates.size();
    row_of_slot[slot] = static_cast<std::int32_t>(row);
    row_updates.push_back(updates);
    row_keys.resize(row_keys.size() + static_cast<std::size_t>(head_dim));
    row_values.resize(row_values.size() + static_cast<std::size_t>(head_dim));
    row_bias.push_back(0.0f);
    row_score.push_back(0.0f);
    identity = false;
    return row;
  }
  [[nodiscard]] std::size_t rows() const noexcept { return row_updates.size(); }
};

/// The plan of one layer: a HeadPlan per KV head, in the request's head order.
struct LayerPlan {
  std::string policy;            // the planning policy's name, for messages
  std::vector<HeadPlan> heads;
  int head_dim = 0;
  bool shared_selection = false;  // every head keeps the same entries (one kept set per layer)

  [[nodiscard]] std::size_t num_heads() const noexcept { return heads.size(); }
  [[nodiscard]] std::size_t kept(std::size_t h) const noexcept { return heads[h].keep.size(); }
  [[nodiscard]] std::size_t max_kept() const noexcept {
    std::size_t m = 0;
    for (const auto& p : heads) m = p.keep.size() > m ? p.keep.size() : m;
    return m;
  }
  [[nodiscard]] bool identity() const noexcept {
    for (const auto& p : heads)
      if (!p.identity) return false;
    return true;
  }
  [[nodiscard]] CompressionStats stats() const noexcept {
    CompressionStats s;
    for (const auto& p : heads) {
      s.entries_before += p.length_before;
      s.entries_after += p.keep.size();
      s.merged += p.merged;
      s.evicted += p.evicted;
    }
    return s;
  }
};

/// A LayerPlan flattened into the arrays a LayerPlanView points at (packed: sequence h's slots
/// follow sequence h - 1's), for a consumer that reads plain memory, such as the GPU's apply_plan
/// after a copy to the device. Rows keep their head's order; slot_scores is empty unless some head
/// has them (NaN for the slots of heads that have none).
struct FlatLayerPlan {
  int head_dim = 0;
  std::vector<std::int32_t> first_slot, kept, keep, row_of_slot;
  std::vector<std::uint8_t> row_updates;
  std::vector<float> row_keys, row_values, row_bias, row_score, slot_scores;
  std::vector<std::size_t> length_before;  // per sequence, for unflatten()

  [[nodiscard]] std::size_t slots() const noexcept { return keep.size(); }
  [[nodiscard]] std::size_t rows() const noexcept { return row_updates.size(); }
  /// A view over this object's arrays (valid while it lives and is not resized).
  [[nodiscard]] LayerPlanView view() const noexcept {
    return LayerPlanView{static_cast<int>(first_slot.size()),
                         head_dim,
                         first_slot.data(),
                         kept.data(),
                         keep.data(),
                         row_of_slot.data(),
                         row_updates.data(),
                         row_keys.data(),
                         row_values.data(),
                         row_bias.data(),
                         row_score.data(),
                         slot_scores.empty() ? nullptr : slot_scores.data()};
  }
};

/// Flattens `plan` (every head, in order). Row indices become global (a head's rows follow the
/// previous head's).
inline FlatLayerPlan flatten(const LayerPlan& plan) {
  FlatLayerPlan f;
  f.head_dim = plan.head_dim;
  const auto d = static_cast<std::size_t>(plan.head_dim);
  bool any_slot_scores = false;
  for (const auto& p : plan.heads) any_slot_scores = any_slot_scores || !p.slot_scores.empty();
  for (const auto& p : plan.heads) {
    const auto row_base = static_cast<std::int32_t>(f.rows());
    f.first_slot.push_back(static_cast<std::int32_t>(f.keep.size()));
    f.kept.push_back(static_cast<std::int32_t>(p.keep.size()));
    f.length_before.push_back(p.length_before);
    for (std::size_t k = 0; k < p.keep.size(); ++k) {
      f.keep.push_back(static_cast<std::int32_t>(p.keep[k]));
      f.row_of_slot.push_back(p.row_of_slot[k] < 0 ? -1 : row_base + p.row_of_slot[k]);
    }
    f.row_updates.insert(f.row_updates.end(), p.row_updates.begin(), p.row_updates.end());
    f.row_keys.insert(f.row_keys.end(), p.row_keys.begin(), p.row_keys.begin() + static_cast<std::ptrdiff_t>(p.rows() * d));
    f.row_values.insert(f.row_values.end(), p.row_values.begin(),
                        p.row_values.begin() + static_cast<std::ptrdiff_t>(p.rows() * d));
    f.row_bias.insert(f.row_bias.end(), p.row_bias.begin(), p.row_bias.end());
    f.row_score.insert(f.row_score.end(), p.row_score.begin(), p.row_score.end());
    if (any_slot_scores) {
      if (p.slot_scores.empty())
        f.slot_scores.insert(f.slot_scores.end(), p.keep.size(), std::nanf(""));
      else
        f.slot_scores.insert(f.slot_scores.end(), p.slot_scores.begin(), p.slot_scores.end());
    }
  }
  return f;
}

/// The LayerPlan a view describes, read from host memory: the way back from a plan recorded on the
/// GPU (copied to the host) to the CPU's type, for comparing or for applying it to a CPU layout.
/// `lengths_before[s]` is sequence s's length when it was planned. Rows keep their order within a
/// sequence; merged and evicted are not recorded in a view and count every removed entry evicted.
inline LayerPlan unflatten(const LayerPlanView& v, std::span<const std::size_t> lengths_before,
                           std::string policy = "plan view") {
  LayerPlan plan;
  plan.policy = std::move(policy);
  plan.head_dim = v.head_dim;
  const auto d = static_cast<std::size_t>(v.head_dim);
  plan.heads.resize(static_cast<std::size_t>(v.num_seqs));
  for (std::size_t s = 0; s < plan.heads.size(); ++s) {
    HeadPlan& p = plan.heads[s];
    p.reset(lengths_before[s]);
    const std::size_t first = static_cast<std::size_t>(v.first_slot[s]);
    const std::size_t kept = static_cast<std::size_t>(v.kept[s]);
    std::vector<std::uint32_t> survivors(kept);
    for (std::size_t k = 0; k < kept; ++k) survivors[k] = static_cast<std::uint32_t>(v.keep[first + k]);
    p.set_keep(survivors, lengths_before[s]);
    p.evicted = lengths_before[s] - kept;
    // Rows in the view's order (a plan's rows need not follow its slots).
    std::vector<std::pair<std::int32_t, std::size_t>> rows;  // (row, slot)
    for (std::size_t k = 0; k < kept; ++k)
      if (const std::int32_t row = v.row_of_slot ? v.row_of_slot[first + k] : -1; row >= 0) rows.emplace_back(row, k);
    std::sort(rows.begin(), rows.end());
    for (const auto& [row, k] : rows) {
      const auto r = static_cast<std::size_t>(row);
      const std::size_t mine = p.add_row(k, v.row_updates[r], v.head_dim);
      for (std::size_t i = 0; i < d; ++i) {
        p.row_keys[mine * d + i] = v.row_keys[r * d + i];
        p.row_values[mine * d + i] = v.row_values[r * d + i];
      }
      p.row_bias[mine] = v.row_bias[r];
      p.row_score[mine] = v.row_score ? v.row_score[r] : 0.0f;
    }
    if (v.slot_scores) {
      bool any = false;
      for (std::size_t k = 0; k < kept; ++k) any = any || !std::isnan(v.slot_scores[first + k]);
      if (any) p.slot_scores.assign(v.slot_scores + first, v.slot_scores + first + kept);
    }
  }
  return plan;
}

}  // namespace simcalkv
