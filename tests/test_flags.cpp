// The command-line parser every tool shares (tools/common/flags.hpp).
#include <catch2/catch.hpp>

#include "flags.hpp"

using simcalkv::tools::Flags;
using simcalkv::tools::UsageError;
namespace t = simcalkv::tools;

namespace {

struct Options {
  std::string model = "models/tiny";
  std::string dtype = "f32";
  int window = 32;
  unsigned long long seed = 0;
  double top_p = 1.0;
  std::vector<double> ratios = {0.5};
  std::vector<std::string> methods = {"SimCalKV"};
  std::vector<std::string> policies;
  bool json = false;
  bool plot = true;
};

Options parse(std::vector<std::string> args) {
  Options o;
  Flags f("tool", "[options]", "Does a thing.");
  f.text("model_name", &o.model, "DIR", "checkpoint folder").alias("model");
  f.choice("kv_dtype", &o.dtype, {"f32", "bf16"}, "storage");
  f.number("window", &o.window, t::at_least(1), "W", "observation window");
  f.number("seed", &o.seed, t::at_least(0), "S", "seed");
  f.number("top_p", &o.top_p, t::left_open(0, 1), "P", "nucleus mass");
  f.number_list("compress_ratio", &o.ratios, t::half_open(0, 1), "LIST", "fractions removed");
  f.text_list("kv_method", &o.methods, "LIST", "policies");
  f.custom("policy", "SPEC", "one policy; repeatable", "", [&o](const std::string& v) { o.policies.push_back(v); })
      .repeatable();
  f.flag("json", &o.json, "JSON output");
  f.flag("no_plot", &o.plot, "no plot", false);
  f.retired("keep", "use --compress_ratio, the fraction removed (1 - keep)");
  if (!f.parse(args)) throw std::runtime_error("help");
  return o;
}

}  // namespace

TEST_CASE("flags: canonical names, dashed spellings, --flag=value, aliases and defaults", "[tools][flags]") {
  const Options d = parse({});
  CHECK(d.model == "models/tiny");
  CHECK(d.window == 32);
  CHECK(d.ratios == std::vector<double>{0.5});

  const Options o = parse({"--model", "m", "--kv-dtype", "bf16", "--window=7", "--seed", "18446744073709551615",
                           "--top-p", "0.9", "--compress-ratio", "0.5,0.25,0.5", "--kv_method=SnapKV,H2O", "--policy",
                           "A", "--policy", "B", "--json", "--no-plot"});
  CHECK(o.model == "m");
  CHECK(o.dtype == "bf16");
  CHECK(o.window == 7);
  CHECK(o.seed == 18446744073709551615ULL);
  CHECK(o.top_p == 0.9);
  CHECK(o.ratios == std::vector<double>{0.5, 0.25});  // repeated values dropped, order kept
  CHECK(o.methods == std::vector<std::string>{"SnapKV", "H2O"});
  CHECK(o.policies == std::vector<std::string>{"A", "B"});
  CHECK(o.json);
  CHECK_FALSE(o.plot);
  CHECK(parse({"--model_name", "x"}).model == "x");
}

