// simcalkv: Full, the uncompressed baseline (a no-op that still validates its input).
#pragma once

#include "simcalkv/stages.hpp"

#include <string_view>
#include <vector>

namespace simcalkv {

class Full : public StagedPolicy<Full> {
 public:
  [[nodiscard]] std::string_view name() const noexcept { return "Full"; }

  /// Every head keeps all its entries, whatever budget it was given.
  template <StorageElement T>
  std::vector<std::size_t> schedule(const LayerRequest<T>& request, std::span<const std::size_t> /*base*/) const {
    std::vector<std::size_t> lengths;
    for (const auto& head : request.heads) lengths.push_back(head.length);
    return lengths;
  }
};

}  // namespace simcalkv
