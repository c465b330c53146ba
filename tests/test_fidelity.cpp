// The fidelity harness (tools/common/fidelity.hpp): Full is exact, SimCalKV beats eviction,
// results do not depend on threads, and the JSON has the documented shape.
#include "fidelity.hpp"
#include "synthetic_trace.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>

using namespace simcalkv;
using simcalkv::tools::FidelityOptions;
using simcalkv::tools::FidelityPolicy;

namespace {

/// Keeps the protected entries and a seeded random choice of the others: the floor any scoring
/// policy should beat.
class RandomEviction : public StagedPolicy<RandomEviction> {
 public:
  [[nodiscard]] std::string_view name() const noexcept { return "RandomEviction"; }
  [[nodiscard]] Protection protection(const WindowView& window) const noexcept {
    return Protection{4, static_cast<std::size_t>(window.num_tokens)};
  }
  /// Score: a seeded random rank per entry (Fisher-Yates, portable).
  template <StorageElement T>
  void score(const HeadContext<T>& ctx, HeadScratch& s) const {
    const std::size_t n = ctx.head.length;
    std::vector<std::uint32_t> order(n);
    for (std::size_t j = 0; j < n; ++j) order[j] = static_cast<std::uint32_t>(j);
    std::mt19937_64 rng(1000 + static_cast<std::size_t>(ctx.kv_head) + 31 * static_cast<std::size_t>(ctx.layer));
    for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
    s.selection_score.resize(n);
    for (std::size_t r = 0; r < n; ++r) s.selection_score[order[r]] = static_cast<float>(n - r);
  }
};

const io::Trace& small_trace() {
  static const io::Trace trace = [] {
    tools::SyntheticTraceConfig config;
    config.num_layers = 2;
    config.num_q_heads = 4;
    config.num_kv_heads = 2;
    config.head_dim = 64;
    config.n = 640;
    config.seed = 5;
    return tools::make_synthetic_trace(config);
  }();
  return trace;
}

FidelityOptions small_options() {
  FidelityOptions o;
  o.compress_ratios = {0.5, 0.75};
  o.future = 64;
  o.window = 16;
  o.trace_name = "small";
  return o;
}

bool registered(const std::string& name) {
  const auto names = policy_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

TEST_CASE("fidelity: Full is exact and the library matches the exact reference", "[fidelity]") {
  const std::vector<FidelityPolicy> policies = {{"Full", make_policy("Full")}};
  const auto report = tools::run_fidelity(small_trace(), policies, small_options(), sequential_executor());
  REQUIRE(report.results.size() == 2);
  for (const auto& r : report.results) {
    CHECK(r.rel_error_mean == 0.0);
    CHECK(r.rel_error_p95 == 0.0);
    CHECK(r.rel_error_max == 0.0);
    CHECK(r.budget == 640u - 64u);
    CHECK(r.kept_fraction == 1.0);
    REQUIRE(r.per_layer.size() == 2);
    for (const auto& l : r.per_layer) CHECK(l.rel_error_max == 0.0);
  }
  CHECK(report.reference_error_max > 0.0);
  CHECK(report.reference_error_max < 1e-4);
  CHECK(report.prompt_len == 576);
}

TEST_CASE("fidelity: compress_ratio 0 is exact for SimCalKV too", "[fidelity]") {
  auto options = small_options();
  options.compress_ratios = {0.0};
  const auto report =
      tools::run_fidelity(small_trace(), {{"SimCalKV", make_policy("SimCalKV")}}, options, sequential_executor());
  CHECK(report.results.at(0).rel_error_max == 0.0);
}

TEST_CASE("fidelity: SimCalKV at compress_ratio 0.5 beats eviction", "[fidelity]") {
  std::vector<FidelityPolicy> policies = {{"SimCalKV", make_policy("SimCalKV")},
                                          {"random", AnyPolicy(RandomEviction{})}};
  const bool streaming = registered("StreamingLLM");
  if (streaming) policies.push_back({"StreamingLLM", make_policy("StreamingLLM")});
  auto options = small_options();
  options.compress_ratios = {0.5};
  const auto report = tools::run_fidelity(small_trace(), policies, options, sequential_executor());
  const auto& simcal = report.results.at(0);
  const auto& random = report.results.at(1);
  INFO("SimCalKV " << simcal.rel_error_mean << ", random " << random.rel_error_mean);
  CHECK(simcal.budget == 288u);
  CHECK(simcal.kept_fraction == Approx(0.5));
  CHECK(simcal.rel_error_mean > 0.0);
  CHECK(simcal.rel_error_mean < random.rel_error_mean);
  CHECK(simcal.rel_error_p95 < random.rel_error_p95);
  if (streaming) {
    const auto& s = report.results.at(2);
    INFO("StreamingLLM " << s.rel_error_mean);
    CHECK(simcal.rel_error_mean < s.rel_error_mean);
  }
}

TEST_CASE("fidelity: results do not depend on the thread count", "[fidelity]") {
  const std::vector<FidelityPolicy> policies = {{"SimCalKV", make_policy("SimCalKV")},
                                                {"SimCalKV:search=exact", make_policy("SimCalKV:search=exact")}};
  auto options = small_options();
  options.layers = {1};
  const auto one = tools::run_fidelity(small_trace(), policies, options, sequential_executor());
  const ThreadExecutor three(3);
  const auto many = tools::run_fidelity(small_trace(), policies, options, three);
  REQUIRE(one.results.size() == many.results.size());
  CHECK(one.reference_error_max == many.reference_error_max);
  for (std::size_t i = 0; i < one.results.size(); ++i) {
    CHECK(one.results[i].rel_error_mean == many.results[i].rel_error_mean);
    CHECK(one.results[i].rel_error_p95 == many.results[i].rel_error_p95);
    CHECK(one.results[i].rel_error_max == many.results[i].rel_error_max);
    CHECK(one.results[i].merged == many.results[i].merged);
  }
  REQUIRE(one.layers == std::vector<int>{1});
}

TEST_CASE("fidelity: JSON shape", "[fidelity]") {
  auto options = small_options();
  options.layers = {0};
  const auto report = tools::run_fidelity(small_trace(), {{"SimCalKV", make_policy("SimCalKV")}}, options,
                                          sequential_executor());
  const nlohmann::json j = tools::to_json(report);
  CHECK(j.at("trace") == "small");
  CHECK(j.at("n") == 640);
  CHECK(j.at("future") == 64);
  CHECK(j.at("window") == 16);
  const auto& results = j.at("results");
  REQUIRE(results.is_array());
  REQUIRE(results.size() == 2);
  for (const auto& r : results) {
    CHECK(r.at("policy") == "SimCalKV");
    CHECK(r.at("compress_ratio").is_number());
    CHECK(r.at("budget").is_number_integer());
    CHECK(r.at("rel_error_mean").is_number());
    CHECK(r.at("rel_error_p95").is_number());
    CHECK(r.at("rel_error_p95").get<double>() >= r.at("rel_error_mean").get<double>() * 0.0);
    CHECK(r.at("compress_seconds").is_number());
    const auto& layers = r.at("per_layer");
    REQUIRE(layers.is_array());
    REQUIRE(layers.size() == 1);
    CHECK(layers[0].at("layer") == 0);
    CHECK(layers[0].at("rel_error_mean").is_number());
    CHECK(layers[0].at("rel_error_p95").is_number());
  }
  CHECK(results[0].at("compress_ratio") == 0.5);
  CHECK(results[1].at("budget") == 144);
  CHECK(!tools::format_table(report).empty());
}

TEST_CASE("fidelity: budgets and policy lists", "[fidelity]") {
  CHECK(tools::fidelity_budget(0.5, 1000, 32) == 500);
  CHECK(tools::fidelity_budget(0.99, 1000, 32) == 36);  // the protected entries
  CHECK(tools::fidelity_budget(0.99, 20, 32) == 20);
  CHECK(tools::fidelity_budget(0.75, 1000, 32) == 250);
  CHECK(tools::split_policy_list("SimCalKV,Full") == std::vector<std::string>{"SimCalKV", "Full"});
  CHECK(tools::split_policy_list("SimCalKV:bias=none,search=exact,Full") ==
        std::vector<std::string>{"SimCalKV:bias=none,search=exact", "Full"});
  CHECK(tools::split_policy_list("SimCalKV:bias=none;SimCalKV:search=exact") ==
        std::vector<std::string>{"SimCalKV:bias=none", "SimCalKV:search=exact"});
  CHECK(tools::split_policy_list("all") == policy_names());
  CHECK_THROWS_AS(tools::run_fidelity(small_trace(), {{"Full", make_policy("Full")}},
                                      [] {
                                        auto o = small_options();
                                        o.future = 700;
                                        return o;
                                      }(),
                                      sequential_executor()),
                  Error);
}
