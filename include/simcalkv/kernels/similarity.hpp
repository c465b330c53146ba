// simcalkv: assigning each removed entry to its most cosine-similar surviving key.
#pragma once

#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/kernels/scoring.hpp"

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

namespace detail_similarity {

/// The reference search, one candidate and one survivor at a time (also the path for more
/// than 2^24 survivors, whose slot numbers a float cannot hold exactly).
inline std::size_t assign_local_scalar(const SimilarityInputs& in, std::size_t radius, std::vector<std::int32_t>& slot,
                                       std::vector<float>& similarity) {
  const std::size_t d = in.head_dim;
  std::size_t examined = 0;
  std::size_t next_kept = 0;
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
    similarity[c] = best_slot < 0 ? best : best * in.inv_norms[e];
  }
  return examined;
}

}  // namespace detail_similarity

/// Bounded search: the `radius` kept entries on each side of the candidate's position.
/// O(|E| * radius * d). Returns the number of (candidate, kept) pairs examined. The micro-kernel
/// is simd::local_search (kernels/local_search.hpp) on the active kernel table.
inline std::size_t assign_local(const SimilarityInputs& in, std::size_t radius, std::vector<std::int32_t>& slot,
                                std::vector<float>& similarity, const KernelTable& table = active()) {
  const std::size_t E = in.candidates.size();
  const std::size_t C = in.keep.size();
  slot.assign(E, -1);
  similarity.assign(E, -std::numeric_limits<float>::infinity());
  if (C >= (std::size_t{1} << 24) || C == 0) return detail_similarity::assign_local_scalar(in, radius, slot, similarity);
  const std::size_t L = table.lanes;
  const std::size_t ring = simd::local_search_ring(L, radius, C);
  thread_local std::vector<float> packed, panel_inv;  // per-thread scratch, grown on demand
  packed.resize(ring * in.head_dim * L);
  panel_inv.resize((C + L - 1) / L * L);
  simd::LocalSearchArgs args;
  args.keys = in.keys;
  args.inv_norms = in.inv_norms;
  args.head_dim = in.head_dim;
  args.keep = in.keep.data();
  args.kept = C;
  args.candidates = in.candidates.data();
  args.count = E;
  args.radius = radius;
  args.slot = slot.data();
  args.similarity = similarity.data();
  args.packed = packed.data();
  args.panel_inv = panel_inv.data();
  args.ring = ring;
  return table.local_search(args);
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
  for (std::size_t c0 = 0; c0 < E; c0 += block) {
    const std::size_t m = std::min(block, E - c0);
    for (std::size_t c = 0; c < m; ++c)
      std::copy_n(in.keys + static_cast<std::size_t>(in.candidates[c0 + c]) * d, d, cand + c * d);
    gemm_nt(cand, m, kept, C, d, sims, C);
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
