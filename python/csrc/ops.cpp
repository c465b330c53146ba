// simcalkv._C: the library's CPU policies and biased attention as PyTorch operators.
//
// The caches these ops read and write are ragged: one layer's KV heads packed one after the other,
// keys and values [total, head_dim], bias [total] and original positions [total], with a length per
// head [heads]. It is the compact layout of the C++ library (layouts/compact.hpp) over tensors:
// per-head budgets (AdaKV) free what a head gives up. Every op checks its arguments and throws a
// ValueError naming the problem; a failed compression returns nothing and touches no input.
#include <torch/extension.h>

#include "simcalkv/kernels/attention.hpp"
#include "simcalkv/layouts/compact.hpp"
#include "simcalkv/registry.hpp"
#include "simcalkv/tensor_parallel.hpp"

#ifdef SIMCALKV_WITH_CUDA
#include "cuda_ops.h"
#endif

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

using simcalkv::Position;

[[noreturn]] void fail(const std::string& message) { throw pybind11::value_error(message); }

void expect(bool ok, const std::string& message) {
  if (!ok) fail(message);
}

void expect_shape(const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
  expect(t.device().is_cpu(), std::string(name) + ": must be a CPU tensor (move it with .cpu())");
  expect(t.dim() == static_cast<int64_t>(shape.size()),
         std::string(name) + ": expected " + std::to_string(shape.size()) + " dimensions, got " + std::to_string(t.dim()));
  for (std::size_t i = 0; i < shape.size(); ++i)
    expect(shape[i] < 0 || t.size(static_cast<int64_t>(i)) == shape[i],
           std::string(name) + ": dimension " + std::to_string(i) + " is " + std::to_string(t.size(static_cast<int64_t>(i))) +
               ", expected " + std::to_string(shape[i]));
}

/// The policy of a specification, built once per spec (make_policy parses and validates it).
const simcalkv::AnyPolicy& policy_of(const std::string& spec) {
  static std::mutex mutex;
  static std::map<std::string, simcalkv::AnyPolicy> cache;
  std::lock_guard lock(mutex);
  auto it = cache.find(spec);
  if (it == cache.end()) {
    try {
      it = cache.emplace(spec, simcalkv::make_policy(spec)).first;
    } catch (const simcalkv::Error& e) {
      fail(e.what());
    }
  }
  return it->second;
}

struct Ragged {
  at::Tensor keys, values, bias, positions, lengths;  // lengths int64 [heads]
  std::vector<int64_t> offsets;                       // [heads + 1]
  int64_t heads = 0, head_dim = 0;
};

Ragged check_ragged(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias, const at::Tensor& positions,
                    const at::Tensor& lengths) {
  Ragged r;
  expect_shape(lengths, "lengths", {-1});
  expect(lengths.scalar_type() == at::kLong, "lengths: must be int64");
  r.heads = lengths.size(0);
  expect(r.heads > 0, "lengths: no KV heads");
  r.lengths = lengths.contiguous();
  r.offsets.assign(static_cast<std::size_t>(r.heads) + 1, 0);
  const auto* len = r.lengths.data_ptr<int64_t>();
  for (int64_t h = 0; h < r.heads; ++h) {
    expect(len[h] >= 0, "lengths: KV head " + std::to_string(h) + " has a negative length");
    r.offsets[static_cast<std::size_t>(h) + 1] = r.offsets[static_cast<std::size_t>(h)] + len[h];
  }
  const int64_t total = r.offsets.back();
  expect(keys.dim() == 2 && keys.size(0) == total, "keys: expected [" + std::to_string(total) +
                                                      ", head_dim] (the sum of lengths), got " + std::to_string(keys.dim()) +
                                                      " dimensions of " + std::to_string(keys.dim() ? keys.size(0) : 0));
  expect_shape(keys, "keys", {total, -1});
  r.head_dim = keys.size(1);
  expect(r.head_dim > 0, "keys: head_dim must be positive");
  expect_shape(values, "values", {total, r.head_dim});
  expect_shape(bias, "bias", {total});
  expect_shape(positions, "positions", {total});
  const auto st = keys.scalar_type();
  expect(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "keys: dtype must be float32, float16 or bfloat16");
  expect(values.scalar_type() == st, "values: dtype differs from keys'");
  expect(bias.scalar_type() == at::kFloat, "bias: must be float32");
  expect(positions.scalar_type() == at::kInt, "positions: must be int32");
  r.keys = keys.contiguous();
  r.values = values.contiguous();
  r.bias = bias.contiguous();
  r.positions = positions.contiguous();
  return r;
}

