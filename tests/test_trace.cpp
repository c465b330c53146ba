// Tests for include/simcalkv/io/trace.hpp and tools/common/synthetic_trace.hpp.
#include "simcalkv/io/trace.hpp"
#include "synthetic_trace.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using simcalkv::Error;
using simcalkv::ErrorCode;
using simcalkv::io::DType;
using simcalkv::io::SafetensorsWriter;
using simcalkv::io::Trace;
using simcalkv::tools::SyntheticTraceConfig;
using Catch::Matchers::Contains;

class TraceTempDir {
 public:
  TraceTempDir() {
    static std::atomic<unsigned> counter{0};
    std::random_device entropy;
    dir_ = fs::temp_directory_path() /
           ("simcalkv_trace_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
            std::to_string(entropy()));
    fs::create_directories(dir_);
  }
  ~TraceTempDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  TraceTempDir(const TraceTempDir&) = delete;
  TraceTempDir& operator=(const TraceTempDir&) = delete;
  [[nodiscard]] std::string file(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
};

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <class F>
std::string trace_error_of(F&& f, ErrorCode code = ErrorCode::io) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.code() == code);
    return e.what();
  }
  FAIL("expected a simcalkv::Error");
  return {};
}

SyntheticTraceConfig small_config(std::uint64_t seed = 1) {
  SyntheticTraceConfig c;
  c.num_layers = 3;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.n = 40;
  c.seed = seed;
  return c;
}

/// A valid trace file built by hand, with hooks to break one thing.
struct TraceFileSpec {
  int layers = 2, q_heads = 4, kv_heads = 2, head_dim = 8;
  std::int64_t n = 5;
  std::map<std::string, std::string> metadata_overrides;  // value "" removes the key
  std::string drop_tensor;                                 // leave this tensor out
  std::string odd_tensor;                                  // give it n + 1 tokens
  std::string int_tensor;                                  // write it as I32
  std::string nan_tensor;                                  // put a NaN in it
  bool extra_layer = false;                                // add layers.{layers}.q
};

void write_spec(const std::string& path, const TraceFileSpec& s) {
  SafetensorsWriter w;
  std::map<std::string, std::string> meta = {
      {"format", "simcalkv-trace"}, {"version", "1"},
      {"num_layers", std::to_string(s.layers)}, {"num_q_heads", std::to_string(s.q_heads)},
      {"num_kv_heads", std::to_string(s.kv_heads)}, {"head_dim", std::to_string(s.head_dim)},
      {"rope", "applied"}};
  for (const auto& [k, v] : s.metadata_overrides) {
    if (v.empty()) meta.erase(k);
    else meta[k] = v;
  }
  for (const auto& [k, v] : meta) w.set_metadata(k, v);
  auto add = [&](const std::string& name, int heads) {
    if (name == s.drop_tensor) return;
    const std::int64_t n = name == s.odd_tensor ? s.n + 1 : s.n;
    const auto count = static_cast<std::size_t>(heads * n * s.head_dim);
    if (name == s.int_tensor) {
      std::vector<std::int32_t> data(count, 1);
      w.add(name, DType::I32, {heads, n, s.head_dim}, data.data(), count * 4);
      return;
    }
    std::vector<float> data(count);
    for (std::size_t i = 0; i < count; ++i) data[i] = static_cast<float>(i % 17) * 0.25f - 2.0f;
    if (name == s.nan_tensor) data[count / 2] = std::numeric_limits<float>::quiet_NaN();
    w.add(name, DType::F32, {heads, n, s.head_dim}, data.data(), count * 4);
  };
  for (int l = 0; l < s.layers + (s.extra_layer ? 1 : 0); ++l) {
    add(simcalkv::io::trace_tensor_name(l, "q"), s.q_heads);
    if (l == s.layers) break;
    add(simcalkv::io::trace_tensor_name(l, "k"), s.kv_heads);
    add(simcalkv::io::trace_tensor_name(l, "v"), s.kv_heads);
  }
  w.write(path);
}

double cosine(const float* a, const float* b, int d) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < d; ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

