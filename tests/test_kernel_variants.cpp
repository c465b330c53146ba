// Every kernel table this CPU runs (SSE2, AVX2, AVX-512 on x86-64; NEON on AArch64), each against a
// naive reference, over odd lengths and every storage type: the one code path is correct at 4, 8 and
// 16 lanes. The tables run are printed, so a log shows which widths a machine proved.
#include "support.hpp"

#include <catch2/catch.hpp>

#include <simcalkv/kernels/similarity.hpp>

#include <cstdlib>
#include <iostream>
#include <string>

using namespace simcalkv;
using simcalkv::kernels::KernelTable;

namespace {

const std::size_t kLengths[] = {0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 100, 128, 129};

std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  testing::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * rng.normal();
  return v;
}

double naive_dot(const float* a, const float* b, std::size_t n) {
  double s = 0;
  for (std::size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

bool printed = false;

void print_tables() {
  if (printed) return;
  std::string names;
  for (const KernelTable* t : kernels::compiled_tables()) names += std::string(" ") + t->arch;
  std::string run;
  for (const KernelTable* t : kernels::runnable_tables()) run += std::string(" ") + t->arch;
  std::cout << "[kernels] compiled:" << names << "; runs here:" << run << "; active: " << kernels::active().arch
            << std::endl;
  printed = true;
}

template <class F>
void for_each_table(F&& f) {
  print_tables();
  for (const KernelTable* t : kernels::runnable_tables()) {
    INFO("kernel table " << t->arch << " (" << t->lanes << " lanes)");
    f(*t);
  }
}

}  // namespace

TEST_CASE("kernel tables: the CPU runs the best one compiled, and every one it reports", "[kernels]") {
  print_tables();
  REQUIRE(!kernels::runnable_tables().empty());
  // The best one, unless SIMCALKV_ARCH names another this CPU runs.
  const KernelTable* expected = kernels::runnable_tables().front();
  if (const char* cap = std::getenv("SIMCALKV_ARCH"))
    for (const KernelTable* t : kernels::runnable_tables())
      if (std::string(t->arch) == cap) expected = t;
  CHECK(&kernels::active() == expected);
  for (const KernelTable* t : kernels::runnable_tables()) {
    CHECK((t->lanes == 4 || t->lanes == 8 || t->lanes == 16));
    kernels::ScopedKernelTable scope(*t);
    CHECK(&kernels::active() == t);
  }
  CHECK(&kernels::active() == expected);
}

TEST_CASE("kernel tables: vector primitives match scalar references at every length", "[kernels]") {
  for_each_table([](const KernelTable& t) {
    for (std::size_t n : kLengths) {
      INFO("n = " << n);
      const auto a = random_vector(n, 1 + n), b = random_vector(n, 2 + n);
      CHECK(t.dot(a.data(), b.data(), n) == Approx(naive_dot(a.data(), b.data(), n)).margin(1e-4));

      auto y = b, z = a;
      t.axpy(0.5f, a.data(), y.data(), n);
      for (std::size_t i = 0; i < n; ++i) CHECK(y[i] == Approx(b[i] + 0.5f * a[i]).margin(1e-6));
      y = b;
      t.axpy2(0.5f, -2.0f, a.data(), y.data(), z.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        CHECK(y[i] == Approx(b[i] + 0.5f * a[i]).margin(1e-6));
        CHECK(z[i] == Approx(a[i] - 2.0f * a[i]).margin(1e-6));
      }
      y = a;
      t.scale(3.0f, y.data(), n);
      for (std::size_t i = 0; i < n; ++i) CHECK(y[i] == 3.0f * a[i]);

      float best = -std::numeric_limits<float>::infinity();
      for (float x : a) best = std::max(best, x);
      CHECK(t.max_of(a.data(), n) == best);

      auto e = a;
      if (n > 2) e[n / 2] = -std::numeric_limits<float>::infinity();  // masked: exp gives 0
      auto expected = e;
      double sum = 0;
      for (auto& x : expected) sum += (x = std::exp(x - 0.25f));
      const float got = t.exp_shifted_sum(e.data(), 0.25f, n);
      CHECK(got == Approx(sum).epsilon(1e-5).margin(1e-6));
      for (std::size_t i = 0; i < n; ++i) CHECK(e[i] == Approx(expected[i]).epsilon(1e-5).margin(1e-30));

      std::vector<std::vector<float>> rows;
      const float* ptr[8];
      for (int r = 0; r < 8; ++r) {
        rows.push_back(random_vector(n, 50 + static_cast<std::uint64_t>(r) + n));
        ptr[r] = rows.back().data();
      }
      float out[8];
      t.dot8(ptr, a.data(), n, out);
      for (int r = 0; r < 8; ++r) CHECK(out[r] == Approx(naive_dot(ptr[r], a.data(), n)).margin(1e-4));
    }
  });
}

TEST_CASE("kernel tables: half and bfloat16 rows widen and narrow exactly as Eigen converts", "[kernels]") {
  std::vector<float> special = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65520.0f, 1e-7f, -6e-8f, 3e-5f, 1e30f,
                                -1e30f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::denorm_min(), 0.33333334f, 1.0009766f, 1.0004883f};
  for_each_table([&](const KernelTable& t) {
    for (std::size_t n : kLengths) {
      INFO("n = " << n);
      auto src = random_vector(n, 9 + n, 3.0f);
      for (std::size_t i = 0; i < n; ++i)
        if (i % 3 == 0) src[i] = special[(i / 3) % special.size()];
      std::vector<std::uint16_t> h(n), b(n);
      CHECK(t.narrow_half(src.data(), h.data(), n) == n);
      CHECK(t.narrow_bf16(src.data(), b.data(), n) == n);
      std::vector<float> wide_h(n), wide_b(n);
      t.widen_half(h.data(), wide_h.data(), n);
      t.widen_bf16(b.data(), wide_b.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        INFO("element " << i << " = " << src[i]);
        const half eh(src[i]);
        const bfloat16 eb(src[i]);
        CHECK(h[i] == std::bit_cast<std::uint16_t>(eh));
        CHECK(b[i] == std::bit_cast<std::uint16_t>(eb));
        CHECK(std::bit_cast<std::uint32_t>(wide_h[i]) == std::bit_cast<std::uint32_t>(static_cast<float>(eh)));
        CHECK(std::bit_cast<std::uint32_t>(wide_b[i]) == std::bit_cast<std::uint32_t>(static_cast<float>(eb)));
      }
      // Every half, including subnormals, Inf and NaN payloads, widens exactly.
    }
    std::vector<std::uint16_t> all(65536);
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
    std::vector<float> wide(all.size());
    t.widen_half(all.data(), wide.data(), all.size());
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < all.size(); ++i) {
      const float ref = static_cast<float>(std::bit_cast<half>(all[i]));
      if (std::isnan(ref) ? !std::isnan(wide[i]) : std::bit_cast<std::uint32_t>(ref) != std::bit_cast<std::uint32_t>(wide[i]))
        ++mismatches;
    }
    CHECK(mismatches == 0);
    // A NaN stops the vector narrowing at its block, so the caller converts the rest.
    std::vector<float> with_nan(40, 1.0f);
    with_nan[21] = std::numeric_limits<float>::quiet_NaN();
    std::vector<std::uint16_t> out(40);
    CHECK(t.narrow_half(with_nan.data(), out.data(), 40) <= 21);
    CHECK(t.narrow_bf16(with_nan.data(), out.data(), 40) <= 21);
  });
}