template <class T>
std::vector<simcalkv::HeadView<T>> views_of(Ragged& r, float* scores) {
  std::vector<simcalkv::HeadView<T>> heads(static_cast<std::size_t>(r.heads));
  auto* k = reinterpret_cast<T*>(r.keys.data_ptr());
  auto* v = reinterpret_cast<T*>(r.values.data_ptr());
  auto* b = r.bias.data_ptr<float>();
  auto* p = r.positions.data_ptr<int32_t>();
  const auto d = r.head_dim;
  for (std::size_t h = 0; h < heads.size(); ++h) {
    const auto o = r.offsets[h];
    const auto n = static_cast<std::size_t>(r.offsets[h + 1] - o);
    heads[h] = simcalkv::make_head_view(k + o * d, v + o * d, b + o, p + o, scores ? scores + o : nullptr, n, n,
                                        static_cast<int>(d));
  }
  return heads;
}

/// Runs `body` with T the storage type of `dtype`.
template <class Body>
auto with_storage(at::ScalarType dtype, Body&& body) {
  switch (dtype) {
    case at::kFloat: return body(float{});
    case at::kHalf: return body(simcalkv::half{});
    default: return body(simcalkv::bfloat16{});
  }
}

/// The window arguments every op that plans reads, checked.
struct WindowInput {
  at::Tensor queries, positions;
  int64_t num_query_heads = 0, tokens = 0;
};

WindowInput check_window(const Ragged& in, const at::Tensor& window_queries, const at::Tensor& window_positions) {
  expect_shape(window_queries, "window_queries", {-1, -1, in.head_dim});
  expect(window_queries.scalar_type() == at::kFloat, "window_queries: must be float32");
  WindowInput w;
  w.queries = window_queries.contiguous();
  w.num_query_heads = w.queries.size(0);
  w.tokens = w.queries.size(1);
  expect(w.num_query_heads % in.heads == 0, "window_queries: " + std::to_string(w.num_query_heads) +
                                                " query heads are not a multiple of " + std::to_string(in.heads) +
                                                " KV heads");
  expect_shape(window_positions, "window_positions", {w.tokens});
  expect(window_positions.scalar_type() == at::kInt, "window_positions: must be int32");
  w.positions = window_positions.contiguous();
  return w;
}

template <class T>
simcalkv::LayerRequest<T> make_request(std::vector<simcalkv::HeadView<T>>& heads, const WindowInput& w, int64_t head_dim,
                                       double compress_ratio, int64_t layer, int64_t num_layers,
                                       int64_t first_kv_head) {
  simcalkv::LayerRequest<T> request;
  request.heads = heads;
  request.window = simcalkv::make_window_view(w.queries.data_ptr<float>(), w.positions.data_ptr<int32_t>(),
                                              static_cast<int>(w.num_query_heads), static_cast<int>(w.tokens),
                                              static_cast<int>(head_dim));
  request.budget = simcalkv::Budget::compress_ratio(compress_ratio);
  request.layer = static_cast<int>(layer);
  request.num_layers = static_cast<int>(num_layers);
  request.first_kv_head = static_cast<std::size_t>(first_kv_head);
  return request;
}

void check_ratio_and_layer(double compress_ratio, int64_t layer, int64_t num_layers, int64_t first_kv_head) {
  expect(first_kv_head >= 0, "first_kv_head: must be >= 0");
  expect(compress_ratio >= 0.0 && compress_ratio < 1.0,
         "compress_ratio: " + std::to_string(compress_ratio) + " is outside [0, 1) (the fraction of entries removed)");
  expect(num_layers > 0 && layer >= 0 && layer < num_layers, "layer: must be in [0, num_layers)");
}

