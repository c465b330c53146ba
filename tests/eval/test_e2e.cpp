// simcalkv-eval end to end (hidden cases, run by the ctests of tools/CMakeLists.txt after simcalkv-eval itself):
//   [e2e]            the files of two runs of the bundled model (--threads 1 and 2, under $SIMCALKV_EVAL_E2E_DIR):
//                    every CSV and JSON exists and parses with the paper's columns and keys, and the answers do not
//                    depend on the thread count.
//   [e2e-layouts]    every policy's files from --kv_layout compact and paged (layout_compact/, layout_paged/): the
//                    same answers, kept entries, merges and errors row for row.
//   [e2e-interrupt]  SIGINT during a run ($SIMCALKV_EVAL_BIN): exit status 130, files that hold exactly the finished
//                    samples, marked interrupted, and no temporary file left.
// The bundled model may be retrained: nothing here depends on what it answers.
#include "csv.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

using namespace simcalkv::eval;
namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) FAIL(std::string("set ") + name + " (this case runs from ctest)");
  return v;
}

const std::vector<std::string> paper_columns = {"id",
                                                "dataset",
                                                "kv_method",
                                                "memory_before_MB",
                                                "memory_after_MB",
                                                "time_before_s",
                                                "time_after_s",
                                                "throughput_before_tokens_s",
                                                "throughput_after_tokens_s",
                                                "answer_before",
                                                "answer_after"};

const std::vector<std::string> summary_keys = {
    // the paper's
    "dataset", "kv_method", "model_name", "compress_ratio", "metrics_before", "metrics_after", "avg_memory_saving_MB",
    "time_before", "time_after", "avg_time_saving_s", "throughput_before", "throughput_after",
    "avg_throughput_improvement_tokens_s",
    // ours
    "kv_bytes_before", "kv_bytes_after", "compress_seconds", "agreement", "samples", "interrupted", "csv"};

struct Table {
  std::vector<std::string> header;
  std::vector<std::map<std::string, std::string>> rows;
};

Table read_csv(const fs::path& p) {
  const auto rows = csv_parse(read_file(p));
  REQUIRE_FALSE(rows.empty());
  Table t;
  t.header = rows[0];
  for (std::size_t i = 1; i < rows.size(); ++i) {
    REQUIRE(rows[i].size() == t.header.size());
    std::map<std::string, std::string> r;
    for (std::size_t k = 0; k < t.header.size(); ++k) r[t.header[k]] = rows[i][k];
    t.rows.push_back(std::move(r));
  }
  return t;
}

/// Checks one (dataset, method, ratio) pair of files; returns the CSV.
Table check_group(const fs::path& dir, const std::string& stem, const std::string& metric, std::size_t samples,
                  bool interrupted) {
  const auto csv_path = dir / ("results_" + stem + ".csv");
  const auto json_path = dir / ("summary_" + stem + ".json");
  INFO(csv_path.string());
  REQUIRE(fs::exists(csv_path));
  REQUIRE(fs::exists(json_path));
  const Table t = read_csv(csv_path);
  REQUIRE(t.header.size() > paper_columns.size() + 2);
  CHECK(std::vector<std::string>(t.header.begin(), t.header.begin() + 11) == paper_columns);
  CHECK(t.header[11] == "compress_ratio");
  CHECK(t.header[12] == "reference");
  for (const char* c : {"agreement", "kv_bytes_before", "kv_bytes_after", "compress_seconds"})
    CHECK(std::find(t.header.begin(), t.header.end(), c) != t.header.end());
  CHECK(std::find(t.header.begin(), t.header.end(), metric + "_before") != t.header.end());
  CHECK(std::find(t.header.begin(), t.header.end(), metric + "_after") != t.header.end());
  CHECK(t.rows.size() == samples);
  for (const auto& r : t.rows) {
    CHECK(r.at("error").empty());
    CHECK(std::stod(r.at("memory_after_MB")) < std::stod(r.at("memory_before_MB")));
    CHECK(std::stoull(r.at("kv_bytes_after")) < std::stoull(r.at("kv_bytes_before")));
    CHECK(std::stod(r.at("agreement")) >= 0.0);
    CHECK(std::stod(r.at("agreement")) <= 1.0);
    const double q = std::stod(r.at(metric + "_after"));
    CHECK((q >= 0.0 && q <= 1.0));
  }
  const auto j = nlohmann::json::parse(read_file(json_path));
  for (const auto& k : summary_keys) {
    INFO(k);
    CHECK(j.contains(k));
  }
  CHECK(j["samples"].get<std::size_t>() == samples);
  CHECK(j["interrupted"].get<bool>() == interrupted);
  CHECK(j["metrics_after"].contains(metric));
  CHECK(j["csv"].get<std::string>() == csv_path.filename().string());
  if (samples > 0) CHECK(j["avg_memory_saving_MB"].get<double>() > 0.0);
  return t;
}

}  // namespace

