// Reference host engine: Hugging Face checkpoint loading (config.json + safetensors) for the
// llama, qwen2 and mistral architectures. Public simcalkv headers only.
#pragma once

#include <simcalkv/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace engine {

/// Every error of the engine: the message names the file and the problem.
class EngineError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Parts>
[[noreturn]] inline void fail(Parts&&... parts) {
  std::ostringstream s;
  (s << ... << std::forward<Parts>(parts));
  throw EngineError(s.str());
}

inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open the file");
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return nlohmann::json::parse(buf.str());
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": bad JSON: ", e.what());
  }
}

struct RopeScaling {
  enum class Type { none, linear, llama3 } type = Type::none;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192.0;
};

struct ModelConfig {
  std::string model_type;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // qwen2 always; llama's attention_bias
  bool o_bias = false;    // llama's attention_bias
  bool mlp_bias = false;  // llama's mlp_bias
  long long sliding_window = 0;  // mistral / qwen2 (informational: the engine attends over the whole cache)
  long long max_position_embeddings = 0;  // 0: not given
  std::vector<int> eos_token_ids;
  int bos_token_id = -1;

  [[nodiscard]] int group_size() const { return num_heads / num_kv_heads; }
};

namespace detail {
inline const nlohmann::json* find(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}
inline int get_positive_int(const nlohmann::json& j, const char* key, const std::string& file) {
  const auto* v = find(j, key);
  if (!v) fail(file, ": missing '", key, "'");
  if (!v->is_number_integer() || v->get<long long>() <= 0 || v->get<long long>() > (1LL << 30))
    fail(file, ": '", key, "' must be a positive integer, got ", v->dump());
  return v->get<int>();
}
inline double get_number(const nlohmann::json& j, const char* key, double fallback, const std::string& file) {
  const auto* v = find(j, key);
  if (!v) return fallback;
  if (!v->is_number()) fail(file, ": '", key, "' must be a number, got ", v->dump());
  return v->get<double>();
}
inline bool get_bool(const nlohmann::json& j, const char* key, bool fallback, const std::string& file) {
  const auto* v = find(j, key);
  if (!v) return fallback;
  if (!v->is_boolean()) fail(file, ": '", key, "' must be true or false, got ", v->dump());
  return v->get<bool>();
}
}  // namespace detail