TEST_CASE("flags: every bad command line is refused with a message naming the flag", "[tools][flags]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(parse({"--compres_ratio", "0.5"}),
                    Contains("unknown option '--compres_ratio' (did you mean --compress_ratio?)"));
  CHECK_THROWS_WITH(parse({"--modle", "x"}), Contains("did you mean --model_name?"));
  CHECK_THROWS_WITH(parse({"--zzzzzzzz"}), !Contains("did you mean") && Contains("unknown option '--zzzzzzzz'"));
  CHECK_THROWS_WITH(parse({"--keep", "0.5"}), Contains("--keep is gone: use --compress_ratio"));
  CHECK_THROWS_WITH(parse({"--window", "0"}), Contains("--window must be >= 1, got 0"));
  CHECK_THROWS_WITH(parse({"--window", "3x"}), Contains("--window expects a whole number, got '3x'"));
  CHECK_THROWS_WITH(parse({"--window", "2.5"}), Contains("expects a whole number"));
  CHECK_THROWS_WITH(parse({"--window", ""}), Contains("expects a whole number, got ''"));
  CHECK_THROWS_WITH(parse({"--window", "99999999999"}), Contains("--window is out of range"));
  CHECK_THROWS_WITH(parse({"--seed", "-1"}), Contains("--seed expects a whole number"));
  CHECK_THROWS_WITH(parse({"--top_p", "0"}), Contains("--top_p must be in (0, 1], got 0"));
  CHECK_THROWS_WITH(parse({"--top_p", "nan"}), Contains("--top_p expects a finite number, got 'nan'"));
  CHECK_THROWS_WITH(parse({"--top_p", "inf"}), Contains("finite"));
  CHECK_THROWS_WITH(parse({"--compress_ratio", "1"}), Contains("--compress_ratio must be in [0, 1), got 1"));
  CHECK_THROWS_WITH(parse({"--compress_ratio", "0.5,,0.25"}), Contains("--compress_ratio has an empty item in '0.5,,0.25'"));
  CHECK_THROWS_WITH(parse({"--compress_ratio", "0.5,"}), Contains("empty item"));
  CHECK_THROWS_WITH(parse({"--kv_method", ""}), Contains("--kv_method has an empty item"));
  CHECK_THROWS_WITH(parse({"--kv_dtype", "f16"}), Contains("--kv_dtype must be f32 or bf16, got 'f16'"));
  CHECK_THROWS_WITH(parse({"--window"}), Contains("--window needs a value (W)"));
  CHECK_THROWS_WITH(parse({"--json=1"}), Contains("--json takes no value"));
  CHECK_THROWS_WITH(parse({"--window", "4", "--window", "5"}), Contains("--window is given twice"));
  CHECK_THROWS_WITH(parse({"--model", "a", "--model_name", "b"}), Contains("--model_name is given twice"));
  CHECK_THROWS_WITH(parse({"positional"}), Contains("unexpected argument 'positional'"));
  CHECK_THROWS_WITH(parse({"-x"}), Contains("unexpected argument '-x'"));
  CHECK_THROWS_AS(parse({"--window", "0"}), UsageError);
}

TEST_CASE("flags: --help stops parsing, and the help has a line per flag with its default", "[tools][flags]") {
  CHECK_THROWS_WITH(parse({"--window", "4", "--help"}), "help");
  CHECK_THROWS_WITH(parse({"-h"}), "help");
  Options o;
  Flags f("tool", "[options]", "Does a thing.");
  f.section("inputs");
  f.text("model_name", &o.model, "DIR", "checkpoint folder").alias("model");
  f.number("top_p", &o.top_p, t::left_open(0, 1), "P", "nucleus mass");
  f.number_list("compress_ratio", &o.ratios, t::half_open(0, 1), "LIST", "fractions removed");
  f.flag("json", &o.json, "JSON output");
  const std::string h = f.help();
  CHECK(h.rfind("usage: tool [options]\n", 0) == 0);
  CHECK_THAT(h, Catch::Contains("inputs:\n"));
  CHECK_THAT(h, Catch::Contains("--model_name DIR") && Catch::Contains("(also --model) [models/tiny]"));
  CHECK_THAT(h, Catch::Contains("--top_p P") && Catch::Contains("nucleus mass, in (0, 1] [1]"));
  CHECK_THAT(h, Catch::Contains("fractions removed, in [0, 1) [0.5]"));
  CHECK_THAT(h, Catch::Contains("--help, -h"));
  for (std::size_t a = 0, b; a < h.size(); a = b + 1) {
    b = h.find('\n', a);
    if (b == std::string::npos) b = h.size();
    CHECK(b - a <= 100);  // wrapped for a terminal
  }
}

TEST_CASE("flags: ranges are printed as users write them", "[tools][flags]") {
  CHECK(t::half_open(0, 1).text() == "[0, 1)");
  CHECK(t::left_open(0, 1).text() == "(0, 1]");
  CHECK(t::closed(1, 4096).text() == "[1, 4096]");
  CHECK(t::at_least(1).text() == ">= 1");
  CHECK(t::above(0).text() == "> 0");
  CHECK(t::closed(0, 1e6).text() == "[0, 1e+06]");
  CHECK(t::format_number(0.25) == "0.25");
  CHECK(t::parse_number<double>("--x", "+1e-3") == 0.001);
  CHECK_THROWS_WITH(t::parse_number<double>("--x", " 1"), Catch::Contains("expects a number"));
}