/// Undoes HF rotate_half RoPE at `position`.
std::vector<float> unrotate(const float* x, int d, std::int64_t position, double theta) {
  std::vector<float> out(x, x + d);
  const int half = d / 2;
  for (int i = 0; i < half; ++i) {
    const double angle = -static_cast<double>(position) * std::pow(theta, -2.0 * i / d);
    const double c = std::cos(angle), s = std::sin(angle);
    out[i] = static_cast<float>(x[i] * c - x[i + half] * s);
    out[i + half] = static_cast<float>(x[i + half] * c + x[i] * s);
  }
  return out;
}

}  // namespace

TEST_CASE("trace: helpers index the row-major layout", "[io]") {
  Trace t;
  t.num_layers = 2;
  t.num_q_heads = 6;
  t.num_kv_heads = 2;
  t.head_dim = 4;
  t.n = 3;
  t.allocate();
  CHECK(t.group_size() == 3);
  CHECK(t.kv_head_of(5) == 1);
  CHECK(t.q[1].size() == 6 * 3 * 4);
  CHECK(t.k[0].size() == 2 * 3 * 4);
  CHECK(t.layer_ids == std::vector<int>{0, 1});
  CHECK(t.query(1, 4, 2) == t.q[1].data() + (4 * 3 + 2) * 4);
  CHECK(t.key(0, 1, 1) == t.k[0].data() + (1 * 3 + 1) * 4);
  CHECK(t.value(1, 0, 2) == t.v[1].data() + 2 * 4);
  t.validate();
  t.v[1].pop_back();
  CHECK_THAT(trace_error_of([&] { t.validate(); }, ErrorCode::invalid_argument), Contains("layer 1 v"));
}

TEST_CASE("trace: F32 round trip is exact", "[io]") {
  TraceTempDir tmp;
  const std::string path = tmp.file("exact.safetensors");
  Trace trace = simcalkv::tools::make_synthetic_trace(small_config());
  trace.metadata["model"] = "synthetic-test";
  simcalkv::io::write_trace(path, trace);
  const Trace back = simcalkv::io::read_trace(path);
  CHECK(back.num_layers == 3);
  CHECK(back.num_q_heads == 4);
  CHECK(back.num_kv_heads == 2);
  CHECK(back.head_dim == 16);
  CHECK(back.n == 40);
  CHECK(back.layer_ids == std::vector<int>{0, 1, 2});
  CHECK(back.q == trace.q);
  CHECK(back.k == trace.k);
  CHECK(back.v == trace.v);
  CHECK(back.metadata.at("model") == "synthetic-test");
  CHECK(back.metadata.at("source") == "simcalkv-synthetic");
  CHECK(back.metadata.count("format") == 0);  // format keys are not repeated in metadata

  // The file is an ordinary safetensors file with the documented metadata and tensors.
  const simcalkv::io::SafetensorsFile file(path);
  CHECK(file.metadata_value("format") == "simcalkv-trace");
  CHECK(file.metadata_value("version") == "1");
  CHECK(file.metadata_value("rope") == "applied");
  CHECK(file.metadata_value("num_kv_heads") == "2");
  CHECK(file.info("layers.2.q").shape == std::vector<std::int64_t>{4, 40, 16});
  CHECK(file.info("layers.0.v").shape == std::vector<std::int64_t>{2, 40, 16});
  CHECK(file.info("layers.0.v").dtype == DType::F32);
}

TEST_CASE("trace: F16 and BF16 round trips are close", "[io]") {
  TraceTempDir tmp;
  const Trace trace = simcalkv::tools::make_synthetic_trace(small_config(5));
  for (DType dtype : {DType::BF16, DType::F16}) {
    INFO(simcalkv::io::dtype_name(dtype));
    const std::string path = tmp.file(std::string("narrow_") + simcalkv::io::dtype_name(dtype) + ".safetensors");
    simcalkv::io::write_trace(path, trace, dtype);
    CHECK(simcalkv::io::SafetensorsFile(path).info("layers.1.k").dtype == dtype);
    const Trace back = simcalkv::io::read_trace(path);
    const double rel = dtype == DType::BF16 ? 1e-2 : 1e-3;
    const double abs = dtype == DType::BF16 ? 0.0 : 1e-6;  // f16 subnormals
    std::size_t bad = 0;
    double worst = 0.0;
    for (int l = 0; l < trace.num_layers; ++l) {
      for (const auto* pair : {&trace.q, &trace.k, &trace.v}) {
        const auto& a = (*pair)[static_cast<std::size_t>(l)];
        const auto& b = (pair == &trace.q ? back.q : pair == &trace.k ? back.k : back.v)[static_cast<std::size_t>(l)];
        REQUIRE(a.size() == b.size());
        for (std::size_t i = 0; i < a.size(); ++i) {
          const double err = std::abs(double(a[i]) - b[i]);
          worst = std::max(worst, err / (std::abs(a[i]) + 1e-30));
          if (err > rel * std::abs(a[i]) + abs) ++bad;
        }
      }
    }
    INFO("worst relative error " << worst);
    CHECK(bad == 0);
  }
}