at::Tensor checked_scores(const Ragged& in, const c10::optional<at::Tensor>& scores) {
  if (!scores) return at::Tensor();
  expect_shape(*scores, "scores", {in.offsets.back()});
  expect(scores->scalar_type() == at::kFloat, "scores: must be float32");
  return scores->contiguous().clone();
}

/// Per-head budgets given to compress_ragged: final (as a global AdaKV computed them), in range.
std::vector<std::size_t> checked_budgets(const Ragged& in, const at::Tensor& budgets) {
  expect_shape(budgets, "budgets", {in.heads});
  expect(budgets.scalar_type() == at::kLong, "budgets: must be int64");
  const auto b = budgets.contiguous();
  std::vector<std::size_t> out(static_cast<std::size_t>(in.heads));
  for (int64_t h = 0; h < in.heads; ++h) {
    const int64_t x = b.data_ptr<int64_t>()[h], n = in.lengths.data_ptr<int64_t>()[h];
    expect(x >= 0 && x <= n, "budgets: KV head " + std::to_string(h) + " has budget " + std::to_string(x) +
                                 " outside [0, " + std::to_string(n) + "]");
    out[static_cast<std::size_t>(h)] = static_cast<std::size_t>(x);
  }
  return out;
}

pybind11::dict compress_ragged(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias,
                               const at::Tensor& positions, const at::Tensor& lengths, const at::Tensor& window_queries,
                               const at::Tensor& window_positions, const std::string& spec, double compress_ratio,
                               c10::optional<at::Tensor> scores, bool shared_selection, int64_t layer,
                               int64_t num_layers, int64_t threads, c10::optional<at::Tensor> budgets,
                               int64_t first_kv_head) {
  Ragged in = check_ragged(keys, values, bias, positions, lengths);
  check_ratio_and_layer(compress_ratio, layer, num_layers, first_kv_head);
  const WindowInput window = check_window(in, window_queries, window_positions);
  at::Tensor score_buf = checked_scores(in, scores);
  const std::vector<std::size_t> final_budgets = budgets ? checked_budgets(in, *budgets) : std::vector<std::size_t>{};
  const auto& policy = policy_of(spec);

  // Plan on the caller's tensors (planning only reads), then apply to copies: the inputs stay as
  // they were whatever happens.
  Ragged work = in;
  work.keys = in.keys.clone();
  work.values = in.values.clone();
  work.bias = in.bias.clone();
  work.positions = in.positions.clone();
  simcalkv::LayerPlan plan;
  simcalkv::CompressionStats stats;
  std::vector<int64_t> kept_lengths(static_cast<std::size_t>(in.heads));
  with_storage(in.keys.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    auto heads = views_of<T>(work, score_buf.defined() ? score_buf.data_ptr<float>() : nullptr);
    auto request = make_request<T>(heads, window, in.head_dim, compress_ratio, layer, num_layers, first_kv_head);
    request.shared_selection = shared_selection;
    simcalkv::ThreadExecutor executor(static_cast<int>(threads));
    if (threads > 1) request.executor = &executor;
    simcalkv::Workspace workspace;
    try {
      plan = budgets ? simcalkv::plan_shard(policy, request, workspace, final_budgets) : policy.plan(request, workspace);
      stats = simcalkv::apply_plan(plan, std::span<simcalkv::HeadView<T>>(heads));
    } catch (const simcalkv::Error& e) {
      fail(e.what());
    }
    return 0;
  });

  // Gather each head's kept prefix into fresh packed tensors.
  int64_t total = 0;
  for (int64_t h = 0; h < in.heads; ++h) total += kept_lengths[static_cast<std::size_t>(h)] = plan.kept(static_cast<std::size_t>(h));
  auto out_keys = at::empty({total, in.head_dim}, in.keys.options());
  auto out_values = at::empty({total, in.head_dim}, in.values.options());
  auto out_bias = at::empty({total}, in.bias.options());
  auto out_positions = at::empty({total}, in.positions.options());
  auto out_kept = at::empty({total}, at::TensorOptions().dtype(at::kLong));
  auto out_scores = score_buf.defined() ? at::empty({total}, score_buf.options()) : at::Tensor();
  auto out_lengths = at::empty({in.heads}, at::TensorOptions().dtype(at::kLong));
  int64_t o = 0;
  for (int64_t h = 0; h < in.heads; ++h) {
    const auto n = kept_lengths[static_cast<std::size_t>(h)];
    const auto src = work.offsets[static_cast<std::size_t>(h)];
    out_keys.narrow(0, o, n).copy_(work.keys.narrow(0, src, n));
    out_values.narrow(0, o, n).copy_(work.values.narrow(0, src, n));
    out_bias.narrow(0, o, n).copy_(work.bias.narrow(0, src, n));
    out_positions.narrow(0, o, n).copy_(work.positions.narrow(0, src, n));
    if (out_scores.defined()) out_scores.narrow(0, o, n).copy_(score_buf.narrow(0, src, n));
    auto* kept = out_kept.data_ptr<int64_t>() + o;
    const auto& keep = plan.heads[static_cast<std::size_t>(h)].keep;
    for (int64_t j = 0; j < n; ++j) kept[j] = keep[static_cast<std::size_t>(j)];
    out_lengths.data_ptr<int64_t>()[h] = n;
    o += n;
  }
  pybind11::dict result;
  result["keys"] = out_keys;
  result["values"] = out_values;
  result["bias"] = out_bias;
  result["positions"] = out_positions;
  result["lengths"] = out_lengths;
  result["kept"] = out_kept;
  result["scores"] = out_scores.defined() ? pybind11::cast(out_scores) : pybind11::none();
  result["merged"] = stats.merged;
  result["evicted"] = stats.evicted;
  return result;
}

