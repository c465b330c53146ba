// simcalkv: the KV trace format.
//
// A trace records the queries, keys and values a model produced for one sequence, so policies can
// be evaluated offline. It is a safetensors file with string metadata
//   format=simcalkv-trace  version=1  num_layers  num_q_heads  num_kv_heads  head_dim  rope=applied
// and, for each layer i in [0, num_layers), three tensors of dtype F32, F16 or BF16:
//   layers.{i}.q  [num_q_heads,  n, head_dim]
//   layers.{i}.k  [num_kv_heads, n, head_dim]
//   layers.{i}.v  [num_kv_heads, n, head_dim]
// RoPE is already applied to q and k. Query head h reads KV head h / (num_q_heads / num_kv_heads)
// (grouped-query attention) and the attention scale is 1 / sqrt(head_dim). Other metadata keys are
// allowed and carried in Trace::metadata; other tensors are allowed unless their names start with
// "layers." (which would mean the header and num_layers disagree).
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/io/safetensors.hpp"
#include "simcalkv/numeric.hpp"

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace simcalkv::io {

inline constexpr const char* trace_format_name = "simcalkv-trace";
inline constexpr const char* trace_format_version = "1";

/// Queries, keys and values of one sequence, all layers (or a subset) in float.
struct Trace {
  int num_layers = 0;    // layers held here (== q.size())
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  std::int64_t n = 0;    // tokens

  // Per layer, row-major: q[l] is [num_q_heads, n, head_dim]; k[l] and v[l] are [num_kv_heads, n, head_dim].
  std::vector<std::vector<float>> q, k, v;

  // The file's layer number of each held layer (0..num_layers-1 unless read_trace took a subset).
  std::vector<int> layer_ids;

  // Metadata other than the format keys (provenance such as "source" or "seed").
  std::map<std::string, std::string> metadata;

  [[nodiscard]] int group_size() const noexcept { return num_kv_heads > 0 ? num_q_heads / num_kv_heads : 0; }
  [[nodiscard]] int kv_head_of(int qhead) const noexcept { return qhead / group_size(); }

  // Row pointers (head_dim contiguous floats). Unchecked.
  [[nodiscard]] const float* query(int layer, int qhead, std::int64_t token) const noexcept {
    return q[static_cast<std::size_t>(layer)].data() + row(qhead, token);
  }
  [[nodiscard]] const float* key(int layer, int kvhead, std::int64_t token) const noexcept {
    return k[static_cast<std::size_t>(layer)].data() + row(kvhead, token);
  }
  [[nodiscard]] const float* value(int layer, int kvhead, std::int64_t token) const noexcept {
    return v[static_cast<std::size_t>(layer)].data() + row(kvhead, token);
  }
  [[nodiscard]] float* query(int layer, int qhead, std::int64_t token) noexcept {
    return q[static_cast<std::size_t>(layer)].data() + row(qhead, token);
  }
  [[nodiscard]] float* key(int layer, int kvhead, std::int64_t token) noexcept {
    return k[static_cast<std::size_t>(layer)].data() + row(kvhead, token);
  }
  [[nodiscard]] float* value(int layer, int kvhead, std::int64_t token) noexcept {
    return v[static_cast<std::size_t>(layer)].data() + row(kvhead, token);
  }

  [[nodiscard]] std::size_t q_size() const noexcept { return elems(num_q_heads); }
  [[nodiscard]] std::size_t kv_size() const noexcept { return elems(num_kv_heads); }

  /// Sizes q, k, v (zero-filled) and layer_ids from the dimensions.
  void allocate() {
    validate_dims();
    q.assign(static_cast<std::size_t>(num_layers), std::vector<float>(q_size()));
    k.assign(static_cast<std::size_t>(num_layers), std::vector<float>(kv_size()));
    v.assign(static_cast<std::size_t>(num_layers), std::vector<float>(kv_size()));
    layer_ids.resize(static_cast<std::size_t>(num_layers));
    for (int i = 0; i < num_layers; ++i) layer_ids[static_cast<std::size_t>(i)] = i;
  }

  /// Throws Error(invalid_argument) if the dimensions or buffer sizes disagree.
  void validate() const {
    validate_dims();
    const auto layers = static_cast<std::size_t>(num_layers);
    detail::require(q.size() == layers && k.size() == layers && v.size() == layers, ErrorCode::invalid_argument,
                    "trace: num_layers is ", num_layers, " but q, k, v hold ", q.size(), ", ", k.size(), ", ",
                    v.size(), " layers");
    for (std::size_t l = 0; l < layers; ++l) {
      detail::require(q[l].size() == q_size(), ErrorCode::invalid_argument, "trace: layer ", l, " q holds ",
                      q[l].size(), " floats, expected ", q_size());
      detail::require(k[l].size() == kv_size(), ErrorCode::invalid_argument, "trace: layer ", l, " k holds ",
                      k[l].size(), " floats, expected ", kv_size());
      detail::require(v[l].size() == kv_size(), ErrorCode::invalid_argument, "trace: layer ", l, " v holds ",
                      v[l].size(), " floats, expected ", kv_size());
    }
  }

 private:
  [[nodiscard]] std::size_t row(int head, std::int64_t token) const noexcept {
    return (static_cast<std::size_t>(head) * static_cast<std::size_t>(n) + static_cast<std::size_t>(token)) *
           static_cast<std::size_t>(head_dim);
  }
  [[nodiscard]] std::size_t elems(int heads) const noexcept {
    return static_cast<std::size_t>(heads) * static_cast<std::size_t>(n) * static_cast<std::size_t>(head_dim);
  }
  void validate_dims() const {
    detail::require(num_layers > 0 && num_q_heads > 0 && num_kv_heads > 0 && head_dim > 0 && n > 0,
                    ErrorCode::invalid_argument, "trace: dimensions must be positive (num_layers=", num_layers,
                    ", num_q_heads=", num_q_heads, ", num_kv_heads=", num_kv_heads, ", head_dim=", head_dim,
                    ", n=", n, ")");
    detail::require(num_q_heads % num_kv_heads == 0, ErrorCode::invalid_argument, "trace: num_q_heads (",
                    num_q_heads, ") is not a multiple of num_kv_heads (", num_kv_heads, ")");
  }
};

/// "layers.{layer}.{what}"
inline std::string trace_tensor_name(int layer, std::string_view what) {
  std::string name = "layers.";
  name += std::to_string(layer);
  name += '.';
  name += what;
  return name;
}

namespace detail_trace {

inline bool is_reserved_key(const std::string& key) {
  return key == "format" || key == "version" || key == "num_layers" || key == "num_q_heads" ||
         key == "num_kv_heads" || key == "head_dim" || key == "rope";
}

template <class... Parts>
[[noreturn]] void fail(ErrorCode code, const std::string& path, Parts&&... parts) {
  detail::fail(code, "trace '", path, "': ", std::forward<Parts>(parts)...);
}

/// Metadata value `key` as a positive int.
inline int positive_int(const SafetensorsFile& file, const std::string& key) {
  const auto it = file.metadata().find(key);
  if (it == file.metadata().end()) fail(ErrorCode::io, file.path(), "metadata key '", key, "' is absent");
  const std::string& text = it->second;
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value <= 0) {
    fail(ErrorCode::io, file.path(), "metadata ", key, "='", text, "' is not a positive integer");
  }
  return value;
}

}  // namespace detail_trace

