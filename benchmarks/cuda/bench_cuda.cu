// GPU benchmarks of the CUDA kernels, one run, written as JSON (benchmarks/cuda/run_device.sh
// runs it next to the PyTorch baselines; summarize.py turns both into benchmarks/results/).
//
//  copy       cudaMemcpy device-to-device bandwidth, counting bytes read plus bytes written
//  compress   all 32 layers of a Llama-3.1-8B-shaped cache (bf16, 8 KV heads, head dim 128, 32 query
//             heads, window 32) at 32k tokens, one request: StreamingLLM, SnapKV, SimCalKV (local and
//             exact search), AdaKV+SimCalKV; every repetition restores the cache first (untimed)
//  decode     biased split-KV decode attention over the ragged and the paged layout, 2k-32k tokens
//             per head, batches of about 2 GiB of K and V: bytes read / time against copy bandwidth;
//             the ragged kernel with and without TMA, and its cp.async copies alone and plain loads
//             of the same bytes (diagnostics)
//  batch      one layer's decode attention for the batch that fits a fixed KV budget when the cache
//             is compressed 1x, 2x, 4x, 8x (32k context); the dense part of the step comes from
//             torch_baselines.py (same card, same run)
//
//   bench_cuda [--json FILE] [--quick] [--kv-budget-gib 40] [--sections decode,batch,compress]
//              [--decode-splits 0,4,16]
//   (section "simcalkv": SimCalKV at keep 0.25 alone, with its stage profile; "simcalkv-parts": the
//   same without the calibration and without merged keys; "profile-target": one call of each
//   kernel for a profiler; "stream-variants": decode's cp.async copies alone for other tile sizes,
//   stage counts and block sizes, and plain loads of the same bytes)
#include <simcalkv/cuda/simcalkv.cuh>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#define CHECK_CUDA(expr)                                                                                       \
  do {                                                                                                         \
    const cudaError_t e_ = (expr);                                                                             \
    if (e_ != cudaSuccess) {                                                                                   \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #expr); \
      std::exit(2);                                                                                            \
    }                                                                                                          \
  } while (0)

namespace sc = simcalkv::cuda;

namespace {

// ---------------------------------------------------------------------------------------------
// Device-side random data (a counter hash), so gigabytes need no host generation.

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}
__device__ __forceinline__ float unit(uint64_t x) { return (hash32(x) >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }

/// Keys with positional locality: a smooth drift per dimension plus noise; values uniform noise.
__global__ void fill_kv(sc::bf16* k, sc::bf16* v, int64_t rows, int d, uint64_t seed) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * d;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / d;
    const int c = static_cast<int>(i % d);
    const float phase = 6.2831853f * (hash32(seed * 977 + c) & 1023) / 1024.0f;
    const float freq = 0.002f + 0.02f * ((hash32(seed * 131 + c) & 255) / 256.0f);
    k[i] = __float2bfloat16_rn(1.5f * sinf(freq * static_cast<float>(r % 65536) + phase) + 0.5f * unit(seed * 7 + i));
    v[i] = __float2bfloat16_rn(unit(seed * 11 + i));
  }
}
template <class T>
__global__ void fill_uniform(T* x, int64_t n, float scale, uint64_t seed) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = scale * unit(seed * 13 + i);
    if constexpr (std::is_same_v<T, float>) x[i] = u;
    else x[i] = __float2bfloat16_rn(u);
  }
}
__global__ void fill_positions(int32_t* pos, int64_t rows, int per_seq) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    pos[i] = static_cast<int32_t>(i % per_seq);
}

