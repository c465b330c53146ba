// simcalkv: assigning each removed entry to its most cosine-similar surviving key.
#pragma once

#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/simd.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace simcalkv::kernels {

/// Inputs shared by both searches: float keys [n][d] and inverse norms, survivors and candidates
/// as ascending entry indices. Output per candidate c (same order as `candidates`): the kept slot
/// it goes to (index into keep) and the cosine similarity.
struct SimilarityInputs {
  const float* keys;
  const float* inv_norms;
  std::size_t head_dim;
  const std::vector<std::uint32_t>& keep;
  const std::vector<std::uint32_t>& candidates;
};

/// Bounded search: the `radius` kept entries on each side of the candidate's position.
/// O(|E| * radius * d). Returns the number of (candidate, kept) pairs examined.
inline std::size_t assign_local(const SimilarityInputs& in, std::size_t radius, std::vector<std::int32_t>& slot,
                                std::vector<float>& similarity) {
  const std::size_t d = in.head_dim;
  slot.assign(in.candidates.size(), -1);
  similarity.assign(in.candidates.size(), -std::numeric_limits<float>::infinity());
  std::size_t examined = 0;
  std::size_t next_kept = 0;  // first kept slot whose entry index exceeds the candidate's
  for (std::size_t c = 0; c < in.candidates.size(); ++c) {
    const std::uint32_t e = in.candidates[c];
    while (next_kept < in.keep.size() && in.keep[next_kept] < e) ++next_kept;
    const std::size_t lo = next_kept > radius ? next_kept - radius : 0;
    const std::size_t hi = std::min(in.keep.size(), next_kept + radius);
    const float* ke = in.keys + static_cast<std::size_t>(e) * d;
    float best = -std::numeric_limits<float>::infinity();
    std::int32_t best_slot = -1;
    for (std::size_t s = lo; s < hi; ++s) {
      const std::uint32_t k = in.keep[s];
      const float sim = dot(ke, in.keys + static_cast<std::size_t>(k) * d, d) * in.inv_norms[k];
      if (sim > best) {
        best = sim;
        best_slot = static_cast<std::int32_t>(s);
      }
    }
    examined += hi - lo;
    slot[c] = best_slot;
    similarity[c] = best * in.inv_norms[e];
  }
  return examined;
}

/// Exact search over every kept entry: blocked matrix products of the raw keys, scaled by the
/// kept keys' inverse norms (the candidate's own norm does not change its argmax).
/// O(|E| |C| d). Returns the number of pairs examined.
inline std::size_t assign_exact(const SimilarityInputs& in, std::vector<float>& buffer, std::vector<std::int32_t>& slot,
                                std::vector<float>& similarity) {
  constexpr std::size_t block = 128;
  const std::size_t d = in.head_dim;
  const std::size_t C = in.keep.size();
  const std::size_t E = in.candidates.size();
  slot.assign(E, -1);
  similarity.assign(E, -std::numeric_limits<float>::infinity());
  if (C == 0 || E == 0) return 0;
  buffer.resize(C * d + block * d + block * C);
  float* kept = buffer.data();
  float* cand = kept + C * d;
  float* sims = cand + block * d;
  for (std::size_t s = 0; s < C; ++s) {
    const std::uint32_t k = in.keep[s];
    const float* src = in.keys + static_cast<std::size_t>(k) * d;
    for (std::size_t i = 0; i < d; ++i) kept[s * d + i] = src[i] * in.inv_norms[k];
  }
  ConstMatrixMap kept_matrix(kept, static_cast<Eigen::Index>(C), static_cast<Eigen::Index>(d));
  for (std::size_t c0 = 0; c0 < E; c0 += block) {
    const std::size_t m = std::min(block, E - c0);
    for (std::size_t c = 0; c < m; ++c)
      std::copy_n(in.keys + static_cast<std::size_t>(in.candidates[c0 + c]) * d, d, cand + c * d);
    ConstMatrixMap cand_matrix(cand, static_cast<Eigen::Index>(m), static_cast<Eigen::Index>(d));
    MatrixMap sim_matrix(sims, static_cast<Eigen::Index>(m), static_cast<Eigen::Index>(C));
    sim_matrix.noalias() = cand_matrix * kept_matrix.transpose();
    for (std::size_t c = 0; c < m; ++c) {
      const float* row = sims + c * C;
      std::size_t best = 0;
      for (std::size_t s = 1; s < C; ++s)
        if (row[s] > row[best]) best = s;
      slot[c0 + c] = static_cast<std::int32_t>(best);
      similarity[c0 + c] = row[best] * in.inv_norms[in.candidates[c0 + c]];
    }
  }
  return E * C;
}

}  // namespace simcalkv::kernels
