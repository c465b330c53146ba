// simcalkv: a layer whose KV heads are split over ranks (tensor parallelism), as transformers'
// tp_plan, vLLM and TensorRT-LLM split them: rank r of R holds KV heads [r H/R, (r+1) H/R) and
// their query heads, and compresses only those.
//
// Per-head policies need nothing more: a head's plan depends on that head and its query group
// only, so each rank planning its own heads gives the single-process plan, bit for bit. A policy
// that moves budget between heads (AdaKV) has two choices, `ShardBudgets`:
//
//  - per_shard: each rank reallocates among its own heads. No communication; every rank keeps
//    exactly its share of the layer's budget (balanced memory); the result is AdaKV run on the
//    shard's sub-layer, not on the whole layer.
//  - global: the single-process result, for one all-gather per layer:
//      LayerScores mine = policy.score_layer(shard_request, ws);      // every rank
//      gather every rank's LayerScores in rank order (the host's collective), then
//      budgets = global_budgets(policy, gathered, window);             // identical on every rank
//      plan = plan_shard(policy, shard_request, ws, my_slice(budgets)); // every rank, its heads
//    Ranks then hold different numbers of entries (the heads AdaKV favours may sit on one rank).
//
// The host owns the communication (torch.distributed, NCCL, MPI): what travels is each head's
// length, budget and one float score per entry. python/simcalkv/tp.py does it with
// torch.distributed.
#pragma once

#include "simcalkv/any_policy.hpp"
#include "simcalkv/error.hpp"
#include "simcalkv/stages.hpp"

#include <cstddef>
#include <span>
#include <vector>

namespace simcalkv {

enum class ShardBudgets { per_shard, global };

/// The KV heads rank `rank` of `world_size` holds: a contiguous block, as a column-wise split of
/// k_proj / v_proj gives. Throws unless world_size divides num_kv_heads.
struct HeadShard {
  std::size_t first_head = 0;
  std::size_t num_heads = 0;

  static HeadShard of(std::size_t num_kv_heads, int world_size, int rank) {
    detail::require(world_size > 0 && rank >= 0 && rank < world_size, ErrorCode::invalid_argument,
                    "tensor parallel: rank ", rank, " is outside [0, ", world_size, ")");
    const auto w = static_cast<std::size_t>(world_size);
    detail::require(num_kv_heads % w == 0, ErrorCode::invalid_argument, "tensor parallel: ", num_kv_heads,
                    " KV heads do not split evenly over ", world_size, " ranks");
    const std::size_t per = num_kv_heads / w;
    return HeadShard{per * static_cast<std::size_t>(rank), per};
  }
  /// This shard's part of per-head values of the whole layer.
  template <class U>
  [[nodiscard]] std::span<const U> slice(std::span<const U> whole) const {
    detail::require(first_head + num_heads <= whole.size(), ErrorCode::invalid_argument, "tensor parallel: ",
                    whole.size(), " values for a shard ending at head ", first_head + num_heads);
    return whole.subspan(first_head, num_heads);
  }
};

/// Throws unless `policy` gives each head of a shard its single-process plan (per-head policies,
/// AdaKV through global_budgets or per shard): TOVA, PyramidInfer and D2O decide over every head
/// of the layer, which one rank does not hold.
inline void require_shardable(const AnyPolicy& policy, int world_size) {
  detail::require(world_size <= 1 || !policy.decides_across_heads(), ErrorCode::invalid_argument, "tensor parallel: ",
                  policy.spec(), " decides over every KV head of a layer (one kept set or one merge decision), ",
                  "which a rank holding ", world_size > 1 ? "a shard" : "all", " of the heads cannot reproduce");
}

/// The whole layer's per-head budgets from every rank's LayerScores, in rank order (global AdaKV).
inline std::vector<std::size_t> global_budgets(const AnyPolicy& policy, std::span<const LayerScores> per_rank,
                                               const WindowView& window) {
  LayerScores all;
  for (const auto& part : per_rank) all.append(part);
  return policy.reallocate_scores(all, window);
}

/// The shard's plan with budgets already reallocated over the whole layer: the policy scores and
/// selects as it does in one process, without reallocating again or re-applying its schedule.
template <StorageElement T>
LayerPlan plan_shard(const AnyPolicy& policy, LayerRequest<T> shard, Workspace& workspace,
                     std::span<const std::size_t> budgets) {
  detail::require(budgets.size() == shard.heads.size(), ErrorCode::invalid_argument, policy.name(),
                  ": tensor parallel: ", budgets.size(), " budgets for a shard of ", shard.heads.size(), " KV heads");
  shard.schedule_budgets = false;
  shard.reallocate_budgets = false;
  return policy.plan_with_budgets(shard, workspace, budgets);
}

}  // namespace simcalkv