template <class U>
U* dalloc(std::size_t n) {
  U* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(U)));
  return p;
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  void start() { CHECK_CUDA(cudaEventRecord(a)); }
  double stop_ms() {
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    return ms;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::ostringstream g_json;
bool g_first = true;
void json_item(const std::string& s) {
  g_json << (g_first ? "\n    " : ",\n    ") << s;
  g_first = false;
}

// ---------------------------------------------------------------------------------------------

double copy_bandwidth() {
  const std::size_t bytes = std::size_t{2} << 30;
  char* a = dalloc<char>(bytes);
  char* b = dalloc<char>(bytes);
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  Timer t;
  std::vector<double> ms;
  for (int i = 0; i < 12; ++i) {
    t.start();
    CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    const double x = t.stop_ms();
    if (i >= 2) ms.push_back(x);
  }
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  const double m = median(ms);
  return 2.0 * static_cast<double>(bytes) / (m * 1e-3) / 1e9;  // GB/s, read + write
}

// ---------------------------------------------------------------------------------------------
// Compression of a whole model's cache

/// All 32 layers in one allocation (as in an engine's KV pool), so the whole model can also be
/// compressed by one call whose "requests" are the layers (each layer's heads stay a request).
struct ModelCache {
  int layers = 32, H = 8, d = 128, G = 4, W = 32, n = 32768, requests = 1;
  sc::bf16 *k = nullptr, *v = nullptr, *k0 = nullptr, *v0 = nullptr;
  float* bias = nullptr;
  int32_t *pos = nullptr, *lengths = nullptr;
  int64_t* offsets = nullptr;  // [layers * S]: sequence s of the pool starts at row s * n
  sc::bf16* q_bf16 = nullptr;
  float* q_f32 = nullptr;
  int32_t* wpos = nullptr;

  [[nodiscard]] int S() const { return requests * H; }
  [[nodiscard]] int64_t rows() const { return static_cast<int64_t>(S()) * n; }
  [[nodiscard]] int64_t all_rows() const { return rows() * layers; }

  void allocate() {
    std::vector<int64_t> off(static_cast<std::size_t>(layers) * S());
    for (std::size_t s = 0; s < off.size(); ++s) off[s] = static_cast<int64_t>(s) * n;
    offsets = dalloc<int64_t>(off.size());
    CHECK_CUDA(cudaMemcpy(offsets, off.data(), off.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    k = dalloc<sc::bf16>(all_rows() * d), v = dalloc<sc::bf16>(all_rows() * d);
    k0 = dalloc<sc::bf16>(all_rows() * d), v0 = dalloc<sc::bf16>(all_rows() * d);
    bias = dalloc<float>(all_rows()), pos = dalloc<int32_t>(all_rows());
    lengths = dalloc<int32_t>(static_cast<std::size_t>(layers) * S());
    for (int l = 0; l < layers; ++l) {
      fill_kv<<<4096, 256>>>(k0 + l * rows() * d, v0 + l * rows() * d, rows(), d, 1000 + l);
      CHECK_CUDA(cudaGetLastError());
    }
    const int64_t qn = static_cast<int64_t>(requests) * H * G * W * d;
    q_bf16 = dalloc<sc::bf16>(qn);
    q_f32 = dalloc<float>(qn);
    fill_uniform<<<256, 256>>>(q_f32, qn, 2.0f, 77);
    fill_uniform<<<256, 256>>>(q_bf16, qn, 2.0f, 77);
    std::vector<int32_t> wp(static_cast<std::size_t>(requests) * W);
    for (int b = 0; b < requests; ++b)
      for (int t = 0; t < W; ++t) wp[b * W + t] = n - W + t;
    wpos = dalloc<int32_t>(wp.size());
    CHECK_CUDA(cudaMemcpy(wpos, wp.data(), wp.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaDeviceSynchronize());
  }
  void restore() {
    std::vector<int32_t> len(static_cast<std::size_t>(layers) * S(), n);
    CHECK_CUDA(cudaMemcpyAsync(k, k0, all_rows() * d * 2, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cudaMemcpyAsync(v, v0, all_rows() * d * 2, cudaMemcpyDeviceToDevice));
    CHECK_CUDA(cudaMemsetAsync(bias, 0, all_rows() * 4));
    fill_positions<<<4096, 256>>>(pos, all_rows(), n);
    CHECK_CUDA(cudaMemcpyAsync(lengths, len.data(), len.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaDeviceSynchronize());
  }
  void release() {
    cudaFree(k), cudaFree(v), cudaFree(k0), cudaFree(v0), cudaFree(bias), cudaFree(pos), cudaFree(lengths);
    cudaFree(offsets), cudaFree(q_bf16), cudaFree(q_f32), cudaFree(wpos);
  }
  /// Layer l alone (its 8 sequences), or the whole model (l = -1: 32 x 8 sequences).
  sc::LayerKV<sc::bf16, sc::RaggedLayout> layer(int l) const {
    const int64_t base = l < 0 ? 0 : l * rows();
    sc::LayerKV<sc::bf16, sc::RaggedLayout> kv;
    kv.keys = k + base * d, kv.values = v + base * d, kv.key_stride = d, kv.value_stride = d;
    kv.bias = bias + base, kv.positions = pos + base, kv.lengths = lengths + (l < 0 ? 0 : l * S());
    kv.layout = sc::RaggedLayout{offsets};
    kv.num_seqs = l < 0 ? layers * S() : S(), kv.num_kv_heads = H, kv.head_dim = d;
    return kv;
  }
  template <class Q>
  sc::WindowArgs<Q> window(bool model = false) const {
    sc::WindowArgs<Q> w;
    if constexpr (std::is_same_v<Q, float>) w.queries = q_f32;
    else w.queries = q_bf16;
    // The model-level call sees each layer as a request; the benchmark's layers share one window.
    w.request_stride = model ? 0 : static_cast<int64_t>(H) * G * W * d;
    w.head_stride = static_cast<int64_t>(W) * d;
    w.token_stride = d;
    w.positions = wpos;
    w.position_request_stride = model ? 0 : W;
    w.num_tokens = W;
    w.group = G;
    return w;
  }
  sc::CompressShape shape(bool model = false) const {
    sc::CompressShape s;
    s.num_seqs = (model ? layers : 1) * S(), s.num_kv_heads = H, s.head_dim = d, s.window_tokens = W, s.group = G;
    s.max_length = n, s.total_length = (model ? layers : 1) * rows();
    return s;
  }
};

/// Records an event after every stage of compress_layer; stage time = time since the previous mark.
struct EventHook : sc::detail::StageHook {
  cudaEvent_t start{};
  std::vector<std::pair<std::string, cudaEvent_t>> marks;
  EventHook() {
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventRecord(start, nullptr));
  }
  ~EventHook() override {
    for (auto& [stage, e] : marks) cudaEventDestroy(e);
    cudaEventDestroy(start);
  }
  void mark(const char* stage, cudaStream_t stream) override {
    cudaEvent_t e;
    CHECK_CUDA(cudaEventCreate(&e));
    CHECK_CUDA(cudaEventRecord(e, stream));
    marks.emplace_back(stage, e);
  }
  /// Prints the time of each stage (summed over repeated stages) and returns it as a JSON object.
  std::string report(const std::string& label) {
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<std::pair<std::string, double>> totals;
    cudaEvent_t prev = start;
    for (auto& mark : marks) {
      float x = 0;
      CHECK_CUDA(cudaEventElapsedTime(&x, prev, mark.second));
      prev = mark.second;
      auto it = std::find_if(totals.begin(), totals.end(), [&](const auto& p) { return p.first == mark.first; });
      if (it == totals.end()) totals.emplace_back(mark.first, x);
      else it->second += x;
    }
    std::printf("         stages, %s (ms, an event after each stage):", label.c_str());
    std::ostringstream o;
    o << "{";
    bool first = true;
    for (const auto& [stage, x] : totals) {
      std::printf(" %s %.2f;", stage.c_str(), x);
      o << (first ? "" : ", ") << "\"" << stage << "\": " << x;
      first = false;
    }
    std::printf("\n");
    o << "}";
    return o.str();
  }
};

template <class Q>
void bench_compress(ModelCache& m, const std::string& name, const sc::PolicyConfig& cfg, double keep, int reps,
                    bool profile = false, bool graph = false) {
  const auto shape = m.shape();
  const std::size_t bytes = sc::compress_workspace_bytes<sc::bf16, Q>(shape, cfg);
  void* ws = dalloc<unsigned char>(bytes);
  const sc::BudgetRule rule{sc::BudgetKind::keep_fraction, keep};
  sc::SeqStats* stats = dalloc<sc::SeqStats>(m.S());
  Timer t;
  std::vector<double> ms;
  for (int r = 0; r < reps + 1; ++r) {
    m.restore();
    t.start();
    for (int l = 0; l < m.layers; ++l)
      CHECK_CUDA(sc::compress_layer(m.layer(l), m.template window<Q>(), cfg, rule, nullptr, shape, ws, bytes, nullptr,
                                    l == m.layers - 1 ? stats : nullptr));
    const double x = t.stop_ms();
    if (r > 0 || reps == 0) ms.push_back(x);
  }
  std::vector<sc::SeqStats> st(m.S());
  CHECK_CUDA(cudaMemcpy(st.data(), stats, st.size() * sizeof(sc::SeqStats), cudaMemcpyDeviceToHost));
  long before = 0, after = 0, merged = 0, evicted = 0;
  for (const auto& x : st) before += x.before, after += x.after, merged += x.merged, evicted += x.evicted;
  const double med = median(ms);
  std::printf("compress %-22s keep %.2f  %8.3f ms for %d layers (%.3f ms/layer)  last layer: %ld -> %ld entries, %ld merged, %ld evicted; workspace %.1f MiB\n",
              name.c_str(), keep, med, m.layers, med / m.layers, before, after, merged, evicted,
              static_cast<double>(bytes) / (1 << 20));
  std::ostringstream o;
  o << "{\"bench\": \"compress\", \"policy\": \"" << name << "\", \"keep\": " << keep << ", \"layers\": " << m.layers
    << ", \"kv_heads\": " << m.H << ", \"head_dim\": " << m.d << ", \"group\": " << m.G << ", \"window\": " << m.W
    << ", \"tokens\": " << m.n << ", \"queries\": \"" << (std::is_same_v<Q, float> ? "f32" : "bf16")
    << "\", \"ms_median\": " << med << ", \"reps\": " << ms.size() << ", \"workspace_bytes\": " << bytes
    << ", \"entries_before_last_layer\": " << before << ", \"entries_after_last_layer\": " << after
    << ", \"merged_last_layer\": " << merged << ", \"evicted_last_layer\": " << evicted;

  {
    // The whole model in one call: 32 layers x 8 KV heads = 256 sequences, layers as requests.
    const auto mshape = m.shape(true);
    const std::size_t mbytes = sc::compress_workspace_bytes<sc::bf16, Q>(mshape, cfg);
    void* mws = dalloc<unsigned char>(mbytes);
    std::vector<double> mms;
    for (int r = 0; r < reps + 1; ++r) {
      m.restore();
      t.start();
      CHECK_CUDA(sc::compress_layer(m.layer(-1), m.template window<Q>(true), cfg, rule, nullptr, mshape, mws, mbytes));
      const double x = t.stop_ms();
      if (r > 0 || reps == 0) mms.push_back(x);
    }
    const double mm = median(mms);
    if (profile) {
      m.restore();
      EventHook hook;
      sc::detail::stage_hook() = &hook;
      CHECK_CUDA(sc::compress_layer(m.layer(-1), m.template window<Q>(true), cfg, rule, nullptr, mshape, mws, mbytes));
      sc::detail::stage_hook() = nullptr;
      o << ", \"model_call_stages_ms\": " << hook.report("one call");
    }
    std::printf("         %-22s keep %.2f  %8.3f ms for all %d layers in one call (256 sequences; workspace %.0f MiB)\n",
                name.c_str(), keep, mm, m.layers, static_cast<double>(mbytes) / (1 << 20));
    o << ", \"model_call_ms_median\": " << mm << ", \"model_call_workspace_bytes\": " << mbytes;
    CHECK_CUDA(cudaFree(mws));
  }
  if (graph) {
    // The 32 layers captured into one CUDA graph (how an engine replays fixed-shape work).
    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t g = nullptr;
    cudaGraphExec_t exec = nullptr;
    cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed);
    for (int l = 0; l < m.layers && err == cudaSuccess; ++l)
      err = sc::compress_layer(m.layer(l), m.template window<Q>(), cfg, rule, nullptr, shape, ws, bytes, stream);
    const cudaError_t end = cudaStreamEndCapture(stream, &g);
    if (err == cudaSuccess) err = end;
    if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, g, 0);
    if (err == cudaSuccess) {
      std::vector<double> gms;
      cudaEvent_t a, b;
      CHECK_CUDA(cudaEventCreate(&a));
      CHECK_CUDA(cudaEventCreate(&b));
      for (int r = 0; r < reps + 1; ++r) {
        m.restore();
        CHECK_CUDA(cudaEventRecord(a, stream));
        CHECK_CUDA(cudaGraphLaunch(exec, stream));
        CHECK_CUDA(cudaEventRecord(b, stream));
        CHECK_CUDA(cudaEventSynchronize(b));
        float x = 0;
        CHECK_CUDA(cudaEventElapsedTime(&x, a, b));
        if (r > 0) gms.push_back(x);
      }
      const double gm = median(gms);
      std::printf("         %-22s keep %.2f  %8.3f ms for %d layers as one CUDA graph\n", name.c_str(), keep, gm, m.layers);
      o << ", \"graph_ms_median\": " << gm;
      cudaGraphExecDestroy(exec);
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    } else {
      std::printf("         graph capture failed: %s\n", cudaGetErrorString(err));
      o << ", \"graph_error\": \"" << cudaGetErrorString(err) << "\"";
      cudaGetLastError();
    }
    if (g) cudaGraphDestroy(g);
    CHECK_CUDA(cudaStreamDestroy(stream));
  }
  if (profile) {
    m.restore();
    EventHook hook;
    sc::detail::stage_hook() = &hook;
    for (int l = 0; l < m.layers; ++l)
      CHECK_CUDA(sc::compress_layer(m.layer(l), m.template window<Q>(), cfg, rule, nullptr, shape, ws, bytes));
    sc::detail::stage_hook() = nullptr;
    o << ", \"stages_ms\": " << hook.report("per-layer calls");
  }
  o << "}";
  json_item(o.str());
  CHECK_CUDA(cudaFree(ws));
  CHECK_CUDA(cudaFree(stats));
}

// ---------------------------------------------------------------------------------------------
// Decode attention

/// Diagnostic: the decode kernel's copies alone (the same KvStream, grid and split of a sequence,
/// no arithmetic), to tell a read-bound kernel from a compute-bound one.
template <class Layout, int kTile = sc::detail::kMmaTile, int kStages = sc::detail::kMmaStages,
          int kThreads = sc::detail::kDecodeThreads>
__global__ void __launch_bounds__(kThreads) stream_only_kernel(sc::LayerKV<sc::bf16, Layout> kv, int splits, int* sink) {
  using Stream = sc::detail::KvStream<sc::bf16, 128, kTile, 136, kStages, kThreads, Layout>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ typename Stream::Shared sh;
  const int x = blockIdx.x, s = blockIdx.y;
  const int n = kv.lengths[s];
  const int per = ((n + splits - 1) / splits + kTile - 1) / kTile * kTile;
  const int begin = min(n, x * per), end = min(n, begin + per);
  Stream st(kv, s, begin, end, smem_raw, sh);
  st.start();
  for (int t = 0; t < st.tiles; ++t) {
    st.advance(t);
    const auto ahead = st.fetch(t + kStages);
    st.prepare(t + kStages, ahead);
  }
  st.finish();
  __syncthreads();
  if (threadIdx.x == 0 && smem_raw[0] == 0x7b && smem_raw[1] == 0x2d) *sink = 1;
}

/// Diagnostic: the GPU's read rate for these bytes, by plain 16-byte loads (four in flight per
/// thread and array), as a ceiling for a kernel that reads K, V and the bias once.
__global__ void read_ceiling_kernel(const uint4* a, const uint4* b, int64_t n16, const float* bias, int64_t nb,
                                    unsigned* sink) {
  unsigned acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t i = first;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    uint4 x[4], y[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) x[u] = __ldcs(a + i + u * stride), y[u] = __ldcs(b + i + u * stride);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= x[u].x ^ x[u].y ^ x[u].z ^ x[u].w ^ y[u].x ^ y[u].y ^ y[u].z ^ y[u].w;
  }
  for (; i < n16; i += stride) {
    const uint4 x = __ldcs(a + i), y = __ldcs(b + i);
    acc ^= x.x ^ x.y ^ x.z ^ x.w ^ y.x ^ y.y ^ y.z ^ y.w;
  }
  for (int64_t j = first; j < nb; j += stride) acc ^= __float_as_uint(__ldcs(bias + j));
  if (acc == 0x9e3779b9u) *sink = acc;
}

struct DecodeData {
  int S = 0, H = 8, G = 4, d = 128, n = 0, requests = 0;
  sc::bf16 *k = nullptr, *v = nullptr, *q = nullptr, *out = nullptr;
  float* bias = nullptr;
  int32_t *pos = nullptr, *lengths = nullptr, *table = nullptr;
  int64_t* offsets = nullptr;
  int page = 16;
  void* ws = nullptr;
  std::size_t ws_bytes = 0;

  void allocate(int reqs, int len, bool paged_table) {
    requests = reqs, n = len, S = reqs * H;
    const int64_t rows = static_cast<int64_t>(S) * n;
    k = dalloc<sc::bf16>(rows * d), v = dalloc<sc::bf16>(rows * d);
    bias = dalloc<float>(rows), pos = dalloc<int32_t>(rows);
    fill_kv<<<4096, 256>>>(k, v, rows, d, 5 + len);
    fill_uniform<<<4096, 256>>>(bias, rows, 0.5f, 9);
    fill_positions<<<1024, 256>>>(pos, rows, n);
    q = dalloc<sc::bf16>(static_cast<int64_t>(reqs) * H * G * d);
    fill_uniform<<<64, 256>>>(q, static_cast<int64_t>(reqs) * H * G * d, 2.0f, 3);
    out = dalloc<sc::bf16>(static_cast<int64_t>(reqs) * H * G * d);
    std::vector<int32_t> len_h(S, n);
    lengths = dalloc<int32_t>(S);
    CHECK_CUDA(cudaMemcpy(lengths, len_h.data(), S * 4, cudaMemcpyHostToDevice));
    std::vector<int64_t> off(S);
    for (int s = 0; s < S; ++s) off[s] = static_cast<int64_t>(s) * n;
    offsets = dalloc<int64_t>(S);
    CHECK_CUDA(cudaMemcpy(offsets, off.data(), S * 8, cudaMemcpyHostToDevice));
    if (paged_table) {
      // Per-head tables over pages of 16 rows, pages shuffled so that no sequence is contiguous.
      const int pages_per = n / page;
      const int pages = S * pages_per;
      std::vector<int32_t> ids(pages);
      for (int i = 0; i < pages; ++i) ids[i] = i;
      uint64_t x = 88172645463325252ull;
      for (int i = pages - 1; i > 0; --i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        std::swap(ids[i], ids[x % static_cast<uint64_t>(i + 1)]);
      }
      table = dalloc<int32_t>(pages);
      CHECK_CUDA(cudaMemcpy(table, ids.data(), pages * 4, cudaMemcpyHostToDevice));
    }
    CHECK_CUDA(cudaDeviceSynchronize());
  }
  void release() {
    cudaFree(k), cudaFree(v), cudaFree(bias), cudaFree(pos), cudaFree(q), cudaFree(out), cudaFree(lengths);
    cudaFree(offsets);
    if (table) cudaFree(table);
    if (ws) cudaFree(ws);
    *this = DecodeData{};
  }
  template <class Layout>
  sc::LayerKV<sc::bf16, Layout> kv(const Layout& layout) const {
    sc::LayerKV<sc::bf16, Layout> l;
    l.keys = k, l.values = v, l.key_stride = d, l.value_stride = d, l.bias = bias, l.positions = pos;
    l.lengths = lengths, l.layout = layout, l.num_seqs = S, l.num_kv_heads = H, l.head_dim = d;
    return l;
  }
  sc::DecodeIO<sc::bf16, sc::bf16> io() const {
    sc::DecodeIO<sc::bf16, sc::bf16> o;
    o.q = q, o.q_request_stride = static_cast<int64_t>(H) * G * d, o.q_head_stride = d;
    o.out = out, o.out_request_stride = o.q_request_stride, o.out_head_stride = d;
    return o;
  }
  template <class Layout>
  double time_ms(const Layout& layout, int reps, bool tensor_cores = true, int splits = 0, bool tma = true) {
    sc::DecodeShape shape{S, H, d, G, n, splits, tensor_cores};
    shape.tma = tma;
    const std::size_t need = sc::decode_workspace_bytes(shape);
    if (need > ws_bytes) {
      if (ws) CHECK_CUDA(cudaFree(ws));
      ws = dalloc<unsigned char>(need);
      ws_bytes = need;
    }
    const auto l = kv(layout);
    const auto o = io();
    for (int i = 0; i < 3; ++i) CHECK_CUDA(sc::decode_attention(l, o, shape, ws, ws_bytes));
    // The mean of `inner` back-to-back calls: the GPU's time per call, with the host's launch
    // work behind the previous call (torch_baselines.py times SDPA and FlexAttention the same way).
    constexpr int inner = 10;
    Timer t;
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      t.start();
      for (int j = 0; j < inner; ++j) CHECK_CUDA(sc::decode_attention(l, o, shape, ws, ws_bytes));
      ms.push_back(t.stop_ms() / inner);
    }
    return median(ms);
  }
  [[nodiscard]] double bytes() const { return static_cast<double>(S) * n * (2.0 * d * 2 + 4); }

  /// Mean time of ten back-to-back launches (median over `reps`), like time_ms.
  template <class Launch>
  static double time_launches(int reps, Launch launch) {
    for (int i = 0; i < 3; ++i) launch();
    CHECK_CUDA(cudaGetLastError());
    Timer t;
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      t.start();
      for (int j = 0; j < 10; ++j) launch();
      ms.push_back(t.stop_ms() / 10);
    }
    CHECK_CUDA(cudaGetLastError());
    return median(ms);
  }
  /// The decode kernel's copies alone, with the splits decode_attention picks.
  template <class Layout>
  double stream_only_ms(const Layout& layout, int reps) {
    const sc::DecodeShape shape{S, H, d, G, n};
    const int splits = sc::detail::decode_splits(shape);
    constexpr std::size_t smem = sc::detail::MmaStream<sc::bf16, 128, Layout>::bytes;
    CHECK_CUDA(cudaFuncSetAttribute(stream_only_kernel<Layout>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
    int* sink = dalloc<int>(1);
    const auto l = kv(layout);
    const double ms = time_launches(reps, [&] {
      stream_only_kernel<Layout><<<dim3(splits, S), sc::detail::kDecodeThreads, smem>>>(l, splits, sink);
    });
    CHECK_CUDA(cudaFree(sink));
    return ms;
  }
  /// The same for other tile sizes, stage counts and block sizes (splits for their occupancy).
  struct StreamRun {
    double ms;
    int splits, blocks_per_sm;
  };
  template <int kTile, int kStages, int kThreads>
  StreamRun stream_variant(int reps) {
    using Stream = sc::detail::KvStream<sc::bf16, 128, kTile, 136, kStages, kThreads, sc::RaggedLayout>;
    constexpr std::size_t smem = Stream::bytes;
    auto kernel = stream_only_kernel<sc::RaggedLayout, kTile, kStages, kThreads>;
    CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    int occ = 0, sms = 0;
    CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, kThreads, smem));
    CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    sc::DecodeShape shape{S, H, d, G, n};
    const int splits = sc::detail::decode_choose_splits(shape, sms, occ);
    int* sink = dalloc<int>(1);
    const auto l = kv(sc::RaggedLayout{offsets});
    const double ms = time_launches(reps, [&] { kernel<<<dim3(splits, S), kThreads, smem>>>(l, splits, sink); });
    CHECK_CUDA(cudaFree(sink));
    return StreamRun{ms, splits, occ};
  }
  double read_ceiling_ms(int reps) {
    int sms = 0;
    CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    unsigned* sink = dalloc<unsigned>(1);
    const int64_t rows = static_cast<int64_t>(S) * n;
    const int64_t n16 = rows * d * 2 / 16;
    const double ms = time_launches(reps, [&] {
      read_ceiling_kernel<<<sms * 8, 256>>>(reinterpret_cast<const uint4*>(k), reinterpret_cast<const uint4*>(v), n16,
                                            bias, rows, sink);
    });
    CHECK_CUDA(cudaFree(sink));
    return ms;
  }
};