TEST_CASE("kernel tables: finiteness checks find every NaN and Inf, in every storage type", "[kernels]") {
  for_each_table([](const KernelTable& t) {
    for (std::size_t n : kLengths) {
      if (n == 0) {
        CHECK(t.finite_f32(nullptr, 0));
        CHECK(t.finite_bits16(nullptr, 0, 0x7c00u));
        continue;
      }
      auto x = random_vector(n, 3 + n);
      x[0] = 65504.0f;  // largest half, finite
      if (n > 1) x[1] = std::numeric_limits<float>::denorm_min();
      std::vector<std::uint16_t> h(n), b(n);
      for (std::size_t i = 0; i < n; ++i) {
        h[i] = std::bit_cast<std::uint16_t>(half(x[i]));
        b[i] = std::bit_cast<std::uint16_t>(bfloat16(x[i]));
      }
      CHECK(t.finite_f32(x.data(), n));
      CHECK(t.finite_bits16(h.data(), n, 0x7c00u));
      CHECK(t.finite_bits16(b.data(), n, 0x7f80u));
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()})
        for (std::size_t at : {std::size_t{0}, n / 2, n - 1}) {
          INFO("n " << n << " bad value " << bad << " at " << at);
          auto y = x;
          y[at] = bad;
          auto hy = h, by = b;
          hy[at] = std::bit_cast<std::uint16_t>(half(bad));
          by[at] = std::bit_cast<std::uint16_t>(bfloat16(bad));
          CHECK_FALSE(t.finite_f32(y.data(), n));
          CHECK_FALSE(t.finite_bits16(hy.data(), n, 0x7c00u));
          CHECK_FALSE(t.finite_bits16(by.data(), n, 0x7f80u));
        }
    }
  });
}

