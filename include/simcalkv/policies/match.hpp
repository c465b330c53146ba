// simcalkv: the Match stage the merging policies share (SimCalKV, KeepKV, D2O, Lerp/Slerp/NlerpKV):
// pair each removed entry with its most cosine-similar survivor, which it will merge into.
#pragma once

#include "simcalkv/kernels/similarity.hpp"
#include "simcalkv/options.hpp"
#include "simcalkv/policy_options.hpp"
#include "simcalkv/scratch.hpp"

#include <cstddef>

namespace simcalkv {

/// Matches every entry of s.selection.removed with its most cosine-similar kept key:
/// s.matching.target[c] is the slot of removed entry c's match, s.matching.similarity[c] the
/// similarity. Needs kernels::load_keys to have filled s.keys and s.inv_norms.
inline void match_removed(std::size_t head_dim, SimilaritySearch search, std::size_t search_radius, HeadScratch& s) {
  const kernels::SimilarityInputs inputs{s.keys.data(), s.inv_norms.data(), head_dim, s.selection.keep,
                                         s.selection.removed};
  if (search == SimilaritySearch::local)
    kernels::assign_local(inputs, search_radius, s.matching.target, s.matching.similarity);
  else
    kernels::assign_exact(inputs, s.floats, s.matching.target, s.matching.similarity);
}

/// search=exact|local and radius=N into an options struct with search and search_radius.
template <class Options>
void read_search(PolicyOptions& o, Options& options) {
  const char* fallback = options.search == SimilaritySearch::local ? "local" : "exact";
  options.search = o.get_choice("search", fallback, {"exact", "local"}) == "local" ? SimilaritySearch::local
                                                                                   : SimilaritySearch::exact;
  options.search_radius =
      static_cast<std::size_t>(o.get_int("radius", static_cast<long long>(options.search_radius), 1));
}

/// Unmatches (evicts) removed entries whose best similarity is below `threshold` (or NaN).
inline void drop_matches_below(float threshold, Matching& m) {
  for (std::size_t c = 0; c < m.target.size(); ++c)
    if (!(m.similarity[c] >= threshold)) m.target[c] = -1;
}

}  // namespace simcalkv
