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

namespace detail_similarity {

/// Survivor keys packed in panels of `lanes` keys, dimension-major: panel p holds, for each
/// dimension i, the i-th element of keys keep[p*lanes .. p*lanes + lanes) (zeros past the end),
/// so one vector load gives one dimension of `lanes` keys and a GEMM micro-kernel needs no
/// horizontal sums. Panels [from, to) go to ring slots p % ring (ring a power of two), with their
/// inverse norms in pinv[p * lanes + l] (0 past the end).
inline void pack_panels(const SimilarityInputs& in, std::size_t from, std::size_t to, std::size_t ring,
                        float* packed, float* pinv) {
  const std::size_t d = in.head_dim, C = in.keep.size();
  for (std::size_t p = from; p < to; ++p) {
    float* dst = packed + (p & (ring - 1)) * d * lanes;
    const std::size_t m = std::min(lanes, C - p * lanes);
    bool done = false;
#if defined(__AVX__)
    if (lanes == 8 && m == 8 && d % 8 == 0) {  // 8 x 8 register transposes
      const float* r[8];
      for (std::size_t l = 0; l < 8; ++l) r[l] = in.keys + static_cast<std::size_t>(in.keep[p * 8 + l]) * d;
      for (std::size_t i = 0; i < d; i += 8) {
        const __m256 t0 = _mm256_loadu_ps(r[0] + i), t1 = _mm256_loadu_ps(r[1] + i);
        const __m256 t2 = _mm256_loadu_ps(r[2] + i), t3 = _mm256_loadu_ps(r[3] + i);
        const __m256 t4 = _mm256_loadu_ps(r[4] + i), t5 = _mm256_loadu_ps(r[5] + i);
        const __m256 t6 = _mm256_loadu_ps(r[6] + i), t7 = _mm256_loadu_ps(r[7] + i);
        const __m256 u0 = _mm256_unpacklo_ps(t0, t1), u1 = _mm256_unpackhi_ps(t0, t1);
        const __m256 u2 = _mm256_unpacklo_ps(t2, t3), u3 = _mm256_unpackhi_ps(t2, t3);
        const __m256 u4 = _mm256_unpacklo_ps(t4, t5), u5 = _mm256_unpackhi_ps(t4, t5);
        const __m256 u6 = _mm256_unpacklo_ps(t6, t7), u7 = _mm256_unpackhi_ps(t6, t7);
        const __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE);
        const __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE);
        const __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE);
        const __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
        float* o = dst + i * 8;
        _mm256_storeu_ps(o + 0, _mm256_permute2f128_ps(v0, v4, 0x20));
        _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(v1, v5, 0x20));
        _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(v2, v6, 0x20));
        _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(v3, v7, 0x20));
        _mm256_storeu_ps(o + 32, _mm256_permute2f128_ps(v0, v4, 0x31));
        _mm256_storeu_ps(o + 40, _mm256_permute2f128_ps(v1, v5, 0x31));
        _mm256_storeu_ps(o + 48, _mm256_permute2f128_ps(v2, v6, 0x31));
        _mm256_storeu_ps(o + 56, _mm256_permute2f128_ps(v3, v7, 0x31));
      }
      done = true;
    }
#endif
    if (!done)
      for (std::size_t l = 0; l < lanes; ++l) {
        const float* src = l < m ? in.keys + static_cast<std::size_t>(in.keep[p * lanes + l]) * d : nullptr;
        for (std::size_t i = 0; i < d; ++i) dst[i * lanes + l] = src ? src[i] : 0.0f;
      }
    for (std::size_t l = 0; l < lanes; ++l) pinv[p * lanes + l] = l < m ? in.inv_norms[in.keep[p * lanes + l]] : 0.0f;
  }
}

/// Keeps a vector in a register: stops the compiler from folding its load into every use,
/// which would triple the loads of the micro-kernel below.
inline void pin(fbatch& x) noexcept {
#if defined(__GNUC__) && defined(__AVX__)
  __m256 r = x;
  __asm__("" : "+x"(r));
  x = r;
#else
  (void)x;
#endif
}

/// 4 candidates (rows a) against NP panels starting at panel p: 4 x NP accumulators of `lanes`
/// similarities each (one broadcast and NP panel loads per dimension), then, per lane, the
/// running best of the slots inside each candidate's window [lo, hi), first maximum kept.
template <int NP>
inline void panel_step(const float* const* a, const float* panels, std::size_t ring, std::size_t d, std::size_t p,
                       const float* pinv, const std::size_t* lo, const std::size_t* hi, fbatch* best,
                       fbatch* best_slot) noexcept {
  fbatch acc[4 * NP];
  for (auto& x : acc) x = fbatch(0.0f);
  const float* base[NP];
  for (int t = 0; t < NP; ++t) base[t] = panels + ((p + static_cast<std::size_t>(t)) & (ring - 1)) * d * lanes;
  for (std::size_t i = 0; i < d; ++i) {
    fbatch pv[NP];
    for (int t = 0; t < NP; ++t) {
      pv[t] = fbatch::load_unaligned(base[t] + i * lanes);
      pin(pv[t]);
    }
    for (int k = 0; k < 4; ++k) {
      const fbatch c(a[k][i]);
      for (int t = 0; t < NP; ++t) acc[k * NP + t] = xsimd::fma(c, pv[t], acc[k * NP + t]);
    }
  }
  alignas(64) float iota[lanes];
  for (std::size_t l = 0; l < lanes; ++l) iota[l] = static_cast<float>(l);
  const fbatch lane_index = fbatch::load_aligned(iota);
  for (int t = 0; t < NP; ++t) {
    const std::size_t s0 = (p + static_cast<std::size_t>(t)) * lanes;
    const fbatch inv = fbatch::load_unaligned(pinv + s0);
    const fbatch slots = fbatch(static_cast<float>(s0)) + lane_index;
    for (int k = 0; k < 4; ++k) {
      const fbatch sims = acc[k * NP + t] * inv;
      const auto take = (sims > best[k]) & (slots >= fbatch(static_cast<float>(lo[k]))) &
                        (slots < fbatch(static_cast<float>(hi[k])));
      best[k] = xsimd::select(take, sims, best[k]);
      best_slot[k] = xsimd::select(take, slots, best_slot[k]);
    }
  }
}

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
    similarity[c] = best * in.inv_norms[e];
  }
  return examined;
}

}  // namespace detail_similarity

