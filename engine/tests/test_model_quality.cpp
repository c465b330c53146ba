// The model-level quality measure of simcalkv-perplexity (tools/perplexity/model_quality.hpp) on the
// bundled model: its divergence arithmetic, teacher forcing in one pass against token-by-token decoding,
// the full cache as an exact reference, and results that do not depend on the thread count.
#include "model_quality.hpp"
#include "tokenizer.hpp"

#include <catch2/catch.hpp>

#include <simcalkv/registry.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fs = std::filesystem;

namespace {

const fs::path repo = fs::path(SIMCALKV_ENGINE_FIXTURES) / ".." / ".." / "..";
const fs::path bundled = repo / "models" / "simcalkv-tiny";

const engine::Model& model() {
  static const engine::Model m = engine::Model::load(bundled);
  return m;
}

std::vector<int> text_ids(std::size_t n) {
  const auto tok = engine::Tokenizer::load(bundled / "tokenizer.json");
  std::ifstream in(repo / "data" / "corpus" / "heldout_eval.txt", std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  auto ids = tok.encode(buf.str().substr(0, 20000), false);
  REQUIRE(ids.size() >= n);
  ids.resize(n);
  return ids;
}

}  // namespace

TEST_CASE("model quality: KL and log-softmax arithmetic", "[model-quality]") {
  std::vector<double> lp, lq;
  const std::vector<float> a = {0.0f, static_cast<float>(std::log(3.0))}, b = {1.0f, 1.0f};
  simcalkv::tools::log_softmax(a, lp);
  simcalkv::tools::log_softmax(b, lq);
  CHECK(std::exp(lp[0]) == Approx(0.25).epsilon(1e-6));
  CHECK(std::exp(lp[1]) == Approx(0.75).epsilon(1e-6));
  // KL([1/4, 3/4] || [1/2, 1/2]) = 1/4 ln(1/2) + 3/4 ln(3/2)
  CHECK(simcalkv::tools::kl_divergence(lp, lq) == Approx(0.25 * std::log(0.5) + 0.75 * std::log(1.5)).epsilon(1e-6));
  CHECK(simcalkv::tools::kl_divergence(lp, lp) == 0.0);
  CHECK(simcalkv::tools::argmax(std::vector<float>{1.0f, 3.0f, 3.0f, 2.0f}) == 1);  // ties to the lowest id
}

TEST_CASE("model quality: extend() is decode() token by token, on a compressed cache", "[model-quality]") {
  const auto ids = text_ids(72);
  const std::span<const int> prompt(ids.data(), 64), cont(ids.data() + 64, 8);
  engine::SessionOptions so;
  so.window = 16;
  so.chunk = 3;  // extend() in chunks too
  const auto policy = simcalkv::make_policy("SimCalKV");
  engine::Session<float> a(model(), so), b(model(), so);
  a.prefill(prompt);
  b.prefill(prompt);
  a.compress(policy, simcalkv::Budget::compress_ratio(0.5));
  b.compress(policy, simcalkv::Budget::compress_ratio(0.5));
  const auto all = a.extend(cont);
  const auto V = static_cast<std::size_t>(model().config.vocab_size);
  REQUIRE(all.size() == cont.size() * V);
  for (std::size_t t = 0; t < cont.size(); ++t) {
    const auto one = b.decode(cont[t]);
    double max_abs = 0.0, max_diff = 0.0;
    for (std::size_t v = 0; v < V; ++v) {
      max_abs = std::max(max_abs, std::abs(static_cast<double>(one[v])));
      max_diff = std::max(max_diff, std::abs(static_cast<double>(one[v]) - all[t * V + v]));
    }
    INFO("token " << t);
    CHECK(max_diff <= 1e-4 * std::max(1.0, max_abs));
  }
  CHECK(a.position() == b.position());
}

TEST_CASE("model quality: the full cache is exact, compression is not, the thread count changes nothing",
          "[model-quality]") {
  const int P = 96, C = 12;
  const auto ids = text_ids(P + C + 1);
  engine::SessionOptions so;
  so.window = 16;
  const std::vector<simcalkv::AnyPolicy> policies = {simcalkv::make_policy("Full"), simcalkv::make_policy("SnapKV"),
                                                     simcalkv::make_policy("SimCalKV")};
  const std::vector<double> ratios = {0.5, 0.75};
  std::vector<simcalkv::tools::QualityTotals> totals(1 + policies.size() * ratios.size());
  simcalkv::tools::measure_window<float>(model(), so, ids, P, policies, ratios, totals);

  const auto& full = totals[0];
  CHECK(full.tokens == C);
  CHECK(full.windows == 1);
  CHECK(full.kl == 0.0);
  CHECK(full.top1_agree == C);
  // Full at any ratio keeps everything: the same cache, bit for bit, so the same logits.
  for (std::size_t r = 0; r < ratios.size(); ++r) {
    const auto& q = totals[1 + r];
    CHECK(q.kl == 0.0);
    CHECK(q.nll == full.nll);
    CHECK(q.top1_agree == C);
  }
  // A compressed cache diverges, and more so when more is removed.
  const auto& snap50 = totals[3];
  const auto& snap75 = totals[4];
  CHECK(snap50.kl > 0.0);
  CHECK(snap75.kl > snap50.kl);
  CHECK(snap75.tokens == C);

#ifdef _OPENMP
  const int before = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    std::vector<simcalkv::tools::QualityTotals> again(totals.size());
    simcalkv::tools::measure_window<float>(model(), so, ids, P, policies, ratios, again);
    for (std::size_t i = 0; i < totals.size(); ++i) {
      INFO("threads " << threads << " row " << i);
      CHECK(again[i].kl == totals[i].kl);
      CHECK(again[i].nll == totals[i].nll);
      CHECK(again[i].top1_agree == totals[i].top1_agree);
    }
  }
  omp_set_num_threads(before);
#endif
}

