// simcalkv-eval's harness (tools/eval): split slicing, dataset resolution and prompt templates on every format
// fixture (tests/fixtures/datasets) and a generated task file (data/tasks), middle truncation, CSV quoting, the
// missing-file and missing-field errors, LongBench's extra scores and the command line.
#include "args.hpp"
#include "csv.hpp"
#include "datasets.hpp"
#include "longbench_metrics.hpp"
#include "split.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <numeric>

using namespace simcalkv::eval;
namespace fs = std::filesystem;

namespace {

const fs::path source_dir = SIMCALKV_SOURCE_DIR;
const fs::path fixtures = source_dir / "tests" / "fixtures" / "datasets";

std::vector<std::size_t> indices(const Split& s, std::size_t part, std::size_t n) {
  const auto r = s.range(part, n);
  std::vector<std::size_t> v(r.last - r.first);
  std::iota(v.begin(), v.end(), r.first);
  return v;
}

/// A temporary folder removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("simcalkv_eval_test_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

Dataset load_file(const fs::path& p, const std::string& split = "test") {
  auto v = resolve_datasets(p.string(), parse_split(split), {});
  REQUIRE(v.size() == 1);
  return v[0];
}

}  // namespace

TEST_CASE("split: names and slices as the hub reads them", "[eval][split]") {
  const auto whole = parse_split("test");
  REQUIRE(whole.parts.size() == 1);
  CHECK(whole.parts[0].name == "test");
  CHECK_FALSE(whole.parts[0].sliced);
  CHECK(indices(whole, 0, 5) == std::vector<std::size_t>{0, 1, 2, 3, 4});

  CHECK(indices(parse_split("test[:3]"), 0, 10) == std::vector<std::size_t>{0, 1, 2});
  CHECK(indices(parse_split("test[:100]"), 0, 3).size() == 3);  // clamped
  CHECK(indices(parse_split("validation[2:4]"), 0, 10) == std::vector<std::size_t>{2, 3});
  CHECK(indices(parse_split("test[-2:]"), 0, 10) == std::vector<std::size_t>{8, 9});
  CHECK(indices(parse_split("test[:-8]"), 0, 10) == std::vector<std::size_t>{0, 1});
  CHECK(indices(parse_split("test[-20:2]"), 0, 10) == std::vector<std::size_t>{0, 1});
  CHECK(indices(parse_split("test[5:2]"), 0, 10).empty());
  CHECK(indices(parse_split("test[ 1 : 3 ]"), 0, 10) == std::vector<std::size_t>{1, 2});
  CHECK(parse_split("train_xl[:1]").parts[0].name == "train_xl");
  CHECK(parse_split("test.v2[:1]").parts[0].name == "test.v2");

  // percent: Python's round(b * n / 100), half to even
  CHECK(indices(parse_split("train[:5%]"), 0, 100).size() == 5);
  CHECK(indices(parse_split("train[:50%]"), 0, 5).size() == 2);    // round(2.5) = 2
  CHECK(indices(parse_split("train[:30%]"), 0, 5).size() == 2);    // round(1.5) = 2
  CHECK(indices(parse_split("train[:10%]"), 0, 15).size() == 2);   // round(1.5) = 2
  CHECK(indices(parse_split("train[:10%]"), 0, 25).size() == 2);   // round(2.5) = 2
  CHECK(indices(parse_split("train[:10%]"), 0, 35).size() == 4);   // round(3.5) = 4
  CHECK(indices(parse_split("train[-10%:]"), 0, 20) == std::vector<std::size_t>{18, 19});
  CHECK(indices(parse_split("train[10:50%]"), 0, 20) == std::vector<std::size_t>{2, 3, 4, 5, 6, 7, 8, 9});  // 10 -> 10%
  CHECK(indices(parse_split("train[:10%](pct1_dropremainder)"), 0, 250).size() == 20);
  CHECK_THROWS_AS(parse_split("train[:10%](pct1_dropremainder)").range(0, 50), SplitError);

  const auto two = parse_split("train[:2]+test[-1:]");
  REQUIRE(two.parts.size() == 2);
  CHECK(two.parts[1].name == "test");
  CHECK(indices(two, 1, 4) == std::vector<std::size_t>{3});
}

