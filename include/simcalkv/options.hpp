// simcalkv: the option enums the CPU policies, the CUDA policies and their tests share. Plain C++
// (no Eigen, no xsimd, no CUDA), so include/simcalkv/cuda/ includes it as well: one definition of
// each option for both sides.
#pragma once

namespace simcalkv {

/// 1-D pooling of selection scores over neighbouring entries (SnapKV's clustering).
enum class Pooling { none, max, avg };

/// Where a removed entry looks for the survivor it merges into.
enum class SimilaritySearch {
  local,  // the `search_radius` survivors nearest in position on each side: O(|E| w d)
  exact,  // every survivor: O(|E| |C| d)
};

/// The logit bias a merged entry carries (docs/design.md, SimCalKV step 4).
enum class BiasMode {
  /// calibrated, clamped to [max_i b_i, log sum_i exp(b_i)]: the default. Calibration is the best
  /// at moderate compression; the clamp stops it over-fitting the window when sets grow large.
  bounded,
  /// the merged entry keeps the set's total mass under the window: exact for one window query.
  calibrated,
  /// log sum_i exp(b_i): log n for n fresh tokens (proportional attention).
  log_count,
  /// 0: plain averaging.
  none,
};

inline const char* bias_mode_name(BiasMode mode) {
  switch (mode) {
    case BiasMode::bounded: return "bounded";
    case BiasMode::calibrated: return "calibrated";
    case BiasMode::log_count: return "log_count";
    case BiasMode::none: return "none";
  }
  return "?";
}

/// The per-head rules the CUDA kernels implement (cuda::PolicyConfig::method; the CPU classes
/// StreamingLLM, SnapKV and SimCalKV are the same rules).
enum class KernelMethod {
  streaming_llm,  // sinks + most recent entries (no scores)
  snapkv,         // top window-attention scores, optionally pooled; eviction
  simcalkv,       // SnapKV's selection, then similarity-aware merging with a calibrated bias
};

/// How many entries a head keeps: an absolute count, a fraction kept, or the fraction removed.
enum class BudgetKind { entries, keep_fraction, compress_ratio };

}  // namespace simcalkv
