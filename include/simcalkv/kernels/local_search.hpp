// simcalkv: the bounded similarity search's micro-kernel (architecture code, templates on A).
//
// Each removed entry (candidate) looks for its most cosine-similar survivor among the `radius`
// survivors on each side of its position. Survivor keys are packed into panels (panels.hpp) just
// before first use, into a ring that holds every panel a group of candidates can span; groups of up
// to 4 (8 where there are 32 vector registers) consecutive candidates, whose windows nearly coincide, are searched together over the panels
// covering the union of their windows. Each candidate still takes the best survivor of its own
// window, the first on ties, as a one-by-one search does (sums differ from dot() in the last bits).
#pragma once

#include "simcalkv/kernels/panels.hpp"

#include <cstddef>
#include <cstdint>
#include <limits>

namespace simcalkv::kernels::simd {

struct LocalSearchArgs {
  const float* keys = nullptr;       // [n][d] float keys
  const float* inv_norms = nullptr;  // [n]
  std::size_t head_dim = 0;
  const std::uint32_t* keep = nullptr;  // survivors, ascending
  std::size_t kept = 0;                 // below 2^24: slots are exact in float lanes
  const std::uint32_t* candidates = nullptr;  // ascending
  std::size_t count = 0;
  std::size_t radius = 0;
  std::int32_t* slot = nullptr;   // [count] out: kept slot, -1 if none
  float* similarity = nullptr;    // [count] out: cosine similarity
  float* packed = nullptr;        // ring * head_dim * L floats
  float* panel_inv = nullptr;     // ceil(kept / L) * L floats
  std::size_t ring = 1;           // a power of two, at least local_search_ring(L, radius, kept)
};

/// Ring slots for the packed panels: every panel one group of candidates can span, with margin.
inline constexpr std::size_t local_search_ring(std::size_t lanes, std::size_t radius, std::size_t kept) noexcept {
  const std::size_t panels = (kept + lanes - 1) / lanes;
  const std::size_t span = (5 * radius / 2 + 8) / lanes + 6;
  std::size_t ring = 1;
  while (ring < (span < panels ? span : panels)) ring *= 2;
  return ring;
}

/// Candidates searched together: as many rows as panel_products keeps in registers.
template <class A>
inline constexpr int local_group = shim::vector_registers<A> >= 32 ? 8 : 4;

template <class A, int NP>
inline void local_panel_step(const LocalSearchArgs& in, const float* const* a, std::size_t p, const std::size_t* lo,
                             const std::size_t* hi, fbatch_t<A>* best, fbatch_t<A>* best_slot) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  const std::size_t d = in.head_dim;
  const float* panels[NP];
  SIMCALKV_UNROLL
  for (int t = 0; t < NP; ++t) panels[t] = in.packed + ((p + static_cast<std::size_t>(t)) & (in.ring - 1)) * d * L;
  constexpr int G = local_group<A>;
  B acc[G * NP];
  panel_products<A, NP, G>(a, panels, d, acc);
  alignas(64) float iota[L];
  for (std::size_t l = 0; l < L; ++l) iota[l] = static_cast<float>(l);
  const B lane_index = B::load_aligned(iota);
  SIMCALKV_UNROLL
  for (int t = 0; t < NP; ++t) {
    const std::size_t s0 = (p + static_cast<std::size_t>(t)) * L;
    const B inv = B::load_unaligned(in.panel_inv + s0);
    const B slots = B(static_cast<float>(s0)) + lane_index;
    SIMCALKV_UNROLL
    for (int k = 0; k < G; ++k) {
      const B sims = acc[k * NP + t] * inv;
      const auto take = (sims > best[k]) & (slots >= B(static_cast<float>(lo[k]))) & (slots < B(static_cast<float>(hi[k])));
      best[k] = xsimd::select(take, sims, best[k]);
      best_slot[k] = xsimd::select(take, slots, best_slot[k]);
    }
  }
}