inline ModelConfig parse_config(const nlohmann::json& j, const std::string& file) {
  using namespace detail;
  if (!j.is_object()) fail(file, ": expected a JSON object");
  ModelConfig c;
  const auto* mt = find(j, "model_type");
  if (!mt || !mt->is_string()) fail(file, ": missing 'model_type' (supported: llama, qwen2, mistral)");
  c.model_type = mt->get<std::string>();
  if (c.model_type != "llama" && c.model_type != "qwen2" && c.model_type != "mistral")
    fail(file, ": unsupported architecture model_type '", c.model_type, "' (supported: llama, qwen2, mistral)");
  c.hidden_size = get_positive_int(j, "hidden_size", file);
  c.intermediate_size = get_positive_int(j, "intermediate_size", file);
  c.num_layers = get_positive_int(j, "num_hidden_layers", file);
  c.num_heads = get_positive_int(j, "num_attention_heads", file);
  c.num_kv_heads = find(j, "num_key_value_heads") ? get_positive_int(j, "num_key_value_heads", file) : c.num_heads;
  c.vocab_size = get_positive_int(j, "vocab_size", file);
  if (find(j, "head_dim")) {
    c.head_dim = get_positive_int(j, "head_dim", file);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      fail(file, ": hidden_size ", c.hidden_size, " is not a multiple of num_attention_heads ", c.num_heads,
           " and there is no head_dim");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) fail(file, ": head_dim ", c.head_dim, " must be even for RoPE");
  if (c.num_heads % c.num_kv_heads != 0)
    fail(file, ": num_attention_heads ", c.num_heads, " is not a multiple of num_key_value_heads ", c.num_kv_heads);
  c.rms_norm_eps = get_number(j, "rms_norm_eps", 1e-6, file);
  if (!(c.rms_norm_eps >= 0)) fail(file, ": 'rms_norm_eps' must be non-negative");
  if (const auto* act = find(j, "hidden_act"); act && (!act->is_string() || act->get<std::string>() != "silu"))
    fail(file, ": unsupported hidden_act ", act->dump(), " (only silu)");
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, file);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
  } else if (c.model_type == "llama") {
    c.qkv_bias = c.o_bias = get_bool(j, "attention_bias", false, file);
    c.mlp_bias = get_bool(j, "mlp_bias", false, file);
  }
  if (const auto* sw = find(j, "sliding_window")) {
    if (!sw->is_number_integer() || sw->get<long long>() <= 0)
      fail(file, ": 'sliding_window' must be a positive integer or null, got ", sw->dump());
    const bool used = c.model_type == "mistral" || get_bool(j, "use_sliding_window", false, file);
    if (used) c.sliding_window = sw->get<long long>();
  }
  if (find(j, "max_position_embeddings")) c.max_position_embeddings = get_positive_int(j, "max_position_embeddings", file);
  // Token ids must name a row of the vocabulary: a string, a fraction, a negative or an id past the end would
  // otherwise be ignored or truncated, and generation would never stop (or stop on the wrong token).
  auto token_id = [&](const nlohmann::json& v, const std::string& what) {
    if (!v.is_number_integer() || v.get<long long>() < 0 || v.get<long long>() >= c.vocab_size)
      fail(file, ": '", what, "' must be a token id in [0, ", c.vocab_size, ") (vocab_size), got ", v.dump());
    return static_cast<int>(v.get<long long>());
  };
  if (const auto* e = find(j, "eos_token_id")) {
    if (e->is_array()) {
      for (std::size_t i = 0; i < e->size(); ++i)
        c.eos_token_ids.push_back(token_id((*e)[i], "eos_token_id[" + std::to_string(i) + "]"));
    } else {
      c.eos_token_ids.push_back(token_id(*e, "eos_token_id"));
    }
  }
  if (const auto* b = find(j, "bos_token_id")) c.bos_token_id = token_id(*b, "bos_token_id");

  // RoPE: rope_theta at the top level, or inside rope_parameters (newer transformers); scaling in
  // rope_scaling (older) or rope_parameters.
  const nlohmann::json* rp = find(j, "rope_parameters");
  if (rp && !rp->is_object()) fail(file, ": 'rope_parameters' must be an object");
  c.rope_theta = get_number(j, "rope_theta", rp ? get_number(*rp, "rope_theta", 10000.0, file) : 10000.0, file);
  if (!(c.rope_theta > 0)) fail(file, ": rope_theta must be positive");
  const nlohmann::json* rs = find(j, "rope_scaling");
  if (rs && !rs->is_object()) fail(file, ": 'rope_scaling' must be an object");
  if (!rs) rs = rp;
  if (rs) {
    std::string type = "default";
    if (const auto* t = find(*rs, "rope_type")) type = t->is_string() ? t->get<std::string>() : "?";
    else if (const auto* t2 = find(*rs, "type")) type = t2->is_string() ? t2->get<std::string>() : "?";
    auto& s = c.rope_scaling;
    if (type == "default") {
      s.type = RopeScaling::Type::none;
    } else if (type == "linear") {
      s.type = RopeScaling::Type::linear;
      s.factor = get_number(*rs, "factor", 1.0, file);
    } else if (type == "llama3") {
      s.type = RopeScaling::Type::llama3;
      s.factor = get_number(*rs, "factor", 8.0, file);
      s.low_freq_factor = get_number(*rs, "low_freq_factor", 1.0, file);
      s.high_freq_factor = get_number(*rs, "high_freq_factor", 4.0, file);
      s.original_max_position_embeddings = get_number(*rs, "original_max_position_embeddings", 8192.0, file);
      if (!(s.high_freq_factor > s.low_freq_factor) || !(s.low_freq_factor > 0))
        fail(file, ": llama3 rope scaling needs high_freq_factor > low_freq_factor > 0");
    } else {
      fail(file, ": unsupported rope type '", type, "' (supported: default, linear, llama3)");
    }
    if (!(s.factor > 0)) fail(file, ": rope scaling factor must be positive");
  }
  return c;
}

inline ModelConfig load_config(const std::filesystem::path& dir) {
  const auto path = dir / "config.json";
  return parse_config(read_json_file(path), path.string());
}

/// A weight matrix [rows][cols] (a Linear's [out][in]) in float, with an optional bias [rows].
struct Linear {
  int rows = 0, cols = 0;
  std::vector<float> w;
  std::vector<float> b;
};

struct LayerWeights {
  std::vector<float> input_norm, post_norm;
  Linear q, k, v, o, gate, up, down;
};

struct ModelWeights {
  std::vector<float> embed;  // [vocab][hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;
  Linear lm_head;  // w empty when tied: the engine uses embed
  [[nodiscard]] std::size_t bytes() const {
    std::size_t n = embed.size() + final_norm.size() + lm_head.w.size() + lm_head.b.size();
    for (const auto& L : layers) {
      n += L.input_norm.size() + L.post_norm.size();
      for (const Linear* x : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) n += x->w.size() + x->b.size();
    }
    return n * sizeof(float);
  }
};