TEST_CASE("model quality: a window without a continuation is refused", "[model-quality]") {
  const auto ids = text_ids(10);
  std::vector<simcalkv::tools::QualityTotals> totals(1);
  CHECK_THROWS_WITH(simcalkv::tools::measure_window<float>(model(), {}, ids, 9, {}, {}, totals),
                    Catch::Contains("at least 1 prompt and 1 continuation token"));
}

TEST_CASE("H2O: the engine's accumulated scores are the column sums of all prefill attention rows", "[model-quality][h2o]") {
  // H2O selects by a_j = sum over every query t of the group-mean probability of entry j; the
  // engine accumulates it over the prefill (chunked, so across blocks) when the policy asks for it.
  const auto ids = text_ids(70);
  const auto& c = model().config;
  REQUIRE(simcalkv::make_policy("H2O").reads_accumulated_scores());
  REQUIRE(simcalkv::make_policy("AdaKV+H2O").reads_accumulated_scores());
  REQUIRE_FALSE(simcalkv::make_policy("SnapKV").reads_accumulated_scores());
  engine::SessionOptions so;
  so.window = 8;
  so.chunk = 17;
  so.track_scores = true;
  engine::Session<float> s(model(), so);
  simcalkv::io::Trace trace;
  engine::PrefillOptions po;
  po.trace = &trace;
  s.prefill(ids, po);
  const int n = static_cast<int>(ids.size()), d = c.head_dim, G = c.group_size();
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (int l = 0; l < c.num_layers; ++l) {
    const auto scores = s.kv_scores(l);
    REQUIRE(scores.size() == static_cast<std::size_t>(c.num_kv_heads * n));
    for (int h = 0; h < c.num_kv_heads; ++h) {
      std::vector<double> expected(static_cast<std::size_t>(n), 0.0);
      for (int g = 0; g < G; ++g)
        for (int t = 0; t < n; ++t) {
          const float* q = trace.query(l, h * G + g, t);
          std::vector<double> logit(static_cast<std::size_t>(t) + 1);
          double mx = -INFINITY, sum = 0.0;
          for (int j = 0; j <= t; ++j) {
            const float* k = trace.key(l, h, j);
            double dot = 0.0;
            for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k[i];
            logit[static_cast<std::size_t>(j)] = dot * scale;
            mx = std::max(mx, logit[static_cast<std::size_t>(j)]);
          }
          for (auto& x : logit) sum += (x = std::exp(x - mx));
          for (int j = 0; j <= t; ++j) expected[static_cast<std::size_t>(j)] += logit[static_cast<std::size_t>(j)] / sum / G;
        }
      for (int j = 0; j < n; ++j) {
        INFO("layer " << l << " head " << h << " entry " << j);
        CHECK(scores[static_cast<std::size_t>(h * n + j)] ==
              Approx(expected[static_cast<std::size_t>(j)]).epsilon(2e-4).margin(1e-5));
      }
    }
  }
  // H2O then keeps the sinks, the recent half of the budget and the largest of these scores.
  const auto before = s.kv_scores(0);
  s.compress(simcalkv::make_policy("H2O:sinks=0"), simcalkv::Budget::entries(20));
  const auto& head = s.cache().head(0, 0);
  REQUIRE(head.length == 20);
  std::vector<int> heavy;  // entries before the recent 10, by score
  for (int j = 0; j < n - 10; ++j) heavy.push_back(j);
  std::stable_sort(heavy.begin(), heavy.end(), [&](int a, int b) { return before[static_cast<std::size_t>(a)] > before[static_cast<std::size_t>(b)]; });
  std::vector<simcalkv::Position> want;
  for (int i = 0; i < 10; ++i) want.push_back(heavy[static_cast<std::size_t>(i)]);
  for (int j = n - 10; j < n; ++j) want.push_back(j);
  std::sort(want.begin(), want.end());
  std::vector<simcalkv::Position> got(head.positions, head.positions + head.length);
  CHECK(got == want);
}