/// Fills in.slot and in.similarity for every candidate; returns the (candidate, survivor) pairs examined.
template <class A>
inline std::size_t local_search(const LocalSearchArgs& in) noexcept {
  using B = fbatch_t<A>;
  constexpr std::size_t L = B::size;
  constexpr int G = local_group<A>;
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const std::size_t d = in.head_dim, E = in.count, C = in.kept;
  std::size_t packed_to = 0, examined = 0;
  std::size_t next_kept = 0;  // first kept slot whose entry index exceeds the candidate's
  std::size_t c = 0;
  while (c < E) {
    // Windows [lo, hi) of up to G consecutive candidates; both bounds are non-decreasing.
    std::size_t lo[G] = {}, hi[G] = {};
    std::size_t count = 0;
    for (; count < G && c + count < E; ++count) {
      const std::uint32_t e = in.candidates[c + count];
      std::size_t nk = next_kept;
      while (nk < C && in.keep[nk] < e) ++nk;
      const std::size_t l = nk > in.radius ? nk - in.radius : 0;
      const std::size_t h = nk + in.radius < C ? nk + in.radius : C;
      // Join the group only while the union stays within a quarter more than one window.
      if (count > 0 && (h - lo[0]) * 4 > (hi[0] - lo[0]) * 5 + 32) break;
      lo[count] = l;
      hi[count] = h;
      next_kept = nk;
      examined += h - l;
    }
    const float* a[G];
    SIMCALKV_UNROLL
    for (std::size_t k = 0; k < G; ++k)
      a[k] = in.keys + static_cast<std::size_t>(in.candidates[c + (k < count ? k : count - 1)]) * d;
    B best[G], best_slot[G];
    SIMCALKV_UNROLL
    for (int k = 0; k < G; ++k) {
      best[k] = B(neg_inf);
      best_slot[k] = B(-1.0f);
    }
    const std::size_t first = lo[0] / L, last = (hi[count - 1] + L - 1) / L;  // panels
    for (std::size_t p = packed_to > first ? packed_to : first; p < last; ++p) {
      const std::size_t m = C - p * L < L ? C - p * L : L;
      const float* rows[L];
      for (std::size_t l = 0; l < L; ++l) rows[l] = in.keys + static_cast<std::size_t>(in.keep[p * L + (l < m ? l : m - 1)]) * d;
      pack_panel<A>(rows, m, d, in.packed + (p & (in.ring - 1)) * d * L);
      for (std::size_t l = 0; l < L; ++l) in.panel_inv[p * L + l] = l < m ? in.inv_norms[in.keep[p * L + l]] : 0.0f;
    }
    if (last > packed_to) packed_to = last;
    std::size_t p = first;
    for (; p + 3 <= last; p += 3) local_panel_step<A, 3>(in, a, p, lo, hi, best, best_slot);
    if (p + 2 <= last) {
      local_panel_step<A, 2>(in, a, p, lo, hi, best, best_slot);
      p += 2;
    }
    if (p < last) local_panel_step<A, 1>(in, a, p, lo, hi, best, best_slot);
    for (std::size_t k = 0; k < count; ++k) {
      alignas(64) float values[L], slots[L];
      best[k].store_aligned(values);
      best_slot[k].store_aligned(slots);
      float value = neg_inf, at = -1.0f;
      for (std::size_t l = 0; l < L; ++l)
        if (slots[l] >= 0.0f && (values[l] > value || (values[l] == value && (at < 0.0f || slots[l] < at)))) {
          value = values[l];
          at = slots[l];
        }
      in.slot[c + k] = static_cast<std::int32_t>(at);
      in.similarity[c + k] = at < 0.0f ? neg_inf : value * in.inv_norms[in.candidates[c + k]];
    }
    c += count;
  }
  return examined;
}

}  // namespace simcalkv::kernels::simd
