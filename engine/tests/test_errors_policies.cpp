// Malformed checkpoints end in clear errors; every registered policy runs in the engine.
#include "session.hpp"
#include "tokenizer.hpp"

#include <catch2/catch.hpp>

#include <simcalkv/io/safetensors.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

namespace fs = std::filesystem;
static const fs::path kFixtures = SIMCALKV_ENGINE_FIXTURES;

namespace {

struct RawTensor {
  std::string name, dtype;
  std::vector<std::int64_t> shape;
  std::string bytes;
};

std::vector<RawTensor> read_raw(const fs::path& file) {
  simcalkv::io::SafetensorsFile f(file.string());
  std::vector<RawTensor> out;
  for (const auto& n : f.names()) {
    const auto& info = f.info(n);
    out.push_back({n, simcalkv::io::dtype_name(info.dtype), info.shape,
                   std::string(reinterpret_cast<const char*>(info.bytes.data()), info.bytes.size())});
  }
  return out;
}

void write_raw(const fs::path& file, const std::vector<RawTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';
  std::ofstream out(file, std::ios::binary);
  const std::uint64_t len = h.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << h << data;
}

/// A copy of the llama fixture with `edit` applied to its tensors and `config_edit` to its config.
fs::path broken_copy(const std::string& tag, const std::function<void(std::vector<RawTensor>&)>& edit,
                     const std::function<void(nlohmann::json&)>& config_edit = {}) {
  const auto src = kFixtures / "llama";
  const auto dir = fs::temp_directory_path() / ("simcalkv_engine_" + tag);
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto config = engine::read_json_file(src / "config.json");
  if (config_edit) config_edit(config);
  std::ofstream(dir / "config.json") << config.dump(1);
  auto tensors = read_raw(src / "model.safetensors");
  if (edit) edit(tensors);
  write_raw(dir / "model.safetensors", tensors);
  return dir;
}

std::string load_error(const fs::path& dir) {
  try {
    engine::Model::load(dir);
  } catch (const engine::EngineError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("UNEXPECTED EXCEPTION TYPE: ") + e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("config.json: token ids, windows and the layer count are checked against the checkpoint",
          "[engine][errors]") {
  auto with_config = [](const std::string& tag, const std::function<void(nlohmann::json&)>& edit) {
    return load_error(broken_copy(tag, {}, edit));
  };
  const int layers = engine::read_json_file(kFixtures / "llama" / "config.json")["num_hidden_layers"].get<int>();
  const int vocab = engine::read_json_file(kFixtures / "llama" / "config.json")["vocab_size"].get<int>();
  CHECK(with_config("cfg_ok", {}) == "no error");
  for (const auto& bad : {nlohmann::json(-1), nlohmann::json("2"), nlohmann::json(1.5), nlohmann::json(1LL << 40),
                          nlohmann::json(vocab)}) {
    const auto msg = with_config("cfg_eos", [&](auto& j) { j["eos_token_id"] = bad; });
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("config.json") && Catch::Contains("'eos_token_id' must be a token id in [0, " +
                                                                       std::to_string(vocab) + ")"));
  }
  CHECK_THAT(with_config("cfg_eos_list", [&](auto& j) { j["eos_token_id"] = {1, "x"}; }),
             Catch::Contains("'eos_token_id[1]' must be a token id"));
  CHECK_THAT(with_config("cfg_bos", [&](auto& j) { j["bos_token_id"] = -3; }),
             Catch::Contains("'bos_token_id' must be a token id"));
  CHECK_THAT(with_config("cfg_sw", [&](auto& j) { j["sliding_window"] = -4; }),
             Catch::Contains("'sliding_window' must be a positive integer or null, got -4"));
  CHECK(with_config("cfg_sw_null", [&](auto& j) { j["sliding_window"] = nullptr; }) == "no error");
  CHECK_THAT(with_config("cfg_maxpos", [&](auto& j) { j["max_position_embeddings"] = -1; }),
             Catch::Contains("'max_position_embeddings' must be a positive integer"));
  // Fewer layers than the checkpoint holds would drop the rest in silence; 2^30 would exhaust memory.
  const auto fewer = with_config("cfg_fewer", [&](auto& j) { j["num_hidden_layers"] = layers - 1; });
  INFO(fewer);
  CHECK_THAT(fewer, Catch::Contains("num_hidden_layers is " + std::to_string(layers - 1)) &&
                        Catch::Contains("holds layers 0.." + std::to_string(layers - 1)) &&
                        Catch::Contains("would drop layers"));
  CHECK_THAT(with_config("cfg_huge", [&](auto& j) { j["num_hidden_layers"] = 1 << 30; }),
             Catch::Contains("num_hidden_layers is 1073741824 but"));
  // A tensor the architecture does not read is reported (not fatal, as in transformers).
  const auto dir = broken_copy("extra_tensor", [](auto& t) {
    RawTensor extra = t.front();
    extra.name = "model.vision_tower.weight";
    t.push_back(extra);
  });
  const auto model = engine::Model::load(dir);
  REQUIRE(model.warnings.size() == 1);
  CHECK_THAT(model.warnings[0], Catch::Contains("1 tensor the llama architecture does not use, ignored: "
                                                "model.vision_tower.weight"));
  CHECK(engine::Model::load(kFixtures / "llama").warnings.empty());
}

TEST_CASE("malformed checkpoints end in a clear message naming the file", "[engine][errors]") {
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  {
    const auto dir = broken_copy("missing", [&](auto& t) { std::erase_if(t, [&](const RawTensor& x) { return x.name == q; }); });
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("model.safetensors") && Catch::Contains(q) && Catch::Contains("missing"));
  }
  {
    const auto dir = broken_copy("shape", [&](auto& t) {
      for (auto& x : t)
        if (x.name == q) x.shape = {32, 128};
    });
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("model.safetensors") && Catch::Contains(q) && Catch::Contains("shape"));
  }
  {
    const auto dir = broken_copy("dtype_int", [&](auto& t) {
      for (auto& x : t)
        if (x.name == q) x.dtype = "I32";
    });
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("model.safetensors") && Catch::Contains("I32"));
  }
  {
    const auto dir = broken_copy("dtype_unknown", [&](auto& t) {
      for (auto& x : t)
        if (x.name == q) x.dtype = "Q4_K";
    });
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("model.safetensors") && Catch::Contains("Q4_K"));
  }
  {
    const auto dir = broken_copy("truncated", {});
    const auto size = fs::file_size(dir / "model.safetensors");
    fs::resize_file(dir / "model.safetensors", size / 2);
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("model.safetensors"));
    CHECK(msg.find("UNEXPECTED") == std::string::npos);
    fs::resize_file(dir / "model.safetensors", 5);
    const auto msg2 = load_error(dir);
    INFO(msg2);
    CHECK_THAT(msg2, Catch::Contains("model.safetensors"));
  }
  {
    const auto dir = broken_copy("arch", {}, [](auto& c) { c["model_type"] = "gpt_neox"; });
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("config.json") && Catch::Contains("gpt_neox") && Catch::Contains("unsupported"));
  }
  {
    const auto dir = broken_copy("noheads", {}, [](auto& c) { c.erase("num_attention_heads"); });
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("config.json") && Catch::Contains("num_attention_heads"));
  }
  {
    const auto dir = broken_copy("rope", {}, [](auto& c) { c["rope_parameters"]["rope_type"] = "yarn"; });
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("config.json") && Catch::Contains("yarn"));
  }
  {
    const auto dir = broken_copy("badjson", {});
    std::ofstream(dir / "config.json") << "{\"model_type\": \"llama\",";
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("config.json") && Catch::Contains("bad JSON"));
  }
  {
    const auto dir = broken_copy("noweights", {});
    fs::remove(dir / "model.safetensors");
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("model.safetensors"));
  }
  {
    // a shard listed by the index is absent
    const auto dir = fs::temp_directory_path() / "simcalkv_engine_shard";
    fs::remove_all(dir);
    fs::copy(kFixtures / "mistral", dir);
    fs::remove(dir / "model-00003-of-00012.safetensors");
    const auto msg = load_error(dir);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("model-00003-of-00012.safetensors"));
    fs::remove_all(dir);
  }
  for (const auto& tag : {"missing", "shape", "dtype_int", "dtype_unknown", "truncated", "arch", "noheads", "rope",
                          "badjson", "noweights"})
    fs::remove_all(fs::temp_directory_path() / (std::string("simcalkv_engine_") + tag));
}