/// A reallocating policy's (AdaKV's) per-head lengths, budgets and selection scores of one ragged
/// layer: what the ranks of a tensor-parallel layer gather for global budgets (tensor_parallel.hpp).
pybind11::dict score_layer(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias,
                           const at::Tensor& positions, const at::Tensor& lengths, const at::Tensor& window_queries,
                           const at::Tensor& window_positions, const std::string& spec, double compress_ratio,
                           c10::optional<at::Tensor> scores, int64_t layer, int64_t num_layers, int64_t threads,
                           int64_t first_kv_head) {
  Ragged in = check_ragged(keys, values, bias, positions, lengths);
  check_ratio_and_layer(compress_ratio, layer, num_layers, first_kv_head);
  const WindowInput window = check_window(in, window_queries, window_positions);
  at::Tensor score_buf = checked_scores(in, scores);
  const auto& policy = policy_of(spec);
  simcalkv::LayerScores out;
  with_storage(in.keys.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    auto heads = views_of<T>(in, score_buf.defined() ? score_buf.data_ptr<float>() : nullptr);
    auto request = make_request<T>(heads, window, in.head_dim, compress_ratio, layer, num_layers, first_kv_head);
    simcalkv::ThreadExecutor executor(static_cast<int>(threads));
    if (threads > 1) request.executor = &executor;
    simcalkv::Workspace workspace;
    try {
      out = policy.score_layer(request, workspace);
    } catch (const simcalkv::Error& e) {
      fail(e.what());
    }
    return 0;
  });
  auto to_long = [](const std::vector<std::size_t>& v) {
    auto t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kLong));
    for (std::size_t i = 0; i < v.size(); ++i) t.data_ptr<int64_t>()[i] = static_cast<int64_t>(v[i]);
    return t;
  };
  pybind11::dict result;
  result["lengths"] = to_long(out.lengths);
  result["budgets"] = to_long(out.budgets);
  auto s = at::empty({static_cast<int64_t>(out.scores.size())}, at::TensorOptions().dtype(at::kFloat));
  std::copy(out.scores.begin(), out.scores.end(), s.data_ptr<float>());
  result["scores"] = s;
  return result;
}