TEST_CASE("trace: reading a layer subset", "[io]") {
  TraceTempDir tmp;
  const std::string path = tmp.file("subset.safetensors");
  const Trace trace = simcalkv::tools::make_synthetic_trace(small_config(2));
  simcalkv::io::write_trace(path, trace, DType::F32);
  const Trace part = simcalkv::io::read_trace(path, std::vector<int>{2, 0});
  CHECK(part.num_layers == 2);
  CHECK(part.layer_ids == std::vector<int>{2, 0});
  CHECK(part.q[0] == trace.q[2]);
  CHECK(part.k[0] == trace.k[2]);
  CHECK(part.v[1] == trace.v[0]);
  CHECK(*part.key(1, 1, 39) == *trace.key(0, 1, 39));

  CHECK_THAT(trace_error_of([&] { (void)simcalkv::io::read_trace(path, std::vector<int>{3}); },
                            ErrorCode::invalid_argument),
             Contains("subset.safetensors") && Contains("layer 3 requested, the file has 3 layers"));
  CHECK_THAT(trace_error_of([&] { (void)simcalkv::io::read_trace(path, std::vector<int>{1, 1}); },
                            ErrorCode::invalid_argument),
             Contains("layer 1 requested twice"));
  CHECK_THAT(trace_error_of([&] { (void)simcalkv::io::read_trace(path, std::vector<int>{}); },
                            ErrorCode::invalid_argument),
             Contains("empty layer subset"));
}