TEST_CASE("every registered policy compresses the engine's cache after prefill", "[engine][policies]") {
  const auto model = engine::Model::load(kFixtures / "llama");
  std::vector<int> prompt;
  for (int i = 0; i < 48; ++i) prompt.push_back((i * 37 + 11) % model.config.vocab_size);
  for (const auto& name : simcalkv::policy_names()) {
    INFO(name);
    engine::Session<simcalkv::bfloat16> s(model, {.chunk = 16, .track_scores = false, .window = 8});
    s.prefill(prompt);
    const auto before = s.cache().used_bytes();
    const auto stats = s.compress(simcalkv::make_policy(name), simcalkv::Budget::compress_ratio(0.5));
    const auto after = s.cache().used_bytes();
    if (name != "Full") CHECK(after < before);
    CHECK(stats.entries_before == 48u * 2 * 2);
    auto logits = s.decode(5);
    logits = s.decode(7);
    CHECK(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
    CHECK(s.position() == 50);
  }
}

TEST_CASE("the decode-time driver keeps the cache near its budget while decoding", "[engine][policies]") {
  const auto model = engine::Model::load(kFixtures / "qwen2");
  std::vector<int> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back((i * 53 + 3) % model.config.vocab_size);
  for (const std::string name : {"H2O", "SnapKV", "SimCalKV", "StreamingLLM"}) {
    INFO(name);
    engine::Session<float> s(model, {.chunk = 512, .track_scores = true, .window = 8});
    s.prefill(prompt);
    const auto policy = simcalkv::make_policy(name);
    s.compress(policy, simcalkv::Budget::compress_ratio(0.5));
    simcalkv::DecodeOptions dopt;
    dopt.budget = simcalkv::Budget::entries(20);
    dopt.slack = 4;
    dopt.window = 8;
    s.enable_decode_driver(policy, dopt);
    for (int t = 0; t < 30; ++t) s.decode((t * 7) % model.config.vocab_size);
    for (int l = 0; l < model.config.num_layers; ++l)
      for (const auto& h : s.cache().layer(l)) CHECK(h.length <= 24u);
    CHECK(s.decode_compression_stats().entries_before > s.decode_compression_stats().entries_after);
    CHECK(s.position() == 70);
  }
}