TEST_CASE("kernel tables: C = A B^T matches a naive product for odd shapes", "[kernels]") {
  for_each_table([](const KernelTable& t) {
    for (std::size_t m : {1u, 3u, 4u, 5u, 9u})
      for (std::size_t n : {1u, 15u, 16u, 17u, 100u, 250u})
        for (std::size_t k : {1u, 7u, 64u, 128u}) {
          INFO("m " << m << " n " << n << " k " << k);
          const auto a = random_vector(m * k, m + 10 * n + 100 * k), b = random_vector(n * k, 7 + m + n + k);
          const std::size_t ldc = n + 3;
          std::vector<float> c(m * ldc, -7.0f), pack(kernels::simd::gemm_pack_floats(t.lanes, k));
          t.gemm_nt(kernels::simd::GemmArgs{a.data(), m, b.data(), n, k, c.data(), ldc, pack.data()});
          for (std::size_t i = 0; i < m; ++i) {
            for (std::size_t j = 0; j < n; ++j)
              CHECK(c[i * ldc + j] == Approx(naive_dot(a.data() + i * k, b.data() + j * k, k)).margin(1e-4));
            for (std::size_t j = n; j < ldc; ++j) CHECK(c[i * ldc + j] == -7.0f);  // the padding is untouched
          }
        }
  });
}

TEST_CASE("kernel tables: the bounded similarity search equals the one-by-one search", "[kernels]") {
  for (int d : {8, 64, 128, 24})
    for (std::size_t n : {5u, 40u, 301u}) {
      testing::Layer<float> layer(1, d, n);
      layer.fill_random(n, static_cast<std::uint64_t>(d) * 1000 + n);
      HeadScratch s;
      kernels::load_keys(layer.views[0], s);
      std::vector<std::uint32_t> keep, candidates;
      for (std::uint32_t j = 0; j < n; ++j) (j % 3 == 1 ? candidates : keep).push_back(j);
      const kernels::SimilarityInputs in{s.keys.data(), s.inv_norms.data(), static_cast<std::size_t>(d), keep,
                                         candidates};
      for (std::size_t radius : {1u, 4u, 64u}) {
        std::vector<std::int32_t> ref_slot(candidates.size());
        std::vector<float> ref_sim(candidates.size());
        const std::size_t ref_examined = kernels::detail_similarity::assign_local_scalar(in, radius, ref_slot, ref_sim);
        for_each_table([&](const KernelTable& t) {
          INFO("d " << d << " n " << n << " radius " << radius);
          std::vector<std::int32_t> slot;
          std::vector<float> sim;
          CHECK(kernels::assign_local(in, radius, slot, sim, t) == ref_examined);
          REQUIRE(slot.size() == ref_slot.size());
          for (std::size_t c = 0; c < slot.size(); ++c) {
            CHECK(sim[c] == Approx(ref_sim[c]).margin(1e-5));
            // Sums differ in the last bits only: a different slot is a near-tie, never a worse match.
            if (slot[c] != ref_slot[c]) CHECK(std::abs(sim[c] - ref_sim[c]) < 1e-5f);
          }
        });
      }
    }
}

