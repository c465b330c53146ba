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

TEST_CASE("tokenizer ids are bounded by the vocabulary, and the entry at fault is named", "[engine][tokenizer]") {
  const auto dir = fs::temp_directory_path() / "simcalkv_engine_tok_ids";
  fs::create_directories(dir);
  auto error_of = [&](const std::string& body) -> std::string {
    std::ofstream(dir / "t.json") << body;
    try {
      engine::Tokenizer::load(dir / "t.json");
    } catch (const engine::EngineError& e) {
      return e.what();
    }
    return "no error";
  };
  const std::string vocab = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  CHECK(error_of("{" + vocab + "}") == "no error");
  CHECK_THAT(error_of(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}})"),
             Catch::Contains("model.vocab gives id 0 to both 'a' and 'b'"));
  CHECK_THAT(error_of(R"({"model": {"type": "BPE", "vocab": {"a": 2147483647}, "merges": []}})"),
             Catch::Contains("model.vocab['a'] = 2147483647 is not a token id in [0, 1)"));
  CHECK_THAT(error_of(R"({"model": {"type": "BPE", "vocab": {"a": 100000000}, "merges": []}})"),
             Catch::Contains("is not a token id in [0, 1)"));
  CHECK_THAT(error_of("{" + vocab + R"(, "added_tokens": [{"id": 4294967301, "content": "<x>"}]})"),
             Catch::Contains("added token \"<x>\" has id 4294967301, not a token id in [0, 4)"));
  CHECK_THAT(error_of("{" + vocab + R"(, "added_tokens": "x"})"), Catch::Contains("'added_tokens' must be an array"));
  CHECK_THAT(error_of("{" + vocab + R"(, "added_tokens": [{"id": 1, "content": "<x>"}]})"),
             Catch::Contains("added token \"<x>\" takes id 1 of the vocabulary's 'b'"));
  CHECK(error_of("{" + vocab + R"(, "added_tokens": [{"id": 3, "content": "<x>"}, {"id": 2, "content": "ab"}]})") ==
        "no error");  // an added token may restate its vocabulary entry
  CHECK_THAT(error_of("{" + vocab + R"(, "post_processor": {"type": "TemplateProcessing", "single": 5}})"),
             Catch::Contains("TemplateProcessing needs a 'single' array"));
  CHECK_THAT(error_of("{" + vocab + R"(, "post_processor": {"type": "TemplateProcessing", "single": [{"X": 1}]}})"),
             Catch::Contains("item is neither"));
  CHECK_THAT(error_of("{" + vocab + R"(, "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>"}}], "special_tokens": {"<s>": {"ids": [99]}}}})"),
             Catch::Contains("special token '<s>' has id 99, not a token id in [0, 3)"));
  CHECK_THAT(error_of("{" + vocab + R"(, "post_processor": 7})"), Catch::Contains("post_processor must be an object"));
  fs::remove_all(dir);
}