template <int kTile, int kStages, int kThreads>
void show_stream_variant(DecodeData& D, double copy_gbs) {
  const auto r = D.stream_variant<kTile, kStages, kThreads>(30);
  std::printf("stream n=%-6d tile %3d, %2d stages, %3d threads: %.3f ms (%.3f of copy), splits %d, %d blocks/SM\n",
              D.n, kTile, kStages, kThreads, r.ms, D.bytes() / 1e9 / (r.ms * 1e-3) / copy_gbs, r.splits,
              r.blocks_per_sm);
}

/// Diagnostic sweep: the decode kernel's copies alone for other tiles, stages and block sizes.
void bench_stream_variants(double copy_gbs) {
  for (int n : {8192, 32768}) {
    const int reqs = std::max(1, static_cast<int>(2.0 * (1 << 30) / (8.0 * n * 516.0)));
    DecodeData D;
    D.allocate(reqs, n, false);
    show_stream_variant<64, 3, 128>(D, copy_gbs);
    show_stream_variant<64, 4, 128>(D, copy_gbs);
    show_stream_variant<64, 6, 128>(D, copy_gbs);
    show_stream_variant<32, 6, 128>(D, copy_gbs);
    show_stream_variant<32, 4, 128>(D, copy_gbs);
    show_stream_variant<128, 3, 256>(D, copy_gbs);
    show_stream_variant<64, 3, 256>(D, copy_gbs);
    show_stream_variant<16, 12, 128>(D, copy_gbs);
    const double ms = D.read_ceiling_ms(30);
    std::printf("stream n=%-6d plain 16-byte loads: %.3f ms (%.3f of copy)\n", n, ms,
                D.bytes() / 1e9 / (ms * 1e-3) / copy_gbs);
    D.release();
  }
}