template <class T>
static void check_attention_on(const KernelTable& t, std::size_t n, int dim, int rows, bool causal,
                               testing::ValueLayout layout, bool accumulate) {
  testing::Layer<T> layer(1, dim, n + 1, layout);
  layer.fill_random(n, 31 * n + static_cast<std::size_t>(dim) + static_cast<std::size_t>(rows), 0.5f);
  auto& head = layer.views[0];
  testing::Rng rng(5 + n);
  for (std::size_t j = 0; j < n; ++j) head.bias[j] = j % 5 == 2 ? -std::numeric_limits<float>::infinity() : rng.normal();
  std::vector<float> q(static_cast<std::size_t>(rows * dim)), out(q.size(), 0.0f);
  for (auto& x : q) x = rng.normal();
  std::vector<Position> limits(static_cast<std::size_t>(rows));
  for (int r = 0; r < rows; ++r) limits[static_cast<std::size_t>(r)] = static_cast<Position>(n > 0 ? (r * 7) % n : 0);
  kernels::AttentionRows ar{q.data(), dim, causal ? limits.data() : nullptr, rows, out.data(), dim};
  AttentionOptions options;
  options.accumulate_scores = accumulate;
  kernels::attend_rows(head, ar, options, t);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<double> expected_scores(n, 0.0);
  for (int r = 0; r < rows; ++r) {
    const Position limit = causal ? limits[static_cast<std::size_t>(r)] : std::numeric_limits<Position>::max();
    const auto ref = testing::naive_attention(head, q.data() + r * dim, scale, limit);
    INFO("n " << n << " dim " << dim << " rows " << rows << " causal " << causal << " row " << r << " element "
              << element_name<T>());
    CHECK(testing::relative_error(ref, out.data() + r * dim) < 2e-5);
  }
  if (accumulate) {
    double total = 0;
    for (std::size_t j = 0; j < n; ++j) total += head.scores[j];
    // Each row's probabilities sum to one (rows that see nothing add nothing); scores average them.
    if (!causal && n > 0) CHECK(total == Approx(1.0).epsilon(1e-4));
  }
}

TEST_CASE("kernel tables: biased attention matches the naive reference for every storage type", "[kernels]") {
  for_each_table([](const KernelTable& t) {
    for (std::size_t n : {1u, 3u, 31u, 32u, 33u, 100u})
      for (int dim : {8, 24, 32, 64, 128})
        for (int rows : {1, 2, 3, 4, 5, 8})
          for (bool causal : {false, true}) {
            check_attention_on<float>(t, n, dim, rows, causal, testing::ValueLayout::rows, rows == 3);
            check_attention_on<half>(t, n, dim, rows, causal, testing::ValueLayout::rows, false);
            check_attention_on<bfloat16>(t, n, dim, rows, causal, testing::ValueLayout::rows, rows == 5);
            if (rows == 4) check_attention_on<float>(t, n, dim, rows, causal, testing::ValueLayout::transposed, false);
          }
  });
}

TEST_CASE("kernel tables: SimCalKV gives the same cache on every table, within rounding", "[kernels]") {
  const auto& tables = kernels::runnable_tables();
  const int dim = 64, kv_heads = 2, G = 2, W = 8;
  const std::size_t n = 300;
  std::vector<std::vector<float>> outputs;
  std::vector<std::vector<Position>> kept;
  for (const KernelTable* t : tables) {
    kernels::ScopedKernelTable scope(*t);
    testing::Layer<bfloat16> layer(kv_heads, dim, n);
    layer.fill_random(n, 77);
    testing::Rng rng(3);
    std::vector<float> wq(static_cast<std::size_t>(kv_heads * G * W * dim));
    for (auto& x : wq) x = rng.normal();
    std::vector<Position> wpos;
    for (int i = 0; i < W; ++i) wpos.push_back(static_cast<Position>(n - W + static_cast<std::size_t>(i)));
    LayerRequest<bfloat16> request;
    request.heads = layer.views;
    request.window = make_window_view(wq.data(), wpos.data(), kv_heads * G, W, dim);
    request.budget = Budget::compress_ratio(0.75);
    Workspace ws;
    SimCalKV().compress(request, ws);
    std::vector<float> q(static_cast<std::size_t>(G * dim)), out(q.size()), all;
    for (auto& x : q) x = rng.normal();
    std::vector<Position> positions;
    for (auto& head : layer.views) {
      decode_attention(head, q, G, out);
      all.insert(all.end(), out.begin(), out.end());
      positions.insert(positions.end(), head.positions, head.positions + head.length);
    }
    outputs.push_back(all);
    kept.push_back(positions);
  }
  for (std::size_t i = 1; i < tables.size(); ++i) {
    INFO(tables[i]->arch << " against " << tables[0]->arch);
    CHECK(kept[i] == kept[0]);
    CHECK(testing::relative_error(std::vector<double>(outputs[0].begin(), outputs[0].end()), outputs[i].data()) < 1e-3);
  }
}
