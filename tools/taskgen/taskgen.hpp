// simcalkv taskgen: offline RULER-style long-context tasks (no downloads).
// Tasks: niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt (variable tracking),
// cwe (common words extraction), fwe (frequent words extraction), qa (QA over templated fact documents).
// Haystacks come from bundled public-domain text (data/corpus/haystack.txt). Each prompt (input + answer_prefix)
// is fitted to at most the target token count with the given tokenizer (engine/tokenizer.hpp), as close
// as the task's unit (a word, a noise sentence, a list item, a document) allows. Seeded and deterministic: the
// random numbers come from std::mt19937_64 with our own range reduction (no std distributions).
#pragma once

#include "tokenizer.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace taskgen {

struct Rng {
  std::mt19937_64 g;
  explicit Rng(std::uint64_t seed) : g(seed) {}
  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : g() % n; }  // tiny bias is fine here
  int range(int lo, int hi) { return lo + static_cast<int>(below(static_cast<std::uint64_t>(hi - lo + 1))); }
  double unit() { return static_cast<double>(g() >> 11) * (1.0 / 9007199254740992.0); }
  template <class T> const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
  template <class T> void shuffle(std::vector<T>& v) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

inline const std::vector<std::string>& adjectives() {
  static const std::vector<std::string> v = {
      "abundant", "ancient", "bright", "brave", "calm", "clever", "cold", "crimson", "curious", "damp", "dark",
      "eager", "early", "elegant", "empty", "fancy", "fierce", "fragile", "gentle", "giant", "golden", "grand",
      "green", "hollow", "humble", "icy", "jolly", "keen", "large", "lazy", "little", "lively", "lucky", "mellow",
      "misty", "modern", "narrow", "noble", "odd", "old", "pale", "plain", "proud", "quiet", "rapid", "rare",
      "rich", "rough", "round", "rusty", "shallow", "sharp", "shiny", "silent", "silver", "simple", "sleepy"};
  return v;
}
inline const std::vector<std::string>& nouns() {
  static const std::vector<std::string> v = {
      "anchor", "apple", "arrow", "badge", "basket", "beacon", "bell", "blanket", "bottle", "bridge", "brush",
      "bucket", "button", "cabin", "candle", "canoe", "canyon", "carpet", "castle", "cello", "chair", "cherry",
      "cliff", "clock", "cloud", "comet", "compass", "cookie", "crown", "crystal", "desk", "diamond", "door",
      "dragon", "drum", "eagle", "engine", "feather", "fence", "fiddle", "flag", "flute", "forest", "fountain",
      "garden", "glove", "harbor", "harp", "helmet", "island", "jacket", "kettle", "kite", "ladder", "lantern"};
  return v;
}

struct Example {
  std::string task;
  std::string input;
  std::string answer_prefix;
  std::vector<std::string> outputs;
  std::string metric;  // string_match_all or string_match_part
  int length = 0;      // tokens of input + answer_prefix
  int target_length = 0;
};

inline nlohmann::json to_json(const Example& e, int index) {
  return {{"index", index},         {"task", e.task},         {"input", e.input},
          {"answer_prefix", e.answer_prefix}, {"outputs", e.outputs}, {"metric", e.metric},
          {"length", e.length},     {"target_length", e.target_length}};
}

/// The task names, in the order the generator writes them.
inline const std::vector<std::string>& task_names() {
  static const std::vector<std::string> v = {"niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
                                             "vt", "cwe", "fwe", "qa"};
  return v;
}