/// Decode time against the number of splits per sequence (0: the kernel's own choice).
void bench_decode_splits(double copy_gbs, const std::vector<int>& splits) {
  for (int n : {8192, 32768}) {
    const int reqs = std::max(1, static_cast<int>(2.0 * (1 << 30) / (8.0 * n * 516.0)));
    DecodeData D;
    D.allocate(reqs, n, true);
    const double gb = D.bytes() / 1e9;
    for (int x : splits) {
      const double tr = D.time_ms(sc::RaggedLayout{D.offsets}, 30, true, x);
      const double tp = D.time_ms(sc::PagedLayout{D.table, n / D.page, D.page, 1}, 30, true, x);
      std::printf("decode-splits n=%-6d splits %3d: ragged %.3f ms (%.3f of copy), paged %.3f ms (%.3f)\n", n, x, tr,
                  gb / (tr * 1e-3) / copy_gbs, tp, gb / (tp * 1e-3) / copy_gbs);
      std::ostringstream o;
      o << "{\"bench\": \"decode_splits\", \"tokens_per_head\": " << n << ", \"splits\": " << x
        << ", \"ragged_ms\": " << tr << ", \"paged_ms\": " << tp << "}";
      json_item(o.str());
    }
    D.release();
  }
}

void bench_decode(double copy_gbs, bool quick) {
  const int lens[] = {2048, 8192, 16384, 32768};
  for (int n : lens) {
    if (quick && n != 8192) continue;
    const double target = 2.0 * (1 << 30);
    const int reqs = std::max(1, static_cast<int>(target / (8.0 * n * 516.0)));
    DecodeData D;
    D.allocate(reqs, n, true);
    const double t_ragged = D.time_ms(sc::RaggedLayout{D.offsets}, 30);
    const double t_paged = D.time_ms(sc::PagedLayout{D.table, n / D.page, D.page, 1}, 30);
    const double t_fma = D.time_ms(sc::RaggedLayout{D.offsets}, 30, false);
    const double t_ragged_cp = D.time_ms(sc::RaggedLayout{D.offsets}, 30, true, 0, false);
    const double t_stream = D.stream_only_ms(sc::RaggedLayout{D.offsets}, 30);
    const double t_read = D.read_ceiling_ms(30);
    const double gb = D.bytes() / 1e9;
    std::printf("decode n=%-6d ragged without TMA %.3f ms (%.2f of copy); diagnostics: those cp.async copies alone %.3f ms (%.2f), plain reads of the same bytes %.3f ms (%.2f)\n",
                n, t_ragged_cp, gb / (t_ragged_cp * 1e-3) / copy_gbs, t_stream, gb / (t_stream * 1e-3) / copy_gbs, t_read,
                gb / (t_read * 1e-3) / copy_gbs);
    const double bw_r = gb / (t_ragged * 1e-3), bw_p = gb / (t_paged * 1e-3), bw_f = gb / (t_fma * 1e-3);
    std::printf("decode n=%-6d batch %3d x 8 KV heads, G 4: ragged %.3f ms = %.0f GB/s (%.2f of copy), paged %.3f ms = %.0f GB/s (%.2f); CUDA-core kernel %.3f ms (%.2f)\n",
                n, reqs, t_ragged, bw_r, bw_r / copy_gbs, t_paged, bw_p, bw_p / copy_gbs, t_fma, bw_f / copy_gbs);
    std::ostringstream o;
    o << "{\"bench\": \"decode\", \"tokens_per_head\": " << n << ", \"requests\": " << reqs << ", \"kv_heads\": 8, \"group\": 4"
      << ", \"head_dim\": 128, \"bytes\": " << D.bytes() << ", \"ragged_ms\": " << t_ragged << ", \"paged_ms\": " << t_paged
      << ", \"ragged_gbs\": " << bw_r << ", \"paged_gbs\": " << bw_p << ", \"ragged_fraction_of_copy\": " << bw_r / copy_gbs
      << ", \"paged_fraction_of_copy\": " << bw_p / copy_gbs << ", \"cuda_core_kernel_ms\": " << t_fma
      << ", \"cuda_core_kernel_fraction_of_copy\": " << bw_f / copy_gbs << ", \"ragged_cp_async_ms\": " << t_ragged_cp << ", \"copies_only_ms\": " << t_stream
      << ", \"read_ceiling_ms\": " << t_read << "}";
    json_item(o.str());
    D.release();
  }
}

