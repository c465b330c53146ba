// Reference host engine: the forward pass (chunked prefill, decoding) over a simcalkv::KVCache,
// attention through the library's biased attention, compression after prefill and during decoding.
#pragma once

#include "model.hpp"

#include <simcalkv/decode_driver.hpp>
#include <simcalkv/io/trace.hpp>
#include <simcalkv/simcalkv.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace engine {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Y[m][rows] = X[m][cols] * W^T (+ b), on all threads over fixed blocks of W's rows, each block one
/// single-threaded Eigen product. Fixed blocks, not Eigen's own parallel GEMM: Eigen sizes its depth
/// blocking by the thread count, which changes the order of summation and so the logits (in the last
/// bits) with the number of threads; a block's product is the same whatever runs beside it.
inline void linear(const float* X, int m, const float* W, const float* bias, int rows, int cols, float* Y) {
  Eigen::Map<const RowMat> x(X, m, cols);
  Eigen::Map<RowMat> y(Y, m, rows);
  const int block = m <= 4 ? 64 : 256;  // small m is memory bound (GEMV): more, smaller blocks
  const int nblocks = (rows + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (int bi = 0; bi < nblocks; ++bi) {
    const int r0 = bi * block, r = std::min(block, rows - r0);
    Eigen::Map<const RowMat> w(W + static_cast<std::size_t>(r0) * cols, r, cols);
    y.middleCols(r0, r).noalias() = x * w.transpose();
  }
  if (bias)
    for (int t = 0; t < m; ++t)
      for (int r = 0; r < rows; ++r) Y[static_cast<std::size_t>(t) * rows + r] += bias[r];
}
inline void linear(const float* X, int m, const Linear& L, float* Y) {
  linear(X, m, L.w.data(), L.b.empty() ? nullptr : L.b.data(), L.rows, L.cols, Y);
}

inline void rms_norm(const float* x, const float* w, int n, double eps, float* out) {
  float ss = 0.0f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
  for (int i = 0; i < n; ++i) out[i] = w[i] * (x[i] * scale);
}

/// Where the session keeps its KV cache: per-head buffers (KVCache) or paged blocks with a block
/// table per KV head (PagedKVCache). Both run the same plans; with pages a multiple of 32 entries
/// their attention, and so their generations, are bit-identical.
enum class KVLayout { compact, paged };

struct SessionOptions {
  int chunk = 512;             // prefill chunk (tokens)
  KVLayout layout = KVLayout::compact;
  int page_size = 32;          // entries per page of the paged layout
  bool track_scores = false;   // score accumulators in the cache (H2O-style decode policies)
  int window = 32;             // W: the last W prompt queries kept per layer for compression
};

struct PrefillOptions {
  bool all_logits = false;                // logits of every prompt position, else of the last only
  simcalkv::io::Trace* trace = nullptr;   // filled with post-RoPE q, k, v of every layer
};

/// One sequence: the KV cache and the recent queries.
template <simcalkv::StorageElement T>
class Session {
 public:
  Session(const Model& model, const SessionOptions& options = {})
      : model_(model), options_(options),
        cache_({model.config.num_layers, model.config.num_kv_heads, model.config.head_dim}, 0, options.track_scores) {
    const auto& c = model.config;
    window_q_.assign(static_cast<std::size_t>(c.num_layers), {});
    if (options.layout == KVLayout::paged)
      paged_.emplace(typename simcalkv::PagedKVCache<T>::Shape{c.num_layers, c.num_kv_heads, c.head_dim},
                     options.page_size, options.track_scores);
  }

  /// The compact cache (only with KVLayout::compact).
  [[nodiscard]] simcalkv::KVCache<T>& cache() {
    if (paged_) fail("cache(): this session keeps a paged cache (paged_cache())");
    return cache_;
  }
  /// The paged cache (only with KVLayout::paged).
  [[nodiscard]] simcalkv::PagedKVCache<T>& paged_cache() {
    if (!paged_) fail("paged_cache(): this session keeps a compact cache (cache())");
    return *paged_;
  }
  [[nodiscard]] KVLayout layout() const noexcept { return paged_ ? KVLayout::paged : KVLayout::compact; }
  [[nodiscard]] const Model& model() const { return model_; }
  [[nodiscard]] simcalkv::Position position() const {
    return paged_ ? paged_->next_position(0) : cache_.next_position(0);
  }

  // The KV cache whatever its layout: sizes, and the prompt's keys and values for a harness that
  // restores the post-prefill cache between runs.
  [[nodiscard]] std::size_t kv_used_bytes() const { return paged_ ? paged_->used_bytes() : cache_.used_bytes(); }
  [[nodiscard]] std::size_t kv_reserved_bytes() const {
    return paged_ ? paged_->reserved_bytes() : cache_.reserved_bytes();
  }
  [[nodiscard]] std::size_t kv_total_entries() const {
    return paged_ ? paged_->total_entries() : cache_.total_entries();
  }
  /// Releases what the compact layout does not use (paged: freed pages are already on the free list).
  void kv_shrink_to_fit() {
    if (!paged_) cache_.shrink_to_fit();
  }
  /// Layer l's keys and values, [kv_head][n][head_dim] in the storage type; every head must hold n.
  std::size_t kv_copy(int l, std::vector<T>& keys, std::vector<T>& values) {
    const auto& c = model_.config;
    const auto d = static_cast<std::size_t>(c.head_dim);
    const std::size_t n = paged_ ? paged_->length(l, 0) : cache_.head(l, 0).length;
    keys.resize(static_cast<std::size_t>(c.num_kv_heads) * n * d);
    values.resize(keys.size());
    for (int h = 0; h < c.num_kv_heads; ++h) {
      const auto hh = static_cast<std::size_t>(h);
      if (paged_) {
        auto& layer = paged_->layer(l);
        if (layer.lengths[hh] != n) fail("kv_copy: KV heads of layer ", l, " differ in length");
        for (std::size_t j = 0; j < n; ++j) {
          const auto e = layer.entry(hh, j);
          std::copy_n(e.key, d, keys.data() + (hh * n + j) * d);
          std::copy_n(e.value, d, values.data() + (hh * n + j) * d);
        }
      } else {
        const auto& view = cache_.head(l, h);
        if (view.length != n || view.key_token_stride != static_cast<std::ptrdiff_t>(d) ||
            view.value_token_stride != static_cast<std::ptrdiff_t>(d) || !view.keys_contiguous() ||
            !view.values_contiguous())
          fail("kv_copy: unexpected KV cache layout in layer ", l);
        std::copy_n(view.keys, n * d, keys.data() + hh * n * d);
        std::copy_n(view.values, n * d, values.data() + hh * n * d);
      }
    }
    return n;
  }
  /// Layer l's accumulated attention scores [kv_head][n] (empty when the session keeps none).
  std::vector<float> kv_scores(int l) {
    if (!options_.track_scores) return {};
    const auto heads = static_cast<std::size_t>(model_.config.num_kv_heads);
    std::vector<float> out;
    for (std::size_t h = 0; h < heads; ++h) {
      if (paged_) {
        const auto& layer = paged_->layer(l);
        for (std::size_t j = 0; j < layer.lengths[h]; ++j) out.push_back(*layer.entry(h, j).score);
      } else {
        const auto& view = cache_.head(l, static_cast<int>(h));
        out.insert(out.end(), view.scores, view.scores + view.length);
      }
    }
    return out;
  }
  /// Puts back what kv_scores(l) returned (after kv_append of the same entries).
  void kv_set_scores(int l, std::span<const float> scores) {
    if (!options_.track_scores) return;
    const auto heads = static_cast<std::size_t>(model_.config.num_kv_heads);
    std::size_t i = 0;
    for (std::size_t h = 0; h < heads; ++h) {
      if (paged_) {
        auto& layer = paged_->layer(l);
        if (i + layer.lengths[h] > scores.size()) fail("kv_set_scores: too few scores for layer ", l);
        for (std::size_t j = 0; j < layer.lengths[h]; ++j) *layer.entry(h, j).score = scores[i++];
      } else {
        auto& view = cache_.head(l, static_cast<int>(h));
        if (i + view.length > scores.size()) fail("kv_set_scores: too few scores for layer ", l);
        std::copy_n(scores.data() + i, view.length, view.scores);
        i += view.length;
      }
    }
    if (i != scores.size()) fail("kv_set_scores: ", scores.size(), " scores for ", i, " entries of layer ", l);
  }
  void kv_clear() { paged_ ? paged_->clear() : cache_.clear(); }
  void kv_append(int l, std::size_t n, std::span<const T> keys, std::span<const T> values) {
    if (paged_)
      paged_->template append<T>(l, n, keys, values);
    else
      cache_.template append<T>(l, n, keys, values);
  }

  /// Runs the prompt through the model in chunks; returns logits [rows][vocab] (rows = 1 or all).
  std::vector<float> prefill(std::span<const int> ids, const PrefillOptions& po = {}) {
    const auto& c = model_.config;
    if (ids.empty()) fail("prefill: empty prompt");
    const int n = static_cast<int>(ids.size());
    const int W = std::min(options_.window, n);
    window_tokens_ = W;
    compressed_ = false;
    window_positions_.resize(static_cast<std::size_t>(W));
    for (auto& wq : window_q_) wq.assign(static_cast<std::size_t>(c.num_heads) * W * c.head_dim, 0.0f);
    const simcalkv::Position p0 = position();
    for (int t = 0; t < W; ++t) window_positions_[static_cast<std::size_t>(t)] = p0 + n - W + t;
    if (po.trace) {
      auto& tr = *po.trace;
      tr.num_layers = c.num_layers;
      tr.num_q_heads = c.num_heads;
      tr.num_kv_heads = c.num_kv_heads;
      tr.head_dim = c.head_dim;
      tr.n = n;
      tr.allocate();
    }
    std::vector<float> logits;
    const int chunk = std::max(1, options_.chunk);
    for (int s = 0; s < n; s += chunk) {
      const int m = std::min(chunk, n - s);
      const bool last = s + m == n;
      std::vector<float> out =
          forward(ids.subspan(static_cast<std::size_t>(s), static_cast<std::size_t>(m)), s, n, W, po.trace,
                  po.all_logits ? m : (last ? 1 : 0));
      logits.insert(logits.end(), out.begin(), out.end());
    }
    return logits;
  }

  /// One generated token through the model; returns its logits [vocab].
  std::vector<float> decode(int id) {
    const int one[1] = {id};
    return forward(std::span<const int>(one, 1), -1, 0, 0, nullptr, 1);
  }

  /// Teacher-forced tokens after the prompt (or after a compression) in one forward pass: each token
  /// attends to the cache and the tokens before it; returns the logits of every token [m][vocab].
  /// Not with a decode driver (it compresses per generated token).
  std::vector<float> extend(std::span<const int> ids) {
    if (ids.empty()) fail("extend: no tokens");
    if (window_tokens_ == 0) fail("extend: no prompt has been prefilled");
    if (driver_) fail("extend: a decode driver is enabled; feed tokens with decode()");
    const int m = static_cast<int>(ids.size());
    std::vector<float> logits;
    const int chunk = std::max(1, options_.chunk);
    for (int s = 0; s < m; s += chunk) {
      const int k = std::min(chunk, m - s);
      auto out = forward(ids.subspan(static_cast<std::size_t>(s), static_cast<std::size_t>(k)), -1, 0, 0, nullptr, k);
      logits.insert(logits.end(), out.begin(), out.end());
    }
    return logits;
  }

  /// Compresses every layer with `policy` using the prompt's last W queries as the window.
  simcalkv::CompressionStats compress(const simcalkv::AnyPolicy& policy, simcalkv::Budget budget,
                                      const simcalkv::Executor* executor = nullptr) {
    const auto& c = model_.config;
    if (window_tokens_ == 0) fail("compress: no prompt has been prefilled");
    auto request_for = [&](int l) {
      simcalkv::LayerRequest<T> req;
      if (!paged_) req.heads = cache_.layer(l);
      req.window = simcalkv::make_window_view(window_q_[static_cast<std::size_t>(l)].data(), window_positions_.data(),
                                              c.num_heads, window_tokens_, c.head_dim);
      req.budget = budget;
      req.layer = l;
      req.num_layers = c.num_layers;
      req.executor = executor;
      req.rope_theta = c.rope_theta;
      return req;
    };
    // Policies that allocate budgets across layers (D2O) read every layer's statistic first.
    std::vector<double> statistics;
    if (policy.wants_layer_statistics())
      for (int l = 0; l < c.num_layers; ++l) {
        auto req = request_for(l);
        if (paged_) req.heads = paged_->staged(l);
        statistics.push_back(simcalkv::layer_statistic(req, workspace_));
      }
    simcalkv::CompressionStats total;
    for (int l = 0; l < c.num_layers; ++l) {
      auto req = request_for(l);
      req.layer_statistics = statistics;
      total += paged_ ? paged_->compress(l, policy, req, workspace_) : policy.compress(req, workspace_);
    }
    kv_shrink_to_fit();
    compressed_ = true;
    return total;
  }

  /// Compression during decoding: after each decoded token's attention, the driver keeps every
  /// layer near `options.budget` with `policy`. Seeded with the prompt's last W queries.
  void enable_decode_driver(const simcalkv::AnyPolicy& policy, const simcalkv::DecodeOptions& options,
                            const simcalkv::Executor* executor = nullptr) {
    const auto& c = model_.config;
    simcalkv::DecodeOptions with_rope = options;
    if (with_rope.rope_theta <= 0.0) with_rope.rope_theta = c.rope_theta;
    driver_.emplace(policy, c.num_layers, c.num_heads, c.head_dim, with_rope);
    driver_executor_ = executor;
    for (int l = 0; l < c.num_layers && window_tokens_ > 0; ++l) {
      // record_block keeps the last options.window tokens
      driver_->record_block(l, window_q_[static_cast<std::size_t>(l)], window_positions_);
    }
    // After compress(), the layers stay at the budgets the policy chose for them.
    for (int l = 0; l < c.num_layers && compressed_; ++l) {
      std::vector<std::size_t> lengths(static_cast<std::size_t>(c.num_kv_heads));
      for (int h = 0; h < c.num_kv_heads; ++h)
        lengths[static_cast<std::size_t>(h)] = paged_ ? paged_->length(l, h) : cache_.head(l, h).length;
      driver_->adopt_budgets(l, lengths);
    }
  }
  [[nodiscard]] simcalkv::CompressionStats decode_compression_stats() const { return decode_stats_; }
  [[nodiscard]] const std::optional<simcalkv::DecodeDriver<>>& driver() const { return driver_; }

 private:
  void apply_rope(float* x, int heads, simcalkv::Position pos) const {
    const int D = model_.config.head_dim, half = D / 2;
    for (int i = 0; i < half; ++i) {
      // transformers: freqs = inv_freq * position in float32, then cos / sin in float32
      const float angle = static_cast<float>(model_.inv_freq[static_cast<std::size_t>(i)]) * static_cast<float>(pos);
      cs_[static_cast<std::size_t>(i)] = std::cos(angle);
      sn_[static_cast<std::size_t>(i)] = std::sin(angle);
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + static_cast<std::size_t>(h) * D;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cs_[static_cast<std::size_t>(i)] - b * sn_[static_cast<std::size_t>(i)];
        v[i + half] = b * cs_[static_cast<std::size_t>(i)] + a * sn_[static_cast<std::size_t>(i)];
      }
    }
  }

  /// m tokens at positions position() .. +m-1. prompt_start >= 0 during prefill (index of the
  /// chunk's first token in the prompt of length prompt_len, for the window and the trace).
  /// Returns logits of the last `logit_rows` tokens.
  std::vector<float> forward(std::span<const int> ids, int prompt_start, int prompt_len, int W,
                             simcalkv::io::Trace* trace, int logit_rows) {
    const auto& c = model_.config;
    const auto& mw = model_.weights;
    const int m = static_cast<int>(ids.size());
    const int H = c.hidden_size, D = c.head_dim, NH = c.num_heads, NKV = c.num_kv_heads, G = c.group_size();
    const int I = c.intermediate_size;
    const auto sz = [](auto a, auto b) { return static_cast<std::size_t>(a) * static_cast<std::size_t>(b); };
    cs_.resize(static_cast<std::size_t>(D / 2));
    sn_.resize(static_cast<std::size_t>(D / 2));
    const simcalkv::Position p0 = position();
    std::vector<simcalkv::Position> pos(static_cast<std::size_t>(m));
    for (int t = 0; t < m; ++t) pos[static_cast<std::size_t>(t)] = p0 + t;

    x_.resize(sz(m, H));
    for (int t = 0; t < m; ++t) {
      const int id = ids[static_cast<std::size_t>(t)];
      if (id < 0 || id >= c.vocab_size) fail("token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");
      std::copy_n(mw.embed.data() + sz(id, H), H, x_.data() + sz(t, H));
    }
    h_.resize(sz(m, H));
    q_.resize(sz(m, NH * D));
    k_.resize(sz(m, NKV * D));
    v_.resize(sz(m, NKV * D));
    kh_.resize(sz(m, NKV * D));
    vh_.resize(sz(m, NKV * D));
    attn_.resize(sz(m, NH * D));
    o_.resize(sz(m, H));
    g_.resize(sz(m, I));
    u_.resize(sz(m, I));

    for (int l = 0; l < c.num_layers; ++l) {
      const auto& L = mw.layers[static_cast<std::size_t>(l)];
      for (int t = 0; t < m; ++t) rms_norm(x_.data() + sz(t, H), L.input_norm.data(), H, c.rms_norm_eps, h_.data() + sz(t, H));
      linear(h_.data(), m, L.q, q_.data());
      linear(h_.data(), m, L.k, k_.data());
      linear(h_.data(), m, L.v, v_.data());
      for (int t = 0; t < m; ++t) {
        apply_rope(q_.data() + sz(t, NH * D), NH, pos[static_cast<std::size_t>(t)]);
        apply_rope(k_.data() + sz(t, NKV * D), NKV, pos[static_cast<std::size_t>(t)]);
      }
      // [m][kv][D] -> [kv][m][D] for the cache
      for (int t = 0; t < m; ++t)
        for (int h = 0; h < NKV; ++h) {
          std::copy_n(k_.data() + sz(t, NKV * D) + sz(h, D), D, kh_.data() + sz(h, m * D) + sz(t, D));
          std::copy_n(v_.data() + sz(t, NKV * D) + sz(h, D), D, vh_.data() + sz(h, m * D) + sz(t, D));
        }
      if (prompt_start >= 0) record_prompt(l, m, prompt_start, prompt_len, W, trace);
      if (paged_)
        paged_->append(l, static_cast<std::size_t>(m), std::span<const float>(kh_), std::span<const float>(vh_));
      else
        cache_.append(l, static_cast<std::size_t>(m), std::span<const float>(kh_), std::span<const float>(vh_));
      attend(l, m, pos);
      if (prompt_start < 0 && driver_) {
        // queries of this token, [NH][D], for the driver's window
        const std::span<const float> queries(q_.data(), sz(NH, D));
        if (paged_) {
          driver_->record(l, queries, pos[0]);
          decode_stats_ += driver_->maybe_compress(l, *paged_, workspace_, driver_executor_);
        } else {
          decode_stats_ += driver_->step(l, cache_.layer(l), queries, pos[0], workspace_, driver_executor_);
        }
      }
      linear(attn_.data(), m, L.o, o_.data());
      for (std::size_t i = 0; i < o_.size(); ++i) x_[i] += o_[i];
      for (int t = 0; t < m; ++t) rms_norm(x_.data() + sz(t, H), L.post_norm.data(), H, c.rms_norm_eps, h_.data() + sz(t, H));
      linear(h_.data(), m, L.gate, g_.data());
      linear(h_.data(), m, L.up, u_.data());
      for (std::size_t i = 0; i < g_.size(); ++i) {
        const float a = g_[i];
        g_[i] = a / (1.0f + std::exp(-a)) * u_[i];
      }
      linear(g_.data(), m, L.down, o_.data());
      for (std::size_t i = 0; i < o_.size(); ++i) x_[i] += o_[i];
    }
    (void)G;
    std::vector<float> logits(sz(logit_rows, c.vocab_size));
    if (logit_rows > 0) {
      const int first = m - logit_rows;
      for (int t = first; t < m; ++t)
        rms_norm(x_.data() + sz(t, H), mw.final_norm.data(), H, c.rms_norm_eps, h_.data() + sz(t - first, H));
      linear(h_.data(), logit_rows, model_.lm_head(), nullptr, c.vocab_size, H, logits.data());
    }
    return logits;
  }

  /// Keeps the prompt's last W queries (and the trace's q, k, v) of layer l for the chunk.
  void record_prompt(int l, int m, int start, int n, int W, simcalkv::io::Trace* trace) {
    const auto& c = model_.config;
    const int D = c.head_dim, NH = c.num_heads, NKV = c.num_kv_heads;
    const auto sz = [](auto a, auto b) { return static_cast<std::size_t>(a) * static_cast<std::size_t>(b); };
    auto& wq = window_q_[static_cast<std::size_t>(l)];
    for (int t = 0; t < m; ++t) {
      const int i = start + t;  // prompt index
      if (i >= n - W)
        for (int h = 0; h < NH; ++h)
          std::copy_n(q_.data() + sz(t, NH * D) + sz(h, D), D, wq.data() + (sz(h, W) + sz(i - (n - W), 1)) * D);
      if (trace) {
        for (int h = 0; h < NH; ++h) std::copy_n(q_.data() + sz(t, NH * D) + sz(h, D), D, trace->query(l, h, i));
        for (int h = 0; h < NKV; ++h) {
          std::copy_n(k_.data() + sz(t, NKV * D) + sz(h, D), D, trace->key(l, h, i));
          std::copy_n(v_.data() + sz(t, NKV * D) + sz(h, D), D, trace->value(l, h, i));
        }
      }
    }
  }

  /// attn_[m][NH*D] from the cache of layer l: each (KV head, query block) a task; the block's
  /// own keys are already in the cache, so causality comes from the positions.
  void attend(int l, int m, const std::vector<simcalkv::Position>& pos) {
    const auto& c = model_.config;
    const int D = c.head_dim, NH = c.num_heads, NKV = c.num_kv_heads, G = c.group_size();
    const auto sz = [](auto a, auto b) { return static_cast<std::size_t>(a) * static_cast<std::size_t>(b); };
    std::span<simcalkv::HeadView<T>> heads;
    if (!paged_) heads = cache_.layer(l);
    simcalkv::PagedLayer<T>* paged = paged_ ? &paged_->layer(l) : nullptr;
    simcalkv::AttentionOptions ao;
    ao.accumulate_scores = options_.track_scores;
    if (m == 1) {
#pragma omp parallel for schedule(static) if (NKV > 1)
      for (int h = 0; h < NKV; ++h) {
        const std::span<const float> q(q_.data() + sz(h * G, D), sz(G, D));
        const std::span<float> out(attn_.data() + sz(h * G, D), sz(G, D));
        if (paged)
          simcalkv::decode_attention(*paged, static_cast<std::size_t>(h), q, G, out, ao);
        else
          simcalkv::decode_attention(heads[static_cast<std::size_t>(h)], q, G, out, ao);
      }
      return;
    }
    // a head's score accumulator must be written by one task only
    const int qb = options_.track_scores ? m : 16;
    const int nqb = (m + qb - 1) / qb;
    const int tasks = NKV * nqb;
#pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < tasks; ++task) {
      const int h = task / nqb, b0 = (task % nqb) * qb, mb = std::min(qb, m - b0);
      std::vector<float> qg(sz(G, mb) * D), og(sz(G, mb) * D);
      for (int g = 0; g < G; ++g)
        for (int t = 0; t < mb; ++t)
          std::copy_n(q_.data() + sz(b0 + t, NH * D) + sz(h * G + g, D), D, qg.data() + (sz(g, mb) + t) * D);
      const std::span<const simcalkv::Position> qpos(pos.data() + b0, static_cast<std::size_t>(mb));
      if (paged)
        simcalkv::block_attention(*paged, static_cast<std::size_t>(h), std::span<const float>(qg), G, qpos,
                                  std::span<float>(og), ao);
      else
        simcalkv::block_attention(heads[static_cast<std::size_t>(h)], std::span<const float>(qg), G, qpos,
                                  std::span<float>(og), ao);
      for (int g = 0; g < G; ++g)
        for (int t = 0; t < mb; ++t)
          std::copy_n(og.data() + (sz(g, mb) + t) * D, D, attn_.data() + sz(b0 + t, NH * D) + sz(h * G + g, D));
    }
  }

  const Model& model_;
  SessionOptions options_;
  simcalkv::KVCache<T> cache_;
  std::optional<simcalkv::PagedKVCache<T>> paged_;
  simcalkv::Workspace workspace_;
  std::vector<std::vector<float>> window_q_;  // per layer [NH][W][D]
  std::vector<simcalkv::Position> window_positions_;
  int window_tokens_ = 0;
  bool compressed_ = false;  // compress() ran since the prefill
  std::optional<simcalkv::DecodeDriver<>> driver_;
  const simcalkv::Executor* driver_executor_ = nullptr;
  simcalkv::CompressionStats decode_stats_;
  std::vector<float> x_, h_, q_, k_, v_, kh_, vh_, attn_, o_, g_, u_;
  mutable std::vector<float> cs_, sn_;
};

}  // namespace engine