TEST_CASE("split: bad syntax is a clear error", "[eval][split]") {
  for (const char* bad : {"", "test[", "test[5]", "test[a:b]", "test[1:2:3]", "test[:5]x", "[:5]", "test+",
                          "test[:5%%]", "test[:101%]", "test[:5](closest)", "test[:5%](floor)", "te-st", "test[:-]"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_split(bad), SplitError);
  }
  try {
    parse_split("test[5]");
    FAIL("no error");
  } catch (const SplitError& e) {
    CHECK_THAT(e.what(), Catch::Contains("test[5]") && Catch::Contains("no ':'") && Catch::Contains("test[:100]"));
  }
}

TEST_CASE("datasets: every format fixture resolves, with its template and references", "[eval][datasets]") {
  {
    const auto d = load_file(fixtures / "xsum.jsonl");
    CHECK(d.format == Format::xsum);
    CHECK(d.tag == "xsum");
    REQUIRE(d.samples.size() == 3);
    CHECK(d.metrics == std::vector<std::string>{"rougeL", "rouge1", "rouge2", "rougeLsum"});
    const auto& s = d.samples[0];
    CHECK(s.prompt.rfind("Please summarize the following article in one short sentence.\n\nArticle:\n\"Lad, lad,", 0) == 0);
    CHECK(s.prompt.size() > 100);
    CHECK(s.prompt.ends_with("\n\nSummary:"));
    REQUIRE(s.references.size() == 1);
    CHECK_FALSE(s.references[0].empty());
    CHECK_FALSE(s.id.empty());
  }
  {
    const auto d = load_file(fixtures / "cnn_dailymail.jsonl");
    CHECK(d.format == Format::cnn_dailymail);
    REQUIRE(d.samples.size() == 3);
    CHECK(d.samples[1].prompt.rfind("Please summarize the following news article into 3-5 concise sentences.", 0) == 0);
    CHECK(d.max_new_tokens == 128);
  }
  {
    const auto d = load_file(fixtures / "longbench.jsonl");
    CHECK(d.format == Format::longbench);
    CHECK(d.task == "narrativeqa");  // from the records' "dataset" field
    CHECK(d.metrics[0] == "qa_f1");
    CHECK(d.max_new_tokens == 128);
    REQUIRE(d.samples.size() == 3);
    const auto& s = d.samples[0];
    CHECK(s.id == "fixture-0");
    CHECK(s.prompt.rfind("You are given a story, which can be either a novel or a movie script, and a question.", 0) == 0);
    CHECK(s.prompt.find("Story: \"Lad, lad,") != std::string::npos);
    CHECK(s.prompt.ends_with("\n\nQuestion: What is the title of this text?\n\nAnswer:"));
    CHECK(s.references == std::vector<std::string>{"Chapter 129. The Cabin."});
  }
  {
    const auto d = load_file(fixtures / "piqa.jsonl");
    CHECK(d.format == Format::piqa);
    REQUIRE(d.samples.size() == 3);
    CHECK(d.metrics == std::vector<std::string>{"accuracy"});
    CHECK(d.samples[0].prompt ==
          "Question:\nTo keep a whale-line from fouling as it runs out,\n\nSolution 1: coil it carefully in the tub before "
          "the chase.\nSolution 2: tie it in knots around the mast before the chase.\n\nAnswer with 1 or 2:");
    CHECK(d.samples[0].references == std::vector<std::string>{"1"});
    CHECK(d.samples[1].references == std::vector<std::string>{"2"});
  }
  {
    const auto d = load_file(fixtures / "openbookqa.jsonl");
    CHECK(d.format == Format::openbookqa);
    REQUIRE(d.samples.size() == 3);
    CHECK(d.samples[0].prompt ==
          "Question:\nWhales breathe air through\n\nChoices:\nA. gills\nB. a blowhole\nC. their fins\nD. their "
          "tails\n\nAnswer with only the letter (A, B, C, D):");
    CHECK(d.samples[0].references == std::vector<std::string>{"B"});
    CHECK(d.samples[0].id == "fixture-1");
  }
  {
    const auto d = load_file(fixtures / "winogrande.jsonl");
    CHECK(d.format == Format::winogrande);
    REQUIRE(d.samples.size() == 3);
    CHECK(d.samples[0].prompt ==
          "Sentence with blank:\nIshmael gave the harpoon to Queequeg because _ was the better harpooneer.\n\nFill in "
          "the blank with the correct option.\n\nOption1:Ishmael\nOption2:Queequeg\nAnswer:");
    CHECK(d.samples[0].references == std::vector<std::string>{"2"});
    CHECK(d.samples[0].id == "0");
  }
}