TEST_CASE("trace: invalid trace files are rejected with the file and the tensor", "[io]") {
  TraceTempDir tmp;
  const std::string path = tmp.file("bad_trace.safetensors");
  auto error_for = [&](const TraceFileSpec& spec, ErrorCode code = ErrorCode::io) {
    write_spec(path, spec);
    return trace_error_of([&] { (void)simcalkv::io::read_trace(path); }, code);
  };

  {
    const TraceFileSpec good;
    write_spec(path, good);
    const Trace t = simcalkv::io::read_trace(path);
    CHECK(t.n == 5);
    CHECK(t.group_size() == 2);
  }
  TraceFileSpec s;
  SECTION("format missing") {
    s.metadata_overrides["format"] = "";
    CHECK_THAT(error_for(s), Contains("bad_trace.safetensors") && Contains("not a simcalkv trace"));
  }
  SECTION("format wrong") {
    s.metadata_overrides["format"] = "pt";
    CHECK_THAT(error_for(s), Contains("bad_trace.safetensors") && Contains("format='pt'"));
  }
  SECTION("version") {
    s.metadata_overrides["version"] = "2";
    CHECK_THAT(error_for(s), Contains("bad_trace.safetensors") && Contains("unsupported trace version '2'"));
  }
  SECTION("rope not applied") {
    s.metadata_overrides["rope"] = "none";
    CHECK_THAT(error_for(s), Contains("rope='none'"));
  }
  SECTION("integers that do not parse") {
    for (const char* bad : {"4x", "", " 4", "-2", "0", "1e3", "99999999999"}) {
      INFO(bad);
      TraceFileSpec t;
      t.metadata_overrides["num_q_heads"] = bad;
      if (std::string(bad).empty()) {
        CHECK_THAT(error_for(t), Contains("metadata key 'num_q_heads' is absent"));
      } else {
        CHECK_THAT(error_for(t), Contains("bad_trace.safetensors") && Contains("num_q_heads='") &&
                                     Contains("not a positive integer"));
      }
    }
  }
  SECTION("query heads not a multiple of kv heads") {
    s.q_heads = 3;
    CHECK_THAT(error_for(s), Contains("num_q_heads (3) is not a multiple of num_kv_heads (2)"));
  }
  SECTION("a missing layer tensor") {
    s.drop_tensor = "layers.1.v";
    CHECK_THAT(error_for(s), Contains("bad_trace.safetensors") && Contains("tensor 'layers.1.v' is absent"));
  }
  SECTION("inconsistent token counts") {
    s.odd_tensor = "layers.1.k";
    CHECK_THAT(error_for(s), Contains("tensor 'layers.1.k' has shape [2, 6, 8], expected [2, 5, 8]"));
  }
  SECTION("head_dim disagreeing with the metadata") {
    s.metadata_overrides["head_dim"] = "16";
    CHECK_THAT(error_for(s), Contains("tensor 'layers.0.q' has shape [4, 5, 8], expected [4, 5, 16]"));
  }
  SECTION("kv heads disagreeing with the metadata") {
    s.metadata_overrides["num_kv_heads"] = "1";
    CHECK_THAT(error_for(s), Contains("tensor 'layers.0.k'") && Contains("expected [1, 5, 8]"));
  }
  SECTION("a tensor of the wrong dtype") {
    s.int_tensor = "layers.0.v";
    CHECK_THAT(error_for(s), Contains("tensor 'layers.0.v' has dtype I32"));
  }
  SECTION("more layers than num_layers") {
    s.extra_layer = true;
    CHECK_THAT(error_for(s), Contains("unexpected tensor 'layers.2.q'"));
  }
  SECTION("NaN in the data") {
    s.nan_tensor = "layers.1.q";
    CHECK_THAT(error_for(s, ErrorCode::non_finite), Contains("bad_trace.safetensors") &&
                                                        Contains("tensor 'layers.1.q' holds NaN or Inf"));
  }
  SECTION("not a safetensors file at all") {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << "hello";
    CHECK_THAT(trace_error_of([&] { (void)simcalkv::io::read_trace(path); }),
               Contains("bad_trace.safetensors") && Contains("truncated"));
  }
}