/// Bounded search: the `radius` kept entries on each side of the candidate's position.
/// O(|E| * radius * d). Returns the number of (candidate, kept) pairs examined.
///
/// Survivor keys are packed once into panels (detail_similarity::pack_panels), then groups of
/// up to 4 consecutive candidates, whose windows nearly coincide, are searched together with a
/// register-blocked GEMM micro-kernel over the panels covering the union of their windows. Each
/// candidate still takes the best survivor of its own window, the first one on ties, as a
/// one-by-one search does (sums differ from dot() in the last bits only).
inline std::size_t assign_local(const SimilarityInputs& in, std::size_t radius, std::vector<std::int32_t>& slot,
                                std::vector<float>& similarity) {
  using namespace detail_similarity;
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const std::size_t d = in.head_dim;
  const std::size_t E = in.candidates.size();
  const std::size_t C = in.keep.size();
  slot.assign(E, -1);
  similarity.assign(E, neg_inf);
  if (C >= (std::size_t{1} << 24) || C == 0) return assign_local_scalar(in, radius, slot, similarity);

  // Panels are packed just before their first use into a ring that holds every panel a group
  // can span, so they are written and read while in cache.
  const std::size_t panels = (C + lanes - 1) / lanes;
  const std::size_t span = (5 * radius / 2 + 8) / lanes + 6;  // panels of the widest group, with margin
  std::size_t ring = 1;
  while (ring < std::min(span, panels)) ring *= 2;
  thread_local std::vector<float> packed, pinv;  // per-thread scratch, grown on demand
  packed.resize(ring * d * lanes);
  pinv.resize(panels * lanes);
  std::size_t packed_to = 0;
  std::size_t examined = 0;
  std::size_t next_kept = 0;  // first kept slot whose entry index exceeds the candidate's
  std::size_t c = 0;
  while (c < E) {
    // Windows [lo, hi) of up to 4 consecutive candidates; both bounds are non-decreasing.
    std::size_t lo[4] = {0, 0, 0, 0}, hi[4] = {0, 0, 0, 0};
    std::size_t count = 0;
    for (; count < 4 && c + count < E; ++count) {
      const std::uint32_t e = in.candidates[c + count];
      std::size_t nk = next_kept;
      while (nk < C && in.keep[nk] < e) ++nk;
      const std::size_t l = nk > radius ? nk - radius : 0;
      const std::size_t h = std::min(C, nk + radius);
      // Join the group only while the union stays within a quarter more than one window.
      if (count > 0 && (h - lo[0]) * 4 > (hi[0] - lo[0]) * 5 + 32) break;
      lo[count] = l;
      hi[count] = h;
      next_kept = nk;
      examined += h - l;
    }
    const float* a[4];
    for (std::size_t k = 0; k < 4; ++k)
      a[k] = in.keys + static_cast<std::size_t>(in.candidates[c + std::min(k, count - 1)]) * d;
    fbatch best[4], best_slot[4];
    for (int k = 0; k < 4; ++k) {
      best[k] = fbatch(neg_inf);
      best_slot[k] = fbatch(-1.0f);
    }
    const std::size_t first = lo[0] / lanes, last = (hi[count - 1] + lanes - 1) / lanes;  // panels
    if (last > packed_to) {
      pack_panels(in, std::max(packed_to, first), last, ring, packed.data(), pinv.data());
      packed_to = last;
    }
    std::size_t p = first;
    for (; p + 3 <= last; p += 3) panel_step<3>(a, packed.data(), ring, d, p, pinv.data(), lo, hi, best, best_slot);
    if (p + 2 <= last) {
      panel_step<2>(a, packed.data(), ring, d, p, pinv.data(), lo, hi, best, best_slot);
      p += 2;
    }
    if (p < last) panel_step<1>(a, packed.data(), ring, d, p, pinv.data(), lo, hi, best, best_slot);
    for (std::size_t k = 0; k < count; ++k) {
      alignas(64) float values[lanes], slots[lanes];
      best[k].store_aligned(values);
      best_slot[k].store_aligned(slots);
      float value = neg_inf, at = -1.0f;
      for (std::size_t l = 0; l < lanes; ++l)
        if (slots[l] >= 0.0f && (values[l] > value || (values[l] == value && (at < 0.0f || slots[l] < at)))) {
          value = values[l];
          at = slots[l];
        }
      slot[c + k] = static_cast<std::int32_t>(at);
      similarity[c + k] = value * in.inv_norms[in.candidates[c + k]];
    }
    c += count;
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