TEST_CASE("datasets: the generated long-context set carries its prompt, answers and metric", "[eval][datasets]") {
  const auto d = load_file(source_dir / "data" / "tasks" / "niah_single_1024.jsonl", "test[:2]");
  CHECK(d.format == Format::tasks);
  CHECK(d.tag == "niah_single_1024");
  CHECK(d.task == "niah_single");
  CHECK(d.metrics == std::vector<std::string>{"string_match_all"});
  CHECK(d.records == 20);
  REQUIRE(d.samples.size() == 2);
  CHECK(d.samples[0].id == "0");
  CHECK(d.samples[0].prompt.rfind("Some special magic numbers are hidden", 0) == 0);
  CHECK(d.samples[0].prompt.find("mentioned in the provided text are") == d.samples[0].prompt.size() - 34);
  CHECK_FALSE(d.samples[0].references.empty());

  // a glob gives one dataset per file, sorted
  const auto all = resolve_datasets((source_dir / "data" / "tasks" / "*_1024.jsonl").string(), parse_split("test[:1]"), {});
  CHECK(all.size() == 8);
  for (const auto& x : all) CHECK(x.samples.size() == 1);
  CHECK(all.front().tag == "cwe_1024");
}

TEST_CASE("datasets: names resolve under --data_dir, LongBench in both layouts", "[eval][datasets]") {
  TempDir tmp;
  DatasetOptions opt;
  opt.data_dir = tmp.path;
  fs::create_directories(tmp.path / "xsum");
  fs::copy_file(fixtures / "xsum.jsonl", tmp.path / "xsum" / "test.jsonl");
  auto v = resolve_datasets("xsum", parse_split("test[:2]"), opt);
  REQUIRE(v.size() == 1);
  CHECK(v[0].format == Format::xsum);
  CHECK(v[0].samples.size() == 2);

  // LongBench: data.zip layout (<task>.jsonl), then the per-split layout wins
  fs::create_directories(tmp.path / "THUDM" / "LongBench");
  fs::copy_file(fixtures / "longbench.jsonl", tmp.path / "THUDM" / "LongBench" / "gov_report.jsonl");
  v = resolve_datasets("THUDM/LongBench/gov_report", parse_split("test"), opt);
  REQUIRE(v.size() == 1);
  CHECK(v[0].task == "gov_report");  // the name decides, not the records' "dataset" field
  CHECK(v[0].tag == "gov_report");
  CHECK(v[0].metrics == std::vector<std::string>{"rougeL", "rouge1", "rouge2", "rougeLsum"});
  CHECK(v[0].max_new_tokens == 512);
  CHECK(v[0].samples[0].prompt.rfind("You are given a report by a government agency.", 0) == 0);

  opt.prompt_style = PromptStyle::paper;
  v = resolve_datasets("THUDM/LongBench/gov_report", parse_split("test[:1]"), opt);
  CHECK(v[0].samples[0].prompt.rfind("Summarize the following government report into a concise abstract.\n\nReport:\n", 0) == 0);

  // two datasets at once
  opt.prompt_style = PromptStyle::longbench;
  v = resolve_datasets("xsum,THUDM/LongBench/gov_report", parse_split("test[:1]"), opt);
  REQUIRE(v.size() == 2);
  CHECK(v[1].tag == "gov_report");

  // split concatenation
  fs::copy_file(fixtures / "xsum.jsonl", tmp.path / "xsum" / "validation.jsonl");
  v = resolve_datasets("xsum", parse_split("test[:1]+validation[-1:]"), opt);
  CHECK(v[0].samples.size() == 2);
}

TEST_CASE("datasets: a missing file says what to export and where", "[eval][datasets]") {
  TempDir tmp;
  DatasetOptions opt;
  opt.data_dir = tmp.path;
  try {
    resolve_datasets("xsum", parse_split("test[:100]"), opt);
    FAIL("no error");
  } catch (const DatasetError& e) {
    const std::string m = e.what();
    CHECK_THAT(m, Catch::Contains((tmp.path / "xsum" / "test.jsonl").string()));
    CHECK_THAT(m, Catch::Contains("load_dataset('xsum', split='test').to_json("));
    CHECK_THAT(m, Catch::Contains("--data_dir"));
  }
  try {
    resolve_datasets("THUDM/LongBench/2wikimqa", parse_split("test"), opt);
    FAIL("no error");
  } catch (const DatasetError& e) {
    CHECK_THAT(e.what(), Catch::Contains("load_dataset('THUDM/LongBench', '2wikimqa', split='test')") &&
                             Catch::Contains("2wikimqa.jsonl"));
  }
  try {
    resolve_datasets("cnn_dailymail", parse_split("validation"), opt);
    FAIL("no error");
  } catch (const DatasetError& e) {
    CHECK_THAT(e.what(), Catch::Contains("'cnn_dailymail', '3.0.0', split='validation'"));
  }
  CHECK_THROWS_WITH(resolve_datasets("THUDM/LongBench/nosuchtask", parse_split("test"), opt),
                    Catch::Contains("unknown LongBench task 'nosuchtask'") && Catch::Contains("gov_report"));
  CHECK_THROWS_WITH(resolve_datasets((tmp.path / "nope.jsonl").string(), parse_split("test"), opt),
                    Catch::Contains("no such file"));
  CHECK_THROWS_WITH(resolve_datasets((tmp.path / "*.jsonl").string(), parse_split("test"), opt),
                    Catch::Contains("matches no file"));
}

