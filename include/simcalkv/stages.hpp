// simcalkv: a policy as typed stages, and the one driver that runs them for a layer.
//
//   Budget  schedule(request, base)            per-head budgets before scores (layer schedules)
//   Score   score(ctx, s)                      s.selection_score: one score per entry
//   Budget  reallocate(request, scores, ...)   per-head budgets from the scores (AdaKV)
//   Select  (the driver)                       s.selection: per head, or one set for the layer
//   Match + Merge  finish(ctx, s)              s.plan: matching and rewritten rows
//
// A policy supplies score() and whatever else it changes; the driver supplies the rest with the
// defaults below (an eviction policy supplies only its score, as kvpress's ScorerPress does). A
// layer is scored once: the allocators (AdaKV, layer schedules) and the shared selection read the
// same scores the policy then selects by. Hooks, all optional except score():
//   Protection protection(const WindowView&)                    fixed protected entries
//   Protection protection_for(const WindowView&, budget, n)     when it depends on the budget
//   static constexpr bool needs_window                          refuse requests without queries
//   void check_request(const LayerRequest<T>&)                  policy-specific requirements
//   WindowView scoring_window(const WindowView&)                the queries it scores with
//   std::vector<size_t> schedule(const LayerRequest<T>&, base)  budgets before scoring
//   std::vector<size_t> reallocate(const LayerRequest<T>&, std::span<const std::span<const float>>,
//                                  std::span<const size_t>, const Protection&)
//   void match(const HeadContext<T>&, HeadScratch&)             Match alone, before the layer decides
//   void decide_matches(std::span<HeadScratch* const>)          one decision over every compressed
//                                                               head's matches (D2O's threshold)
//   void finish(const HeadContext<T>&, HeadScratch&)            default: evict what was not kept
//   bool selects_per_layer()                                    one kept set for the layer's heads
//                                                               (TOVA, PyramidInfer), whatever the host asks
#pragma once

#include "simcalkv/kernels/dispatch.hpp"
#include "simcalkv/kernels/scoring.hpp"
#include "simcalkv/kernels/select.hpp"
#include "simcalkv/layouts/compact.hpp"
#include "simcalkv/policy.hpp"

#include <concepts>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace simcalkv {

/// What a stage knows about the head it works on.
template <StorageElement T>
struct HeadContext {
  const HeadView<T>& head;
  const WindowView& window;  // the policy's scoring window
  int layer = 0;
  int num_layers = 1;
  int kv_head = 0;         // the head's index in the request (and in its window's query heads)
  int global_kv_head = 0;  // its index in the whole layer: kv_head + LayerRequest::first_kv_head
  int group = 1;
  Protection protection{};  // for this head's budget (set before Select)
  std::size_t budget = 0;   // set before Select; a score stage must not depend on it
  double rope_theta = 0.0;  // the host's rotary base (LayerRequest::rope_theta; 0: not given)
};