class Generator {
 public:
  Generator(const engine::Tokenizer& tok, std::string haystack_text) : tok_(tok) {
    std::string w;
    for (char c : haystack_text) {
      if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
        if (!w.empty()) words_.push_back(std::move(w)), w.clear();
      } else {
        w += c;
      }
    }
    if (!w.empty()) words_.push_back(w);
    if (words_.size() < 5000) throw std::runtime_error("taskgen: the haystack text is too short (< 5000 words)");
  }

  [[nodiscard]] int count(const std::string& s) const { return static_cast<int>(tok_.encode(s, false).size()); }

  /// One example of `task` with at most `target` tokens; `seed` decides everything.
  Example make(const std::string& task, int target, std::uint64_t seed) const {
    Rng r(seed);
    // build(n) -> example for size parameter n; choose the largest n whose prompt fits
    std::function<Example(int)> build;
    int lo = 1, hi = target;  // size parameter range
    if (task.rfind("niah_", 0) == 0) build = niah(task, r), hi = target * 2;
    else if (task == "vt") build = vt(r), hi = target / 4;
    else if (task == "cwe") build = cwe(r), hi = target / 2;
    else if (task == "fwe") build = fwe(r), hi = target;
    else if (task == "qa") build = qa(r), hi = 64;
    else throw std::runtime_error("taskgen: unknown task '" + task + "'");
    Example best = build(lo);
    best.length = count(best.input + best.answer_prefix);
    if (best.length > target) throw std::runtime_error("taskgen: target " + std::to_string(target) + " too small for " + task);
    while (lo < hi) {  // invariant: build(lo) fits
      const int mid = lo + (hi - lo + 1) / 2;
      Example e = build(mid);
      e.length = count(e.input + e.answer_prefix);
      if (e.length <= target) lo = mid, best = std::move(e);
      else hi = mid - 1;
    }
    best.task = task;
    best.target_length = target;
    return best;
  }

 private:
  std::string key(Rng& r) const { return r.pick(adjectives()) + "-" + r.pick(nouns()); }
  static std::string number(Rng& r) { return std::to_string(r.range(1000000, 9999999)); }

  /// n haystack words starting at `start` (wrapping), with `inserts` (sentences) placed at depths in [0, 1].
  std::string hay(std::size_t start, int n, const std::vector<std::pair<double, std::string>>& inserts) const {
    std::vector<std::pair<int, const std::string*>> at;
    for (const auto& [d, s] : inserts) {
      int i = static_cast<int>(d * n);
      // move to just after a sentence end where one is near, so needles do not split sentences
      for (int k = i; k < n && k < i + 40; ++k)
        if (const auto& w = words_[(start + k) % words_.size()]; !w.empty() && (w.back() == '.' || w.back() == '?')) {
          i = k + 1;
          break;
        }
      at.push_back({std::min(i, n), &s});
    }
    std::stable_sort(at.begin(), at.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string out;
    std::size_t j = 0;
    for (int k = 0; k <= n; ++k) {
      while (j < at.size() && at[j].first == k) {
        if (!out.empty()) out += ' ';
        out += *at[j++].second;
      }
      if (k == n) break;
      if (!out.empty()) out += ' ';
      out += words_[(start + k) % words_.size()];
    }
    return out;
  }

  std::function<Example(int)> niah(const std::string& task, Rng& r) const {
    const std::size_t start = r.below(words_.size());
    int n_keys = 1, n_values = 1, n_queries = 1;
    if (task == "niah_multikey") n_keys = 4;
    else if (task == "niah_multivalue") n_values = 4;
    else if (task == "niah_multiquery") n_keys = 4, n_queries = 4;
    else if (task != "niah_single") throw std::runtime_error("taskgen: unknown task '" + task + "'");
    std::vector<std::string> keys;
    while (static_cast<int>(keys.size()) < n_keys) {
      auto k = key(r);
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    }
    std::vector<std::pair<double, std::string>> needles;
    std::map<std::string, std::vector<std::string>> values;
    for (const auto& k : keys)
      for (int v = 0; v < n_values; ++v) {
        auto val = number(r);
        values[k].push_back(val);
        needles.push_back({r.unit(), "One of the special magic numbers for " + k + " is: " + val + "."});
      }
    std::vector<std::string> q(keys.begin(), keys.begin() + n_queries);
    if (n_queries == 1) q = {keys[r.below(keys.size())]};
    std::string qk = q[0];
    for (std::size_t i = 1; i < q.size(); ++i) qk = (i + 1 == q.size() ? qk + " and " : qk + ", ") + q[i];
    std::vector<std::string> outs;
    for (const auto& k : q)
      for (const auto& v : values[k]) outs.push_back(v);
    return [this, start, needles, qk, outs](int n) {
      Example e;
      e.input = "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
                "I will quiz you about the numbers afterwards.\n" + hay(start, n, needles) +
                "\nWhat are all the special magic numbers for " + qk + " mentioned in the provided text?";
      e.answer_prefix = " The special magic numbers for " + qk + " mentioned in the provided text are";
      e.outputs = outs;
      e.metric = "string_match_all";
      return e;
    };
  }

  std::function<Example(int)> vt(Rng& r) const {
    // one chain of 5 variables: VAR A = 12345, VAR B = VAR A, ... inside repeated noise sentences
    std::vector<std::string> vars;
    while (vars.size() < 5) {
      std::string v;
      for (int i = 0; i < 5; ++i) v += static_cast<char>('A' + r.below(26));
      if (std::find(vars.begin(), vars.end(), v) == vars.end()) vars.push_back(v);
    }
    const std::string value = std::to_string(r.range(10000, 99999));
    std::vector<double> depths;
    for (int i = 0; i < 5; ++i) depths.push_back(r.unit());
    std::sort(depths.begin(), depths.end());
    return [vars, value, depths](int n) {
      const std::string noise = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
      std::string body;
      std::size_t c = 0;
      for (int k = 0; k <= n; ++k) {
        while (c < depths.size() && static_cast<int>(depths[c] * n) == k) {
          body += (c == 0 ? "VAR " + vars[0] + " = " + value : "VAR " + vars[c] + " = VAR " + vars[c - 1]) + ". ";
          ++c;
        }
        if (k < n) body += noise + " ";
      }
      Example e;
      e.input = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n" + body +
                "\nQuestion: Find all variables that are assigned the value " + value + " in the text above.";
      e.answer_prefix = " Answer: According to the chain(s) of variable assignment in the text above, 5 variables "
                        "are assigned the value " + value + ", they are:";
      e.outputs = vars;
      e.metric = "string_match_all";
      return e;
    };
  }

  std::vector<std::string> word_pool(Rng& r, std::size_t n) const {
    std::set<std::string> seen;
    std::vector<std::string> out;
    for (int guard = 0; out.size() < n && guard < 1000000; ++guard) {
      std::string w;
      for (char c : words_[r.below(words_.size())])
        if (c >= 'a' && c <= 'z') w += c;
        else if (c >= 'A' && c <= 'Z') w += static_cast<char>(c - 'A' + 'a');
      if (w.size() >= 5 && seen.insert(w).second) out.push_back(w);  // no short words: fewer substring matches
    }
    return out;
  }

  std::function<Example(int)> cwe(Rng& r) const {
    auto pool = word_pool(r, 2000);
    std::vector<std::string> common(pool.begin(), pool.begin() + 10), rare(pool.begin() + 10, pool.end());
    const std::uint64_t s = r.g();
    return [common, rare, s](int n) {  // n list items: each common word ~n/30 times, rare words once or twice
      Rng rr(s);
      std::vector<std::string> items;
      const int reps = std::max(3, n / 30);
      for (const auto& w : common)
        for (int i = 0; i < reps; ++i) items.push_back(w);
      for (int i = 0; static_cast<int>(items.size()) < n + 10 * reps && i < static_cast<int>(rare.size()) * 2; ++i)
        items.push_back(rare[static_cast<std::size_t>(i / 2) % rare.size()]);
      rr.shuffle(items);
      std::string list;
      for (std::size_t i = 0; i < items.size(); ++i) list += std::to_string(i + 1) + ". " + items[i] + " ";
      Example e;
      e.input = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n" + list +
                "\nQuestion: What are the 10 most common words in the above list?";
      e.answer_prefix = " Answer: The top 10 words that appear most often in the list are:";
      e.outputs = common;
      e.metric = "string_match_all";
      return e;
    };
  }

  std::function<Example(int)> fwe(Rng& r) const {
    // coded words with Zipf-like frequencies; the three most frequent are the answers
    std::vector<std::string> vocab;
    std::set<std::string> seen;
    while (vocab.size() < 400) {
      std::string w;
      const int len = r.range(3, 6);
      for (int i = 0; i < len; ++i) w += static_cast<char>('a' + r.below(26));
      if (seen.insert(w).second) vocab.push_back(w);
    }
    const std::uint64_t s = r.g();
    return [vocab, s](int n) {
      Rng rr(s);
      std::vector<std::string> items;
      // word i gets weight 1/(i+1)^2 (alpha = 2), at least one occurrence for the first 3 well separated
      for (int t = 0; t < n; ++t) {
        double u = rr.unit() * 1.6449, acc = 0;  // pi^2/6
        std::size_t i = 0;
        for (; i + 1 < vocab.size(); ++i) {
          acc += 1.0 / static_cast<double>((i + 1) * (i + 1));
          if (u <= acc) break;
        }
        items.push_back(vocab[i]);
      }
      // make the order of the top three unambiguous
      std::map<std::string, int> cnt;
      for (const auto& w : items) ++cnt[w];
      for (int k = 0; k < 3; ++k)
        while (cnt[vocab[k]] <= cnt[vocab[k + 1]] + 1) items.push_back(vocab[k]), ++cnt[vocab[k]];
      rr.shuffle(items);
      std::string text;
      for (const auto& w : items) text += w + " ";
      Example e;
      e.input = "Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. " + text +
                "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
                "frequently appeared words in the above coded text?";
      e.answer_prefix = " Answer: According to the coded text above, the three most frequently appeared words are:";
      e.outputs = {vocab[0], vocab[1], vocab[2]};
      e.metric = "string_match_all";
      return e;
    };
  }

  std::function<Example(int)> qa(Rng& r) const {
    static const std::vector<std::string> first = {"Alice", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta",
                                                   "Hiro", "Ines", "Jonas", "Kofi", "Lena", "Marco", "Nadia",
                                                   "Oskar", "Priya", "Quentin", "Rosa", "Samir", "Tamsin"};
    static const std::vector<std::string> last = {"Abbott", "Brennan", "Castillo", "Dawson", "Eriksen", "Fontaine",
                                                  "Garrick", "Holloway", "Ibarra", "Jansen", "Kowalski", "Lindqvist",
                                                  "Moreau", "Novak", "Okafor", "Pereira", "Quinlan", "Rasmussen"};
    static const std::vector<std::string> city = {"Lisbon", "Oslo", "Kyoto", "Quito", "Nairobi", "Tallinn", "Hobart",
                                                  "Valparaiso", "Tromso", "Cusco", "Dakar", "Porto", "Bergen",
                                                  "Salta", "Kraków", "Leiden", "Perth", "Aarhus", "Ghent", "Tartu"};
    static const std::vector<std::string> trade = {"clockmaker", "cartographer", "glassblower", "beekeeper",
                                                   "bookbinder", "astronomer", "luthier", "shipwright", "botanist",
                                                   "typesetter", "lighthouse keeper", "weaver"};
    struct Doc { std::string text, person, place; };
    std::vector<Doc> docs;
    std::set<std::string> people;
    while (docs.size() < 64) {
      std::string p = r.pick(first) + " " + r.pick(last);
      if (!people.insert(p).second) continue;
      Doc d{"", p, r.pick(city)};
      const std::string t = r.pick(trade), yr = std::to_string(r.range(1820, 1990));
      d.text = p + " was a " + t + " born in " + d.place + " in " + yr + ". As a " + t + ", " + p.substr(0, p.find(' ')) +
               " worked for many years before settling far from " + d.place + ".";
      docs.push_back(d);
    }
    const std::size_t gold = r.below(docs.size());
    const std::size_t start = r.below(words_.size());
    const std::uint64_t s = r.g();
    const bool by_place = r.below(2) == 0;
    return [this, docs, gold, start, s, by_place](int n) {  // n documents, the gold one among them
      Rng rr(s);
      std::vector<std::size_t> idx;
      for (std::size_t i = 0; i < docs.size(); ++i)
        if (i != gold) idx.push_back(i);
      idx.resize(static_cast<std::size_t>(std::max(0, n - 1)) < idx.size() ? static_cast<std::size_t>(n - 1) : idx.size());
      idx.push_back(gold);
      rr.shuffle(idx);
      std::string ctx;
      for (std::size_t i = 0; i < idx.size(); ++i)
        ctx += "Document " + std::to_string(i + 1) + ":\n" + docs[idx[i]].text + " " +
               hay(start + 97 * i, 24, {}) + "\n\n";
      Example e;
      const auto& g = docs[gold];
      e.input = "Answer the question based on the given documents. Only give me the answer and do not output any "
                "other words.\n\nThe following are given documents.\n\n" + ctx +
                "Answer the question based on the given documents. Only give me the answer and do not output any "
                "other words.\n\nQuestion: " + (by_place ? "In which city was " + g.person + " born?" :
                                                           "Who is the person born in " + g.place + "?");
      e.answer_prefix = " Answer:";
      e.outputs = {by_place ? g.place : g.person};
      if (!by_place)  // another document may share the city: every such person is a correct answer
        for (const auto& d : docs)
          if (&d != &g && d.place == g.place &&
              std::find(idx.begin(), idx.end(), static_cast<std::size_t>(&d - docs.data())) != idx.end())
            e.outputs.push_back(d.person);
      e.metric = "string_match_part";
      return e;
    };
  }

  const engine::Tokenizer& tok_;
  std::vector<std::string> words_;
};

}  // namespace taskgen
