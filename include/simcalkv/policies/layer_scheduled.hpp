// simcalkv: a layer schedule in front of any policy: the policy's stages run unchanged on the
// budgets the schedule gives the layer (budget_schedule.hpp). LayerScheduled<AdaKV<SnapKV>> is
// AdaKV's "Ada-Pyramid": the layer's budget from the schedule, split over the heads adaptively.
#pragma once

#include "simcalkv/budget_schedule.hpp"
#include "simcalkv/stages.hpp"

#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace simcalkv {

template <class Policy>
class LayerScheduled : public ForwardingStages<LayerScheduled<Policy>, Policy> {
 public:
  LayerScheduled(Policy inner, LayerSchedule schedule) : inner_(std::move(inner)), schedule_(std::move(schedule)) {
    schedule_.validate();
  }

  [[nodiscard]] std::string_view name() const noexcept { return inner_.name(); }
  [[nodiscard]] const Policy& inner() const noexcept { return inner_; }
  [[nodiscard]] const LayerSchedule& schedule() const noexcept { return schedule_; }

  /// Each head's budget for request.layer of request.num_layers, from its base budget; then the
  /// inner policy's own schedule, if it has one.
  template <StorageElement T>
  std::vector<std::size_t> schedule(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    detail::require(base.size() == request.heads.size(), ErrorCode::invalid_argument, name(), ": ", base.size(),
                    " budgets for ", request.heads.size(), " heads");
    const auto scheduled = scheduled_budgets(schedule_, request, base, stage::protection(inner_, request.window));
    return stage::schedule(inner_, request, scheduled);
  }
  template <StorageElement T>
    requires stage::Reallocates<Policy, T>
  std::vector<std::size_t> reallocate(const LayerRequest<T>& request, std::span<const std::span<const float>> scores,
                                      std::span<const std::size_t> budgets, const Protection& protection) const {
    return inner_.reallocate(request, scores, budgets, protection);
  }
  /// Staged inner policies run their stages on the scheduled budgets (scored once); an opaque one
  /// (AnyPolicy) plans the layer itself with them. Type-erased, the schedule cannot see the
  /// policy's protection and assumes none.
  template <StorageElement T>
  LayerPlan plan_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                              std::span<const std::size_t> base) const {
    if constexpr (is_staged_policy<Policy>) {
      return plan_layer(*this, request, workspace, base);
    } else {
      const auto budgets = schedule(request, base);
      return inner_.plan_with_budgets(request, workspace, budgets);
    }
  }

  /// The per-head budgets of the layer (request.heads' base budgets scheduled).
  template <StorageElement T>
  std::vector<std::size_t> head_budgets(const LayerRequest<T>& request, std::span<const std::size_t> base) const {
    return schedule(request, base);
  }

 private:
  Policy inner_;
  LayerSchedule schedule_;
};

}  // namespace simcalkv
