// simcalkv: Full, the uncompressed baseline (a no-op that still validates its input).
#pragma once

#include "simcalkv/policy.hpp"

#include <string_view>

namespace simcalkv {

class Full {
 public:
  [[nodiscard]] std::string_view name() const noexcept { return "Full"; }

  template <StorageElement T>
  CompressionStats compress(const LayerRequest<T>& request, Workspace& workspace) const {
    std::vector<std::size_t> budgets;
    for (const auto& head : request.heads) budgets.push_back(head.length);
    return run_compression(request, workspace, name(), budgets, Protection{0, 0},
                           [](std::size_t, const HeadView<T>&, std::size_t, HeadScratch&) {});
  }
};

}  // namespace simcalkv