/// The whole layer's per-head budgets from every rank's score_layer output, concatenated in rank
/// order; `window_tokens` is the window's length (it sets the protected recent entries).
at::Tensor global_budgets(const std::string& spec, const at::Tensor& lengths, const at::Tensor& budgets,
                          const at::Tensor& scores, int64_t window_tokens) {
  expect_shape(lengths, "lengths", {-1});
  expect_shape(budgets, "budgets", {lengths.size(0)});
  expect_shape(scores, "scores", {-1});
  expect(lengths.scalar_type() == at::kLong && budgets.scalar_type() == at::kLong, "lengths, budgets: must be int64");
  expect(scores.scalar_type() == at::kFloat, "scores: must be float32");
  expect(window_tokens > 0, "window_tokens: must be positive");
  const auto l = lengths.contiguous(), b = budgets.contiguous(), sc = scores.contiguous();
  simcalkv::LayerScores layer;
  for (int64_t h = 0; h < l.size(0); ++h) {
    expect(l.data_ptr<int64_t>()[h] >= 0 && b.data_ptr<int64_t>()[h] >= 0,
           "lengths, budgets: KV head " + std::to_string(h) + " has a negative value");
    layer.lengths.push_back(static_cast<std::size_t>(l.data_ptr<int64_t>()[h]));
    layer.budgets.push_back(static_cast<std::size_t>(b.data_ptr<int64_t>()[h]));
  }
  layer.scores.assign(sc.data_ptr<float>(), sc.data_ptr<float>() + sc.numel());
  simcalkv::WindowView window;  // only its length matters: the protected recent entries
  window.num_tokens = static_cast<int>(window_tokens);
  std::vector<std::size_t> out;
  try {
    out = policy_of(spec).reallocate_scores(layer, window);
  } catch (const simcalkv::Error& e) {
    fail(e.what());
  }
  auto t = at::empty({static_cast<int64_t>(out.size())}, at::TensorOptions().dtype(at::kLong));
  for (std::size_t i = 0; i < out.size(); ++i) t.data_ptr<int64_t>()[i] = static_cast<int64_t>(out[i]);
  return t;
}

at::Tensor attend_ragged(const at::Tensor& queries, const at::Tensor& query_positions, const at::Tensor& keys,
                         const at::Tensor& values, const at::Tensor& bias, const at::Tensor& positions,
                         const at::Tensor& lengths, double scale) {
  Ragged r = check_ragged(keys, values, bias, positions, lengths);
  expect_shape(queries, "queries", {-1, -1, r.head_dim});
  expect(queries.scalar_type() == at::kFloat, "queries: must be float32");
  const int64_t num_query_heads = queries.size(0), m = queries.size(1);
  expect(num_query_heads % r.heads == 0, "queries: " + std::to_string(num_query_heads) +
                                             " query heads are not a multiple of " + std::to_string(r.heads) +
                                             " KV heads");
  expect_shape(query_positions, "query_positions", {m});
  expect(query_positions.scalar_type() == at::kInt, "query_positions: must be int32");
  expect(std::isfinite(scale) && scale >= 0.0, "scale: must be finite and >= 0 (0: 1/sqrt(head_dim))");
  const auto q = queries.contiguous();
  const auto qp = query_positions.contiguous();
  auto out = at::zeros_like(q);
  const int64_t G = num_query_heads / r.heads;
  const auto rows = static_cast<std::size_t>(G * m * r.head_dim);
  simcalkv::AttentionOptions options;
  options.scale = static_cast<float>(scale);
  with_storage(r.keys.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    auto heads = views_of<T>(r, nullptr);
    for (int64_t h = 0; h < r.heads; ++h) {
      if (heads[static_cast<std::size_t>(h)].length == 0) continue;  // nothing to attend: zeros
      try {
        simcalkv::block_attention(heads[static_cast<std::size_t>(h)],
                                  std::span<const float>(q.data_ptr<float>() + h * static_cast<int64_t>(rows), rows),
                                  static_cast<int>(G), std::span<const Position>(qp.data_ptr<int32_t>(), m),
                                  std::span<float>(out.data_ptr<float>() + h * static_cast<int64_t>(rows), rows),
                                  options);
      } catch (const simcalkv::Error& e) {
        fail(e.what());
      }
    }
    return 0;
  });
  return out;
}

