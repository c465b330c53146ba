// Forward pass against transformers' float32 logits (fixtures made by tools/fixtures/make_engine_fixtures.py).
#include "session.hpp"

#include <catch2/catch.hpp>

#include <simcalkv/io/safetensors.hpp>

#include <cmath>
#include <filesystem>
#include <iostream>

namespace fs = std::filesystem;
static const fs::path kFixtures = SIMCALKV_ENGINE_FIXTURES;

namespace {

float max_abs_diff(const std::vector<float>& a, const float* b, std::size_t n) {
  REQUIRE(a.size() == n);
  float m = 0.0f;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

struct Reference {
  nlohmann::json json;
  simcalkv::io::SafetensorsFile tensors;
  explicit Reference(const fs::path& dir)
      : json(engine::read_json_file(dir / "reference.json")), tensors((dir / "reference.safetensors").string()) {}
  std::vector<int> prompt(std::size_t i) const { return json["prompts"][i]["ids"].get<std::vector<int>>(); }
};

template <class T>
float prompt_error(const engine::Model& model, const Reference& ref, std::size_t p, int chunk, bool stepwise) {
  const auto ids = ref.prompt(p);
  const auto expected = ref.tensors.read_as_float("logits_" + std::to_string(p));
  const auto V = static_cast<std::size_t>(model.config.vocab_size);
  engine::SessionOptions so;
  so.chunk = chunk;
  engine::Session<T> s(model, so);
  std::vector<float> got;
  if (!stepwise) {
    got = s.prefill(ids, {.all_logits = true});
  } else {  // first token by prefill, then each following one by decode()
    got = s.prefill(std::span<const int>(ids.data(), 1), {.all_logits = true});
    for (std::size_t t = 1; t < ids.size(); ++t) {
      auto row = s.decode(ids[t]);
      got.insert(got.end(), row.begin(), row.end());
    }
  }
  return max_abs_diff(got, expected.data(), ids.size() * V);
}

}  // namespace

TEST_CASE("logits match transformers within 1e-3 for every architecture", "[engine][model]") {
  for (const std::string name : {"llama", "llama_bf16", "qwen2", "mistral"}) {
    const auto dir = kFixtures / name;
    const auto model = engine::Model::load(dir);
    const Reference ref(dir);
    float worst = 0.0f, worst_bf16kv = 0.0f;
    for (std::size_t p = 0; p < ref.json["prompts"].size(); ++p) {
      INFO(name << " prompt " << p);
      for (int chunk : {512, 5}) worst = std::max(worst, prompt_error<float>(model, ref, p, chunk, false));
      worst = std::max(worst, prompt_error<float>(model, ref, p, 512, true));
      worst_bf16kv = std::max(worst_bf16kv, prompt_error<simcalkv::bfloat16>(model, ref, p, 7, false));
    }
    std::cout << "[engine] " << name << ": logits max abs error f32 KV " << worst << ", bf16 KV " << worst_bf16kv
              << "\n";
    CHECK(worst < 1e-3f);
    CHECK(worst_bf16kv < 5e-2f);
  }
}

TEST_CASE("greedy decoding matches transformers' greedy continuation", "[engine][model]") {
  for (const std::string name : {"llama", "llama_bf16", "qwen2", "mistral"}) {
    const auto dir = kFixtures / name;
    const auto model = engine::Model::load(dir);
    const Reference ref(dir);
    const auto prompt = ref.json["greedy"]["prompt"].get<std::vector<int>>();
    const auto expected = ref.json["greedy"]["generated"].get<std::vector<int>>();
    engine::Session<float> s(model);
    auto logits = s.prefill(prompt);
    std::vector<int> got;
    while (got.size() < expected.size()) {
      const int next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      got.push_back(next);
      logits = s.decode(next);
    }
    INFO(name);
    CHECK(got == expected);
  }
}

TEST_CASE("the trace holds the post-RoPE keys and values transformers caches", "[engine][model]") {
  for (const std::string name : {"llama", "qwen2", "mistral"}) {
    const auto dir = kFixtures / name;
    const auto model = engine::Model::load(dir);
    const Reference ref(dir);
    const auto ids = ref.prompt(0);
    engine::Session<float> s(model, {.chunk = 3});
    simcalkv::io::Trace trace;
    s.prefill(ids, {.trace = &trace});
    for (int l = 0; l < model.config.num_layers; ++l) {
      const auto k = ref.tensors.read_as_float("k_" + std::to_string(l));
      const auto v = ref.tensors.read_as_float("v_" + std::to_string(l));
      INFO(name << " layer " << l);
      CHECK(max_abs_diff(trace.k[static_cast<std::size_t>(l)], k.data(), k.size()) < 1e-4f);
      CHECK(max_abs_diff(trace.v[static_cast<std::size_t>(l)], v.data(), v.size()) < 1e-4f);
    }
  }
}
