// simcalkv: a type-erased policy, for hosts and tools that choose the method at run time.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/plan.hpp"
#include "simcalkv/policy.hpp"
#include "simcalkv/stages.hpp"

#include <concepts>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace simcalkv {

/// Holds any PlanningPolicy (for every storage element type) behind one value type; itself one.
/// Copies share the immutable policy.
class AnyPolicy {
 public:
  template <class P>
    requires(PlanningPolicy<P, float> && PlanningPolicy<P, half> && PlanningPolicy<P, bfloat16> &&
             !std::is_same_v<std::decay_t<P>, AnyPolicy>)
  explicit AnyPolicy(P policy, std::string spec = {})
      : impl_(std::make_shared<Model<P>>(std::move(policy))),
        spec_(spec.empty() ? std::string(impl_->name()) : std::move(spec)) {}

  /// The same policy under another specification string.
  AnyPolicy(const AnyPolicy& other, std::string spec) : impl_(other.impl_), spec_(std::move(spec)) {}
  AnyPolicy(const AnyPolicy&) = default;
  AnyPolicy(AnyPolicy&&) noexcept = default;
  AnyPolicy& operator=(const AnyPolicy&) = default;
  AnyPolicy& operator=(AnyPolicy&&) noexcept = default;

  template <StorageElement T>
  CompressionStats compress(const LayerRequest<T>& request, Workspace& workspace) const {
    return impl_->compress(request, workspace, nullptr);
  }
  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> base) const {
    return impl_->compress(request, workspace, &base);
  }
  template <StorageElement T>
  LayerPlan plan(const LayerRequest<T>& request, Workspace& workspace) const {
    return impl_->plan(request, workspace, nullptr);
  }
  template <StorageElement T>
  LayerPlan plan_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                              std::span<const std::size_t> base) const {
    return impl_->plan(request, workspace, &base);
  }
  /// The policy's own name, e.g. "SimCalKV".
  [[nodiscard]] std::string_view name() const noexcept { return impl_->name(); }
  /// The specification it was built from, e.g. "SimCalKV:bias=log_count".
  [[nodiscard]] const std::string& spec() const noexcept { return spec_; }
  /// Whether the policy selects by attention accumulated in head.scores (policy_reads_accumulated_scores):
  /// a host keeps score buffers and accumulates them in its attention for it.
  [[nodiscard]] bool reads_accumulated_scores() const noexcept { return impl_->reads_accumulated_scores(); }
  /// Whether the policy keeps one set for all the heads of a layer (TOVA, PyramidInfer): its plans
  /// are shared selections, and it needs the layer's heads at equal lengths.
  [[nodiscard]] bool selects_per_layer() const noexcept { return impl_->selects_per_layer(); }
  /// Whether a head's plan depends on the other heads of its layer: one kept set per layer
  /// (selects_per_layer) or one merge decision over the layer's heads (D2O). A rank holding a
  /// shard of a layer's heads cannot give such a policy its single-process result
  /// (tensor_parallel.hpp); AdaKV's budgets are the exception that score_layer handles.
  [[nodiscard]] bool decides_across_heads() const noexcept { return impl_->decides_across_heads(); }
  /// Whether the policy's layer budgets read LayerRequest::layer_statistics (D2O's density
  /// budgets): the host then computes layer_statistic() for every layer before compressing any.
  [[nodiscard]] bool wants_layer_statistics() const noexcept { return impl_->wants_layer_statistics(); }
  /// Whether the policy moves budget between the heads of a layer by their scores (AdaKV+...):
  /// then score_layer / reallocate_scores split that step for heads spread over ranks.
  [[nodiscard]] bool reallocates() const noexcept { return impl_->reallocates(); }
  /// A reallocating policy's view of the request before the reallocation (stage::score_layer);
  /// throws for a policy that does not reallocate.
  template <StorageElement T>
  LayerScores score_layer(const LayerRequest<T>& request, Workspace& workspace) const {
    return impl_->score_layer(request, workspace);
  }
  /// A reallocating policy's per-head budgets for the heads of `layer` (every rank's, gathered);
  /// throws for a policy that does not reallocate.
  [[nodiscard]] std::vector<std::size_t> reallocate_scores(const LayerScores& layer, const WindowView& window) const {
    return impl_->reallocate_scores(layer, window);
  }
  /// The wrapped policy, if it is a P.
  template <class P>
  [[nodiscard]] const P* target() const noexcept {
    const auto* model = dynamic_cast<const Model<P>*>(impl_.get());
    return model ? &model->policy : nullptr;
  }

 private:
  using Budgets = std::span<const std::size_t>;
  struct Concept {
    virtual ~Concept() = default;
    virtual CompressionStats compress(const LayerRequest<float>&, Workspace&, const Budgets*) const = 0;
    virtual CompressionStats compress(const LayerRequest<half>&, Workspace&, const Budgets*) const = 0;
    virtual CompressionStats compress(const LayerRequest<bfloat16>&, Workspace&, const Budgets*) const = 0;
    virtual LayerPlan plan(const LayerRequest<float>&, Workspace&, const Budgets*) const = 0;
    virtual LayerPlan plan(const LayerRequest<half>&, Workspace&, const Budgets*) const = 0;
    virtual LayerPlan plan(const LayerRequest<bfloat16>&, Workspace&, const Budgets*) const = 0;
    virtual LayerScores score_layer(const LayerRequest<float>&, Workspace&) const = 0;
    virtual LayerScores score_layer(const LayerRequest<half>&, Workspace&) const = 0;
    virtual LayerScores score_layer(const LayerRequest<bfloat16>&, Workspace&) const = 0;
    virtual std::vector<std::size_t> reallocate_scores(const LayerScores&, const WindowView&) const = 0;
    [[nodiscard]] virtual bool reallocates() const noexcept = 0;
    [[nodiscard]] virtual std::string_view name() const noexcept = 0;
    [[nodiscard]] virtual bool reads_accumulated_scores() const noexcept = 0;
    [[nodiscard]] virtual bool selects_per_layer() const noexcept = 0;
    [[nodiscard]] virtual bool decides_across_heads() const noexcept = 0;
    [[nodiscard]] virtual bool wants_layer_statistics() const noexcept = 0;
  };
  template <class P>
  struct Model final : Concept {
    explicit Model(P p) : policy(std::move(p)) {}
    template <StorageElement T>
    CompressionStats run(const LayerRequest<T>& r, Workspace& w, const Budgets* b) const {
      return b ? policy.compress_with_budgets(r, w, *b) : policy.compress(r, w);
    }
    template <StorageElement T>
    LayerPlan plan_of(const LayerRequest<T>& r, Workspace& w, const Budgets* b) const {
      return b ? policy.plan_with_budgets(r, w, *b) : policy.plan(r, w);
    }
    CompressionStats compress(const LayerRequest<float>& r, Workspace& w, const Budgets* b) const override {
      return run(r, w, b);
    }
    CompressionStats compress(const LayerRequest<half>& r, Workspace& w, const Budgets* b) const override {
      return run(r, w, b);
    }
    CompressionStats compress(const LayerRequest<bfloat16>& r, Workspace& w, const Budgets* b) const override {
      return run(r, w, b);
    }
    LayerPlan plan(const LayerRequest<float>& r, Workspace& w, const Budgets* b) const override {
      return plan_of(r, w, b);
    }
    LayerPlan plan(const LayerRequest<half>& r, Workspace& w, const Budgets* b) const override {
      return plan_of(r, w, b);
    }
    LayerPlan plan(const LayerRequest<bfloat16>& r, Workspace& w, const Budgets* b) const override {
      return plan_of(r, w, b);
    }
    static constexpr bool kReallocates = requires(const P& p, const LayerScores& l, const WindowView& w) {
      { p.reallocate_scores(l, w) } -> std::convertible_to<std::vector<std::size_t>>;
    };
    [[noreturn]] void not_reallocating() const {
      detail::require(false, ErrorCode::invalid_argument, policy.name(),
                      " does not move budget between heads: per-layer scores and global budgets are for AdaKV+ policies");
      std::abort();
    }
    template <StorageElement T>
    LayerScores scores_of(const LayerRequest<T>& r, Workspace& w) const {
      if constexpr (kReallocates && requires { policy.score_layer(r, w); })
        return policy.score_layer(r, w);
      else
        not_reallocating();
    }
    LayerScores score_layer(const LayerRequest<float>& r, Workspace& w) const override { return scores_of(r, w); }
    LayerScores score_layer(const LayerRequest<half>& r, Workspace& w) const override { return scores_of(r, w); }
    LayerScores score_layer(const LayerRequest<bfloat16>& r, Workspace& w) const override { return scores_of(r, w); }
    std::vector<std::size_t> reallocate_scores(const LayerScores& l, const WindowView& w) const override {
      if constexpr (kReallocates)
        return policy.reallocate_scores(l, w);
      else
        not_reallocating();
    }
    [[nodiscard]] bool reallocates() const noexcept override { return kReallocates; }
    [[nodiscard]] std::string_view name() const noexcept override { return policy.name(); }
    [[nodiscard]] bool reads_accumulated_scores() const noexcept override {
      return policy_reads_accumulated_scores<P>();
    }
    [[nodiscard]] bool wants_layer_statistics() const noexcept override {
      if constexpr (requires { { policy.wants_layer_statistics() } -> std::convertible_to<bool>; })
        return policy.wants_layer_statistics();
      else if constexpr (requires { { policy.inner().wants_layer_statistics() } -> std::convertible_to<bool>; })
        return policy.inner().wants_layer_statistics();
      else
        return false;
    }
    [[nodiscard]] bool selects_per_layer() const noexcept override {
      if constexpr (requires { { policy.selects_per_layer() } -> std::convertible_to<bool>; })
        return policy.selects_per_layer();
      else
        return false;
    }
    [[nodiscard]] bool decides_across_heads() const noexcept override {
      return selects_per_layer() || requires(std::span<HeadScratch* const> all) { policy.decide_matches(all); };
    }
    P policy;
  };

  std::shared_ptr<const Concept> impl_;
  std::string spec_;
};

static_assert(PlanningPolicy<AnyPolicy, float>);

}  // namespace simcalkv