namespace stage {

/// The entries `policy` never removes under `window`: its protection() if it has one, else its
/// options' sink_tokens / recent_tokens (recent -1: the window's length), else none.
template <class P>
Protection protection(const P& policy, const WindowView& window) {
  if constexpr (requires { { policy.protection(window) } -> std::convertible_to<Protection>; }) {
    return policy.protection(window);
  } else if constexpr (requires { policy.options().sink_tokens; policy.options().recent_tokens; }) {
    return make_protection(static_cast<std::size_t>(policy.options().sink_tokens),
                           static_cast<int>(policy.options().recent_tokens), window.num_tokens);
  } else {
    return Protection{0, 0};
  }
}

template <class P>
Protection protection_for(const P& policy, const WindowView& window, std::size_t budget, std::size_t n) {
  if constexpr (requires { { policy.protection_for(window, budget, n) } -> std::convertible_to<Protection>; })
    return policy.protection_for(window, budget, n);
  else
    return protection(policy, window);
}

/// A policy's own requirements; `static constexpr bool needs_window = true` asks for window queries.
template <class P, StorageElement T>
void check(const P& policy, const LayerRequest<T>& request) {
  if constexpr (requires { P::needs_window; })
    if constexpr (P::needs_window)
      detail::require(request.window.num_tokens > 0, ErrorCode::invalid_argument, policy.name(),
                      ": needs an observation window (no window queries given)");
  if constexpr (requires { policy.check_request(request); }) policy.check_request(request);
}

template <class P>
WindowView scoring_window(const P& policy, const WindowView& window) {
  if constexpr (requires { { policy.scoring_window(window) } -> std::convertible_to<WindowView>; })
    return policy.scoring_window(window);
  else
    return window;
}

template <class P, StorageElement T>
std::vector<std::size_t> schedule(const P& policy, const LayerRequest<T>& request, std::span<const std::size_t> base) {
  if constexpr (requires { { policy.schedule(request, base) } -> std::convertible_to<std::vector<std::size_t>>; })
    return policy.schedule(request, base);
  else
    return std::vector<std::size_t>(base.begin(), base.end());
}

template <class P, class T>
concept Reallocates = requires(const P& policy, const LayerRequest<T>& request,
                               std::span<const std::span<const float>> scores, std::span<const std::size_t> budgets,
                               const Protection& protection) {
  { policy.reallocate(request, scores, budgets, protection) } -> std::convertible_to<std::vector<std::size_t>>;
};

/// Whether the policy scores entries at all (Full does not).
template <class P, class T>
concept Scores = requires(const P& policy, const HeadContext<T>& ctx, HeadScratch& s) { policy.score(ctx, s); };

/// Whether the policy itself selects one set for the whole layer (its method scores the layer's
/// heads together); a host can also ask for that with LayerRequest::shared_selection.
template <class P>
bool selects_per_layer(const P& policy) {
  if constexpr (requires { { policy.selects_per_layer() } -> std::convertible_to<bool>; })
    return policy.selects_per_layer();
  else
    return false;
}

template <class P, StorageElement T>
void finish(const P& policy, const HeadContext<T>& ctx, HeadScratch& s) {
  if constexpr (requires { policy.finish(ctx, s); }) {
    policy.finish(ctx, s);
  } else {
    s.plan.set_keep(s.selection.keep, ctx.head.length);
    s.plan.evicted = s.selection.removed.size();
  }
}

/// What plan_layer and score_layer start with: the request checked against the policy, and the
/// per-head budgets after the layer schedule (before any reallocation).
template <class P, StorageElement T>
std::vector<std::size_t> layer_budgets(const P& policy, const LayerRequest<T>& request,
                                       std::span<const std::size_t> base) {
  const std::string who(policy.name());
  check(policy, request);
  detail::validate_request(request, who, base, protection(policy, request.window));
  std::vector<std::size_t> budgets =
      request.schedule_budgets ? schedule(policy, request, base) : std::vector<std::size_t>(base.begin(), base.end());
  detail::require(budgets.size() == request.heads.size(), ErrorCode::invalid_argument, who, ": the schedule gave ",
                  budgets.size(), " budgets for ", request.heads.size(), " heads");
  return budgets;
}

}  // namespace stage

