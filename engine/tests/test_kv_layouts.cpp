// The engine on the paged layout: the same plans applied through block tables give the compact
// layout's generations, token for token, for every registered policy, after prefill and while
// decoding, on the bundled model.
#include "session.hpp"
#include "tokenizer.hpp"

#include <catch2/catch.hpp>

#include <simcalkv/registry.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

const fs::path bundled = fs::path(SIMCALKV_ENGINE_FIXTURES) / ".." / ".." / ".." / "models" / "simcalkv-tiny";

struct Run {
  std::vector<int> ids;
  std::vector<float> last_logits;
  std::size_t entries = 0;
};

Run generate(const engine::Model& model, const std::vector<int>& prompt, const std::string& policy,
             engine::KVLayout layout, bool decode_compress, int new_tokens) {
  engine::SessionOptions so;
  so.layout = layout;
  so.window = 16;
  so.chunk = 128;
  so.track_scores = decode_compress;
  engine::Session<float> s(model, so);
  std::vector<float> logits = s.prefill(prompt);
  const simcalkv::AnyPolicy p = simcalkv::make_policy(policy);
  s.compress(p, simcalkv::Budget::compress_ratio(0.5));
  if (decode_compress)  // the prompt's budget, kept while decoding (4 tokens of slack)
    s.enable_decode_driver(
        p, simcalkv::DecodeOptions{simcalkv::Budget::entries(simcalkv::Budget::compress_ratio(0.5).for_length(prompt.size())),
                                   4, 16, true});
  Run r;
  for (int i = 0; i < new_tokens; ++i) {
    int best = 0;
    for (int v = 1; v < static_cast<int>(logits.size()); ++v)
      if (logits[static_cast<std::size_t>(v)] > logits[static_cast<std::size_t>(best)]) best = v;
    r.ids.push_back(best);
    logits = s.decode(best);
  }
  r.last_logits = logits;
  r.entries = s.kv_total_entries();
  return r;
}

}  // namespace

TEST_CASE("paged and compact layouts give the same generations for every policy", "[engine][layouts]") {
  REQUIRE(fs::exists(bundled / "config.json"));
  const auto model = engine::Model::load(bundled);
  const auto tok = engine::Tokenizer::load(bundled / "tokenizer.json");
  std::string text;
  for (int i = 0; i < 12; ++i)
    text += "The river town kept its records in a stone hall by the bridge, and each season the clerks copied "
            "them again. ";
  const std::vector<int> prompt = tok.encode(text, true);
  REQUIRE(prompt.size() > 200);
  for (const auto& name : simcalkv::policy_names()) {
    for (const bool decode_compress : {false, true}) {
      DYNAMIC_SECTION(name << (decode_compress ? " with decode compression" : "")) {
        const Run compact = generate(model, prompt, name, engine::KVLayout::compact, decode_compress, 12);
        const Run paged = generate(model, prompt, name, engine::KVLayout::paged, decode_compress, 12);
        CHECK(paged.ids == compact.ids);
        CHECK(paged.last_logits == compact.last_logits);  // bit for bit: 32-entry pages, one softmax
        CHECK(paged.entries == compact.entries);
      }
    }
  }
}