/// Reads and validates a trace. `layers` picks a subset (file layer numbers, any order, no
/// repeats); the result then holds those layers in that order and records them in layer_ids. All
/// layers' headers are validated even when only a subset is converted.
inline Trace read_trace(const std::string& path, std::optional<std::vector<int>> layers = {}) {
  using detail_trace::fail;
  const SafetensorsFile file(path);

  const auto& meta = file.metadata();
  const auto format = meta.find("format");
  if (format == meta.end()) fail(ErrorCode::io, path, "not a simcalkv trace: metadata key 'format' is absent");
  if (format->second != trace_format_name) {
    fail(ErrorCode::io, path, "not a simcalkv trace: metadata format='", format->second, "', expected '",
         trace_format_name, "'");
  }
  const auto version = meta.find("version");
  if (version == meta.end()) fail(ErrorCode::io, path, "metadata key 'version' is absent");
  if (version->second != trace_format_version) {
    fail(ErrorCode::io, path, "unsupported trace version '", version->second, "' (this reader knows version ",
         trace_format_version, ")");
  }
  const auto rope = meta.find("rope");
  if (rope == meta.end()) fail(ErrorCode::io, path, "metadata key 'rope' is absent");
  if (rope->second != "applied") {
    fail(ErrorCode::io, path, "metadata rope='", rope->second, "', expected 'applied'");
  }

  Trace trace;
  const int file_layers = detail_trace::positive_int(file, "num_layers");
  trace.num_q_heads = detail_trace::positive_int(file, "num_q_heads");
  trace.num_kv_heads = detail_trace::positive_int(file, "num_kv_heads");
  trace.head_dim = detail_trace::positive_int(file, "head_dim");
  if (trace.num_q_heads % trace.num_kv_heads != 0) {
    fail(ErrorCode::io, path, "num_q_heads (", trace.num_q_heads, ") is not a multiple of num_kv_heads (",
         trace.num_kv_heads, ")");
  }
  for (const auto& [key, value] : meta)
    if (!detail_trace::is_reserved_key(key)) trace.metadata.emplace(key, value);

  // Header checks for every layer: presence, dtype, rank, head counts, head_dim, one n for all.
  std::optional<std::int64_t> n;
  std::set<std::string> expected;
  for (int l = 0; l < file_layers; ++l) {
    for (const char* what : {"q", "k", "v"}) {
      const std::string name = trace_tensor_name(l, what);
      expected.insert(name);
      if (!file.contains(name)) {
        fail(ErrorCode::io, path, "tensor '", name, "' is absent (num_layers=", file_layers, ")");
      }
      const TensorInfo& t = file.info(name);
      if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16) {
        fail(ErrorCode::io, path, "tensor '", name, "' has dtype ", dtype_name(t.dtype),
             ", expected F32, F16 or BF16");
      }
      const int heads = what[0] == 'q' ? trace.num_q_heads : trace.num_kv_heads;
      if (!n && t.shape.size() == 3) n = t.shape[1];
      const bool ok = t.shape.size() == 3 && t.shape[0] == heads && t.shape[2] == trace.head_dim &&
                      n && t.shape[1] == *n && *n > 0;
      if (!ok) {
        const std::string n_text = n ? std::to_string(*n) : std::string("n");
        fail(ErrorCode::io, path, "tensor '", name, "' has shape ", shape_string(t.shape), ", expected [", heads,
             ", ", n_text, ", ", trace.head_dim, "] (", what[0] == 'q' ? "num_q_heads" : "num_kv_heads",
             ", tokens, head_dim)");
      }
    }
  }
  for (const std::string& name : file.names()) {
    if (name.rfind("layers.", 0) == 0 && expected.count(name) == 0) {
      fail(ErrorCode::io, path, "unexpected tensor '", name, "' (num_layers=", file_layers,
           "; trace tensors are layers.{i}.q, .k and .v)");
    }
  }
  trace.n = *n;

  std::vector<int> ids;
  if (layers) {
    ids = *layers;
    if (ids.empty()) detail::fail(ErrorCode::invalid_argument, "trace '", path, "': empty layer subset");
    std::set<int> seen;
    for (int id : ids) {
      if (id < 0 || id >= file_layers) {
        detail::fail(ErrorCode::invalid_argument, "trace '", path, "': layer ", id, " requested, the file has ",
                     file_layers, " layers");
      }
      if (!seen.insert(id).second) {
        detail::fail(ErrorCode::invalid_argument, "trace '", path, "': layer ", id, " requested twice");
      }
    }
  } else {
    for (int l = 0; l < file_layers; ++l) ids.push_back(l);
  }

  trace.num_layers = static_cast<int>(ids.size());
  trace.layer_ids = ids;
  const std::int64_t q_shape[3] = {trace.num_q_heads, trace.n, trace.head_dim};
  const std::int64_t kv_shape[3] = {trace.num_kv_heads, trace.n, trace.head_dim};
  auto load = [&](int l, const char* what, std::span<const std::int64_t> shape) {
    const std::string name = trace_tensor_name(l, what);
    std::vector<float> data = file.read_as_float(name, shape);
    if (!all_finite(data.data(), data.size())) {
      fail(ErrorCode::non_finite, path, "tensor '", name, "' holds NaN or Inf");
    }
    return data;
  };
  for (int l : ids) {
    trace.q.push_back(load(l, "q", q_shape));
    trace.k.push_back(load(l, "k", kv_shape));
    trace.v.push_back(load(l, "v", kv_shape));
  }
  return trace;
}