/// One layer's decode attention for the batch that fits `budget_gib` of KV (K, V, bias, position:
/// 520 bytes per entry per KV head) with 32k-token contexts compressed by each factor.
void bench_batch(double budget_gib) {
  const int layers = 32, H = 8, context = 32768;
  for (int f : {1, 2, 4, 8}) {
    const int n = context / f;
    const double per_request = static_cast<double>(layers) * H * n * 520.0;
    const int reqs = static_cast<int>(budget_gib * (1ull << 30) / per_request);
    DecodeData D;
    D.allocate(reqs, n, false);
    const double t = D.time_ms(sc::RaggedLayout{D.offsets}, 20);
    std::printf("batch  compression %dx: %3d requests x %5d entries/head fit %.0f GiB; one layer's attention %.3f ms, %d layers %.2f ms\n",
                f, reqs, n, budget_gib, t, layers, t * layers);
    std::ostringstream o;
    o << "{\"bench\": \"batch\", \"compression\": " << f << ", \"context\": " << context << ", \"entries_per_head\": " << n
      << ", \"kv_budget_gib\": " << budget_gib << ", \"requests\": " << reqs << ", \"attention_layer_ms\": " << t
      << ", \"attention_step_ms\": " << t * layers << "}";
    json_item(o.str());
    D.release();
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool quick = false;
  double budget = 40.0;
  std::string sections = "decode,batch,compress";
  std::vector<int> decode_splits;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (a == "--quick") quick = true;
    else if (a == "--kv-budget-gib" && i + 1 < argc) budget = std::atof(argv[++i]);
    else if (a == "--sections" && i + 1 < argc) sections = argv[++i];
    else if (a == "--decode-splits" && i + 1 < argc) {
      std::stringstream list(argv[++i]);
      for (std::string x; std::getline(list, x, ',');) decode_splits.push_back(std::atoi(x.c_str()));
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  auto section = [&](const char* name) { return ("," + sections + ",").find(std::string(",") + name + ",") != std::string::npos; };
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              static_cast<double>(prop.totalGlobalMem) / (1 << 30));
  const double copy = copy_bandwidth();
  std::printf("copy bandwidth (read + write): %.0f GB/s\n", copy);
  {
    std::ostringstream o;
    o << "{\"bench\": \"copy\", \"gbs_read_plus_write\": " << copy << "}";
    json_item(o.str());
  }

  if (section("profile-target")) {
    // One whole-model SimCalKV call and one ragged and one paged decode at 8k, nothing else: the
    // launches a profiler (ncu) looks at.
    ModelCache m;
    m.allocate();
    m.restore();
    const auto mshape = m.shape(true);
    const auto cfg = sc::simcalkv_config();
    const std::size_t mbytes = sc::compress_workspace_bytes<sc::bf16, sc::bf16>(mshape, cfg);
    void* mws = dalloc<unsigned char>(mbytes);
    CHECK_CUDA(sc::compress_layer(m.layer(-1), m.template window<sc::bf16>(true), cfg,
                                  sc::BudgetRule{sc::BudgetKind::keep_fraction, 0.25}, nullptr, mshape, mws, mbytes));
    CHECK_CUDA(cudaDeviceSynchronize());
    CHECK_CUDA(cudaFree(mws));
    m.release();
    DecodeData D;
    D.allocate(63, 8192, true);
    D.time_ms(sc::RaggedLayout{D.offsets}, 1);
    D.time_ms(sc::PagedLayout{D.table, 8192 / D.page, D.page, 1}, 1);
    D.release();
  }
  if (!decode_splits.empty()) bench_decode_splits(copy, decode_splits);
  if (section("stream-variants")) bench_stream_variants(copy);
  if (section("decode")) bench_decode(copy, quick);
  if (section("batch")) bench_batch(budget);
  if (section("simcalkv-parts")) {
    // Where the merge's time goes: SimCalKV without the calibration (log_count bias) and without
    // merging keys, against the default, one call for the whole model each.
    ModelCache m;
    m.allocate();
    for (int variant = 0; variant < 3; ++variant) {
      auto c = sc::simcalkv_config();
      if (variant == 1) c.bias = sc::BiasMode::log_count;
      if (variant == 2) c.merge_keys = false, c.bias = sc::BiasMode::log_count;
      const char* name[] = {"SimCalKV", "SimCalKV log_count bias", "SimCalKV log_count, keys kept"};
      bench_compress<sc::bf16>(m, name[variant], c, 0.25, 3, true, false);
    }
    m.release();
  }
  if (section("compress") || section("simcalkv")) {
    ModelCache m;
    if (quick) m.layers = 4;
    m.allocate();
    const int reps = quick ? 1 : 3;
    const bool all = section("compress");
    if (all) {
      bench_compress<sc::bf16>(m, "StreamingLLM", sc::streaming_llm_config(), 0.25, reps, false, true);
      bench_compress<sc::bf16>(m, "SnapKV", sc::snapkv_config(), 0.25, reps, true, true);
    }
    for (double keep : {0.5, 0.25, 0.1})
      if (all || keep == 0.25)
        bench_compress<sc::bf16>(m, "SimCalKV", sc::simcalkv_config(), keep, reps, true, all);
    if (all) {
      bench_compress<float>(m, "SimCalKV f32-window", sc::simcalkv_config(), 0.25, reps);
      auto c = sc::simcalkv_config();
      c.adakv = true;
      bench_compress<sc::bf16>(m, "AdaKV+SimCalKV", c, 0.25, reps);
      c = sc::simcalkv_config();
      c.search = sc::Search::exact;
      bench_compress<sc::bf16>(m, "SimCalKV exact", c, 0.25, quick ? 0 : 1);
    }
    m.release();
  }

  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << "{\n  \"device\": \"" << prop.name << "\",\n  \"sms\": " << prop.multiProcessorCount << ",\n  \"results\": ["
      << g_json.str() << "\n  ]\n}\n";
  }
  return 0;
}
