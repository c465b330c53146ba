// simcalkv-bench: speed of compression and decode attention at Llama-3.1-8B shapes (8 KV heads,
// 32 query heads, head_dim 128, bfloat16 storage), and the machine's memcpy and GEMM rates to
// compare them with (scripts/bench_ratios.py turns one run's JSON into the project's targets).
//
//   BM_Compress/<policy>/<n>/<keep_percent>   one layer (8 heads x n entries) compressed to
//       round(keep * n) entries per head (at least 4 + W protected), window W = 32 queries of
//       each of the 32 query heads. The cache is restored from a pristine copy before every
//       iteration, outside the timed region (manual timing around compress() only).
//   BM_DecodeAttention/<n>/<keep_percent>     one decode step of one layer: decode_attention()
//       of the 4 query heads of each of the 8 KV heads, over round(keep * n) entries per head.
//       Several copies of the layer are cycled so at least 128 MiB is touched between two visits
//       of the same copy: the cache comes from DRAM, as in a real model with many layers.
//   BM_CompressArch/<arch>/SimCalKV/32768/<keep>, BM_DecodeArch/<arch>/<n>/100
//       the same on each kernel table this CPU runs (sse2, avx2, avx512bw, neon64), set for the
//       benchmark with ScopedKernelTable; the others run on the table chosen at run time
//       (context kernel_arch; SIMCALKV_ARCH=<name> caps it).
//   BM_GemmNT/<arch>/<m>/<n>/<k>              the library's own C = A B^T (window scoring's product)
//       on each kernel table: its flops_per_second against BM_Gemm's Eigen rate.
//   BM_StreamCopy/<bytes>                     memcpy of a buffer (the copy bandwidth).
//   BM_StreamRead/<bytes>                     a read-only pass (sum) over a buffer.
//   BM_Gemm/<m>/<n>/<k>                       Eigen float C = A * B (the GEMM rate).
// Everything runs on one thread (Eigen::setNbThreads(1), no executor), so the rates compare.
// Timed regions use the thread's CPU clock (SIMCALKV_BENCH_CLOCK=wall: steady_clock), see
// now_seconds().
//
// Counters (rates are computed here from the manually timed seconds, per iteration):
//   seconds              mean seconds per iteration
//   entries_per_second   KV entries processed (8 * n for a compression)
//   bytes                compress: K and V read (2 * n * d * 2 bytes per head) + survivors written
//                        (2 * budget * d * 2 bytes per head); decode: K, V and bias read
//                        (entries * (2 * d * 2 + 4) bytes per head); copy: the bytes copied
//                        (size; traffic_bytes_per_second counts read + written, 2 * size); read: size
//   bytes_per_second     bytes / seconds
//   flops                compress: window scoring 2 * W * G * n * d per head (W = 1 for TOVA,
//                        none for StreamingLLM and Full) + 2 * d per similarity pair examined by
//                        SimCalKV (counted after the run from the survivors: local search, the
//                        pairs assign_local visits, radius on each side; exact, |E| * |C|).
//                        Merging policies other than SimCalKV: scoring only (their similarity
//                        search is not modelled). SimCalKV's merged-bias calibration
//                        (2 * W * G * d per merged entry) is reported apart as flops_calibration.
//                        gemm: 2 m n k.
//   flops_per_second     flops / seconds
//
// Decode, copy, read and GEMM run 3 repetitions each (scripts/bench_ratios.py takes the best, the
// run least disturbed by other processes).
// Default run: short (SimCalKV local at every n and keep 50/25/10, SimCalKV exact at 4k, every
// other registered policy at keep 50). --grid=full registers every policy at every n and keep.
// Quick runs: --benchmark_filter='BM_Compress/SimCalKV/32768|BM_Decode|BM_Stream|BM_Gemm'.
// JSON: --benchmark_out=FILE --benchmark_out_format=json.
#include "simcalkv/simcalkv.hpp"

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

using simcalkv::bfloat16;
using simcalkv::HeadView;
using simcalkv::Position;

constexpr int kv_heads = 8;
constexpr int q_heads = 32;
constexpr int group = q_heads / kv_heads;
constexpr int head_dim = 128;
constexpr int window_tokens = 32;
constexpr std::size_t cold_bytes = std::size_t{128} << 20;  // touched between visits of one decode copy

