// simcalkv: what a policy decides for one layer, independent of where the cache lives.
//
// A LayerPlan names, per KV head, the entries that survive (by their index in the head before
// compression) and the rows that are rewritten (merged keys and values, calibrated biases,
// accumulated scores). Planning only reads the cache; a layout (layouts/*.hpp) then applies the
// plan to the host's own memory: compact per-head buffers, paged blocks, shared cells or dense
// per-layer tensors. The same plan applied to any of them gives the same attention outputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
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
  enum Update : std::uint8_t { key = 1, value = 2, bias = 4, score = 8 };

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

}  // namespace simcalkv
