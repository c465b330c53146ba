// simcalkv: PyramidKV, SnapKV's selection under budgets that fall linearly with depth.
#pragma once

#include "simcalkv/budget_schedule.hpp"
#include "simcalkv/policies/snapkv.hpp"
#include "simcalkv/policy_options.hpp"
#include "simcalkv/stages.hpp"

#include <span>
#include <string_view>
#include <vector>

namespace simcalkv {

struct PyramidKVOptions {
  std::size_t sink_tokens = 4;
  int recent_tokens = -1;  // -1: the window's length
  kernels::Pooling pooling = kernels::Pooling::max;
  int pool_kernel = 7;
  double beta = 20.0;  // the top layer keeps 1/beta of the mean unprotected budget (the paper's 20)
};

/// PyramidKV (Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
/// Funneling", 2024): per-layer budgets from LayerSchedule::pyramid(beta) (request.layer of
/// request.num_layers; the same total as uniform), then SnapKV's selection in each head.
class PyramidKV : public ForwardingStages<PyramidKV, SnapKV> {
 public:
  PyramidKV() : PyramidKV(PyramidKVOptions{}) {}
  explicit PyramidKV(const PyramidKVOptions& options)
      : options_(options), snap_(SnapKVOptions{options.sink_tokens, options.recent_tokens, options.pooling,
                                               options.pool_kernel}) {
    LayerSchedule::pyramid(options.beta).validate();
  }

  [[nodiscard]] std::string_view name() const noexcept { return "PyramidKV"; }
  [[nodiscard]] const PyramidKVOptions& options() const noexcept { return options_; }
  [[nodiscard]] Protection protection(const WindowView& window) const noexcept { return snap_.protection(window); }

  [[nodiscard]] const SnapKV& inner() const noexcept { return snap_; }

  /// Budgets: the linear pyramid over the layers, from each head's base budget.
  template <StorageElement T>
  std::vector<std::size_t> schedule(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    return scheduled_budgets(LayerSchedule::pyramid(options_.beta), request, base, snap_.protection(request.window));
  }

  /// PyramidKVOptions from a registry option string: sinks, recent, pooling, pool_kernel, beta.
  static PyramidKVOptions read_options(PolicyOptions& o) {
    const SnapKVOptions snap = SnapKV::read_options(o);
    PyramidKVOptions options;
    options.sink_tokens = snap.sink_tokens;
    options.recent_tokens = snap.recent_tokens;
    options.pooling = snap.pooling;
    options.pool_kernel = snap.pool_kernel;
    options.beta = o.get_double("beta", options.beta, 1.0, 1e9);
    return options;
  }

 private:
  PyramidKVOptions options_;
  SnapKV snap_;
};

}  // namespace simcalkv