/// The timed regions use this thread's CPU clock by default: every benchmark runs on one thread,
/// and on a shared machine other processes then cannot inflate the numbers (waiting for memory
/// still counts, being descheduled does not). SIMCALKV_BENCH_CLOCK=wall switches to steady_clock.
bool use_wall_clock() {
  static const bool wall = [] {
    const char* v = std::getenv("SIMCALKV_BENCH_CLOCK");
    return v && std::strcmp(v, "wall") == 0;
  }();
  return wall;
}

double now_seconds() {
  if (use_wall_clock())
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double seconds_since(double start) { return now_seconds() - start; }

/// xorshift64* with a cheap approximately normal draw (sum of four uniforms).
class FastRng {
 public:
  explicit FastRng(std::uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1Dull;
  }
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  float normal() { return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7320508f; }

 private:
  std::uint64_t s_;
};

/// One layer's keys and values [head][n][d] (bf16), with positional locality in the keys, and
/// the window queries [q_heads][W][d] at positions n-W .. n-1.
struct LayerData {
  std::size_t n = 0;
  std::vector<bfloat16> keys, values;
  std::vector<float> queries;
  std::vector<Position> window_positions;

  explicit LayerData(std::size_t tokens) : n(tokens) {
    const std::size_t d = head_dim;
    keys.resize(kv_heads * n * d);
    values.resize(keys.size());
    FastRng rng(n);
    std::vector<float> drift(d);
    for (int h = 0; h < kv_heads; ++h) {
      for (auto& x : drift) x = rng.normal();
      for (std::size_t j = 0; j < n; ++j) {
        const std::size_t base = (static_cast<std::size_t>(h) * n + j) * d;
        for (std::size_t i = 0; i < d; ++i) {
          drift[i] = 0.95f * drift[i] + 0.3f * rng.normal();
          keys[base + i] = bfloat16(drift[i] + 0.5f * rng.normal());
          values[base + i] = bfloat16(rng.normal());
        }
      }
    }
    queries.resize(static_cast<std::size_t>(q_heads) * window_tokens * d);
    for (auto& q : queries) q = rng.normal();
    for (int t = 0; t < window_tokens; ++t) window_positions.push_back(static_cast<Position>(n) - window_tokens + t);
  }
};

/// Generated once per n and shared by every benchmark of that n.
const LayerData& layer_data(std::size_t n) {
  static std::mutex mutex;
  static std::map<std::size_t, std::unique_ptr<LayerData>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[n];
  if (!slot) slot = std::make_unique<LayerData>(n);
  return *slot;
}

/// A working layer: views over owned buffers holding `length` entries per head.
struct Layer {
  std::size_t capacity = 0;
  std::vector<bfloat16> keys, values;
  std::vector<float> bias;
  std::vector<Position> positions;
  std::vector<HeadView<bfloat16>> views;

  Layer(const LayerData& data, std::size_t length) : capacity(length) {
    const std::size_t d = head_dim;
    keys.resize(kv_heads * capacity * d);
    values.resize(keys.size());
    bias.assign(kv_heads * capacity, 0.0f);
    positions.resize(kv_heads * capacity);
    for (int h = 0; h < kv_heads; ++h) {
      const std::size_t base = static_cast<std::size_t>(h) * capacity;
      views.push_back(simcalkv::make_head_view<bfloat16>(keys.data() + base * d, values.data() + base * d,
                                                         bias.data() + base, positions.data() + base, nullptr,
                                                         length, capacity, head_dim));
    }
    reset(data);
  }
  /// Restores the first `capacity` entries of every head from the pristine data.
  void reset(const LayerData& data) {
    const std::size_t d = head_dim;
    for (int h = 0; h < kv_heads; ++h) {
      const std::size_t src = static_cast<std::size_t>(h) * data.n * d;
      const std::size_t dst = static_cast<std::size_t>(h) * capacity * d;
      std::memcpy(keys.data() + dst, data.keys.data() + src, capacity * d * sizeof(bfloat16));
      std::memcpy(values.data() + dst, data.values.data() + src, capacity * d * sizeof(bfloat16));
      std::fill_n(bias.data() + static_cast<std::size_t>(h) * capacity, capacity, 0.0f);
      for (std::size_t j = 0; j < capacity; ++j) positions[static_cast<std::size_t>(h) * capacity + j] = static_cast<Position>(j);
      views[static_cast<std::size_t>(h)].length = capacity;
    }
  }
};

std::size_t budget_for(std::size_t n, int keep_percent) {
  const auto b = static_cast<std::size_t>(std::llround(static_cast<double>(keep_percent) * static_cast<double>(n) / 100.0));
  return std::min(n, std::max<std::size_t>(b, 4 + window_tokens));
}

/// Similarity pairs SimCalKV examined, recomputed from the survivors (positions == entry index).
/// Reads the similarity search of a P inside `policy`; false when it is not a P.
template <class P>
bool search_of(const simcalkv::AnyPolicy& policy, bool& exact, std::size_t& radius) {
  const auto* p = policy.target<P>();
  if (!p) return false;
  exact = p->options().search == simcalkv::SimilaritySearch::exact;
  radius = p->options().search_radius;
  return true;
}

std::size_t similarity_pairs(const Layer& layer, std::size_t n, bool exact, std::size_t radius) {
  std::size_t pairs = 0;
  for (const auto& head : layer.views) {
    const std::size_t C = head.length, E = n - C;
    if (exact) {
      pairs += E * C;
      continue;
    }
    std::size_t next_kept = 0;
    for (std::size_t e = 0; e < n; ++e) {
      while (next_kept < C && static_cast<std::size_t>(head.positions[next_kept]) < e) ++next_kept;
      if (next_kept < C && static_cast<std::size_t>(head.positions[next_kept]) == e) continue;  // survivor
      const std::size_t lo = next_kept > radius ? next_kept - radius : 0;
      const std::size_t hi = std::min(C, next_kept + radius);
      pairs += hi - lo;
    }
  }
  return pairs;
}

void set_rates(benchmark::State& state, double seconds, double entries, double bytes, double flops) {
  const double iterations = static_cast<double>(state.iterations());
  const double per_iteration = iterations > 0 ? seconds / iterations : 0.0;
  state.counters["seconds"] = per_iteration;
  if (entries > 0) state.counters["entries_per_second"] = per_iteration > 0 ? entries / per_iteration : 0.0;
  if (bytes > 0) {
    state.counters["bytes"] = bytes;
    state.counters["bytes_per_second"] = per_iteration > 0 ? bytes / per_iteration : 0.0;
  }
  if (flops > 0) {
    state.counters["flops"] = flops;
    state.counters["flops_per_second"] = per_iteration > 0 ? flops / per_iteration : 0.0;
  }
}

void bm_compress(benchmark::State& state, const std::string& spec, std::size_t n, int keep_percent,
                 const simcalkv::kernels::KernelTable& table = simcalkv::kernels::active()) {
  const simcalkv::kernels::ScopedKernelTable kernels(table);
  const LayerData& data = layer_data(n);
  const simcalkv::AnyPolicy policy = simcalkv::make_policy(spec);
  Layer layer(data, n);
  const std::size_t budget = budget_for(n, keep_percent);
  simcalkv::LayerRequest<bfloat16> request;
  request.heads = layer.views;
  request.window = simcalkv::make_window_view(data.queries.data(), data.window_positions.data(), q_heads,
                                              window_tokens, head_dim);
  request.budget = simcalkv::Budget::entries(budget);
  request.layer = 16;
  request.num_layers = 32;
  simcalkv::Workspace workspace;
  simcalkv::CompressionStats stats;
  stats = policy.compress(request, workspace);  // warm-up: grows the workspace
  double total = 0.0;
  for (auto _ : state) {
    layer.reset(data);
    const double start = now_seconds();
    stats = policy.compress(request, workspace);
    const double t = seconds_since(start);
    benchmark::DoNotOptimize(stats);
    state.SetIterationTime(t);
    total += t;
  }

  const double d = head_dim;
  std::size_t kept = 0;
  for (const auto& h : layer.views) kept += h.length;
  const double bytes = kv_heads * 2.0 * static_cast<double>(n) * d * sizeof(bfloat16) +
                       2.0 * static_cast<double>(kept) * d * sizeof(bfloat16);
  const std::string name(policy.name());
  double score_rows = window_tokens * group;  // window queries per KV head
  if (name == "TOVA") score_rows = group;
  if (name == "StreamingLLM" || name == "Full") score_rows = 0;
  double flops = 2.0 * score_rows * static_cast<double>(n) * d * kv_heads;
  std::string model = score_rows > 0 ? "scoring" : "none";
  // The policies that match removed entries to kept keys: their similarity search is work the
  // roofline counts (exact: every removed-kept pair; local: the pairs within the radius).
  bool exact = false;
  std::size_t radius = 64;
  const bool matches = name == "AdaKV+SimCalKV" || search_of<simcalkv::SimCalKV>(policy, exact, radius) ||
                       search_of<simcalkv::KeepKV>(policy, exact, radius) ||
                       search_of<simcalkv::D2O>(policy, exact, radius) ||
                       search_of<simcalkv::LerpKV>(policy, exact, radius) ||
                       search_of<simcalkv::SlerpKV>(policy, exact, radius) ||
                       search_of<simcalkv::NlerpKV>(policy, exact, radius);
  if (matches) {
    flops += 2.0 * d * static_cast<double>(similarity_pairs(layer, n, exact, radius));
    model += exact ? "+similarity(exact)" : "+similarity(local r=" + std::to_string(radius) + ")";
  }
  if (name == "SimCalKV" || name == "AdaKV+SimCalKV")
    state.counters["flops_calibration"] = 2.0 * window_tokens * group * d * static_cast<double>(stats.entries_after);
  set_rates(state, total, static_cast<double>(kv_heads * n), bytes, flops);
  state.counters["budget"] = static_cast<double>(budget);
  state.counters["merged"] = static_cast<double>(stats.merged);
  state.SetLabel("flops model: " + model);
}

void bm_decode(benchmark::State& state, std::size_t n, int keep_percent,
               const simcalkv::kernels::KernelTable& table = simcalkv::kernels::active()) {
  const simcalkv::kernels::ScopedKernelTable kernels(table);
  const LayerData& data = layer_data(n);
  const auto length = static_cast<std::size_t>(std::llround(keep_percent * static_cast<double>(n) / 100.0));
  const double layer_bytes = kv_heads * static_cast<double>(length) * (2.0 * head_dim * sizeof(bfloat16) + sizeof(float));
  const auto copies = static_cast<std::size_t>(std::max(1.0, std::ceil(static_cast<double>(cold_bytes) / layer_bytes)));
  std::vector<std::unique_ptr<Layer>> layers;
  for (std::size_t c = 0; c < copies; ++c) {
    layers.push_back(std::make_unique<Layer>(data, length));
    // Merged entries carry biases; give every entry one so the kernel's bias path is exercised.
    for (std::size_t j = 0; j < layers.back()->bias.size(); ++j) layers.back()->bias[j] = 0.01f * static_cast<float>(j % 7);
  }
  FastRng rng(99);
  std::vector<float> queries(static_cast<std::size_t>(q_heads) * head_dim), out(queries.size());
  for (auto& q : queries) q = rng.normal();
  const std::size_t rows = static_cast<std::size_t>(group) * head_dim;
  std::size_t next = 0;
  double total = 0.0;
  for (auto _ : state) {
    Layer& layer = *layers[next];
    next = (next + 1) % copies;
    const double start = now_seconds();
    for (int h = 0; h < kv_heads; ++h)
      simcalkv::decode_attention(layer.views[static_cast<std::size_t>(h)],
                                 std::span<const float>(queries.data() + static_cast<std::size_t>(h) * rows, rows), group,
                                 std::span<float>(out.data() + static_cast<std::size_t>(h) * rows, rows));
    const double t = seconds_since(start);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    state.SetIterationTime(t);
    total += t;
  }
  set_rates(state, total, kv_heads * static_cast<double>(length), layer_bytes, 0.0);
  state.counters["copies"] = static_cast<double>(copies);
}

void bm_stream_copy(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double total = 0.0;
  for (auto _ : state) {
    const double start = now_seconds();
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
    const double t = seconds_since(start);
    state.SetIterationTime(t);
    total += t;
  }
  benchmark::DoNotOptimize(dst.data());
  set_rates(state, total, 0.0, static_cast<double>(bytes), 0.0);
  const double per_iteration = total / static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
  state.counters["traffic_bytes_per_second"] = per_iteration > 0 ? 2.0 * static_cast<double>(bytes) / per_iteration : 0.0;
}

/// A read-only stream (sum of the buffer): the most a single core can read.
void bm_stream_read(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::vector<float> src(bytes / sizeof(float), 1.0f);
  double total = 0.0;
  for (auto _ : state) {
    const double start = now_seconds();
    xsimd::batch<float> acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
    constexpr std::size_t L = xsimd::batch<float>::size;
    for (std::size_t i = 0; i + 4 * L <= src.size(); i += 4 * L) {
      acc0 += xsimd::batch<float>::load_unaligned(src.data() + i);
      acc1 += xsimd::batch<float>::load_unaligned(src.data() + i + L);
      acc2 += xsimd::batch<float>::load_unaligned(src.data() + i + 2 * L);
      acc3 += xsimd::batch<float>::load_unaligned(src.data() + i + 3 * L);
    }
    float sum = xsimd::hadd((acc0 + acc1) + (acc2 + acc3));
    benchmark::DoNotOptimize(sum);
    const double t = seconds_since(start);
    state.SetIterationTime(t);
    total += t;
  }
  set_rates(state, total, 0.0, static_cast<double>(bytes), 0.0);
}

/// The library's own C = A B^T (kernels/panels.hpp) at window scoring's shape, on one kernel table.
void bm_gemm_nt(benchmark::State& state, const simcalkv::kernels::KernelTable& table) {
  const simcalkv::kernels::ScopedKernelTable kernels(table);
  const auto m = static_cast<std::size_t>(state.range(0)), n = static_cast<std::size_t>(state.range(1)),
             k = static_cast<std::size_t>(state.range(2));
  FastRng rng(5);
  std::vector<float> a(m * k), b(n * k), c(m * n);
  for (auto& x : a) x = rng.normal();
  for (auto& x : b) x = rng.normal();
  simcalkv::kernels::gemm_nt(a.data(), m, b.data(), n, k, c.data(), n);  // warm-up
  double total = 0.0;
  for (auto _ : state) {
    const double start = now_seconds();
    simcalkv::kernels::gemm_nt(a.data(), m, b.data(), n, k, c.data(), n);
    benchmark::ClobberMemory();
    const double t = seconds_since(start);
    state.SetIterationTime(t);
    total += t;
  }
  set_rates(state, total, 0.0, 0.0, 2.0 * static_cast<double>(m * n * k));
}

void bm_gemm(benchmark::State& state) {
  const auto m = state.range(0), n = state.range(1), k = state.range(2);
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(m, k), b = Eigen::MatrixXf::Random(k, n), c(m, n);
  double total = 0.0;
  for (auto _ : state) {
    const double start = now_seconds();
    c.noalias() = a * b;
    benchmark::ClobberMemory();
    const double t = seconds_since(start);
    state.SetIterationTime(t);
    total += t;
  }
  benchmark::DoNotOptimize(c.data());
  set_rates(state, total, 0.0, 0.0, 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k));
}