TEST_CASE("datasets: a missing or bad field names the file, line and field", "[eval][datasets]") {
  TempDir tmp;
  DatasetOptions opt;
  opt.data_dir = tmp.path;
  write(tmp.path / "xsum" / "test.jsonl", "{\"document\": \"a\", \"summary\": \"b\"}\n{\"document\": \"c\"}\n");
  try {
    resolve_datasets("xsum", parse_split("test"), opt);
    FAIL("no error");
  } catch (const DatasetError& e) {
    const std::string m = e.what();
    CHECK_THAT(m, Catch::Contains("test.jsonl:2") && Catch::Contains("'summary'") && Catch::Contains("document"));
  }
  // records outside the split are not read
  CHECK(resolve_datasets("xsum", parse_split("test[:1]"), opt)[0].samples.size() == 1);

  write(tmp.path / "g.jsonl", "{\"prompt\": \"p\", \"reference\": [\"a\", \"b\"], \"metric\": \"qa_f1\"}\n"
                              "{\"prompt\": \"q\"}\n");
  CHECK_THROWS_WITH(load_file(tmp.path / "g.jsonl"), Catch::Contains("g.jsonl:2") && Catch::Contains("'reference'"));
  const auto g = load_file(tmp.path / "g.jsonl", "x[:1]");
  CHECK(g.format == Format::generic);
  CHECK(g.metrics == std::vector<std::string>{"qa_f1"});
  CHECK(g.samples[0].references == std::vector<std::string>{"a", "b"});

  write(tmp.path / "m.jsonl", "{\"prompt\": \"p\", \"reference\": \"a\", \"metric\": \"bogus\"}\n");
  CHECK_THROWS_WITH(load_file(tmp.path / "m.jsonl"), Catch::Contains("unknown metric 'bogus'") && Catch::Contains("qa_f1"));
  write(tmp.path / "m2.jsonl", "{\"prompt\": \"p\", \"reference\": \"a\", \"metric\": \"qa_f1\"}\n"
                               "{\"prompt\": \"p\", \"reference\": \"a\", \"metric\": \"bleu\"}\n");
  CHECK_THROWS_WITH(load_file(tmp.path / "m2.jsonl"), Catch::Contains("m2.jsonl:2") && Catch::Contains("one metric per file"));
  write(tmp.path / "bad.jsonl", "{\"prompt\": \"p\", \"reference\": \"a\"}\n{not json\n");
  CHECK_THROWS_WITH(load_file(tmp.path / "bad.jsonl"), Catch::Contains("bad.jsonl:2") && Catch::Contains("not a JSON line"));
  write(tmp.path / "odd.jsonl", "{\"text\": \"p\"}\n");
  CHECK_THROWS_WITH(load_file(tmp.path / "odd.jsonl"),
                    Catch::Contains("cannot tell the dataset format") && Catch::Contains("text"));
  write(tmp.path / "piqa" / "test.jsonl", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": -1}\n");
  CHECK_THROWS_WITH(resolve_datasets("piqa", parse_split("test"), opt), Catch::Contains("unlabelled") &&
                                                                           Catch::Contains("--split validation"));
  write(tmp.path / "lb.jsonl", "{\"context\": \"c\", \"input\": \"i\", \"answers\": [\"x\"], \"dataset\": \"trec\"}\n");
  CHECK_THROWS_WITH(load_file(tmp.path / "lb.jsonl"), Catch::Contains("all_classes"));
}

