// simcalkv: the per-head results of a policy's stages, and the workspace that holds them.
//
// A policy runs in stages, each with its own result (stages.hpp drives them):
//   Score  -> HeadScratch::selection_score  one score per entry; higher survives first
//   Select -> Selection                     the kept entries and the removed ones
//   Match  -> Matching                      per removed entry, the kept slot it merges into
//   Merge  -> HeadPlan                      the rewritten rows
// The scoring kernels also leave what later stages read (widened keys, window probabilities,
// masses) in named members; nothing is reused under another name.
#pragma once

#include "simcalkv/head_view.hpp"
#include "simcalkv/plan.hpp"

#include <cstdint>
#include <deque>
#include <vector>

namespace simcalkv {

/// The Select stage's result for one head.
struct Selection {
  std::vector<std::uint32_t> keep;     // ascending
  std::vector<std::uint32_t> removed;  // ascending: the complement of keep in [0, n)
};

/// The Match stage's result: for removed entry c (in Selection::removed order), the kept slot it
/// merges into (-1: evicted) and the cosine similarity of the match.
struct Matching {
  std::vector<std::int32_t> target;
  std::vector<float> similarity;
};

/// One head's stage results and kernel scratch, grown on demand and kept across calls.
struct HeadScratch {
  // Written by kernels::load_keys / score_window (the Score stage's inputs and by-products).
  std::vector<float> keys;              // [n][d] keys widened to float
  std::vector<float> inv_norms;         // [n]
  std::vector<float> queries;           // [R][d] window queries, pre-scaled
  std::vector<Position> row_positions;  // [R]
  std::vector<float> probs;             // [R][n] exp(logit - row max)
  std::vector<float> row_max;           // [R]
  std::vector<float> row_sum;           // [R]
  std::vector<float> score;             // [n] mean window attention
  std::vector<float> mass;              // [n] sum over rows of exp(logit - row max): merge weights
  // Stage results.
  std::vector<float> selection_score;   // [n] Score
  Selection selection;                  // Select
  Matching matching;                    // Match
  HeadPlan plan;                        // Merge (the head's plan until planning hands it over)
  // Temporaries of single kernels (validation rows, exact-search products).
  std::vector<float> floats;
};

/// Reusable memory for compressing layers; one per host thread that calls policies.
class Workspace {
 public:
  HeadScratch& head(std::size_t index) {
    while (heads_.size() <= index) heads_.emplace_back();
    return heads_[index];
  }
  void prepare(std::size_t num_heads) { head(num_heads ? num_heads - 1 : 0); }
  /// Gives a plan's buffers back, so the next plan of this workspace allocates nothing.
  void recycle(LayerPlan&& plan) {
    for (std::size_t h = 0; h < plan.heads.size(); ++h) std::swap(head(h).plan, plan.heads[h]);
    plan.heads.clear();
  }
  /// Bytes currently reserved by the scratch buffers.
  [[nodiscard]] std::size_t reserved_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& s : heads_)
      total += (s.keys.capacity() + s.inv_norms.capacity() + s.queries.capacity() + s.probs.capacity() +
                s.row_max.capacity() + s.row_sum.capacity() + s.score.capacity() + s.mass.capacity() +
                s.selection_score.capacity() + s.matching.similarity.capacity() + s.floats.capacity() +
                s.plan.row_keys.capacity() + s.plan.row_values.capacity()) * sizeof(float);
    return total;
  }

 private:
  std::deque<HeadScratch> heads_;  // deque: references stay valid as it grows
};

}  // namespace simcalkv
