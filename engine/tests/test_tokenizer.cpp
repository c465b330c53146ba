// Tokenizer exactness against Hugging Face tokenizers (fixtures made by tools/fixtures/make_engine_fixtures.py).
#include "tokenizer.hpp"

#include <catch2/catch.hpp>

#include <filesystem>

namespace fs = std::filesystem;
static const fs::path kFixtures = SIMCALKV_ENGINE_FIXTURES;

TEST_CASE("tokenizers match Hugging Face ids and decoding exactly", "[engine][tokenizer]") {
  const auto cases = engine::read_json_file(kFixtures / "tokenizers" / "cases.json");
  for (const std::string kind : {"gpt2", "qwen2", "llama3"}) {
    const auto tok = engine::Tokenizer::load(kFixtures / "tokenizers" / (kind + ".json"));
    const auto& results = cases["results"][kind];
    REQUIRE(results.size() == cases["cases"].size());
    for (std::size_t i = 0; i < results.size(); ++i) {
      const std::string text = cases["cases"][i].get<std::string>();
      INFO(kind << " case " << i << ": '" << text << "'");
      const auto expected = results[i]["ids"].get<std::vector<int>>();
      const auto ids = tok.encode(text);
      CHECK(ids == expected);
      CHECK(tok.decode(expected) == results[i]["decoded"].get<std::string>());
    }
  }
}

TEST_CASE("tokenizer errors name the file and the problem", "[engine][tokenizer]") {
  const auto dir = fs::temp_directory_path() / "simcalkv_engine_tok";
  fs::create_directories(dir);
  {
    std::ofstream(dir / "bad.json") << "{ \"model\": ";
    CHECK_THROWS_WITH(engine::Tokenizer::load(dir / "bad.json"), Catch::Contains("bad.json") && Catch::Contains("bad JSON"));
  }
  {
    std::ofstream(dir / "wp.json") << R"({"model": {"type": "WordPiece", "vocab": {}}})";
    CHECK_THROWS_WITH(engine::Tokenizer::load(dir / "wp.json"), Catch::Contains("wp.json") && Catch::Contains("WordPiece"));
  }
  {
    std::ofstream(dir / "merge.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})";
    CHECK_THROWS_WITH(engine::Tokenizer::load(dir / "merge.json"), Catch::Contains("merge.json") && Catch::Contains("merge 0"));
  }
  {
    std::ofstream(dir / "re.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}})";
    CHECK_THROWS_WITH(engine::Tokenizer::load(dir / "re.json"), Catch::Contains("re.json") && Catch::Contains("regex"));
  }
  const auto tok = engine::Tokenizer::load(kFixtures / "tokenizers" / "gpt2.json");
  CHECK_THROWS_WITH(tok.encode("\xff\xfe"), Catch::Contains("UTF-8"));
  fs::remove_all(dir);
}