#ifdef SIMCALKV_WITH_CUDA
// --- the GPU ops (cuda_ops.cu): one layer of a batch in place, in the ragged layout -----------

void expect_cuda(const at::Tensor& t, const at::Tensor& like, const char* name, at::ScalarType dtype,
                 std::vector<int64_t> shape) {
  expect(t.device() == like.device(), std::string(name) + ": must be on " + like.device().str());
  expect(t.scalar_type() == dtype, std::string(name) + ": dtype must be " + std::string(c10::toString(dtype)));
  expect(t.is_contiguous(), std::string(name) + ": must be contiguous");
  expect(t.dim() == static_cast<int64_t>(shape.size()),
         std::string(name) + ": expected " + std::to_string(shape.size()) + " dimensions, got " + std::to_string(t.dim()));
  for (std::size_t i = 0; i < shape.size(); ++i)
    expect(shape[i] < 0 || t.size(static_cast<int64_t>(i)) == shape[i],
           std::string(name) + ": dimension " + std::to_string(i) + " is " + std::to_string(t.size(static_cast<int64_t>(i))) +
               ", expected " + std::to_string(shape[i]));
}

CudaLayer cuda_layer_of(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias,
                        const at::Tensor& positions, const at::Tensor& offsets, const at::Tensor& lengths,
                        int64_t num_kv_heads, int64_t max_length) {
  expect(keys.is_cuda(), "keys: must be a CUDA tensor");
  const auto st = keys.scalar_type();
  expect(st == at::kBFloat16 || st == at::kHalf, "keys: the CUDA kernels store bfloat16 or float16");
  expect(keys.dim() == 2, "keys: expected [rows, head_dim]");
  const int64_t rows = keys.size(0), d = keys.size(1);
  expect(d == 64 || d == 128, "keys: head_dim " + std::to_string(d) + " (the CUDA kernels take 64 or 128)");
  expect_cuda(keys, keys, "keys", st, {rows, d});
  expect_cuda(values, keys, "values", st, {rows, d});
  expect_cuda(bias, keys, "bias", at::kFloat, {rows});
  expect_cuda(positions, keys, "positions", at::kInt, {rows});
  expect_cuda(lengths, keys, "lengths", at::kInt, {-1});
  const int64_t seqs = lengths.size(0);
  expect_cuda(offsets, keys, "offsets", at::kLong, {seqs});
  expect(seqs > 0 && num_kv_heads > 0 && seqs % num_kv_heads == 0,
         "lengths: " + std::to_string(seqs) + " sequences are not a positive multiple of " +
             std::to_string(num_kv_heads) + " KV heads");
  expect(max_length >= 0 && max_length <= rows, "max_length: must be in [0, rows]");
  for (const at::Tensor* t : {&keys, &values})
    expect(reinterpret_cast<std::uintptr_t>(t->data_ptr()) % 16 == 0, "keys/values: rows must be 16-byte aligned");
  CudaLayer l;
  l.dtype = st == at::kBFloat16 ? 0 : 1;
  l.keys = keys.data_ptr();
  l.values = values.data_ptr();
  l.bias = bias.data_ptr<float>();
  l.positions = positions.data_ptr<int32_t>();
  l.offsets = offsets.data_ptr<int64_t>();
  l.lengths = lengths.data_ptr<int32_t>();
  l.num_seqs = static_cast<int>(seqs);
  l.num_kv_heads = static_cast<int>(num_kv_heads);
  l.head_dim = static_cast<int>(d);
  l.max_length = static_cast<int>(max_length);
  l.total_rows = rows;
  return l;
}

void check_cuda(int code, const char* what) {
  if (code != 0) throw std::runtime_error(std::string("simcalkv: ") + what + ": " + simcalkv_cuda_error(code));
}