TEST_CASE("e2e: the run's CSV and JSON files, independent of the thread count", "[.e2e][e2e]") {
  const fs::path root = env("SIMCALKV_EVAL_E2E_DIR");
  std::map<std::string, std::vector<std::string>> answers[2];
  for (int t = 0; t < 2; ++t) {
    const auto dir = root / ("threads" + std::to_string(t + 1));
    for (const std::string method : {"SimCalKV", "SnapKV"}) {
      const auto niah = check_group(dir, "niah_single_1024_" + method + "_0.5", "string_match_all", 2, false);
      const auto xsum = check_group(dir, "xsum_" + method + "_0.5", "rougeL", 2, false);
      for (const auto* tab : {&niah, &xsum})
        for (const auto& r : tab->rows) {
          answers[t][method].push_back(r.at("answer_before"));
          answers[t][method].push_back(r.at("answer_after"));
        }
      CHECK(xsum.rows[0].at("dataset") == "xsum");
      CHECK(std::stoul(xsum.rows[0].at("prompt_tokens")) <= 256);      // --max_input_tokens 256
      CHECK(std::stoul(xsum.rows[0].at("truncated_tokens")) > 0);      // the fixture's article is longer
      CHECK(std::stoul(xsum.rows[0].at("new_tokens_before")) <= 4);    // --max_new_tokens 4
    }
    const auto sweep = nlohmann::json::parse(read_file(dir / "sweep.json"));
    CHECK(sweep["rows"].size() == 2 * 2 + 2);  // 2 datasets x 2 methods, plus the mean per method
    const auto table = csv_parse(read_file(dir / "sweep.csv"));
    CHECK(table.size() == 1 + 6);
    CHECK(fs::exists(dir / "sweep.txt"));
  }
  CHECK(answers[0] == answers[1]);
}

TEST_CASE("e2e: the compact and paged layouts give the same answers for every policy", "[.e2e-layouts][e2e-layouts]") {
  const fs::path root = env("SIMCALKV_EVAL_E2E_DIR");
  std::size_t files = 0;
  for (const auto& entry : fs::directory_iterator(root / "layout_compact")) {
    const auto name = entry.path().filename().string();
    if (name.rfind("results_", 0) != 0 || entry.path().extension() != ".csv") continue;
    INFO(name);
    ++files;
    const auto compact = csv_parse(read_file(entry.path()));
    const auto paged = csv_parse(read_file(root / "layout_paged" / name));
    REQUIRE(compact.size() == paged.size());
    REQUIRE(compact.size() >= 2);
    const auto& header = compact[0];
    REQUIRE(paged[0] == header);
    for (const std::string column : {"answer_before", "answer_after", "entries_after", "merged", "evicted", "error"}) {
      const auto at = std::find(header.begin(), header.end(), column);
      REQUIRE(at != header.end());
      const auto c = static_cast<std::size_t>(at - header.begin());
      for (std::size_t r = 1; r < compact.size(); ++r) CHECK(compact[r][c] == paged[r][c]);
    }
  }
  CHECK(files >= 2 * 16);  // two datasets, every registered policy but Full
}

TEST_CASE("e2e: SIGINT writes the finished samples and exits 130", "[.e2e-interrupt][e2e-interrupt]") {
  const std::string bin = env("SIMCALKV_EVAL_BIN");
  const fs::path dir = fs::path(env("SIMCALKV_EVAL_E2E_DIR")) / "interrupt";
  fs::remove_all(dir);
  const std::string dataset = std::string(SIMCALKV_SOURCE_DIR) + "/data/tasks/niah_single_1024.jsonl";
  const std::vector<std::string> args = {bin,        "--dataset",          dataset,    "--split",        "test[:20]",
                                         "--max_new_tokens", "16",         "--max_input_tokens", "256",
                                         "--kv_method", "SimCalKV",        "--no_plot", "--quiet",       "--threads",
                                         "1",        "--output_dir",       dir.string()};
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    std::_Exit(127);
  }
  const auto csv_path = dir / "results_niah_single_1024_SimCalKV_0.5.csv";
  const auto t0 = std::chrono::steady_clock::now();
  bool exited = false;
  int status = 0;
  // wait for the first finished sample, then interrupt
  while (!fs::exists(csv_path) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_FALSE(exited);
  ::kill(pid, SIGINT);
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  const auto j = nlohmann::json::parse(read_file(dir / "summary_niah_single_1024_SimCalKV_0.5.json"));
  const auto finished = j["samples"].get<std::size_t>();
  CHECK(finished >= 1);
  CHECK(finished < 20);
  check_group(dir, "niah_single_1024_SimCalKV_0.5", "string_match_all", finished, true);
  CHECK(nlohmann::json::parse(read_file(dir / "sweep.json"))["interrupted"].get<bool>());
  for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("e2e: a killed run leaves files that say interrupted", "[.e2e-interrupt][e2e-interrupt]") {
  const std::string bin = env("SIMCALKV_EVAL_BIN");
  const fs::path dir = fs::path(env("SIMCALKV_EVAL_E2E_DIR")) / "killed";
  fs::remove_all(dir);
  const std::string dataset = std::string(SIMCALKV_SOURCE_DIR) + "/data/tasks/niah_single_1024.jsonl";
  const std::vector<std::string> args = {bin,         "--dataset",   dataset,   "--split",         "test[:20]",
                                         "--max_new_tokens", "16",  "--max_input_tokens", "256", "--kv_method",
                                         "SimCalKV",  "--no_plot",   "--quiet", "--threads",       "1",
                                         "--output_dir", dir.string()};
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    std::_Exit(127);
  }
  const auto summary = dir / "summary_niah_single_1024_SimCalKV_0.5.json";
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  bool exited = false;
  while (!fs::exists(summary) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60)) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_FALSE(exited);
  ::kill(pid, SIGKILL);  // no handler runs: what is on disk is what the run had written so far
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  const auto j = nlohmann::json::parse(read_file(summary));
  CHECK(j["interrupted"].get<bool>());
  CHECK(j["samples"].get<std::size_t>() < 20);
}
