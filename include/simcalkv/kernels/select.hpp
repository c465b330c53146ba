// simcalkv: choosing the entries that survive.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/protection.hpp"
#include "simcalkv/scratch.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace simcalkv::kernels {

/// Appends to `keep` (ascending) the protected entries plus the `budget - protected` highest
/// scoring others; ties go to the earlier entry, so the choice is deterministic.
inline void select_top(const float* score, std::size_t n, std::size_t budget, const Protection& protection,
                       std::vector<std::uint32_t>& keep, std::vector<std::uint32_t>& candidates) {
  keep.clear();
  candidates.clear();
  for (std::size_t j = 0; j < n; ++j)
    (protection.protects(j, n) ? keep : candidates).push_back(static_cast<std::uint32_t>(j));
  detail::require(keep.size() <= budget, ErrorCode::budget_out_of_range, "budget ", budget, " is below the ",
                  keep.size(), " protected entries");
  const std::size_t extra = std::min(budget - keep.size(), candidates.size());
  auto better = [score](std::uint32_t a, std::uint32_t b) {
    return score[a] != score[b] ? score[a] > score[b] : a < b;
  };
  if (extra < candidates.size())
    std::nth_element(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(extra), candidates.end(), better);
  keep.insert(keep.end(), candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(extra));
  std::sort(keep.begin(), keep.end());
}

/// The entries of [0, n) not in `keep` (both ascending).
inline void complement(const std::vector<std::uint32_t>& keep, std::size_t n, std::vector<std::uint32_t>& out) {
  out.clear();
  std::size_t k = 0;
  for (std::size_t j = 0; j < n; ++j) {
    if (k < keep.size() && keep[k] == j) {
      ++k;
      continue;
    }
    out.push_back(static_cast<std::uint32_t>(j));
  }
}

/// The Select stage: the protected entries and the top scorers up to `budget` in out.keep, the
/// others in out.removed (both ascending).
inline void select_entries(const float* score, std::size_t n, std::size_t budget, const Protection& protection,
                           Selection& out) {
  select_top(score, n, budget, protection, out.keep, out.removed);
  complement(out.keep, n, out.removed);
}

}  // namespace simcalkv::kernels