void cuda_compress(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias, const at::Tensor& positions,
                   const at::Tensor& offsets, const at::Tensor& lengths, int64_t num_kv_heads, int64_t max_length,
                   const at::Tensor& window_queries, const at::Tensor& window_positions, int64_t method,
                   int64_t sink_tokens, int64_t pooling, int64_t pool_kernel, bool adakv, double compress_ratio,
                   int64_t stream) {
  const CudaLayer layer = cuda_layer_of(keys, values, bias, positions, offsets, lengths, num_kv_heads, max_length);
  expect(compress_ratio >= 0.0 && compress_ratio < 1.0, "compress_ratio: must be in [0, 1)");
  expect(method >= 0 && method <= 2, "method: 0 StreamingLLM, 1 SnapKV, 2 SimCalKV");
  const int64_t requests = layer.num_seqs / num_kv_heads;
  expect(window_queries.device() == keys.device() && window_queries.scalar_type() == at::kFloat &&
             window_queries.dim() == 4 && window_queries.size(0) == requests && window_queries.size(3) == layer.head_dim &&
             window_queries.stride(3) == 1,
         "window_queries: expected float32 [" + std::to_string(requests) + ", query_heads, tokens, " +
             std::to_string(layer.head_dim) + "] on the cache's device, rows contiguous");
  const int64_t hq = window_queries.size(1), w = window_queries.size(2);
  expect(hq % num_kv_heads == 0 && hq / num_kv_heads <= 8, "window_queries: query heads must be 1 to 8 per KV head");
  expect(method == 0 || w > 0, "window_queries: the window is empty");
  expect_cuda(window_positions, keys, "window_positions", at::kInt, {w});
  CudaWindow window;
  window.queries = window_queries.data_ptr<float>();
  window.request_stride = window_queries.stride(0);
  window.head_stride = window_queries.stride(1);
  window.token_stride = window_queries.stride(2);
  window.positions = window_positions.data_ptr<int32_t>();
  window.tokens = static_cast<int>(w);
  window.group = static_cast<int>(hq / num_kv_heads);
  CudaPolicy policy;
  policy.method = static_cast<int>(method);
  policy.sink_tokens = static_cast<int>(sink_tokens);
  policy.pooling = static_cast<int>(pooling);
  policy.pool_kernel = static_cast<int>(pool_kernel);
  policy.adakv = adakv;
  const std::size_t bytes = simcalkv_cuda_compress_workspace(layer, window, policy);
  auto workspace = at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))}, keys.options().dtype(at::kByte));
  check_cuda(simcalkv_cuda_compress(layer, window, policy, compress_ratio, workspace.data_ptr(), bytes,
                                    reinterpret_cast<void*>(stream)),
             "compress_layer");
}