TEST_CASE("truncation keeps the first and last halves", "[eval][truncate]") {
  std::vector<int> ids(10);
  std::iota(ids.begin(), ids.end(), 0);
  auto a = ids;
  CHECK(truncate_middle(a, 6) == 4);
  CHECK(a == std::vector<int>{0, 1, 2, 7, 8, 9});
  a = ids;
  CHECK(truncate_middle(a, 7) == 4);  // 7 / 2 = 3 on each side
  CHECK(a == std::vector<int>{0, 1, 2, 7, 8, 9});
  a = ids;
  CHECK(truncate_middle(a, 10) == 0);
  CHECK(a == ids);
  CHECK(truncate_middle(a, 0) == 0);  // no limit
  CHECK(a == ids);
}

TEST_CASE("CSV: RFC 4180 quoting round-trips", "[eval][csv]") {
  CHECK(csv_field("plain") == "plain");
  CHECK(csv_field("") == "");
  CHECK(csv_field("a,b") == "\"a,b\"");
  CHECK(csv_field("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(csv_field("two\nlines") == "\"two\nlines\"");
  CHECK(csv_field("cr\r") == "\"cr\r\"");
  CHECK(csv_field(" lead") == "\" lead\"");
  CHECK(csv_row({"a", "b,c", ""}) == "a,\"b,c\",\r\n");
  const std::vector<std::string> nasty = {"", "x", "a,b", "\"", "\"\"", "line1\nline2", "\r\n", " sp ", "é,ü", ",,,"};
  const auto rows = csv_parse(csv_row(nasty) + csv_row({"1", "2"}));
  REQUIRE(rows.size() == 2);
  CHECK(rows[0] == nasty);
  CHECK(rows[1] == std::vector<std::string>{"1", "2"});
  CHECK_THROWS(csv_parse("\"open"));
}

TEST_CASE("atomic writes replace the file whole", "[eval][csv]") {
  TempDir tmp;
  const auto p = tmp.path / "sub" / "out.csv";
  write_file_atomic(p, "first");
  CHECK(read_file(p) == "first");
  write_file_atomic(p, "second");
  CHECK(read_file(p) == "second");
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(p.parent_path())) ++files;
  CHECK(files == 1);  // no temporary left behind
}

TEST_CASE("LongBench's extra scores", "[eval][metrics]") {
  using namespace simcalkv::eval::longbench;
  CHECK(count_score("There are 12 paragraphs", "12") == 1.0);
  CHECK(count_score("12 or 13", "12") == 0.5);
  CHECK(count_score("none", "12") == 0.0);
  CHECK(retrieval_score("Paragraph 3", "Paragraph 3") == 1.0);
  CHECK(retrieval_score("Paragraph 3 and 4", "Paragraph 3") == 0.5);
  CHECK(retrieval_score("段落7", "段落7", "段落") == 1.0);
  CHECK(retrieval_score("3", "no marker") == 0.0);
  const std::vector<std::string> classes = {"Location", "Description", "Abbreviation", "Human being"};
  CHECK(classification_score("Location", "Location", classes) == 1.0);
  CHECK(classification_score("Location or Description", "Location", classes) == 0.5);
  CHECK(classification_score("Entity", "Location", classes) == 0.0);
  CHECK(rouge_zh("今天天气很好", "今天天气很好") == Approx(1.0));
  CHECK(rouge_zh("今天天气", "今天天气很好") == Approx(2 * 1.0 * (4.0 / 6) / (1 + 4.0 / 6)));
  CHECK(rouge_zh("", "好") == 0.0);
  CHECK(zh_tokens("Hello 世界, GPT-4!") == std::vector<std::string>{"hello", "世", "界", "gpt", "4"});
}

TEST_CASE("scored answer: LongBench's first-line rule", "[eval][datasets]") {
  Dataset d;
  d.first_line = true;
  CHECK(scored_answer(d, "\n\nLocation\nmore") == "Location");
  CHECK(scored_answer(d, "\n\n") == "");
  d.first_line = false;
  CHECK(scored_answer(d, "\nA\nB") == "\nA\nB");
}

