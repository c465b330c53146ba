// simcalkv: a layer plan as plain data over caller memory, the one description of a plan that the
// CPU and the GPU both read.
//
// LayerPlan (plan.hpp) owns its arrays per KV head in std::vectors: fine on the CPU, unreadable
// from a kernel. LayerPlanView is the same plan flattened over every sequence of a layer (a
// sequence is one KV head of one request, as in cuda/layout.cuh), as pointers and sizes only, so
// the same struct can point at host memory (flatten() in plan.hpp fills it from a LayerPlan) or at
// device memory (the CUDA policies record theirs into one, cuda/apply.cuh applies one):
//
//   slot i of sequence s (0 <= i < kept[s]) is element first_slot[s] + i of the per-slot arrays;
//   keep[.]        the kept entry's index in its sequence before compression (ascending in s);
//   row_of_slot[.] -1 (the entry moves as it is) or the row that rewrites it;
//   row r          row_updates[r] (PlanUpdate bits) says which of row_keys[r * head_dim ..],
//                  row_values[r * head_dim ..], row_bias[r], row_score[r] replace the entry's own;
//   slot_scores[.] null, or a score per slot written after the rows (NaN: leave it).
//
// Sequences need not be packed: first_slot may leave gaps (the GPU records at each sequence's
// workspace offset). Nothing here allocates or needs the C++ standard library.
#pragma once

#include <cstdint>

namespace simcalkv {

/// What a plan row replaces in the entry of its slot (HeadPlan::Update has the same values).
enum PlanUpdate : std::uint8_t { update_key = 1, update_value = 2, update_bias = 4, update_score = 8 };

/// A layer plan over caller memory (see the file comment); read-only.
struct LayerPlanView {
  int num_seqs = 0;
  int head_dim = 0;
  const std::int32_t* first_slot = nullptr;   // [num_seqs]
  const std::int32_t* kept = nullptr;         // [num_seqs]
  const std::int32_t* keep = nullptr;         // per slot
  const std::int32_t* row_of_slot = nullptr;  // per slot; null: no slot is rewritten
  const std::uint8_t* row_updates = nullptr;  // per row
  const float* row_keys = nullptr;            // [rows][head_dim]
  const float* row_values = nullptr;          // [rows][head_dim]
  const float* row_bias = nullptr;            // [rows]
  const float* row_score = nullptr;           // [rows]
  const float* slot_scores = nullptr;         // per slot, optional
};

/// Writable buffers of the same shape, for a producer that records its plan (the CUDA policies):
/// per-slot and per-row arrays of `slots` elements (rows are indexed like slots), first_slot and
/// kept of num_seqs.
struct LayerPlanBuffers {
  int num_seqs = 0;
  int head_dim = 0;
  std::int32_t* first_slot = nullptr;
  std::int32_t* kept = nullptr;
  std::int32_t* keep = nullptr;
  std::int32_t* row_of_slot = nullptr;
  std::uint8_t* row_updates = nullptr;
  float* row_keys = nullptr;
  float* row_values = nullptr;
  float* row_bias = nullptr;
  float* row_score = nullptr;

  [[nodiscard]] LayerPlanView view() const noexcept {
    return LayerPlanView{num_seqs, head_dim, first_slot, kept,     keep,      row_of_slot,
                         row_updates, row_keys,   row_values, row_bias, row_score, nullptr};
  }
};

/// What is wrong with a view (in host memory) for a layer whose sequence s has lengths[s] entries,
/// if anything: the CPU layouts' check_plan_fits rules, for a consumer that cannot check on its own
/// side (the GPU's apply_plan validates nothing). `rows` is the number of rows the view holds.
/// Returns null when it fits, else a message; *bad_seq is set to the sequence at fault.
inline const char* plan_view_problem(const LayerPlanView& v, const std::int32_t* lengths, std::int64_t rows,
                                     int* bad_seq) {
  for (int s = 0; s < v.num_seqs; ++s) {
    *bad_seq = s;
    const std::int32_t kept = v.kept[s], first = v.first_slot[s];
    if (kept < 0 || kept > lengths[s]) return "keeps more entries than the sequence has";
    if (first < 0) return "a negative first slot";
    for (std::int32_t k = 0; k < kept; ++k) {
      const std::int32_t j = v.keep[first + k];
      if (j < 0 || j >= lengths[s] || (k > 0 && j <= v.keep[first + k - 1]))
        return "kept entries must be ascending and below the length";
      const std::int32_t row = v.row_of_slot ? v.row_of_slot[first + k] : -1;
      if (row >= rows) return "a slot names a row the plan does not have";
    }
  }
  *bad_seq = -1;
  return nullptr;
}

}  // namespace simcalkv
