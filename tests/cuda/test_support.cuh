// Helpers of the CUDA tests and benchmarks: error checks, device buffers, random data, and a
// layer of several requests uploaded in the ragged or a paged layout.
#pragma once

#include <simcalkv/cuda/simcalkv.cuh>

#include "cpu_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#define CHECK_CUDA(expr)                                                                              \
  do {                                                                                                \
    const cudaError_t e_ = (expr);                                                                    \
    if (e_ != cudaSuccess) {                                                                          \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #expr); \
      std::exit(2);                                                                                   \
    }                                                                                                 \
  } while (0)

namespace tsupport {

template <class U>
struct DeviceBuffer {
  U* ptr = nullptr;
  std::size_t count = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { resize(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), count(o.count) { o.ptr = nullptr, o.count = 0; }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  void resize(std::size_t n) {
    if (ptr) CHECK_CUDA(cudaFree(ptr));
    ptr = nullptr;
    count = n;
    if (n) CHECK_CUDA(cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * sizeof(U)));
  }
  void upload(const std::vector<U>& v) {
    resize(v.size());
    if (!v.empty()) CHECK_CUDA(cudaMemcpy(ptr, v.data(), v.size() * sizeof(U), cudaMemcpyHostToDevice));
  }
  std::vector<U> download() const {
    std::vector<U> v(count);
    if (count) CHECK_CUDA(cudaMemcpy(v.data(), ptr, count * sizeof(U), cudaMemcpyDeviceToHost));
    return v;
  }
};

template <class U>
std::vector<U> download(const U* p, std::size_t n) {
  std::vector<U> v(n);
  if (n) CHECK_CUDA(cudaMemcpy(v.data(), p, n * sizeof(U), cudaMemcpyDeviceToHost));
  return v;
}

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : e_(seed) {}
  float uniform() { return static_cast<float>((e_() >> 11) * (1.0 / 9007199254740992.0)); }
  float normal() {
    const float u1 = std::max(uniform(), 1e-12f), u2 = uniform();
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2);
  }
  std::uint64_t next() { return e_(); }

 private:
  std::mt19937_64 e_;
};

enum class LayoutKind { ragged, paged_per_head, paged_shared };
inline const char* layout_name(LayoutKind k) {
  return k == LayoutKind::ragged ? "ragged" : k == LayoutKind::paged_per_head ? "paged" : "paged-shared";
}

/// Host data of one layer: requests x heads (ref::Request each), as the CPU reference sees it.
struct HostLayer {
  ref::Elem elem = ref::Elem::bf16;
  int d = 128, H = 1, G = 1, W = 0;
  std::vector<ref::Request> reqs;
  [[nodiscard]] int num_seqs() const { return static_cast<int>(reqs.size()) * H; }
  [[nodiscard]] const ref::Seq& seq(int s) const { return reqs[s / H].heads[s % H]; }
  [[nodiscard]] int max_len() const {
    int m = 0;
    for (int s = 0; s < num_seqs(); ++s) m = std::max(m, seq(s).length);
    return m;
  }
  [[nodiscard]] long long total_len() const {
    long long t = 0;
    for (int s = 0; s < num_seqs(); ++s) t += seq(s).length;
    return t;
  }
};

/// Random layer: request b has base length L_b = base - 5 b; head h drops 17 h random positions
/// outside the window. Keys drift slowly (positional locality), values are normal; a tenth of the
/// entries carry a bias log(1 + k), a few -inf when `neg_inf_bias`; queries are normal and, unless
/// `float_queries`, rounded to the storage type.
inline HostLayer make_layer(ref::Elem elem, int d, int H, int G, int W, int requests, int base, std::uint64_t seed,
                            bool float_queries, bool with_scores, bool neg_inf_bias = false, int drop_step = 17) {
  HostLayer L;
  L.elem = elem, L.d = d, L.H = H, L.G = G, L.W = W;
  Rng rng(seed);
  auto round = [&](float x) { return ref::from_bits(elem, ref::to_bits(elem, x)); };
  for (int b = 0; b < requests; ++b) {
    ref::Request r;
    const int Lb = base - 5 * b;
    for (int h = 0; h < H; ++h) {
      std::vector<char> dropped(static_cast<std::size_t>(Lb), 0);
      int drops = std::min(drop_step * h, std::max(0, Lb - W - 8));
      while (drops > 0) {
        const int j = 4 + static_cast<int>(rng.next() % static_cast<std::uint64_t>(std::max(1, Lb - W - 4)));
        if (j < Lb - W && !dropped[j]) dropped[j] = 1, --drops;
      }
      ref::Seq s;
      std::vector<float> drift(static_cast<std::size_t>(d));
      for (auto& x : drift) x = rng.normal();
      for (int j = 0; j < Lb; ++j) {
        for (int i = 0; i < d; ++i) drift[i] = 0.9f * drift[i] + 0.45f * rng.normal();
        if (dropped[j]) continue;
        for (int i = 0; i < d; ++i) {
          s.keys.push_back(ref::to_bits(elem, drift[i]));
          s.values.push_back(ref::to_bits(elem, rng.normal()));
        }
        float bias = 0.0f;
        if (rng.uniform() < 0.1f) bias = std::log(1.0f + static_cast<float>(1 + rng.next() % 5));
        if (neg_inf_bias && rng.uniform() < 0.01f) bias = -std::numeric_limits<float>::infinity();
        s.bias.push_back(bias);
        s.pos.push_back(j);
        if (with_scores) s.scores.push_back(rng.uniform());
        ++s.length;
      }
      r.heads.push_back(std::move(s));
    }
    r.queries.resize(static_cast<std::size_t>(H) * G * W * d);
    for (auto& q : r.queries) q = float_queries ? rng.normal() : round(rng.normal());
    for (int t = 0; t < W; ++t) r.window_pos.push_back(Lb - W + t);
    L.reqs.push_back(std::move(r));
  }
  return L;
}