/// Runs the stages of `policy` over one layer (see the file comment); `base` are the per-head
/// budgets before any schedule. Reads the cache only.
template <class P, StorageElement T>
LayerPlan plan_layer(const P& policy, const LayerRequest<T>& request, Workspace& workspace,
                     std::span<const std::size_t> base) {
  using detail::require;
  const std::string who(policy.name());
  std::vector<std::size_t> budgets = stage::layer_budgets(policy, request, base);
  const Protection protection = stage::protection(policy, request.window);
  const std::size_t H = request.heads.size();
  const bool shared = request.shared_selection || stage::selects_per_layer(policy);
  if (shared)
    for (std::size_t h = 1; h < H; ++h)
      require(request.heads[h].length == request.heads[0].length && budgets[h] == budgets[0],
              ErrorCode::invalid_argument, who, ": a shared selection needs equal lengths and budgets, but KV head ",
              h, " has length ", request.heads[h].length, " and budget ", budgets[h], ", KV head 0 ",
              request.heads[0].length, " and ", budgets[0]);
  constexpr bool reallocates = stage::Reallocates<P, T>;
  require(!(shared && reallocates), ErrorCode::invalid_argument, who,
          ": per-head budgets and a shared selection exclude each other");

  const WindowView window = stage::scoring_window(policy, request.window);
  const int group = request.group_size();
  workspace.prepare(H);
  std::vector<HeadScratch*> scratch(H);
  for (std::size_t h = 0; h < H; ++h) scratch[h] = &workspace.head(h);
  auto context = [&](std::size_t h) {
    HeadContext<T> ctx{request.heads[h], window, request.layer, request.num_layers, static_cast<int>(h),
                       static_cast<int>(request.first_kv_head + h), group};
    ctx.rope_theta = request.rope_theta;
    return ctx;
  };

  // Score every head that loses entries (every head when the budgets or the selection need all).
  request.exec().parallel_for(H, [&](std::size_t h) {
    HeadScratch& s = *scratch[h];
    const HeadView<T>& head = request.heads[h];
    s.plan.reset(head.length);
    detail::validate_head_contents(head, who + ": KV head " + std::to_string(h), request.check_finite, s.floats);
    if constexpr (stage::Scores<P, T>) {
      if (!(reallocates || shared) && budgets[h] >= head.length) return;
      s.selection_score.clear();
      policy.score(context(h), s);
      require(s.selection_score.size() == head.length, ErrorCode::invalid_argument, who, ": KV head ", h,
              ": the score stage gave ", s.selection_score.size(), " scores for ", head.length, " entries");
    }
  });

  if constexpr (reallocates) {
    if (request.reallocate_budgets) {
      std::vector<std::span<const float>> scores(H);
      for (std::size_t h = 0; h < H; ++h) scores[h] = scratch[h]->selection_score;
      budgets = policy.reallocate(request, scores, budgets, protection);
      require(budgets.size() == H, ErrorCode::invalid_argument, who, ": reallocation gave ", budgets.size(),
              " budgets for ", H, " heads");
    }
  }
  for (std::size_t h = 0; h < H; ++h)
    require(budgets[h] <= request.heads[h].length, ErrorCode::budget_out_of_range, who, ": KV head ", h,
            ": budget ", budgets[h], " exceeds the length ", request.heads[h].length);

  // One kept set for the layer: the heads' mean score, selected once.
  if (shared && budgets[0] < request.heads[0].length) {
    if constexpr (stage::Scores<P, T>) {
      const std::size_t n = request.heads[0].length;
      std::vector<float> mean(n, 0.0f);
      for (std::size_t h = 0; h < H; ++h) kernels::axpy(1.0f / static_cast<float>(H), scratch[h]->selection_score.data(), mean.data(), n);
      const Protection p = stage::protection_for(policy, request.window, budgets[0], n);
      kernels::select_entries(mean.data(), n, budgets[0], p, scratch[0]->selection);
      for (std::size_t h = 1; h < H; ++h) scratch[h]->selection = scratch[0]->selection;
    }
  }

  auto head_context = [&](std::size_t h) {
    auto ctx = context(h);
    ctx.budget = budgets[h];
    ctx.protection = stage::protection_for(policy, request.window, budgets[h], request.heads[h].length);
    return ctx;
  };
  constexpr bool matches_first = requires(const HeadContext<T>& c, HeadScratch& s) { policy.match(c, s); };
  request.exec().parallel_for(H, [&](std::size_t h) {
    HeadScratch& s = *scratch[h];
    const HeadView<T>& head = request.heads[h];
    if (budgets[h] >= head.length) {
      s.plan.keep_all();
      return;
    }
    const auto ctx = head_context(h);
    if constexpr (stage::Scores<P, T>) {
      if (!shared) kernels::select_entries(s.selection_score.data(), head.length, budgets[h], ctx.protection, s.selection);
    }
    if constexpr (matches_first) policy.match(ctx, s);
  });

  // One decision over the layer's matches, where the method takes it across heads.
  if constexpr (requires(std::span<HeadScratch* const> all) { policy.decide_matches(all); }) {
    std::vector<HeadScratch*> compressed;
    for (std::size_t h = 0; h < H; ++h)
      if (budgets[h] < request.heads[h].length) compressed.push_back(scratch[h]);
    if (!compressed.empty()) policy.decide_matches(std::span<HeadScratch* const>(compressed));
  }

  request.exec().parallel_for(H, [&](std::size_t h) {
    HeadScratch& s = *scratch[h];
    if (budgets[h] >= request.heads[h].length) return;
    stage::finish(policy, head_context(h), s);
    const auto& plan = s.plan;
    require(plan.keep.size() == budgets[h], ErrorCode::invalid_argument, who, ": planned ", plan.keep.size(),
            " entries for a budget of ", budgets[h]);
    require(all_finite(plan.row_keys.data(), plan.row_keys.size()) &&
                all_finite(plan.row_values.data(), plan.row_values.size()) &&
                all_finite(plan.row_bias.data(), plan.row_bias.size()),
            ErrorCode::non_finite, who, ": KV head ", h, ": a merged entry came out NaN or Inf");
  });

  LayerPlan out;
  out.policy = who;
  out.head_dim = request.heads[0].head_dim;
  out.shared_selection = shared;
  out.heads.resize(H);
  for (std::size_t h = 0; h < H; ++h) std::swap(out.heads[h], scratch[h]->plan);
  return out;
}