/// Writes a trace (layers renumbered 0..num_layers-1) with its extra metadata. dtype is F32, F16
/// or BF16; the 16-bit types round to nearest even.
inline void write_trace(const std::string& path, const Trace& trace, DType dtype = DType::F32) {
  trace.validate();
  detail::require(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, ErrorCode::invalid_argument,
                  "write_trace '", path, "': dtype ", dtype_name(dtype), " is not F32, F16 or BF16");
  for (std::size_t l = 0; l < trace.q.size(); ++l) {
    detail::require(all_finite(trace.q[l].data(), trace.q[l].size()) &&
                        all_finite(trace.k[l].data(), trace.k[l].size()) &&
                        all_finite(trace.v[l].data(), trace.v[l].size()),
                    ErrorCode::non_finite, "write_trace '", path, "': layer ", l, " holds NaN or Inf");
  }

  SafetensorsWriter writer;
  for (const auto& [key, value] : trace.metadata) {
    detail::require(!detail_trace::is_reserved_key(key), ErrorCode::invalid_argument, "write_trace '", path,
                    "': metadata key '", key, "' is reserved for the format");
    writer.set_metadata(key, value);
  }
  writer.set_metadata("format", trace_format_name);
  writer.set_metadata("version", trace_format_version);
  writer.set_metadata("num_layers", std::to_string(trace.num_layers));
  writer.set_metadata("num_q_heads", std::to_string(trace.num_q_heads));
  writer.set_metadata("num_kv_heads", std::to_string(trace.num_kv_heads));
  writer.set_metadata("head_dim", std::to_string(trace.head_dim));
  writer.set_metadata("rope", "applied");

  auto add = [&](int l, const char* what, int heads, const std::vector<float>& data) {
    std::vector<std::int64_t> shape = {heads, trace.n, trace.head_dim};
    const std::string name = trace_tensor_name(l, what);
    if (dtype == DType::F32) {
      writer.add(name, dtype, std::move(shape), data.data(), data.size() * sizeof(float));
    } else if (dtype == DType::F16) {
      std::vector<half> narrow(data.size());
      for (std::size_t i = 0; i < data.size(); ++i) {
        narrow[i] = from_float<half>(data[i]);
        detail::require(std::isfinite(to_float(narrow[i])), ErrorCode::invalid_argument, "write_trace '", path,
                        "': tensor '", name, "' value ", data[i], " is outside the F16 range");
      }
      writer.add(name, dtype, std::move(shape), narrow.data(), narrow.size() * sizeof(half));
    } else {
      std::vector<bfloat16> narrow(data.size());
      for (std::size_t i = 0; i < data.size(); ++i) narrow[i] = from_float<bfloat16>(data[i]);
      writer.add(name, dtype, std::move(shape), narrow.data(), narrow.size() * sizeof(bfloat16));
    }
  };
  for (int l = 0; l < trace.num_layers; ++l) {
    const auto i = static_cast<std::size_t>(l);
    add(l, "q", trace.num_q_heads, trace.q[i]);
    add(l, "k", trace.num_kv_heads, trace.k[i]);
    add(l, "v", trace.num_kv_heads, trace.v[i]);
  }
  writer.write(path);
}

}  // namespace simcalkv::io
