// simcalkv: the selection and matching steps the merging policies share (SimCalKV, KeepKV, D2O,
// Lerp/Slerp/NlerpKV): keep the best-scored entries, then pair each removed entry with its most
// cosine-similar survivor, which it will merge into.
#pragma once

#include "simcalkv/kernels/select.hpp"
#include "simcalkv/kernels/similarity.hpp"
#include "simcalkv/policy.hpp"

#include <cstddef>

namespace simcalkv {

enum class SimilaritySearch {
  local,  // the `search_radius` survivors nearest in position on each side: O(|E| w d)
  exact,  // every survivor: O(|E| |C| d)
};

/// Keeps the protected entries and the top scorers up to `budget` in s.indices (ascending), puts
/// the other entries in s.indices2, and matches each of those with its most cosine-similar kept
/// key: s.assignment[c] is the slot of removed entry c's match, s.similarity[c] the similarity.
/// Needs kernels::load_keys to have filled s.keys and s.inv_norms.
inline void select_and_match(const float* selection_score, std::size_t n, std::size_t head_dim, std::size_t budget,
                             const Protection& protection, SimilaritySearch search, std::size_t search_radius,
                             HeadScratch& s) {
  kernels::select_top(selection_score, n, budget, protection, s.indices, s.indices2);
  kernels::complement(s.indices, n, s.indices2);
  const kernels::SimilarityInputs inputs{s.keys.data(), s.inv_norms.data(), head_dim, s.indices, s.indices2};
  if (search == SimilaritySearch::local)
    kernels::assign_local(inputs, search_radius, s.assignment, s.similarity);
  else
    kernels::assign_exact(inputs, s.floats, s.assignment, s.similarity);
}

}  // namespace simcalkv