/// What a reallocating composition (AdaKV) reads of a layer before it moves budget between heads:
/// per KV head its length, its budget before the reallocation (after the layer schedule) and its
/// selection scores. A layer whose KV heads are split over ranks gathers every rank's LayerScores,
/// in head order, to reallocate over the whole layer (tensor_parallel.hpp).
struct LayerScores {
  std::vector<std::size_t> lengths;
  std::vector<std::size_t> budgets;
  std::vector<float> scores;  // the heads' scores one after the other (lengths[h] each)

  [[nodiscard]] std::size_t num_heads() const noexcept { return lengths.size(); }
  /// Appends another shard's heads after these.
  void append(const LayerScores& other) {
    lengths.insert(lengths.end(), other.lengths.begin(), other.lengths.end());
    budgets.insert(budgets.end(), other.budgets.begin(), other.budgets.end());
    scores.insert(scores.end(), other.scores.begin(), other.scores.end());
  }
  /// Per-head views of the scores; throws if the sizes disagree.
  [[nodiscard]] std::vector<std::span<const float>> per_head(const std::string& who) const {
    detail::require(budgets.size() == lengths.size(), ErrorCode::invalid_argument, who, ": ", lengths.size(),
                    " lengths but ", budgets.size(), " budgets");
    std::vector<std::span<const float>> out;
    std::size_t at = 0;
    for (const std::size_t n : lengths) {
      detail::require(at + n <= scores.size(), ErrorCode::invalid_argument, who, ": ", scores.size(),
                      " scores for heads of ", at + n, " entries and more");
      out.emplace_back(scores.data() + at, n);
      at += n;
    }
    detail::require(at == scores.size(), ErrorCode::invalid_argument, who, ": ", scores.size(),
                    " scores for heads of ", at, " entries");
    return out;
  }
};

namespace stage {

/// The stages plan_layer runs before a reallocation -- checks, schedule, every head's score --
/// without selecting anything: the same calls, so the scores are the ones plan_layer ranks by.
template <class P, StorageElement T>
LayerScores score_layer(const P& policy, const LayerRequest<T>& request, Workspace& workspace,
                        std::span<const std::size_t> base) {
  using detail::require;
  const std::string who(policy.name());
  LayerScores out;
  out.budgets = stage::layer_budgets(policy, request, base);
  const std::size_t H = request.heads.size();
  const WindowView window = stage::scoring_window(policy, request.window);
  workspace.prepare(H);
  request.exec().parallel_for(H, [&](std::size_t h) {
    HeadScratch& s = workspace.head(h);
    const HeadView<T>& head = request.heads[h];
    detail::validate_head_contents(head, who + ": KV head " + std::to_string(h), request.check_finite, s.floats);
    HeadContext<T> ctx{head,
                       window,
                       request.layer,
                       request.num_layers,
                       static_cast<int>(h),
                       static_cast<int>(request.first_kv_head + h),
                       request.group_size()};
    ctx.rope_theta = request.rope_theta;
    s.selection_score.clear();
    policy.score(ctx, s);
    require(s.selection_score.size() == head.length, ErrorCode::invalid_argument, who, ": KV head ", h,
            ": the score stage gave ", s.selection_score.size(), " scores for ", head.length, " entries");
  });
  for (std::size_t h = 0; h < H; ++h) {
    out.lengths.push_back(request.heads[h].length);
    const auto& sc = workspace.head(h).selection_score;
    out.scores.insert(out.scores.end(), sc.begin(), sc.end());
  }
  return out;
}

}  // namespace stage