/// A layer on the device in one of the layouts, with the window.
template <class T>
struct DeviceLayer {
  LayoutKind kind = LayoutKind::ragged;
  int S = 0, H = 1, d = 0, page = 16;
  DeviceBuffer<T> keys, values;
  DeviceBuffer<float> bias, scores;
  DeviceBuffer<std::int32_t> pos, lengths;
  DeviceBuffer<std::int64_t> offsets;
  DeviceBuffer<std::int32_t> table;
  std::int64_t table_stride = 0;
  std::vector<std::int64_t> h_offsets;  // ragged
  std::vector<std::int32_t> h_table;
  DeviceBuffer<float> q_float;
  DeviceBuffer<T> q_t;
  DeviceBuffer<std::int32_t> wpos;
  bool has_scores = false;

  [[nodiscard]] std::int64_t row(int s, int j) const {
    if (kind == LayoutKind::ragged) return h_offsets[s] + j;
    if (kind == LayoutKind::paged_per_head) return static_cast<std::int64_t>(h_table[s * table_stride + j / page]) * page + j % page;
    const int b = s / H, h = s % H;
    return (static_cast<std::int64_t>(h_table[b * table_stride + j / page]) * page + j % page) * H + h;
  }
  simcalkv::cuda::RaggedLayout ragged() const { return simcalkv::cuda::RaggedLayout{offsets.ptr}; }
  simcalkv::cuda::PagedLayout paged() const {
    return simcalkv::cuda::PagedLayout{table.ptr, table_stride, page, kind == LayoutKind::paged_shared ? H : 1};
  }
  template <class Layout>
  simcalkv::cuda::LayerKV<T, Layout> kv(const Layout& layout) const {
    simcalkv::cuda::LayerKV<T, Layout> k;
    k.keys = keys.ptr, k.values = values.ptr, k.key_stride = d, k.value_stride = d;
    k.bias = bias.ptr, k.positions = pos.ptr, k.scores = has_scores ? scores.ptr : nullptr;
    k.lengths = lengths.ptr, k.layout = layout, k.num_seqs = S, k.num_kv_heads = H, k.head_dim = d;
    return k;
  }
  template <class Q>
  simcalkv::cuda::WindowArgs<Q> window(const HostLayer& L) const {
    simcalkv::cuda::WindowArgs<Q> w;
    if constexpr (std::is_same_v<Q, float>) w.queries = q_float.ptr;
    else w.queries = q_t.ptr;
    w.request_stride = static_cast<std::int64_t>(L.H) * L.G * L.W * L.d;
    w.head_stride = static_cast<std::int64_t>(L.W) * L.d;
    w.token_stride = L.d;
    w.positions = wpos.ptr;
    w.position_request_stride = L.W;
    w.num_tokens = L.W;
    w.group = L.G;
    return w;
  }
};