at::Tensor cuda_decode(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias,
                       const at::Tensor& positions, const at::Tensor& offsets, const at::Tensor& lengths,
                       int64_t num_kv_heads, int64_t max_length, const at::Tensor& queries, double scale, int64_t stream) {
  const CudaLayer layer = cuda_layer_of(keys, values, bias, positions, offsets, lengths, num_kv_heads, max_length);
  const int64_t requests = layer.num_seqs / num_kv_heads;
  expect(queries.device() == keys.device() && queries.scalar_type() == keys.scalar_type() && queries.dim() == 3 &&
             queries.size(0) == requests && queries.size(2) == layer.head_dim && queries.stride(2) == 1,
         "queries: expected [" + std::to_string(requests) + ", query_heads, " + std::to_string(layer.head_dim) +
             "] in the cache's dtype and device, rows contiguous");
  const int64_t hq = queries.size(1);
  expect(hq % num_kv_heads == 0 && hq / num_kv_heads <= 8, "queries: query heads must be 1 to 8 per KV head");
  expect(std::isfinite(scale) && scale >= 0.0, "scale: must be finite and >= 0 (0: 1/sqrt(head_dim))");
  auto out = at::empty({requests, hq, layer.head_dim}, queries.options());
  CudaDecodeIO io;
  io.queries = queries.data_ptr();
  io.q_request_stride = queries.stride(0);
  io.q_head_stride = queries.stride(1);
  io.out = out.data_ptr();
  io.out_request_stride = out.stride(0);
  io.out_head_stride = out.stride(1);
  io.scale = static_cast<float>(scale);
  io.group = static_cast<int>(hq / num_kv_heads);
  const std::size_t bytes = simcalkv_cuda_decode_workspace(layer, io.group);
  auto workspace = at::empty({static_cast<int64_t>(std::max<std::size_t>(bytes, 1))}, keys.options().dtype(at::kByte));
  check_cuda(simcalkv_cuda_decode(layer, io, workspace.data_ptr(), bytes, reinterpret_cast<void*>(stream)),
             "decode_attention");
  return out;
}
#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "simcalkv's C++ policies and biased attention over ragged per-head KV caches (CPU)";
  m.def("policy_names", &simcalkv::policy_names, "The registry's policy names");
  m.def("compress_ragged", &compress_ragged, pybind11::arg("keys"), pybind11::arg("values"), pybind11::arg("bias"),
        pybind11::arg("positions"), pybind11::arg("lengths"), pybind11::arg("window_queries"),
        pybind11::arg("window_positions"), pybind11::arg("spec"), pybind11::arg("compress_ratio"),
        pybind11::arg("scores") = pybind11::none(), pybind11::arg("shared_selection") = false,
        pybind11::arg("layer") = 0, pybind11::arg("num_layers") = 1, pybind11::arg("threads") = 1,
        pybind11::arg("budgets") = pybind11::none(), pybind11::arg("first_kv_head") = 0,
        "Compresses one ragged layer with a registry policy spec; returns the kept entries packed. "
        "budgets (int64 [heads]): final per-head budgets, as global_budgets gives them");
  m.def(
      "policy_decides_across_heads", [](const std::string& spec) { return policy_of(spec).decides_across_heads(); },
      pybind11::arg("spec"), "Whether a head's plan depends on the other heads of its layer (TOVA, PyramidInfer, D2O)");
  m.def(
      "policy_reallocates", [](const std::string& spec) { return policy_of(spec).reallocates(); },
      pybind11::arg("spec"), "Whether the policy moves budget between the KV heads of a layer (AdaKV+...)");
  m.def("score_layer", &score_layer, pybind11::arg("keys"), pybind11::arg("values"), pybind11::arg("bias"),
        pybind11::arg("positions"), pybind11::arg("lengths"), pybind11::arg("window_queries"),
        pybind11::arg("window_positions"), pybind11::arg("spec"), pybind11::arg("compress_ratio"),
        pybind11::arg("scores") = pybind11::none(), pybind11::arg("layer") = 0, pybind11::arg("num_layers") = 1,
        pybind11::arg("threads") = 1, pybind11::arg("first_kv_head") = 0,
        "An AdaKV policy's per-head lengths, budgets and selection scores of one ragged layer (tensor parallelism)");
  m.def("global_budgets", &global_budgets, pybind11::arg("spec"), pybind11::arg("lengths"), pybind11::arg("budgets"),
        pybind11::arg("scores"), pybind11::arg("window_tokens"),
        "Per-head budgets of a whole layer from every rank's score_layer output, in rank order");
  m.def("attend_ragged", &attend_ragged, pybind11::arg("queries"), pybind11::arg("query_positions"),
        pybind11::arg("keys"), pybind11::arg("values"), pybind11::arg("bias"), pybind11::arg("positions"),
        pybind11::arg("lengths"), pybind11::arg("scale") = 0.0,
        "softmax(scale q.k + bias) v over each KV head's entries with position <= the query's");
#ifdef SIMCALKV_WITH_CUDA
  m.attr("has_cuda") = true;
  m.def("cuda_compress", &cuda_compress, "Compresses one ragged layer of a batch in place on the GPU (lengths lowered)");
  m.def("cuda_decode", &cuda_decode, "Biased decode attention of one token per request over a ragged layer on the GPU");
#else
  m.attr("has_cuda") = false;
#endif
}