/// plan / plan_with_budgets / compress / compress_with_budgets for a policy made of stages. A
/// derived class may replace plan_with_budgets (LayerScheduled does, around an opaque policy);
/// the others go through it.
template <class Derived>
class StagedPolicy {
 public:
  /// A fractional budget (Budget::compress_ratio, keep_fraction) that falls below the protected
  /// entries -- a short prompt -- is raised to them, as the CUDA policies and kvpress's window
  /// presses do, so a short prompt is compressed as far as its protection allows instead of
  /// refused; the kept count in the plan says how far that was. An explicit Budget::entries below
  /// the protected entries is still an error (the caller asked for something exact).
  template <StorageElement T>
  LayerPlan plan(const LayerRequest<T>& request, Workspace& workspace) const {
    return self().plan_with_budgets(request, workspace, base_budgets(request));
  }
  /// The per-head budgets plan() starts from: the request's budget per head, raised to the
  /// protected entries where it is a fraction.
  template <StorageElement T>
  std::vector<std::size_t> base_budgets(const LayerRequest<T>& request) const {
    std::vector<std::size_t> budgets = uniform_head_budgets(request);
    if (request.budget.kind() != BudgetKind::entries) {
      const Protection protection = stage::protection(self(), request.window);
      for (std::size_t h = 0; h < budgets.size(); ++h)
        budgets[h] = std::max(budgets[h], protection.count(request.heads[h].length));
    }
    return budgets;
  }
  /// What plan() would reallocate from (stage::score_layer from base_budgets()).
  template <StorageElement T>
  LayerScores score_layer(const LayerRequest<T>& request, Workspace& workspace) const {
    return stage::score_layer(self(), request, workspace, base_budgets(request));
  }
  /// `base` are the per-head budgets before the policy's own schedule or reallocation.
  template <StorageElement T>
  LayerPlan plan_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                              std::span<const std::size_t> base) const {
    return plan_layer(self(), request, workspace, base);
  }
  template <StorageElement T>
  CompressionStats compress(const LayerRequest<T>& request, Workspace& workspace) const {
    return apply_and_recycle(self().plan(request, workspace), request.heads, workspace);
  }
  template <StorageElement T>
  CompressionStats compress_with_budgets(const LayerRequest<T>& request, Workspace& workspace,
                                         std::span<const std::size_t> base) const {
    return apply_and_recycle(self().plan_with_budgets(request, workspace, base), request.heads, workspace);
  }

 private:
  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
};

/// A staged policy whose Score stage is the window attention (kernels::score_window: the mean
/// attention of the group's window queries, bias included), the score most methods select by.
/// Derived supplies finish() (Match + Merge), or nothing for plain eviction.
template <class Derived>
class WindowScored : public StagedPolicy<Derived> {
 public:
  static constexpr bool needs_window = true;
  /// Score: window attention. Leaves the widened keys, the probabilities and the masses in s.
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    kernels::load_keys(ctx.head, s);
    kernels::score_window(ctx.head, ctx.window, ctx.kv_head, ctx.group, s);
    s.selection_score.assign(s.score.begin(), s.score.end());
  }
};

/// Whether P is made of stages (derives from StagedPolicy<P>), as opposed to an opaque policy
/// such as AnyPolicy that only plans whole layers.
template <class P>
inline constexpr bool is_staged_policy = std::is_base_of_v<StagedPolicy<P>, P>;


/// A policy that lets another's stages run unchanged, so it can change one of them (AdaKV the
/// budgets, a layer schedule the budgets by depth): every hook forwards to `inner()`.
template <class Derived, class Inner>
class ForwardingStages : public StagedPolicy<Derived> {
 public:
  [[nodiscard]] Protection protection(const WindowView& window) const { return stage::protection(inner(), window); }
  [[nodiscard]] Protection protection_for(const WindowView& window, std::size_t budget, std::size_t n) const {
    return stage::protection_for(inner(), window, budget, n);
  }
  template <StorageElement T>
  void check_request(const LayerRequest<T>& request) const {
    stage::check(inner(), request);
  }
  [[nodiscard]] WindowView scoring_window(const WindowView& window) const {
    return stage::scoring_window(inner(), window);
  }
  template <StorageElement T>
    requires stage::Scores<Inner, T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    inner().score(ctx, s);
  }
  template <StorageElement T>
  void finish(const HeadContext<T>& ctx, HeadScratch& s) const {
    stage::finish(inner(), ctx, s);
  }
  template <StorageElement T>
    requires requires(const Inner& p, const HeadContext<T>& c, HeadScratch& s) { p.match(c, s); }
  void match(const HeadContext<T>& ctx, HeadScratch& s) const {
    inner().match(ctx, s);
  }
  void decide_matches(std::span<HeadScratch* const> heads) const
    requires requires(const Inner& p) { p.decide_matches(heads); }
  {
    inner().decide_matches(heads);
  }
  /// The inner policy's layer-wide selection carries over, except through a reallocation (AdaKV),
  /// whose per-head budgets exclude it: AdaKV+TOVA selects per head.
  [[nodiscard]] bool selects_per_layer() const {
    if constexpr (stage::Reallocates<Derived, float>)
      return false;
    else
      return stage::selects_per_layer(inner());
  }

 private:
  const Inner& inner() const noexcept { return static_cast<const Derived&>(*this).inner(); }
};

}  // namespace simcalkv