/// Uploads L; every row not holding an entry is filled with NaN so that reads past a length show.
template <class T>
DeviceLayer<T> upload(const HostLayer& L, LayoutKind kind, std::uint64_t seed, int slack = 5) {
  DeviceLayer<T> D;
  D.kind = kind, D.S = L.num_seqs(), D.H = L.H, D.d = L.d;
  const int S = D.S, d = L.d, P = D.page;
  Rng rng(seed);
  std::int64_t rows = 0;
  if (kind == LayoutKind::ragged) {
    for (int s = 0; s < S; ++s) {
      D.h_offsets.push_back(rows);
      rows += L.seq(s).length + slack + (s % 3);
    }
  } else if (kind == LayoutKind::paged_per_head) {
    int most = 0;
    for (int s = 0; s < S; ++s) most = std::max(most, static_cast<int>(simcalkv::cuda::detail::ceil_div(L.seq(s).length + slack, P)));
    D.table_stride = most + 1;
    const int pages = S * static_cast<int>(D.table_stride);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(pages));
    std::iota(ids.begin(), ids.end(), 0);
    for (int i = pages - 1; i > 0; --i) std::swap(ids[i], ids[rng.next() % static_cast<std::uint64_t>(i + 1)]);
    D.h_table = ids;
    rows = static_cast<std::int64_t>(pages) * P;
  } else {
    const int R = static_cast<int>(L.reqs.size());
    int most = 0;
    for (int s = 0; s < S; ++s) most = std::max(most, static_cast<int>(simcalkv::cuda::detail::ceil_div(L.seq(s).length + slack, P)));
    D.table_stride = most + 2;
    const int pages = R * static_cast<int>(D.table_stride);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(pages));
    std::iota(ids.begin(), ids.end(), 0);
    for (int i = pages - 1; i > 0; --i) std::swap(ids[i], ids[rng.next() % static_cast<std::uint64_t>(i + 1)]);
    D.h_table = ids;
    rows = static_cast<std::int64_t>(pages) * P * L.H;
  }
  const std::uint16_t nan_bits = L.elem == ref::Elem::bf16 ? 0x7fc0 : 0x7e00;
  std::vector<std::uint16_t> k(static_cast<std::size_t>(rows) * d, nan_bits), v(k.size(), nan_bits);
  std::vector<float> bias(static_cast<std::size_t>(rows), std::nanf("")), sc(bias.size(), std::nanf(""));
  std::vector<std::int32_t> pos(static_cast<std::size_t>(rows), -7), lengths(static_cast<std::size_t>(S));
  D.has_scores = !L.seq(0).scores.empty();
  for (int s = 0; s < S; ++s) {
    const ref::Seq& q = L.seq(s);
    lengths[s] = q.length;
    for (int j = 0; j < q.length; ++j) {
      const std::int64_t r = D.row(s, j);
      std::memcpy(&k[r * d], &q.keys[static_cast<std::size_t>(j) * d], d * 2);
      std::memcpy(&v[r * d], &q.values[static_cast<std::size_t>(j) * d], d * 2);
      bias[r] = q.bias[j];
      pos[r] = q.pos[j];
      if (D.has_scores) sc[r] = q.scores[j];
    }
  }
  D.keys.resize(k.size());
  D.values.resize(v.size());
  CHECK_CUDA(cudaMemcpy(D.keys.ptr, k.data(), k.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(D.values.ptr, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
  D.bias.upload(bias);
  D.scores.upload(sc);
  D.pos.upload(pos);
  D.lengths.upload(lengths);
  if (kind == LayoutKind::ragged) D.offsets.upload(D.h_offsets);
  else D.table.upload(D.h_table);
  // Window: queries [requests][H * G][W][d], positions [requests][W].
  std::vector<float> qf;
  std::vector<std::uint16_t> qt;
  std::vector<std::int32_t> wp;
  for (const auto& r : L.reqs) {
    qf.insert(qf.end(), r.queries.begin(), r.queries.end());
    for (float x : r.queries) qt.push_back(ref::to_bits(L.elem, x));
    wp.insert(wp.end(), r.window_pos.begin(), r.window_pos.end());
  }
  D.q_float.upload(qf);
  D.q_t.resize(qt.size());
  if (!qt.empty()) CHECK_CUDA(cudaMemcpy(D.q_t.ptr, qt.data(), qt.size() * 2, cudaMemcpyHostToDevice));
  D.wpos.upload(wp);
  return D;
}

/// Reads the layer back into the CPU's form (lengths from the device).
template <class T>
HostLayer download(const DeviceLayer<T>& D, const HostLayer& like) {
  HostLayer out = like;
  const auto lengths = D.lengths.download();
  std::vector<std::uint16_t> k(D.keys.count), v(D.values.count);
  CHECK_CUDA(cudaMemcpy(k.data(), D.keys.ptr, k.size() * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(v.data(), D.values.ptr, v.size() * 2, cudaMemcpyDeviceToHost));
  const auto bias = D.bias.download();
  const auto pos = D.pos.download();
  const auto sc = D.scores.download();
  const int d = D.d;
  for (int s = 0; s < D.S; ++s) {
    ref::Seq& q = out.reqs[s / D.H].heads[s % D.H];
    q.length = lengths[s];
    q.keys.assign(static_cast<std::size_t>(q.length) * d, 0);
    q.values.assign(q.keys.size(), 0);
    q.bias.assign(q.length, 0.0f);
    q.pos.assign(q.length, 0);
    if (D.has_scores) q.scores.assign(q.length, 0.0f);
    for (int j = 0; j < q.length; ++j) {
      const std::int64_t r = D.row(s, j);
      std::memcpy(&q.keys[static_cast<std::size_t>(j) * d], &k[r * d], d * 2);
      std::memcpy(&q.values[static_cast<std::size_t>(j) * d], &v[r * d], d * 2);
      q.bias[j] = bias[r];
      q.pos[j] = pos[r];
      if (D.has_scores) q.scores[j] = sc[r];
    }
  }
  return out;
}

}  // namespace tsupport
