// simcalkv-taskgen (tools/taskgen/taskgen.hpp): determinism, token-count fitting, answers present in the context.
// Uses the bundled model's tokenizer (models/simcalkv-tiny) and haystack text (data/corpus/haystack.txt).
#include "../../tools/taskgen/taskgen.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace {
const std::filesystem::path taskgen_root = std::filesystem::path(SIMCALKV_ENGINE_FIXTURES) / ".." / ".." / "..";

std::string taskgen_read(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
}  // namespace

TEST_CASE("taskgen: seeded, fitted to the target length, answers in the context", "[taskgen]") {
  const auto model = taskgen_root / "models" / "simcalkv-tiny";
  if (!std::filesystem::exists(model / "tokenizer.json")) {
    WARN("models/simcalkv-tiny is missing");
    return;
  }
  const auto tok = engine::Tokenizer::load(model / "tokenizer.json");
  const taskgen::Generator gen(tok, taskgen_read(taskgen_root / "data" / "corpus" / "haystack.txt"));
  for (const auto& task : taskgen::task_names()) {
    for (int target : {512, 1024}) {
      for (std::uint64_t seed : {1ULL, 2ULL}) {
        INFO(task << " target " << target << " seed " << seed);
        const auto a = gen.make(task, target, seed);
        const auto b = gen.make(task, target, seed);
        CHECK(taskgen::to_json(a, 0).dump() == taskgen::to_json(b, 0).dump());
        CHECK(a.length == gen.count(a.input + a.answer_prefix));
        CHECK(a.length <= target);
        CHECK(a.length >= target * 85 / 100);  // filled close to the target
        REQUIRE(!a.outputs.empty());
        CHECK((a.metric == "string_match_all" || a.metric == "string_match_part"));
        int found = 0;
        for (const auto& o : a.outputs) found += a.input.find(o) != std::string::npos;
        if (a.metric == "string_match_all") CHECK(found == static_cast<int>(a.outputs.size()));
        else CHECK(found >= 1);
      }
    }
    CHECK(taskgen::to_json(gen.make(task, 1024, 1), 0).dump() != taskgen::to_json(gen.make(task, 1024, 3), 0).dump());
  }
}

TEST_CASE("taskgen: the shipped default set is well formed", "[taskgen]") {
  const auto dir = taskgen_root / "data" / "tasks";
  if (!std::filesystem::exists(dir)) {
    WARN("data/tasks is missing");
    return;
  }
  int files = 0, lines = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".jsonl") continue;
    ++files;
    std::ifstream in(e.path());
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      ++lines;
      CHECK(j.at("length").get<int>() <= j.at("target_length").get<int>());
      for (const auto& o : j.at("outputs")) CHECK(j.at("input").get<std::string>().find(o.get<std::string>()) != std::string::npos);
    }
  }
  CHECK(files == 16);
  CHECK(lines >= 300);
}