/// The checkpoint's tensors: one model.safetensors or shards listed by model.safetensors.index.json.
class WeightStore {
 public:
  explicit WeightStore(const std::filesystem::path& dir) {
    const auto single = dir / "model.safetensors";
    const auto index = dir / "model.safetensors.index.json";
    if (std::filesystem::exists(index)) {
      const auto j = read_json_file(index);
      const auto it = j.is_object() ? j.find("weight_map") : j.end();
      if (it == j.end() || !it->is_object()) fail(index.string(), ": missing the 'weight_map' object");
      for (const auto& [name, file] : it->items()) {
        if (!file.is_string()) fail(index.string(), ": weight_map['", name, "'] is not a file name");
        const std::string f = file.get<std::string>();
        if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
          fail(index.string(), ": weight_map['", name, "'] names a file outside the folder: '", f, "'");
        where_[name] = f;
      }
      index_path_ = index.string();
    } else if (!std::filesystem::exists(single)) {
      fail(dir.string(), ": no model.safetensors or model.safetensors.index.json");
    }
    dir_ = dir;
  }

  /// The tensor widened to float, checked to have `shape`.
  std::vector<float> read(const std::string& name, std::initializer_list<std::int64_t> shape) {
    const auto& file = file_of(name);
    try {
      if (!file.contains(name)) {
        if (index_path_.empty()) fail(file.path(), ": missing tensor '", name, "'");
        fail(file.path(), ": missing tensor '", name, "' (listed for it in ", index_path_, ")");
      }
      read_.insert(name);
      return file.read_as_float(name, shape);
    } catch (const simcalkv::Error& e) {
      throw EngineError(std::string(e.what()));
    }
  }
  bool contains(const std::string& name) {
    if (!index_path_.empty()) return where_.count(name) != 0;
    return file_of(name).contains(name);
  }
  /// The tensors read so far.
  [[nodiscard]] const std::set<std::string>& read_names() const { return read_; }
  /// Every tensor of the checkpoint (all shards), sorted.
  std::vector<std::string> names() {
    std::vector<std::string> out;
    if (!index_path_.empty()) {
      for (const auto& [name, file] : where_) out.push_back(name);
      return out;
    }
    return file_of("").names();
  }
  /// Where the tensors are listed: the index or the one file.
  [[nodiscard]] std::string source() const {
    return index_path_.empty() ? (dir_ / "model.safetensors").string() : index_path_;
  }

 private:
  const simcalkv::io::SafetensorsFile& file_of(const std::string& name) {
    std::string f = "model.safetensors";
    if (!index_path_.empty()) {
      auto it = where_.find(name);
      if (it == where_.end()) fail(index_path_, ": missing tensor '", name, "' (not in weight_map)");
      f = it->second;
    }
    auto& slot = open_[f];
    if (!slot) {
      const auto path = (dir_ / f).string();
      try {
        slot = std::make_unique<simcalkv::io::SafetensorsFile>(path);
      } catch (const simcalkv::Error& e) {
        open_.erase(f);
        throw EngineError(std::string(e.what()));
      }
    }
    return *slot;
  }

  std::filesystem::path dir_;
  std::string index_path_;
  std::map<std::string, std::string> where_;
  std::map<std::string, std::unique_ptr<simcalkv::io::SafetensorsFile>> open_;
  std::set<std::string> read_;
};

inline Linear read_linear(WeightStore& ws, const std::string& prefix, int out, int in, bool bias) {
  Linear L;
  L.rows = out;
  L.cols = in;
  L.w = ws.read(prefix + ".weight", {out, in});
  if (bias) L.b = ws.read(prefix + ".bias", {out});
  return L;
}

/// The layer number of a "model.layers.N.*" tensor, or -1.
inline long long layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  long long n = 0;
  std::size_t i = prefix.size();
  if (i >= name.size() || !std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i)
    n = std::min<long long>(n * 10 + (name[i] - '0'), 1LL << 40);
  return i < name.size() && name[i] == '.' ? n : -1;
}

/// Checks config.json's layer count against the checkpoint's tensors before anything is allocated for it: a
/// smaller count would drop layers in silence, a larger one (2^30) would end in std::bad_alloc.
inline void check_layer_count(WeightStore& ws, const ModelConfig& c, const std::filesystem::path& dir) {
  long long highest = -1;
  std::string example;
  for (const auto& name : ws.names())
    if (const long long l = layer_of(name); l > highest) highest = l, example = name;
  const long long found = highest + 1;
  if (found != c.num_layers)
    fail((dir / "config.json").string(), ": num_hidden_layers is ", c.num_layers, " but ", ws.source(), " holds ",
         found == 0 ? std::string("no layer tensors") : "layers 0.." + std::to_string(highest) + " (" + example + ")",
         found > c.num_layers ? "; loading would drop layers" : "");
}