std::string bench_label(const std::string& spec) {
  if (spec == "SimCalKV:search=exact") return "SimCalKV_exact";
  std::string out = spec;
  for (auto& c : out)
    if (c == ':' || c == '=' || c == ',' || c == '/') c = '_';
  return out;
}

/// "fma3+avx2" -> "avx2", "arm64+neon" -> "neon64": names without characters the benchmark filter treats specially.
std::string arch_label(std::string_view arch) {
  if (arch == "fma3+avx2") return "avx2";
  if (arch == "arm64+neon") return "neon64";
  std::string out(arch);
  for (auto& c : out)
    if (c == '+' || c == '<' || c == '>') c = '_';
  return out;
}

void register_all(bool full_grid) {
  const std::vector<std::size_t> sizes = {4096, 16384, 32768};
  const std::vector<int> keeps = {50, 25, 10};
  auto add_compress = [](const std::string& spec, std::size_t n, int keep) {
    const std::string name = "BM_Compress/" + bench_label(spec) + "/" + std::to_string(n) + "/" + std::to_string(keep);
    benchmark::RegisterBenchmark(name.c_str(), [spec, n, keep](benchmark::State& st) { bm_compress(st, spec, n, keep); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.5);
  };
  std::vector<std::string> specs = {"SimCalKV", "SimCalKV:search=exact"};
  for (const auto& name : simcalkv::policy_names())
    if (name != "Full" && name != "SimCalKV") specs.push_back(name);
  for (const auto& spec : specs)
    for (std::size_t n : sizes)
      for (int keep : keeps) {
        const bool simcal = spec == "SimCalKV";
        const bool exact = spec == "SimCalKV:search=exact";
        const bool wanted = full_grid || simcal || (exact && n == 4096) || (!exact && keep == 50);
        if (wanted) add_compress(spec, n, keep);
      }

  for (std::size_t n : sizes)
    for (int keep : {100, 50, 25, 10}) {
      const std::string name = "BM_DecodeAttention/" + std::to_string(n) + "/" + std::to_string(keep);
      benchmark::RegisterBenchmark(name.c_str(), [n, keep](benchmark::State& st) { bm_decode(st, n, keep); })
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond)
          ->Repetitions(3);
    }
  // The same targets on every kernel table this CPU runs, in the same run: the architectures compare.
  for (const simcalkv::kernels::KernelTable* table : simcalkv::kernels::runnable_tables()) {
    const std::string arch = arch_label(table->arch);
    for (int keep : keeps) {
      const std::string name = "BM_CompressArch/" + arch + "/SimCalKV/32768/" + std::to_string(keep);
      benchmark::RegisterBenchmark(name.c_str(), [keep, table](benchmark::State& st) {
        bm_compress(st, "SimCalKV", 32768, keep, *table);
      })->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
    }
    benchmark::RegisterBenchmark(("BM_GemmNT/" + arch).c_str(), [table](benchmark::State& st) { bm_gemm_nt(st, *table); })
        ->Args({128, 32768, 128})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->Repetitions(3);
    for (std::size_t n : {std::size_t{4096}, std::size_t{32768}}) {
      const std::string name = "BM_DecodeArch/" + arch + "/" + std::to_string(n) + "/100";
      benchmark::RegisterBenchmark(name.c_str(), [n, table](benchmark::State& st) { bm_decode(st, n, 100, *table); })
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond)
          ->Repetitions(3);
    }
  }
  benchmark::RegisterBenchmark("BM_StreamCopy", bm_stream_copy)
      ->Arg(1 << 20)
      ->Arg(16 << 20)
      ->Arg(256 << 20)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond)
      ->Repetitions(3);
  benchmark::RegisterBenchmark("BM_StreamRead", bm_stream_read)
      ->Arg(256 << 20)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond)
      ->Repetitions(3);
  benchmark::RegisterBenchmark("BM_Gemm", bm_gemm)
      ->Args({128, 4096, 128})
      ->Args({512, 512, 512})
      ->Args({1024, 1024, 1024})
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond)
      ->Repetitions(3);
}

}  // namespace

int main(int argc, char** argv) {
  bool full_grid = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--grid=full") == 0) {
      full_grid = true;
      continue;
    }
    args.push_back(argv[i]);
  }
  int count = static_cast<int>(args.size());
  Eigen::setNbThreads(1);
  register_all(full_grid);
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  benchmark::AddCustomContext("shape", "Llama-3.1-8B layer: 8 KV heads, 32 query heads, head_dim 128, bf16");
  std::string runnable;
  for (const auto* t : simcalkv::kernels::runnable_tables()) runnable += std::string(runnable.empty() ? "" : ",") + t->arch;
  benchmark::AddCustomContext("kernel_arch", simcalkv::kernels::active().arch);
  benchmark::AddCustomContext("kernel_archs_runnable", runnable);
  benchmark::AddCustomContext("threads", "1 (Eigen::setNbThreads(1), sequential executor)");
  benchmark::AddCustomContext("clock", use_wall_clock() ? "steady_clock" : "thread CPU time");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