TEST_CASE("command line: the paper's spellings, dashes, lists and clear errors", "[eval][args]") {
  const auto a = parse_args({"--model_name", "m", "--dataset", "xsum", "--split", "test[:100]", "--compress_ratio", "0.5",
                             "--kv_method", "SimCalKV", "--output_dir", "results"});
  CHECK(a.model_name == "m");
  CHECK(a.dataset == "xsum");
  CHECK(a.split == "test[:100]");
  CHECK(a.compress_ratios == std::vector<double>{0.5});
  CHECK(a.kv_methods == std::vector<std::string>{"SimCalKV"});
  CHECK(a.output_dir == "results");

  const auto b = parse_args({"--model-name=m2", "--compress-ratio", "0.5,0.25,0.1,0.5", "--kv-method",
                             "SimCalKV:bias=log_count,search=local:64,SnapKV,AdaKV+SimCalKV:alpha=0.2,H2O",
                             "--max-new-tokens", "4", "--threads=2", "--no-plot", "--quiet"});
  CHECK(b.model_name == "m2");
  CHECK(b.compress_ratios == std::vector<double>{0.5, 0.25, 0.1});
  CHECK(b.kv_methods ==
        std::vector<std::string>{"SimCalKV:bias=log_count,search=local:64", "SnapKV", "AdaKV+SimCalKV:alpha=0.2", "H2O"});
  CHECK(b.max_new_tokens == 4);
  CHECK(b.threads == 2);
  CHECK_FALSE(b.plot);
  CHECK_FALSE(b.progress);
  CHECK(parse_args({"--nums_token", "7"}).max_new_tokens == 7);

  CHECK_THROWS_WITH(parse_args({"--compres_ratio", "0.5"}),
                    Catch::Contains("unknown option '--compres_ratio'") && Catch::Contains("--compress_ratio"));
  CHECK_THROWS_WITH(parse_args({"--compress_ratio", "1.0"}), Catch::Contains("--compress_ratio must be in [0, 1), got 1.0"));
  CHECK_THROWS_WITH(parse_args({"--compress_ratio", "0.5,x"}), Catch::Contains("expects a number, got 'x'"));
  CHECK_THROWS_WITH(parse_args({"--compress_ratio", "-0.1"}), Catch::Contains("must be in"));
  CHECK_THROWS_WITH(parse_args({"--threads"}), Catch::Contains("--threads needs a value"));
  CHECK_THROWS_WITH(parse_args({"--window", "0"}), Catch::Contains("--window must be in [1, 1048576], got 0"));
  CHECK_THROWS_WITH(parse_args({"--kv_dtype", "f16"}), Catch::Contains("f32 or bf16"));
  CHECK_THROWS_WITH(parse_args({"--kv_method", "bias=none"}), Catch::Contains("no method before it"));
  CHECK_THROWS_WITH(parse_args({"xsum"}), Catch::Contains("unexpected argument 'xsum'"));
  CHECK_THROWS_WITH(parse_args({"--quiet=1"}), Catch::Contains("takes no value"));
}

TEST_CASE("datasets: text fields are strings, every line is JSON, repeated ids are reported", "[eval][datasets]") {
  const auto dir = std::filesystem::temp_directory_path() / "simcalkv_eval_strict";
  std::filesystem::create_directories(dir);
  auto load = [&](const std::string& name, const std::string& body, const std::string& split = "test[:2]") {
    std::ofstream(dir / name) << body;
    return resolve_datasets((dir / name).string(), parse_split(split), {});
  };
  const std::string ok = R"({"index": 7, "input": "Q?", "outputs": ["x"], "metric": "string_match_all"})";
  CHECK(load("ok.jsonl", ok + "\n").at(0).samples.size() == 1);
  CHECK_THROWS_WITH(load("num.jsonl", R"({"index": 7, "input": 12345, "outputs": ["x"], "metric": "string_match_all"})"),
                    Catch::Contains("num.jsonl:1") && Catch::Contains("field 'input' must be a string, got number 12345"));
  // a broken line past the selected slice is found before any run
  CHECK_THROWS_WITH(load("late.jsonl", ok + "\n" + ok + "\n" + ok + "\n{\"id\": \"b\", \n", "test[:1]"),
                    Catch::Contains("late.jsonl:4") && Catch::Contains("not a JSON line"));
  CHECK_THROWS_WITH(load("array.jsonl", ok + "\n[1, 2]\n", "test[:1]"),
                    Catch::Contains("array.jsonl:2") && Catch::Contains("expected a JSON object"));
  const auto dup = load("dup.jsonl", ok + "\n" + ok + "\n");
  REQUIRE(dup.at(0).samples.size() == 2);
  CHECK(dup.at(0).samples[1].id == "7#1");
  REQUIRE(dup.at(0).warnings.size() == 1);
  CHECK_THAT(dup.at(0).warnings[0], Catch::Contains("dup.jsonl:2: id '7' repeats an earlier record's"));
  std::filesystem::remove_all(dir);
}
