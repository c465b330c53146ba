// simcalkv: choosing the kernel table at run time, and the dispatched entry points policies call.
//
// Header-only (the default), a program has one table: its translation units' own architecture
// (xsimd::default_arch: AVX-512 under -march=x86-64-v4 or -march=native on such a CPU, SSE2 on a
// plain x86-64 build). With SIMCALKV_DISPATCH defined (CMake: link simcalkv::dispatch), the program
// has instead the variants compiled by src/kernels_<arch>.cpp, each in a translation unit built for
// its architecture (x86-64: sse2, fma3+avx2, avx512bw; aarch64: neon64), and the first call picks the
// best one the CPU runs. SIMCALKV_ARCH=<name> in the environment caps the choice (a name of arch_names(),
// e.g. SIMCALKV_ARCH=sse2), for comparisons and for CPUs that run a wide unit slowly.
//
// Every translation unit of a program must see the same SIMCALKV_DISPATCH setting and, without it,
// be compiled for the same architecture (as with Eigen: these inline functions differ otherwise).
#pragma once

#include "simcalkv/kernels/table.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#if defined(SIMCALKV_DISPATCH)
namespace simcalkv::kernels::variants {
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable& kernel_table_sse2() noexcept;
const KernelTable& kernel_table_avx2() noexcept;
const KernelTable& kernel_table_avx512() noexcept;
#elif defined(__aarch64__)
const KernelTable& kernel_table_neon64() noexcept;
#endif
}  // namespace simcalkv::kernels::variants
#endif

namespace simcalkv::kernels {

namespace detail_dispatch {

/// Whether this CPU (and its OS) runs the code of table t.
inline bool cpu_runs(const KernelTable& t) noexcept {
  const std::string_view name = t.arch;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (name == "avx512bw")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "fma3+avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "avx2") return __builtin_cpu_supports("avx2");
  if (name == "sse2") return __builtin_cpu_supports("sse2");
#endif
  // Anything else: only the program's own default architecture, which the build already assumes.
  return name == xsimd::default_arch::name();
}

struct Registry {
  std::vector<const KernelTable*> compiled;   // best first
  std::vector<const KernelTable*> runnable;   // the ones this CPU runs, best first
  const KernelTable* chosen = nullptr;
};

inline Registry make_registry() {
  Registry r;
#if defined(SIMCALKV_DISPATCH) && (defined(__x86_64__) || defined(_M_X64))
  // Only the variants: the program's own translation units then instantiate no kernel at all, so
  // no kernel symbol exists twice with different flags (see the file comment).
  r.compiled = {&variants::kernel_table_avx512(), &variants::kernel_table_avx2(), &variants::kernel_table_sse2()};
#elif defined(SIMCALKV_DISPATCH) && defined(__aarch64__)
  r.compiled = {&variants::kernel_table_neon64()};
#else
  r.compiled = {&kernel_table<xsimd::default_arch>};
#endif
  for (const KernelTable* t : r.compiled)
    if (cpu_runs(*t)) r.runnable.push_back(t);
  if (r.runnable.empty()) r.runnable.push_back(r.compiled.back());  // the baseline: every CPU of the platform
  r.chosen = r.runnable.front();
  if (const char* cap = std::getenv("SIMCALKV_ARCH"); cap && *cap) {
    const auto it = std::find_if(r.runnable.begin(), r.runnable.end(),
                                 [&](const KernelTable* t) { return std::string_view(t->arch) == cap; });
    if (it != r.runnable.end()) {
      r.chosen = *it;
    } else {
      std::string names;
      for (const KernelTable* t : r.runnable) names += std::string(names.empty() ? "" : ", ") + t->arch;
      std::fprintf(stderr, "simcalkv: SIMCALKV_ARCH=%s is not an architecture this program runs here (%s); using %s\n",
                   cap, names.c_str(), r.chosen->arch);
    }
  }
  return r;
}

inline const Registry& registry() {
  static const Registry r = make_registry();
  return r;
}

inline std::atomic<const KernelTable*>& override_slot() noexcept {
  static std::atomic<const KernelTable*> slot{nullptr};
  return slot;
}

}  // namespace detail_dispatch

/// The kernel table in use: chosen once, on first use.
inline const KernelTable& active() noexcept {
  if (const KernelTable* t = detail_dispatch::override_slot().load(std::memory_order_acquire)) return *t;
  return *detail_dispatch::registry().chosen;
}

/// Every table this program can run on this CPU, best first (tests and benchmarks run each).
inline std::span<const KernelTable* const> runnable_tables() { return detail_dispatch::registry().runnable; }
/// Every table compiled into this program, best first, whether or not this CPU runs it.
inline std::span<const KernelTable* const> compiled_tables() { return detail_dispatch::registry().compiled; }

/// Makes `table` the active one until destroyed (tests and benchmarks: not for concurrent use with
/// other threads that compress, since every thread sees the change).
class ScopedKernelTable {
 public:
  explicit ScopedKernelTable(const KernelTable& table) noexcept
      : previous_(detail_dispatch::override_slot().exchange(&table, std::memory_order_acq_rel)) {}
  ~ScopedKernelTable() { detail_dispatch::override_slot().store(previous_, std::memory_order_release); }
  ScopedKernelTable(const ScopedKernelTable&) = delete;
  ScopedKernelTable& operator=(const ScopedKernelTable&) = delete;

 private:
  const KernelTable* previous_;
};

// --- the dispatched primitives (policy code calls these) -----------------------------------------

/// sum_i a[i] * b[i]
inline float dot(const float* a, const float* b, std::size_t n) noexcept { return active().dot(a, b, n); }
/// y += alpha * x
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept { active().axpy(alpha, x, y, n); }
/// y += alpha * x and z += beta * x in one pass over x
inline void axpy2(float alpha, float beta, const float* x, float* y, float* z, std::size_t n) noexcept {
  active().axpy2(alpha, beta, x, y, z, n);
}
/// y *= alpha
inline void scale(float alpha, float* y, std::size_t n) noexcept { active().scale(alpha, y, n); }
/// max_i x[i]; -inf for n == 0
inline float max_of(const float* x, std::size_t n) noexcept { return active().max_of(x, n); }
/// x[i] = exp(x[i] - shift); returns the sum
inline float exp_shifted_sum(float* x, float shift, std::size_t n) noexcept { return active().exp_shifted_sum(x, shift, n); }
inline float squared_norm(const float* x, std::size_t n) noexcept { return dot(x, x, n); }

/// C[m][n] = A[m][k] B[n][k]^T (row-major, C with row stride ldc).
inline void gemm_nt(const float* a, std::size_t m, const float* b, std::size_t n, std::size_t k, float* c,
                    std::size_t ldc) {
  const KernelTable& t = active();
  thread_local std::vector<float> pack;
  pack.resize(simd::gemm_pack_floats(t.lanes, k));
  t.gemm_nt(simd::GemmArgs{a, m, b, n, k, c, ldc, pack.data()});
}

}  // namespace simcalkv::kernels