/// Tensors the architecture does not read (a checkpoint of another layout, or a config that turns a part off):
/// reported, not fatal -- transformers also loads such checkpoints, with a warning.
inline std::vector<std::string> unused_tensors(WeightStore& ws, const std::set<std::string>& used) {
  std::vector<std::string> out;
  for (const auto& name : ws.names()) {
    if (used.count(name)) continue;
    if (name.ends_with("rotary_emb.inv_freq")) continue;  // derived from the config, as transformers does
    out.push_back(name);
  }
  return out;
}

inline ModelWeights load_weights(const std::filesystem::path& dir, const ModelConfig& c,
                                 std::vector<std::string>* warnings = nullptr) {
  WeightStore ws(dir);
  check_layer_count(ws, c, dir);
  ModelWeights m;
  const int H = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
  m.embed = ws.read("model.embed_tokens.weight", {c.vocab_size, H});
  m.layers.resize(static_cast<std::size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    auto& L = m.layers[static_cast<std::size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l);
    L.input_norm = ws.read(p + ".input_layernorm.weight", {H});
    L.post_norm = ws.read(p + ".post_attention_layernorm.weight", {H});
    L.q = read_linear(ws, p + ".self_attn.q_proj", c.num_heads * D, H, c.qkv_bias);
    L.k = read_linear(ws, p + ".self_attn.k_proj", c.num_kv_heads * D, H, c.qkv_bias);
    L.v = read_linear(ws, p + ".self_attn.v_proj", c.num_kv_heads * D, H, c.qkv_bias);
    L.o = read_linear(ws, p + ".self_attn.o_proj", H, c.num_heads * D, c.o_bias);
    L.gate = read_linear(ws, p + ".mlp.gate_proj", I, H, c.mlp_bias);
    L.up = read_linear(ws, p + ".mlp.up_proj", I, H, c.mlp_bias);
    L.down = read_linear(ws, p + ".mlp.down_proj", H, I, c.mlp_bias);
  }
  m.final_norm = ws.read("model.norm.weight", {H});
  if (!c.tie_word_embeddings) {
    m.lm_head = read_linear(ws, "lm_head", c.vocab_size, H, false);
  } else {
    m.lm_head.rows = c.vocab_size;
    m.lm_head.cols = H;
  }
  if (warnings) {
    const auto unused = unused_tensors(ws, ws.read_names());
    if (!unused.empty()) {
      std::string list;
      for (std::size_t k = 0; k < unused.size() && k < 5; ++k) list += (k ? ", " : "") + unused[k];
      if (unused.size() > 5) list += ", ...";
      warnings->push_back(ws.source() + ": " + std::to_string(unused.size()) + " tensor" +
                          (unused.size() == 1 ? "" : "s") + " the " + c.model_type +
                          " architecture does not use, ignored: " + list);
    }
  }
  return m;
}

/// RoPE inverse frequencies, as transformers computes them (default, linear, llama3).
inline std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int D = c.head_dim;
  std::vector<double> f(static_cast<std::size_t>(D / 2));
  for (int i = 0; i < D / 2; ++i) {
    // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32
    const float expo = static_cast<float>(2 * i) / static_cast<float>(D);
    f[static_cast<std::size_t>(i)] = static_cast<double>(1.0f / std::pow(static_cast<float>(c.rope_theta), expo));
  }
  const auto& s = c.rope_scaling;
  if (s.type == RopeScaling::Type::linear) {
    for (auto& x : f) x /= s.factor;
  } else if (s.type == RopeScaling::Type::llama3) {
    const double pi = 3.14159265358979323846;
    const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    for (auto& x : f) {
      const double wavelen = 2 * pi / x;
      if (wavelen > low_wavelen) {
        x = x / s.factor;
      } else if (wavelen >= high_wavelen) {  // medium: smooth interpolation
        const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        x = (1 - smooth) * x / s.factor + smooth * x;
      }
    }
  }
  return f;
}

struct Model {
  ModelConfig config;
  ModelWeights weights;
  std::vector<double> inv_freq;
  std::vector<std::string> warnings;  // what loading accepted but a user should know (unused tensors)

  static Model load(const std::filesystem::path& dir) {
    if (!std::filesystem::is_directory(dir)) fail(dir.string(), ": not a folder");
    Model m;
    m.config = load_config(dir);
    m.weights = load_weights(dir, m.config, &m.warnings);
    m.inv_freq = rope_inv_freq(m.config);
    return m;
  }
  [[nodiscard]] const float* lm_head() const {
    return weights.lm_head.w.empty() ? weights.embed.data() : weights.lm_head.w.data();
  }
};

}  // namespace engine
