// simcalkv-eval: datasets by the paper's names or as JSONL files, their prompt templates, references, metrics and
// answer lengths.
//
// Names (files under --data_dir, exported once from the Hugging Face hub with `datasets`):
//   xsum, cnn_dailymail, piqa, openbookqa, winogrande   <data_dir>/<name>/<split>.jsonl
//   THUDM/LongBench/<task>  (any LongBench or LongBench-E task)
//                                   <data_dir>/THUDM/LongBench/<task>/<split>.jsonl, or for the test split
//                                   <data_dir>/THUDM/LongBench/<task>.jsonl (the layout of LongBench's data.zip)
// Files: any JSONL path (or a folder of them, or a glob): the format comes from the first record's fields:
//   prompt + reference|references [+ metric, id]   generic
//   input + outputs [+ answer_prefix, metric, task, index]   simcalkv-taskgen's long-context sets (data/tasks)
//   document + summary (xsum), article + highlights (cnn_dailymail), context + input + answers (LongBench; the task
//   from the record's "dataset" field or the file name), goal + sol1 + sol2 (piqa), question_stem + choices
//   (openbookqa), sentence + option1 + option2 (winogrande).
#pragma once

#include "scoring.hpp"
#include "split.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <glob.h>

namespace simcalkv::eval {

/// A dataset that cannot be found or read; the message says what is missing and how to provide it.
class DatasetError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Format { generic, tasks, xsum, cnn_dailymail, longbench, piqa, openbookqa, winogrande };

inline std::string_view format_name(Format f) {
  switch (f) {
    case Format::generic: return "generic (prompt, reference)";
    case Format::tasks: return "long-context task set (input, outputs)";
    case Format::xsum: return "xsum";
    case Format::cnn_dailymail: return "cnn_dailymail";
    case Format::longbench: return "LongBench";
    case Format::piqa: return "piqa";
    case Format::openbookqa: return "openbookqa";
    case Format::winogrande: return "winogrande";
  }
  return "?";
}

enum class PromptStyle { longbench, paper };

struct Sample {
  std::string id;
  std::string prompt;                    // the text given to the model, template applied
  std::vector<std::string> references;   // one or more acceptable answers
  std::vector<std::string> all_classes;  // LongBench classification tasks
  std::size_t line = 0;                  // line in the file (1-based)
};

struct Dataset {
  std::string name;   // as given on the command line
  std::string tag;    // short, file-name safe: xsum, gov_report, niah_single_1024
  std::string path;   // the file read (the first one when a split has several parts)
  Format format = Format::generic;
  std::string task;   // LongBench task or the task set's task
  std::vector<std::string> metrics;  // metric names; the first is the main one
  bool use_stemmer = false;          // ROUGE with the Porter stemmer (off: HF evaluate's and LongBench's default)
  bool first_line = false;           // score the answer's first line only (LongBench trec, triviaqa, samsum, lsht)
  int max_new_tokens = 64;           // the dataset's answer length (--max_new_tokens overrides)
  std::size_t records = 0;           // records in the split file(s)
  std::vector<Sample> samples;
  std::vector<std::string> warnings;  // accepted, but worth telling (repeated ids)
};

struct DatasetOptions {
  std::filesystem::path data_dir = "data/hub";
  PromptStyle prompt_style = PromptStyle::longbench;
};

// ---- LongBench ---------------------------------------------------------------------------------------------------

struct LongBenchTask {
  const char* name;
  const char* prompt;  // dataset2prompt.json
  int max_new_tokens;  // dataset2maxlen.json
  const char* metric;  // eval.py dataset2metric
};

inline const std::vector<LongBenchTask>& longbench_tasks() {
  static const std::vector<LongBenchTask> t = {
      {"narrativeqa",
       "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as "
       "concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\n"
       "Now, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not "
       "provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
       128, "qa_f1"},
      {"qasper",
       "You are given a scientific article and a question. Answer the question as concisely as you can, using a single "
       "phrase or sentence if possible. If the question cannot be answered based on the information in the article, "
       "write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do "
       "not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as "
       "concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based "
       "on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer "
       "\"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
       128, "qa_f1"},
      {"multifieldqa_en",
       "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the "
       "above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       64, "qa_f1"},
      {"multifieldqa_zh",
       "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。"
       "\n\n问题：{input}\n回答：",
       64, "qa_f1_zh"},
      {"hotpotqa",
       "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\n"
       "The following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me "
       "the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       32, "qa_f1"},
      {"2wikimqa",
       "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\n"
       "The following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me "
       "the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       32, "qa_f1"},
      {"musique",
       "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\n"
       "The following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me "
       "the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       32, "qa_f1"},
      {"dureader", "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：", 128,
       "rouge_zh"},
      {"gov_report",
       "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\n"
       "Now, write a one-page summary of the report.\n\nSummary:",
       512, "rougeL"},
      {"qmsum",
       "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or "
       "more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one "
       "or more sentences.\n\nQuery: {input}\nAnswer:",
       512, "rougeL"},
      {"multi_news",
       "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a "
       "one-page summary of all the news.\n\nSummary:",
       512, "rougeL"},
      {"vcsum", "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：", 512, "rouge_zh"},
      {"trec", "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
       64, "classification"},
      {"triviaqa",
       "Answer the question based on the given passage. Only give me the answer and do not output any other words. The "
       "following are some examples.\n\n{context}\n\n{input}",
       32, "qa_f1"},
      {"samsum", "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
       128, "rougeL"},
      {"lsht", "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}", 64, "classification"},
      {"passage_count",
       "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read "
       "these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, "
       "how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique "
       "paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so "
       "on.\n\nThe final answer is: ",
       32, "count"},
      {"passage_retrieval_en",
       "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is "
       "from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that "
       "the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
       32, "retrieval"},
      {"passage_retrieval_zh",
       "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n"
       "请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
       32, "retrieval_zh"},
      {"lcc", "Please complete the code given below. \n{context}Next line of code:\n", 64, "code_sim"},
      {"repobench-p", "Please complete the code given below. \n{context}{input}Next line of code:\n", 64, "code_sim"},
  };
  return t;
}

/// The task's entry (LongBench-E's "<task>_e" shares its task's); nullptr when unknown.
inline const LongBenchTask* find_longbench_task(std::string_view task) {
  std::string base(task);
  if (base.size() > 2 && base.compare(base.size() - 2, 2, "_e") == 0) base.resize(base.size() - 2);
  for (const auto& t : longbench_tasks())
    if (base == t.name) return &t;
  return nullptr;
}

inline std::string longbench_task_list() {
  std::string s;
  for (const auto& t : longbench_tasks()) s += (s.empty() ? "" : ", ") + std::string(t.name);
  return s + " (and LongBench-E's <task>_e)";
}

/// The paper's own prompts (qwen_eval.py) for the LongBench tasks it ran, with --prompt_style paper. Its gov_report
/// prompt reads the record's "input" (empty in LongBench's gov_report): the report ("context") is used instead.
inline const char* paper_longbench_prompt(std::string_view task) {
  static const std::map<std::string, const char*, std::less<>> p = {
      {"gov_report", "Summarize the following government report into a concise abstract.\n\nReport:\n{context}\n\nSummary:"},
      {"2wikimqa", "Read the following passages and answer the multi-hop question.\n\nPassages:\n{context}\n\nQuestion:\n"
                   "{input}\n\nAnswer:"},
      {"narrativeqa", "Read the following story and answer the question.\n\nStory:\n{context}\n\nQuestion:\n{input}\n\nAnswer:"},
      {"hotpotqa", "Read the following passages and answer the question.\n\nPassages:\n{context}\n\nQuestion:\n{input}\n\n"
                   "Answer:"},
      {"multifieldqa_zh", "Read the document and answer the question。\n\nDocument:\n{context}\n\nQuestion:\n{input}\n\nAnswer:"},
      {"lcc", "Passages:\n{context}\n\nWrite a {language} function to solve the following problem:\n\n{input}\n\nAnswer:"},
      {"repobench-p", "Passages:\n{context}\n\nWrite a {language} function to solve the following problem:\n\n{input}\n\n"
                      "Answer:"},
      {"trec", "Quesion:\n\n{input}\n\nChoices:\n{context}\n\nAnswer:"},  // sic
  };
  std::string base(task);
  if (base.size() > 2 && base.compare(base.size() - 2, 2, "_e") == 0) base.resize(base.size() - 2);
  auto it = p.find(base);
  return it == p.end() ? nullptr : it->second;
}

/// The metrics of a LongBench task: LongBench's own (eval.py) first, then the paper's when it used another one
/// (ROUGE's four scores for summaries, BLEU for code, accuracy for trec).
inline std::vector<std::string> longbench_metrics(const LongBenchTask& t) {
  std::vector<std::string> m = {t.metric};
  const std::string n = t.name;
  if (n == "gov_report") m = {"rougeL", "rouge1", "rouge2", "rougeLsum"};
  if (n == "lcc" || n == "repobench-p") m.push_back("bleu");
  if (n == "trec") m.push_back("accuracy");
  return m;
}

// ---- helpers -----------------------------------------------------------------------------------------------------

/// Python's str.format for templates whose only fields are {name} (no escaped braces in LongBench's).
inline std::string fill_template(std::string_view tmpl, const std::map<std::string, std::string>& fields) {
  std::string out;
  for (std::size_t i = 0; i < tmpl.size();) {
    if (tmpl[i] == '{') {
      const auto close = tmpl.find('}', i);
      if (close != std::string_view::npos) {
        auto it = fields.find(std::string(tmpl.substr(i + 1, close - i - 1)));
        if (it != fields.end()) {
          out += it->second;
          i = close + 1;
          continue;
        }
      }
    }
    out += tmpl[i++];
  }
  return out;
}

/// A file-name safe tag: letters, digits, '.', '_' and '-' kept, anything else '-'.
inline std::string safe_tag(std::string_view s) {
  std::string out;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                    c == '-';
    out += ok ? c : '-';
  }
  return out.empty() ? "dataset" : out;
}

namespace detail_ds {

struct Record {
  nlohmann::json json;
  std::size_t line = 0;
  std::size_t index = 0;  // record number in the file, 0-based
};

struct JsonlFile {
  std::string path;
  std::vector<std::string> lines;           // non-blank lines
  std::vector<std::size_t> line_numbers;    // 1-based
};

inline JsonlFile read_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DatasetError(path.string() + ": cannot open the file");
  JsonlFile f;
  f.path = path.string();
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    f.lines.push_back(std::move(line));
    f.line_numbers.push_back(n);
  }
  if (f.lines.empty()) throw DatasetError(path.string() + ": the file holds no records (expected JSON lines)");
  return f;
}

inline Record parse_record(const JsonlFile& f, std::size_t i) {
  Record r;
  r.line = f.line_numbers[i];
  r.index = i;
  try {
    r.json = nlohmann::json::parse(f.lines[i]);
  } catch (const nlohmann::json::exception& e) {
    throw DatasetError(f.path + ":" + std::to_string(r.line) + ": not a JSON line: " + e.what());
  }
  if (!r.json.is_object())
    throw DatasetError(f.path + ":" + std::to_string(r.line) + ": expected a JSON object, got " +
                       std::string(r.json.type_name()));
  return r;
}

inline std::string field_list(const nlohmann::json& j) {
  std::string s;
  for (const auto& [k, v] : j.items()) s += (s.empty() ? "" : ", ") + k;
  return s.empty() ? "none" : s;
}

inline bool has(const nlohmann::json& j, const char* k) { return j.contains(k) && !j[k].is_null(); }

inline Format detect_format(const nlohmann::json& j, const std::string& where) {
  if (has(j, "prompt")) return Format::generic;
  if (has(j, "input") && has(j, "outputs")) return Format::tasks;
  if (has(j, "document") && has(j, "summary")) return Format::xsum;
  if (has(j, "article") && has(j, "highlights")) return Format::cnn_dailymail;
  if (j.contains("context") && j.contains("input") && j.contains("answers")) return Format::longbench;
  if (has(j, "goal") && has(j, "sol1")) return Format::piqa;
  if (has(j, "question_stem") && has(j, "choices")) return Format::openbookqa;
  if (has(j, "sentence") && has(j, "option1")) return Format::winogrande;
  throw DatasetError(where + ": cannot tell the dataset format from the first record's fields (" + field_list(j) +
                     "); expected prompt + reference (generic), input + outputs (data/tasks), or the hub layout of "
                     "xsum (document, summary), cnn_dailymail (article, highlights), LongBench (context, input, "
                     "answers), piqa (goal, sol1, sol2, label), openbookqa (question_stem, choices, answerKey) or "
                     "winogrande (sentence, option1, option2, answer)");
}

struct Context {
  const JsonlFile* file = nullptr;
  const Record* rec = nullptr;
  Format format = Format::generic;
  std::string hint;  // how to make the file, for error messages

  [[noreturn]] void missing(const char* key, const std::string& what) const {
    throw DatasetError(file->path + ":" + std::to_string(rec->line) + ": " + std::string(format_name(format)) +
                       " record has no " + what + " field '" + key + "' (fields found: " + field_list(rec->json) + ")" +
                       hint);
  }
  [[noreturn]] void bad(const std::string& msg) const {
    throw DatasetError(file->path + ":" + std::to_string(rec->line) + ": " + msg + hint);
  }
  std::string str(const char* key, bool allow_empty = true) const {
    const auto& j = rec->json;
    if (!j.contains(key) || j[key].is_null()) missing(key, "string");
    const auto& v = j[key];
    std::string s;
    // Text fields are strings: a number here ("prompt": 12345) is a broken export, not a prompt.
    if (v.is_string()) s = v.get<std::string>();
    else bad("field '" + std::string(key) + "' must be a string, got " + std::string(v.type_name()) + " " + v.dump());
    if (!allow_empty && s.empty()) bad("field '" + std::string(key) + "' is empty");
    return s;
  }
  std::string str_or(const char* key, const std::string& fallback) const {
    const auto& j = rec->json;
    if (!j.contains(key) || j[key].is_null()) return fallback;
    return str(key);
  }
  std::vector<std::string> strings(const char* key) const {
    const auto& j = rec->json;
    if (!j.contains(key) || j[key].is_null()) missing(key, "answer");
    const auto& v = j[key];
    std::vector<std::string> out;
    if (v.is_string()) out.push_back(v.get<std::string>());
    else if (v.is_array()) {
      for (const auto& x : v) {
        if (x.is_string()) out.push_back(x.get<std::string>());
        else if (x.is_number()) out.push_back(x.dump());
        else bad("field '" + std::string(key) + "' must hold strings, found " + std::string(x.type_name()));
      }
    } else if (v.is_number()) out.push_back(v.dump());
    else bad("field '" + std::string(key) + "' must be a string or a list of strings, got " + std::string(v.type_name()));
    if (out.empty()) bad("field '" + std::string(key) + "' holds no answer");
    return out;
  }
  std::string id(const char* key) const {
    const auto& j = rec->json;
    if (j.contains(key) && j[key].is_string()) return j[key].get<std::string>();
    if (j.contains(key) && j[key].is_number_integer()) return std::to_string(j[key].get<long long>());
    return std::to_string(rec->index);
  }
};

inline std::vector<std::string> expand_metric(const std::string& m, const std::string& where) {
  if (m == "rouge") return {"rougeL", "rouge1", "rouge2", "rougeLsum"};
  if (!is_known_metric(m)) throw DatasetError(where + ": unknown metric '" + m + "'; known: " + known_metric_list());
  return {m};
}

inline std::vector<std::string> record_metrics(const Context& c) {
  const auto& j = c.rec->json;
  if (!j.contains("metric") || j["metric"].is_null()) return {};
  const std::string where = c.file->path + ":" + std::to_string(c.rec->line);
  std::vector<std::string> out;
  auto add = [&](const nlohmann::json& v) {
    if (!v.is_string()) c.bad("field 'metric' must be a metric name or a list of names");
    for (auto& m : expand_metric(v.get<std::string>(), where))
      if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
  };
  if (j["metric"].is_array())
    for (const auto& v : j["metric"]) add(v);
  else add(j["metric"]);
  return out;
}

}  // namespace detail_ds

/// Answer lengths of the long-context task set's tasks (data/tasks): the answers are a few numbers or words, so the
/// budget is about twice the longest answer in the model's tokens, shorter than RULER's (128 for needles, 120 for
/// common words), which only makes a wrong answer ramble longer.
inline int task_max_new_tokens(std::string_view task) {
  static const std::map<std::string, int, std::less<>> m = {
      {"niah_single", 24}, {"niah_multikey", 24}, {"niah_multivalue", 48}, {"niah_multiquery", 48},
      {"vt", 32},          {"cwe", 64},           {"fwe", 32},             {"qa", 32}};
  auto it = m.find(task);
  return it == m.end() ? 64 : it->second;
}

/// The sample built from one record in the dataset's format; fills the dataset's format-level fields
/// (metrics, answer length, task) on the first record.
inline Sample make_sample(const Dataset& ds, const detail_ds::Context& c, const DatasetOptions& opt) {
  using namespace detail_ds;
  Sample s;
  s.line = c.rec->line;
  const auto& j = c.rec->json;
  switch (ds.format) {
    case Format::generic: {
      s.prompt = c.str("prompt", false);
      if (!has(j, "reference") && !has(j, "references")) c.missing("reference", "answer (or 'references')");
      s.references = has(j, "reference") ? c.strings("reference") : c.strings("references");
      s.id = c.id("id");
      break;
    }
    case Format::tasks: {
      s.prompt = c.str("input", false) + c.str_or("answer_prefix", "");
      s.references = c.strings("outputs");
      s.id = c.id("index");
      break;
    }
    case Format::xsum: {
      s.prompt = "Please summarize the following article in one short sentence.\n\nArticle:\n" + c.str("document") +
                 "\n\nSummary:";
      s.references = {c.str("summary")};
      s.id = c.id("id");
      break;
    }
    case Format::cnn_dailymail: {
      s.prompt = "Please summarize the following news article into 3-5 concise sentences.\n\nArticle:\n" +
                 c.str("article") + "\n\nSummary:";
      s.references = {c.str("highlights")};
      s.id = c.id("id");
      break;
    }
    case Format::longbench: {
      const auto* t = find_longbench_task(ds.task);
      if (!t) c.bad("unknown LongBench task '" + ds.task + "'; tasks: " + longbench_task_list());
      const char* tmpl = t->prompt;
      if (opt.prompt_style == PromptStyle::paper)
        if (const char* p = paper_longbench_prompt(ds.task)) tmpl = p;
      s.prompt = fill_template(tmpl, {{"context", c.str("context")},
                                      {"input", c.str("input")},
                                      {"language", c.str_or("language", "")}});
      s.references = c.strings("answers");
      if (j.contains("all_classes") && j["all_classes"].is_array())
        for (const auto& x : j["all_classes"])
          if (x.is_string()) s.all_classes.push_back(x.get<std::string>());
      if (std::string(t->metric) == "classification" && s.all_classes.empty())
        c.bad("LongBench task '" + ds.task + "' is scored by class and needs the record's 'all_classes' list");
      s.id = c.id("_id");
      break;
    }
    case Format::piqa: {
      const std::string goal = c.str("goal"), sol1 = c.str("sol1"), sol2 = c.str("sol2");
      if (!j.contains("label") || !j["label"].is_number_integer()) c.missing("label", "integer");
      const long long label = j["label"].get<long long>();
      if (label != 0 && label != 1)
        c.bad("piqa label " + std::to_string(label) + " is not 0 or 1 (the hub's test split is unlabelled: use "
              "--split validation)");
      s.prompt = "Question:\n" + goal + "\n\nSolution 1: " + sol1 + "\nSolution 2: " + sol2 + "\n\nAnswer with 1 or 2:";
      s.references = {std::to_string(label + 1)};
      s.all_classes = {"1", "2"};
      s.id = c.id("id");
      break;
    }
    case Format::openbookqa: {
      const std::string stem = c.str("question_stem");
      if (!j.contains("choices") || !j["choices"].is_object()) c.missing("choices", "object");
      const auto& ch = j["choices"];
      if (!ch.contains("text") || !ch.contains("label") || !ch["text"].is_array() || !ch["label"].is_array() ||
          ch["text"].size() != ch["label"].size() || ch["text"].empty())
        c.bad("field 'choices' must hold lists 'text' and 'label' of one length");
      std::string lines, letters;
      for (std::size_t i = 0; i < ch["text"].size(); ++i) {
        if (!ch["text"][i].is_string() || !ch["label"][i].is_string()) c.bad("choices must be strings");
        const auto lab = ch["label"][i].get<std::string>();
        lines += (i ? "\n" : "") + lab + ". " + ch["text"][i].get<std::string>();
        letters += (i ? ", " : "") + lab;
        s.all_classes.push_back(lab);
      }
      s.prompt = "Question:\n" + stem + "\n\nChoices:\n" + lines + "\n\nAnswer with only the letter (" + letters + "):";
      s.references = {c.str("answerKey", false)};
      s.id = c.id("id");
      break;
    }
    case Format::winogrande: {
      const std::string answer = c.str("answer");
      if (answer != "1" && answer != "2")
        c.bad("winogrande answer '" + answer + "' is not \"1\" or \"2\" (the hub's test split is unlabelled: use "
              "--split validation)");
      s.prompt = "Sentence with blank:\n" + c.str("sentence") +
                 "\n\nFill in the blank with the correct option.\n\nOption1:" + c.str("option1") +
                 "\nOption2:" + c.str("option2") + "\nAnswer:";
      s.references = {answer};
      s.all_classes = {"1", "2"};
      s.id = c.id("id");
      break;
    }
  }
  return s;
}

/// Sets the dataset's format-level fields (metrics, answer length, scoring) from its format and first record.
inline void configure(Dataset& ds, const detail_ds::Context& first) {
  switch (ds.format) {
    case Format::generic:
    case Format::tasks: {
      ds.metrics = detail_ds::record_metrics(first);
      if (ds.metrics.empty()) ds.metrics = {"rougeL", "rouge1", "rouge2", "rougeLsum"};
      if (ds.format == Format::tasks) {
        ds.task = first.str_or("task", "");
        ds.max_new_tokens = task_max_new_tokens(ds.task);
      }
      break;
    }
    case Format::xsum:
      ds.metrics = {"rougeL", "rouge1", "rouge2", "rougeLsum"};
      ds.max_new_tokens = 64;
      break;
    case Format::cnn_dailymail:
      ds.metrics = {"rougeL", "rouge1", "rouge2", "rougeLsum"};
      ds.max_new_tokens = 128;
      break;
    case Format::longbench: {
      const auto* t = find_longbench_task(ds.task);
      if (!t) first.bad("unknown LongBench task '" + ds.task + "'; tasks: " + longbench_task_list());
      ds.metrics = longbench_metrics(*t);
      ds.max_new_tokens = t->max_new_tokens;
      const std::string base = t->name;
      ds.first_line = base == "trec" || base == "triviaqa" || base == "samsum" || base == "lsht";
      break;
    }
    case Format::piqa:
    case Format::openbookqa:
    case Format::winogrande:
      ds.metrics = {"accuracy"};
      ds.max_new_tokens = 8;
      break;
  }
}

// ---- resolution --------------------------------------------------------------------------------------------------

struct NamedDataset {
  Format format;
  std::string task;          // LongBench task
  std::string hub_call;      // load_dataset arguments before split=
  std::string folder;        // under data_dir
};

/// The paper's dataset names (and their current hub ids); nullopt for anything else.
inline std::optional<NamedDataset> named_dataset(std::string_view name) {
  const std::string n(name);
  auto is = [&](std::initializer_list<const char*> names) {
    for (const char* x : names)
      if (n == x) return true;
    return false;
  };
  if (is({"xsum", "EdinburghNLP/xsum"})) return NamedDataset{Format::xsum, "", "'" + n + "'", n};
  if (is({"cnn_dailymail", "abisee/cnn_dailymail"}))
    return NamedDataset{Format::cnn_dailymail, "", "'" + n + "', '3.0.0'", n};
  if (is({"piqa", "ybisk/piqa"})) return NamedDataset{Format::piqa, "", "'" + n + "'", n};
  if (is({"openbookqa", "allenai/openbookqa"})) return NamedDataset{Format::openbookqa, "", "'" + n + "', 'main'", n};
  if (is({"winogrande", "allenai/winogrande"}))
    return NamedDataset{Format::winogrande, "", "'" + n + "', 'winogrande_debiased'", n};
  for (const char* prefix : {"THUDM/LongBench/", "THUDM/LongBench-E/"}) {
    const std::string p = prefix;
    if (n.rfind(p, 0) == 0) {
      const std::string task = n.substr(p.size());
      if (!find_longbench_task(task))
        throw DatasetError("--dataset " + n + ": unknown LongBench task '" + task + "'; tasks: " + longbench_task_list());
      return NamedDataset{Format::longbench, task, "'THUDM/LongBench', '" + task + "'", "THUDM/LongBench"};
    }
  }
  if (n == "THUDM/LongBench")
    throw DatasetError("--dataset THUDM/LongBench needs a task: THUDM/LongBench/<task>, tasks: " + longbench_task_list());
  return std::nullopt;
}

inline std::string export_command(const NamedDataset& nd, const std::string& split_name, const std::filesystem::path& out) {
  return "python3 -c \"from datasets import load_dataset; load_dataset(" + nd.hub_call + ", split='" + split_name +
         "').to_json('" + out.string() + "', force_ascii=False)\"";
}

/// Loads `files` (one per split part, the same file for every part of a plain JSONL file) into a dataset.
inline void load_records(Dataset& ds, const std::vector<std::filesystem::path>& files, const Split& split,
                         const DatasetOptions& opt, const std::string& hint, bool task_from_record) {
  using namespace detail_ds;
  bool configured = false;
  std::set<std::string> seen_ids;
  for (std::size_t p = 0; p < split.parts.size(); ++p) {
    const JsonlFile f = read_jsonl(files[p]);
    ds.records += f.lines.size();
    const Record head = parse_record(f, 0);
    const Format fmt = detect_format(head.json, f.path + ":" + std::to_string(head.line));
    if (!configured) {
      if (ds.format == Format::generic) ds.format = fmt;  // files: detected; names: already set
      else if (fmt != ds.format)
        throw DatasetError(f.path + ": expected " + std::string(format_name(ds.format)) + " records, found " +
                           std::string(format_name(fmt)) + " fields (" + field_list(head.json) + ")" + hint);
      if (ds.format == Format::longbench && task_from_record) {
        // the record's "dataset" field, else the file's name (gov_report.jsonl) or folder (gov_report/test.jsonl)
        const std::filesystem::path fp(f.path);
        if (head.json.contains("dataset") && head.json["dataset"].is_string())
          ds.task = head.json["dataset"].get<std::string>();
        else if (find_longbench_task(fp.stem().string()) || !find_longbench_task(fp.parent_path().filename().string()))
          ds.task = fp.stem().string();
        else ds.task = fp.parent_path().filename().string();
      }
      Context c{&f, &head, ds.format, hint};
      configure(ds, c);
      ds.path = f.path;
      configured = true;
    }
    const auto r = split.range(p, f.lines.size());
    // Every line is JSON, also outside the selected slice: a file broken past test[:5] is found now, not on the
    // run that reaches it. (Fields are checked for the selected records only.)
    for (std::size_t i = 0; i < f.lines.size(); ++i) {
      if (i >= r.first && i < r.last) continue;
      const auto& line = f.lines[i];
      if (line[line.find_first_not_of(" \t")] != '{' || !nlohmann::json::accept(line)) (void)parse_record(f, i);
    }
    for (std::size_t i = r.first; i < r.last; ++i) {
      const Record rec = parse_record(f, i);
      Context c{&f, &rec, ds.format, hint};
      if (ds.format == Format::generic || ds.format == Format::tasks) {
        const auto m = record_metrics(c);
        if (!m.empty() && m != ds.metrics)
          c.bad("metric '" + (m.size() == 1 ? m[0] : std::string("[...]")) + "' differs from the file's first record's ('" +
                ds.metrics[0] + "'): one metric per file");
      }
      Sample s = make_sample(ds, c, opt);
      if (!seen_ids.insert(s.id).second) {  // a repeated id gets its position: ids stay unique in the CSV
        if (ds.warnings.empty())
          ds.warnings.push_back(f.path + ":" + std::to_string(rec.line) + ": id '" + s.id +
                                "' repeats an earlier record's; the CSV calls it '" + s.id + "#" +
                                std::to_string(ds.samples.size()) + "' (further repeats are renamed alike)");
        const std::string suffix = std::to_string(ds.samples.size());
        s.id.push_back('#');
        s.id.append(suffix);
      }
      ds.samples.push_back(std::move(s));
    }
  }
}

/// One dataset by name or path (a file; folders and globs are expanded by resolve_datasets).
inline Dataset load_one(const std::string& name, const std::filesystem::path& file_or_empty, const Split& split,
                        const DatasetOptions& opt) {
  Dataset ds;
  ds.name = name;
  if (const auto nd = named_dataset(name)) {
    ds.format = nd->format;
    ds.task = nd->task;
    ds.tag = safe_tag(nd->format == Format::longbench ? nd->task : std::filesystem::path(name).filename().string());
    std::vector<std::filesystem::path> files;
    std::string hint;
    for (const auto& part : split.parts) {
      std::vector<std::filesystem::path> tried;
      const auto base = opt.data_dir / nd->folder;
      if (nd->format == Format::longbench) {
        tried.push_back(base / nd->task / (part.name + ".jsonl"));
        if (part.name == "test") tried.push_back(base / (nd->task + ".jsonl"));
      } else {
        tried.push_back(base / (part.name + ".jsonl"));
      }
      const auto found = std::find_if(tried.begin(), tried.end(), [](const auto& p) { return std::filesystem::is_regular_file(p); });
      hint = "\n(" + name + "'s records are the hub's, exported as JSON lines: " + export_command(*nd, part.name, tried[0]) + ")";
      if (found == tried.end()) {
        std::string where;
        for (const auto& t : tried) where += (where.empty() ? "" : " or ") + t.string();
        throw DatasetError(
            "--dataset " + name + " --split " + split.text + ": no file " + where + ".\nExport the '" + part.name +
            "' split once from the Hugging Face hub (on a machine with the Python `datasets` package; copy the file "
            "here if this machine has no network):\n  " + export_command(*nd, part.name, tried[0]) +
            "\nor pass --data_dir DIR holding " + tried[0].lexically_relative(opt.data_dir).string() +
            " (docs/eval.md lists every dataset's command).");
      }
      files.push_back(*found);
    }
    load_records(ds, files, split, opt, hint, false);
    return ds;
  }
  const auto path = file_or_empty.empty() ? std::filesystem::path(name) : file_or_empty;
  if (!std::filesystem::exists(path))
    throw DatasetError("--dataset " + name + ": no such file, and not a known dataset name (xsum, cnn_dailymail, "
                       "piqa, openbookqa, winogrande, THUDM/LongBench/<task>)");
  if (!std::filesystem::is_regular_file(path)) throw DatasetError("--dataset " + path.string() + ": not a file");
  ds.format = Format::generic;
  ds.tag = safe_tag(path.stem().string());
  const std::vector<std::filesystem::path> files(split.parts.size(), path);
  load_records(ds, files, split, opt, "", true);
  return ds;
}

/// Splits a comma-separated list of dataset names or paths.
inline std::vector<std::string> split_list(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

/// Every dataset of `spec`: comma-separated names, files, folders (their *.jsonl, sorted) and globs.
inline std::vector<Dataset> resolve_datasets(std::string_view spec, const Split& split, const DatasetOptions& opt) {
  std::vector<Dataset> out;
  const auto items = split_list(spec);
  if (items.empty()) throw DatasetError("--dataset is empty");
  for (const auto& item : items) {
    if (named_dataset(item)) {
      out.push_back(load_one(item, {}, split, opt));
      continue;
    }
    std::vector<std::filesystem::path> files;
    if (item.find_first_of("*?[") != std::string::npos && !std::filesystem::exists(item)) {
      glob_t g{};
      if (::glob(item.c_str(), 0, nullptr, &g) == 0)
        for (std::size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
      ::globfree(&g);
      if (files.empty()) throw DatasetError("--dataset " + item + ": the pattern matches no file");
    } else if (std::filesystem::is_directory(item)) {
      for (const auto& e : std::filesystem::directory_iterator(item))
        if (e.is_regular_file() && e.path().extension() == ".jsonl") files.push_back(e.path());
      std::sort(files.begin(), files.end());
      if (files.empty()) throw DatasetError("--dataset " + item + ": the folder holds no .jsonl file");
    } else {
      files.emplace_back(item);
    }
    for (const auto& f : files) out.push_back(load_one(files.size() == 1 ? item : f.string(), f, split, opt));
  }
  // distinct tags, for distinct file names
  std::map<std::string, int> count;
  for (auto& d : out)
    if (count[d.tag]++ > 0) d.tag += "-" + std::to_string(count[d.tag]);
  return out;
}

// ---- truncation --------------------------------------------------------------------------------------------------

/// LongBench's truncation: a prompt of more than `max_tokens` tokens keeps its first and last max_tokens/2 tokens
/// (the instructions at both ends survive, the middle of the context goes). Returns the tokens removed.
inline std::size_t truncate_middle(std::vector<int>& ids, std::size_t max_tokens) {
  if (max_tokens == 0 || ids.size() <= max_tokens) return 0;
  const std::size_t half = max_tokens / 2;
  const std::size_t removed = ids.size() - 2 * half;
  ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(half), ids.end() - static_cast<std::ptrdiff_t>(half));
  return removed;
}

/// The answer as LongBench scores it: for trec, triviaqa, samsum and lsht only its first line (after leading
/// newlines).
inline std::string scored_answer(const Dataset& ds, std::string_view answer) {
  if (!ds.first_line) return std::string(answer);
  const auto start = answer.find_first_not_of('\n');
  if (start == std::string_view::npos) return "";
  const auto end = answer.find('\n', start);
  return std::string(answer.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
}

}  // namespace simcalkv::eval