TEST_CASE("trace: write_trace rejects what it cannot write", "[io]") {
  TraceTempDir tmp;
  const std::string path = tmp.file("w.safetensors");
  Trace t = simcalkv::tools::make_synthetic_trace(small_config());
  CHECK_THAT(trace_error_of([&] { simcalkv::io::write_trace(path, t, DType::I32); }, ErrorCode::invalid_argument),
             Contains("dtype I32"));
  Trace reserved = t;
  reserved.metadata["version"] = "7";
  CHECK_THAT(trace_error_of([&] { simcalkv::io::write_trace(path, reserved); }, ErrorCode::invalid_argument),
             Contains("metadata key 'version' is reserved"));
  Trace big = t;
  big.k[0][3] = 1e6f;
  CHECK_THAT(trace_error_of([&] { simcalkv::io::write_trace(path, big, DType::F16); }, ErrorCode::invalid_argument),
             Contains("outside the F16 range"));
  Trace broken = t;
  broken.q.pop_back();
  CHECK_THAT(trace_error_of([&] { simcalkv::io::write_trace(path, broken); }, ErrorCode::invalid_argument),
             Contains("num_layers is 3"));
  Trace nan = t;
  nan.v[2][0] = std::numeric_limits<float>::infinity();
  CHECK_THAT(trace_error_of([&] { simcalkv::io::write_trace(path, nan); }, ErrorCode::non_finite),
             Contains("layer 2 holds NaN or Inf"));
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("trace: synthetic traces are deterministic", "[io]") {
  TraceTempDir tmp;
  const auto a = tmp.file("a.safetensors"), b = tmp.file("b.safetensors"), c = tmp.file("c.safetensors");
  simcalkv::io::write_trace(a, simcalkv::tools::make_synthetic_trace(small_config(11)));
  simcalkv::io::write_trace(b, simcalkv::tools::make_synthetic_trace(small_config(11)));
  simcalkv::io::write_trace(c, simcalkv::tools::make_synthetic_trace(small_config(12)));
  const std::string bytes_a = file_bytes(a);
  CHECK(bytes_a.size() > 1000);
  CHECK(bytes_a == file_bytes(b));
  CHECK(bytes_a != file_bytes(c));

  // Fewer layers give a prefix of the same trace.
  SyntheticTraceConfig two = small_config(11);
  two.num_layers = 2;
  const Trace full = simcalkv::tools::make_synthetic_trace(small_config(11));
  const Trace prefix = simcalkv::tools::make_synthetic_trace(two);
  CHECK(prefix.k[1] == full.k[1]);
  CHECK(prefix.q[1] == full.q[1]);

  // Every value is finite, every layer is distinct.
  for (int l = 0; l < full.num_layers; ++l) {
    const auto i = static_cast<std::size_t>(l);
    CHECK(simcalkv::all_finite(full.q[i].data(), full.q[i].size()));
    CHECK(simcalkv::all_finite(full.k[i].data(), full.k[i].size()));
    CHECK(simcalkv::all_finite(full.v[i].data(), full.v[i].size()));
  }
  CHECK(full.k[0] != full.k[1]);
}

TEST_CASE("trace: synthetic trace shapes and config checks", "[io]") {
  SyntheticTraceConfig c = small_config();
  c.num_q_heads = 6;
  c.num_kv_heads = 3;
  c.head_dim = 10;
  c.n = 3;  // shorter than the sinks
  const Trace t = simcalkv::tools::make_synthetic_trace(c);
  CHECK(t.num_layers == 3);
  CHECK(t.group_size() == 2);
  CHECK(t.q[0].size() == 6 * 3 * 10);
  CHECK(t.v[2].size() == 3 * 3 * 10);
  t.validate();

  SyntheticTraceConfig odd = small_config();
  odd.head_dim = 15;
  CHECK_THAT(trace_error_of([&] { (void)simcalkv::tools::make_synthetic_trace(odd); }, ErrorCode::invalid_argument),
             Contains("head_dim"));
  SyntheticTraceConfig groups = small_config();
  groups.num_kv_heads = 3;
  CHECK_THAT(trace_error_of([&] { (void)simcalkv::tools::make_synthetic_trace(groups); }, ErrorCode::invalid_argument),
             Contains("multiple"));
}

TEST_CASE("trace: synthetic trace has the structure of real attention", "[io]") {
  // Default shape (head_dim 128, n 2048, 8 query heads over 2 KV heads), one layer; built once
  // for all sections.
  static const SyntheticTraceConfig c = [] {
    SyntheticTraceConfig config;
    config.num_layers = 1;
    config.seed = 3;
    return config;
  }();
  static const Trace t = simcalkv::tools::make_synthetic_trace(c);
  const int d = t.head_dim;
  const std::int64_t n = t.n;
  const std::int64_t sinks = c.num_sinks;

  SECTION("neighbouring keys are more alike than random pairs") {
    std::mt19937_64 gen(9);
    for (int h = 0; h < t.num_kv_heads; ++h) {
      double near = 0.0, far = 0.0;
      int count = 0;
      for (std::int64_t i = sinks + 1; i < n; ++i) {
        const auto j = static_cast<std::int64_t>(sinks + gen() % static_cast<std::uint64_t>(n - sinks));
        near += cosine(t.key(0, h, i), t.key(0, h, i - 1), d);
        far += cosine(t.key(0, h, i), t.key(0, h, j), d);
        ++count;
      }
      near /= count;
      far /= count;
      INFO("head " << h << ": neighbours " << near << ", random pairs " << far);
      CHECK(near > far + 0.1);
    }
  }

  SECTION("the last query concentrates on the sinks and a few hundred keys") {
    double sink_mass = 0.0, entropy = 0.0, top = 0.0, keys90 = 0.0, sink_ratio = 0.0;
    for (int g = 0; g < t.num_q_heads; ++g) {
      const float* q = t.query(0, g, n - 1);
      std::vector<double> w(static_cast<std::size_t>(n));
      double mx = -1e300;
      for (std::int64_t j = 0; j < n; ++j) {
        const float* k = t.key(0, t.kv_head_of(g), j);
        double s = 0.0;
        for (int i = 0; i < d; ++i) s += double(q[i]) * k[i];
        w[static_cast<std::size_t>(j)] = s / std::sqrt(double(d));
        mx = std::max(mx, w[static_cast<std::size_t>(j)]);
      }
      double z = 0.0;
      for (auto& x : w) z += (x = std::exp(x - mx));
      double h = 0.0, sm = 0.0;
      for (std::int64_t j = 0; j < n; ++j) {
        const double p = w[static_cast<std::size_t>(j)] / z;
        w[static_cast<std::size_t>(j)] = p;
        if (p > 0) h -= p * std::log(p);
        if (j < sinks) sm += p;
      }
      sink_mass += sm;
      sink_ratio += (sm / double(sinks)) / ((1.0 - sm) / double(n - sinks));
      entropy += h;
      std::sort(w.rbegin(), w.rend());
      top += w[0];
      double acc = 0.0;
      int m = 0;
      while (acc < 0.9) acc += w[static_cast<std::size_t>(m++)];
      keys90 += m;
    }
    const double heads = t.num_q_heads;
    sink_mass /= heads;
    sink_ratio /= heads;
    entropy /= heads;
    top /= heads;
    keys90 /= heads;
    INFO("sink mass " << sink_mass << ", sink/ordinary weight " << sink_ratio << ", entropy " << entropy
                      << " (uniform " << std::log(double(n)) << "), top weight " << top << ", keys for 90% "
                      << keys90);
    CHECK(sink_mass > 0.1);
    CHECK(sink_ratio > 50.0);
    CHECK(entropy < std::log(double(n)) - 1.5);  // clearly below uniform
    CHECK(entropy > 1.0);                        // but not one-hot
    CHECK(top < 0.6);
    CHECK(keys90 > 10.0);
    CHECK(keys90 < 1000.0);
  }

  SECTION("a few key channels are outliers") {
    for (int h = 0; h < t.num_kv_heads; ++h) {
      std::vector<double> rms(static_cast<std::size_t>(d), 0.0);
      for (std::int64_t j = sinks; j < n; ++j) {
        const float* k = t.key(0, h, j);
        for (int i = 0; i < d; ++i) rms[static_cast<std::size_t>(i)] += double(k[i]) * k[i];
      }
      for (auto& x : rms) x = std::sqrt(x / double(n - sinks));
      std::vector<double> sorted = rms;
      std::sort(sorted.begin(), sorted.end());
      const double median = sorted[sorted.size() / 2];
      const auto big = std::count_if(rms.begin(), rms.end(), [&](double x) { return x > 4.0 * median; });
      INFO("head " << h << ": largest channel rms " << sorted.back() << ", median " << median);
      CHECK(sorted.back() > 5.0 * median);
      CHECK(big >= 2);
      CHECK(big <= 6);
    }
  }

  SECTION("about a tenth of the tokens repeat an earlier token (visible once RoPE is undone)") {
    const int h = 0;
    std::vector<std::vector<float>> pre;
    for (std::int64_t j = 0; j < n; ++j) pre.push_back(unrotate(t.key(0, h, j), d, j, c.rope_theta));
    std::int64_t repeats = 0;
    for (std::int64_t i = sinks + 1; i < n; ++i) {
      for (std::int64_t j = sinks; j < i; ++j) {
        if (cosine(pre[static_cast<std::size_t>(i)].data(), pre[static_cast<std::size_t>(j)].data(), d) > 0.995) {
          ++repeats;
          break;
        }
      }
    }
    const double share = double(repeats) / double(n - sinks - 1);
    INFO("share of near-duplicate keys " << share);
    CHECK(share > 0.05);
    CHECK(share < 0.2);
  }

  SECTION("sink values are near zero") {
    for (int h = 0; h < t.num_kv_heads; ++h) {
      for (std::int64_t s = 0; s < sinks; ++s) {
        double norm = 0.0;
        for (int i = 0; i < d; ++i) norm += double(t.value(0, h, s)[i]) * t.value(0, h, s)[i];
        CHECK(std::sqrt(norm) < 0.5);
      }
    }
  }
}
