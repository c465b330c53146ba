// simcalkv: Full, the uncompressed baseline (a no-op that still validates its input).
#pragma once

#include "simcalkv/stages.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace simcalkv {

class Full : public StagedPolicy<Full> {
 public:
  [[nodiscard]] std::string_view name() const noexcept { return "Full"; }

  /// Every head keeps all its entries, whatever (valid) budget it was given.
  template <StorageElement T>
  LayerPlan plan_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                              std::span<const std::size_t> base) const {
    detail::validate_request(request, std::string(name()), base, Protection{0, 0});
    std::vector<std::size_t> lengths;
    for (const auto& head : request.heads) lengths.push_back(head.length);
    return plan_layer(*this, request, workspace, lengths);
  }
};

}  // namespace simcalkv
