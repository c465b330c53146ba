// Reference host engine: a Hugging Face tokenizer.json byte-level BPE tokenizer.
//
// Supports: model BPE (merges as "a b" strings or ["a", "b"] pairs, ignore_merges, unk_token),
// added and special tokens (split out first, leftmost-longest, lstrip / rstrip), pre-tokenizers
// ByteLevel (GPT-2 regex, add_prefix_space), Split (Regex or String pattern, every behavior but
// Contiguous, invert) and Sequence of them (the Qwen2 and Llama-3 layouts), with Unicode classes
// through PCRE2; the ByteLevel decoder (lossy UTF-8, like tokenizers); the TemplateProcessing
// post-processor (e.g. Llama-3's BOS) when encoding with add_special_tokens. Normalizers: none,
// or NFC, which is applied as the identity (input is assumed to be NFC already; a note is kept in
// `warnings()`).
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "model.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace engine {

namespace detail_tok {

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Length of the valid UTF-8 sequence at s[i], or 0 if invalid.
inline std::size_t utf8_length(std::string_view s, std::size_t i, std::uint32_t* cp_out = nullptr) {
  const auto b = static_cast<unsigned char>(s[i]);
  std::size_t n;
  std::uint32_t cp;
  if (b < 0x80) {
    if (cp_out) *cp_out = b;
    return 1;
  } else if (b >= 0xC2 && b <= 0xDF) {
    n = 2, cp = b & 0x1F;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3, cp = b & 0x0F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4, cp = b & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 0;
  if (cp_out) *cp_out = cp;
  return n;
}

inline bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto n = utf8_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

/// Invalid bytes become U+FFFD (one per maximal invalid prefix, close to Rust's from_utf8_lossy).
inline std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const auto n = utf8_length(s, i);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    // skip the maximal prefix of a valid sequence (lead byte + valid continuations)
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t need = (b >= 0xC2 && b <= 0xDF) ? 2 : (b >= 0xE0 && b <= 0xEF) ? 3 : (b >= 0xF0 && b <= 0xF4) ? 4 : 1;
    std::size_t k = 1;
    while (k < need && i + k < s.size()) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      bool ok = (c & 0xC0) == 0x80;
      if (k == 1) {
        if (b == 0xE0) ok = c >= 0xA0 && c <= 0xBF;
        else if (b == 0xED) ok = c >= 0x80 && c <= 0x9F;
        else if (b == 0xF0) ok = c >= 0x90 && c <= 0xBF;
        else if (b == 0xF4) ok = c >= 0x80 && c <= 0x8F;
      }
      if (!ok) break;
      ++k;
    }
    out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

/// GPT-2's byte <-> printable code point table.
struct ByteMap {
  std::array<std::string, 256> to_str;
  std::unordered_map<std::uint32_t, unsigned char> from_cp;
  ByteMap() {
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[static_cast<std::size_t>(b)] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[static_cast<std::size_t>(b)] = true;
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const std::uint32_t cp = direct[static_cast<std::size_t>(b)] ? static_cast<std::uint32_t>(b) : next++;
      append_utf8(to_str[static_cast<std::size_t>(b)], cp);
      from_cp[cp] = static_cast<unsigned char>(b);
    }
  }
};
inline const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

inline const char* gpt2_pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                          &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof(buf));
      fail(where, ": cannot compile the regex at offset ", off, ": ", reinterpret_cast<const char*>(buf));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // best effort
    data_ = pcre2_match_data_create_from_pattern(code_, nullptr);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() {
    if (data_) pcre2_match_data_free(data_);
    if (code_) pcre2_code_free(code_);
  }
  /// [start, end) of every non-overlapping match, left to right. Input must be valid UTF-8.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    std::size_t pos = 0;
    while (pos <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                                 pos == 0 ? 0 : PCRE2_NO_UTF_CHECK, data_, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) fail("regex match failed (PCRE2 error ", rc, ")");
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data_);
      const std::size_t a = ov[0], b = ov[1];
      if (b == a) {  // empty match: move one character on
        if (a >= s.size()) break;
        const auto n = utf8_length(s, a);
        pos = a + (n ? n : 1);
        continue;
      }
      out.emplace_back(a, b);
      pos = b;
    }
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* data_ = nullptr;
};

}  // namespace detail_tok

class Tokenizer {
 public:
  static Tokenizer load(const std::filesystem::path& path) {
    return Tokenizer(read_json_file(path), path.string());
  }

  Tokenizer(const nlohmann::json& j, const std::string& file) : file_(file) {
    try {
      parse(j);
    } catch (const nlohmann::json::exception& e) {
      fail(file_, ": unexpected content: ", e.what());
    }
  }

  /// Token ids of `text` (UTF-8). With add_special_tokens, the post-processor's template
  /// (e.g. a BOS) is applied.
  [[nodiscard]] std::vector<int> encode(std::string_view text, bool add_special_tokens = false) const {
    if (!detail_tok::valid_utf8(text)) fail("tokenizer: the input text is not valid UTF-8");
    std::vector<int> ids;
    if (add_special_tokens) ids.insert(ids.end(), prefix_.begin(), prefix_.end());
    // added tokens first: leftmost, then longest
    std::size_t i = 0, seg = 0;
    while (i < text.size()) {
      int best = -1;
      std::size_t best_len = 0;
      for (std::size_t a = 0; a < added_.size(); ++a) {
        const auto& t = added_[a].content;
        if (t.size() > best_len && text.compare(i, t.size(), t) == 0) {
          best = static_cast<int>(a);
          best_len = t.size();
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      const auto& at = added_[static_cast<std::size_t>(best)];
      std::size_t seg_end = i, next = i + best_len;
      if (at.lstrip)
        while (seg_end > seg && is_space(text[seg_end - 1])) --seg_end;
      if (at.rstrip)
        while (next < text.size() && is_space(text[next])) ++next;
      encode_segment(text.substr(seg, seg_end - seg), ids);
      ids.push_back(at.id);
      seg = i = next;
    }
    encode_segment(text.substr(seg), ids);
    if (add_special_tokens) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    return ids;
  }

  /// UTF-8 text of `ids` (invalid byte sequences become U+FFFD, like tokenizers' decode).
  [[nodiscard]] std::string decode(std::span<const int> ids, bool skip_special_tokens = false) const {
    return detail_tok::utf8_lossy(decode_bytes(ids, skip_special_tokens));
  }
  /// The raw bytes of `ids`, for streaming output (may end inside a UTF-8 sequence).
  [[nodiscard]] std::string decode_bytes(std::span<const int> ids, bool skip_special_tokens = false) const {
    std::string joined;
    for (int id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size() || !has_token_[static_cast<std::size_t>(id)])
        fail("tokenizer: token id ", id, " is not in the vocabulary of ", file_);
      if (skip_special_tokens && special_ids_.count(id)) continue;
      joined += id_to_token_[static_cast<std::size_t>(id)];
    }
    if (!byte_level_decoder_) return joined;
    std::string out;
    const auto& bm = detail_tok::byte_map();
    for (std::size_t i = 0; i < joined.size();) {
      std::uint32_t cp = 0;
      std::size_t n = detail_tok::utf8_length(joined, i, &cp);
      if (n == 0) n = 1, cp = 0xFFFFFFFF;
      auto it = bm.from_cp.find(cp);
      if (it != bm.from_cp.end()) out += static_cast<char>(it->second);
      else out.append(joined, i, n);
      i += n;
    }
    return out;
  }

  [[nodiscard]] std::size_t vocab_size() const { return id_to_token_.size(); }
  /// Refuses a tokenizer whose ids reach past the model's embedding rows (a tokenizer of another model).
  void check_fits(const ModelConfig& config, const std::string& model_dir) const {
    if (id_to_token_.size() > static_cast<std::size_t>(config.vocab_size))
      fail(file_, ": token ids reach ", id_to_token_.size() - 1, ", past the vocab_size ", config.vocab_size, " of ",
           model_dir, "/config.json: the tokenizer belongs to another model");
  }
  [[nodiscard]] int token_id(const std::string& token) const {
    auto it = vocab_.find(token);
    if (it != vocab_.end()) return it->second;
    for (const auto& a : added_)
      if (a.content == token) return a.id;
    return -1;
  }
  [[nodiscard]] const std::vector<std::string>& warnings() const { return warnings_; }
  [[nodiscard]] bool is_special(int id) const { return special_ids_.count(id) != 0; }

 private:
  struct Added {
    int id;
    std::string content;
    bool special, lstrip, rstrip;
  };
  struct Step {
    enum Kind { byte_level, split } kind = split;
    bool add_prefix_space = false;
    bool use_regex = true;
    std::shared_ptr<detail_tok::Regex> regex;  // split (or byte_level's GPT-2 regex)
    std::string literal;                       // split on a String pattern
    enum Behavior { isolated, removed, merged_with_previous, merged_with_next } behavior = isolated;
    bool invert = false;
  };

  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

  void parse(const nlohmann::json& j) {
    if (!j.is_object()) fail(file_, ": expected a JSON object");
    const auto mit = j.find("model");
    if (mit == j.end() || !mit->is_object()) fail(file_, ": missing the 'model' object");
    const auto& model = *mit;
    const std::string type = model.value("type", std::string("BPE"));
    if (type != "BPE") fail(file_, ": unsupported tokenizer model type '", type, "' (only BPE)");
    const auto vit = model.find("vocab");
    if (vit == model.end() || !vit->is_object()) fail(file_, ": missing model.vocab");
    // Ids index a table of every token, so they must be dense: [0, entries) for the vocabulary and its added
    // tokens together. A stray id (2^31 - 1, 10^8) would otherwise size that table, or overflow it.
    std::size_t added_count = 0;
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      if (!j["added_tokens"].is_array()) fail(file_, ": 'added_tokens' must be an array, got ", j["added_tokens"].dump());
      added_count = j["added_tokens"].size();
    }
    const long long id_limit = static_cast<long long>(vit->size() + added_count);
    int max_id = -1;
    std::map<int, std::string> owner;  // id -> vocabulary token, to refuse two tokens with one id
    for (const auto& [tok, id] : vit->items()) {
      if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() >= id_limit)
        fail(file_, ": model.vocab['", tok, "'] = ", id.dump(), " is not a token id in [0, ", id_limit,
             ") (the vocabulary's ", vit->size(), " entries and ", added_count, " added tokens)");
      const int v = static_cast<int>(id.get<long long>());
      if (const auto [it, fresh] = owner.emplace(v, tok); !fresh)
        fail(file_, ": model.vocab gives id ", v, " to both '", it->second, "' and '", tok, "'");
      vocab_[tok] = v;
      max_id = std::max(max_id, v);
    }
    if (model.contains("continuing_subword_prefix") && !model["continuing_subword_prefix"].is_null())
      fail(file_, ": continuing_subword_prefix is not supported");
    if (model.contains("end_of_word_suffix") && !model["end_of_word_suffix"].is_null())
      fail(file_, ": end_of_word_suffix is not supported");
    if (model.value("byte_fallback", false)) fail(file_, ": byte_fallback BPE (SentencePiece style) is not supported");
    ignore_merges_ = model.value("ignore_merges", false);
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      auto it = vocab_.find(model["unk_token"].get<std::string>());
      if (it != vocab_.end()) unk_id_ = it->second;
    }
    const auto merges_it = model.find("merges");
    if (merges_it == model.end() || !merges_it->is_array()) fail(file_, ": missing model.merges");
    int rank = 0;
    for (const auto& m : *merges_it) {
      std::string a, b;
      if (m.is_string()) {
        const auto s = m.get<std::string>();
        const auto sp = s.find(' ', 1);
        if (sp == std::string::npos) fail(file_, ": merge ", rank, " '", s, "' is not two tokens separated by a space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        fail(file_, ": merge ", rank, " is neither \"a b\" nor [\"a\", \"b\"]: ", m.dump());
      }
      const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
      if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end())
        fail(file_, ": merge ", rank, " ('", a, "', '", b, "') uses or makes a token missing from the vocabulary");
      merges_.emplace(key(ia->second, ib->second), std::make_pair(rank, iab->second));
      ++rank;
    }
    if (added_count > 0) {
      std::map<int, std::string> added_owner;
      for (const auto& a : j["added_tokens"]) {
        if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["id"].is_number_integer() ||
            !a["content"].is_string())
          fail(file_, ": malformed added token ", a.dump());
        const long long raw_id = a["id"].get<long long>();
        if (raw_id < 0 || raw_id >= id_limit)
          fail(file_, ": added token ", a["content"].dump(), " has id ", raw_id, ", not a token id in [0, ", id_limit,
               ")");
        Added t{static_cast<int>(raw_id), a["content"].get<std::string>(), a.value("special", false),
                a.value("lstrip", false), a.value("rstrip", false)};
        if (t.content.empty()) fail(file_, ": malformed added token ", a.dump());
        // An added token may restate a vocabulary entry (same id, same text), not take another token's id.
        if (const auto it = owner.find(t.id); it != owner.end() && it->second != t.content)
          fail(file_, ": added token ", a["content"].dump(), " takes id ", t.id, " of the vocabulary's '", it->second,
               "'");
        if (const auto [it, fresh] = added_owner.emplace(t.id, t.content); !fresh)
          fail(file_, ": added tokens '", it->second, "' and '", t.content, "' share id ", t.id);
        if (t.special) special_ids_[t.id] = true;
        max_id = std::max(max_id, t.id);
        added_.push_back(std::move(t));
      }
    }
    id_to_token_.assign(static_cast<std::size_t>(max_id + 1), {});
    has_token_.assign(static_cast<std::size_t>(max_id + 1), false);
    for (const auto& [tok, id] : vocab_) {
      id_to_token_[static_cast<std::size_t>(id)] = tok;
      has_token_[static_cast<std::size_t>(id)] = true;
    }
    for (const auto& a : added_) {
      id_to_token_[static_cast<std::size_t>(a.id)] = a.content;
      has_token_[static_cast<std::size_t>(a.id)] = true;
    }
    // normalizer
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const auto& n = j["normalizer"];
      const std::string nt = n.value("type", std::string());
      if (nt == "NFC") warnings_.push_back(file_ + ": NFC normalizer applied as identity (input assumed NFC)");
      else fail(file_, ": unsupported normalizer '", nt, "' (supported: none, NFC)");
    }
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) parse_pre(j["pre_tokenizer"]);
    if (j.contains("decoder") && !j["decoder"].is_null()) {
      const auto& d = j["decoder"];
      const std::string dt = d.value("type", std::string());
      if (dt == "ByteLevel") byte_level_decoder_ = true;
      else fail(file_, ": unsupported decoder '", dt, "' (supported: ByteLevel)");
    }
    if (j.contains("post_processor") && !j["post_processor"].is_null()) parse_post(j["post_processor"]);
  }

  void parse_pre(const nlohmann::json& p) {
    const std::string t = p.value("type", std::string());
    if (t == "Sequence") {
      for (const auto& q : p.at("pretokenizers")) parse_pre(q);
    } else if (t == "ByteLevel") {
      Step s;
      s.kind = Step::byte_level;
      s.add_prefix_space = p.value("add_prefix_space", false);
      s.use_regex = p.value("use_regex", true);
      if (s.use_regex) s.regex = std::make_shared<detail_tok::Regex>(detail_tok::gpt2_pattern, file_);
      steps_.push_back(std::move(s));
    } else if (t == "Split") {
      Step s;
      s.kind = Step::split;
      const auto& pat = p.at("pattern");
      if (pat.contains("Regex")) s.regex = std::make_shared<detail_tok::Regex>(pat["Regex"].get<std::string>(), file_ + " (Split pattern)");
      else if (pat.contains("String")) s.literal = pat["String"].get<std::string>();
      else fail(file_, ": Split pattern is neither Regex nor String");
      if (!s.regex && s.literal.empty()) fail(file_, ": Split with an empty String pattern");
      const std::string b = p.value("behavior", std::string("Isolated"));
      if (b == "Isolated") s.behavior = Step::isolated;
      else if (b == "Removed") s.behavior = Step::removed;
      else if (b == "MergedWithPrevious") s.behavior = Step::merged_with_previous;
      else if (b == "MergedWithNext") s.behavior = Step::merged_with_next;
      else fail(file_, ": unsupported Split behavior '", b, "'");
      s.invert = p.value("invert", false);
      steps_.push_back(std::move(s));
    } else {
      fail(file_, ": unsupported pre_tokenizer '", t, "' (supported: ByteLevel, Split, Sequence)");
    }
  }

  void parse_post(const nlohmann::json& p) {
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string())
      fail(file_, ": post_processor must be an object with a 'type' string, got ", p.dump());
    const std::string t = p["type"].get<std::string>();
    if (t == "Sequence") {
      if (!p.contains("processors") || !p["processors"].is_array())
        fail(file_, ": post_processor Sequence needs a 'processors' array");
      for (const auto& q : p["processors"]) parse_post(q);
    } else if (t == "TemplateProcessing") {
      if (!p.contains("single") || !p["single"].is_array())
        fail(file_, ": post_processor TemplateProcessing needs a 'single' array, got ",
             p.contains("single") ? p["single"].dump() : std::string("none"));
      bool seen_a = false;
      for (const auto& item : p["single"]) {
        if (item.is_object() && item.contains("Sequence")) {
          seen_a = true;
        } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object() &&
                   item["SpecialToken"].contains("id") && item["SpecialToken"]["id"].is_string()) {
          const std::string name = item["SpecialToken"]["id"].get<std::string>();
          std::vector<int> ids;
          if (p.contains("special_tokens") && p["special_tokens"].is_object() && p["special_tokens"].contains(name)) {
            for (const auto& x : p["special_tokens"][name].at("ids")) {
              if (!x.is_number_integer() || x.get<long long>() < 0 ||
                  x.get<long long>() >= static_cast<long long>(id_to_token_.size()))
                fail(file_, ": post_processor special token '", name, "' has id ", x.dump(), ", not a token id in [0, ",
                     id_to_token_.size(), ")");
              ids.push_back(static_cast<int>(x.get<long long>()));
            }
          } else if (token_id(name) >= 0) {
            ids.push_back(token_id(name));
          } else {
            fail(file_, ": post_processor names an unknown special token '", name, "'");
          }
          (seen_a ? suffix_ : prefix_).insert((seen_a ? suffix_ : prefix_).end(), ids.begin(), ids.end());
        } else {
          fail(file_, ": post_processor TemplateProcessing item is neither {\"Sequence\": ...} nor "
                      "{\"SpecialToken\": {\"id\": ...}}: ", item.dump());
        }
      }
    } else if (t != "ByteLevel") {
      warnings_.push_back(file_ + ": post_processor '" + t + "' ignored");
    }
  }

  static std::uint64_t key(int a, int b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  /// Splits `pieces` with one Split step.
  static void apply_split(const Step& s, std::vector<std::string>& pieces) {
    std::vector<std::string> out;
    for (const auto& piece : pieces) {
      std::vector<std::pair<std::size_t, std::size_t>> matches;
      if (s.regex) {
        matches = s.regex->find_all(piece);
      } else {
        for (std::size_t p = piece.find(s.literal); p != std::string::npos; p = piece.find(s.literal, p + s.literal.size()))
          matches.emplace_back(p, p + s.literal.size());
      }
      // spans: (start, end, is_delimiter)
      struct Span { std::size_t a, b; bool delim; };
      std::vector<Span> spans;
      std::size_t prev = 0;
      for (auto [a, b] : matches) {
        if (a > prev) spans.push_back({prev, a, s.invert});
        spans.push_back({a, b, !s.invert});
        prev = b;
      }
      if (prev < piece.size()) spans.push_back({prev, piece.size(), s.invert});
      std::vector<std::string> parts;
      switch (s.behavior) {
        case Step::isolated:
          for (const auto& sp : spans) parts.push_back(piece.substr(sp.a, sp.b - sp.a));
          break;
        case Step::removed:
          for (const auto& sp : spans)
            if (!sp.delim) parts.push_back(piece.substr(sp.a, sp.b - sp.a));
          break;
        case Step::merged_with_previous: {
          bool last_delim = false;
          for (const auto& sp : spans) {
            if (sp.delim && !parts.empty() && !last_delim) parts.back() += piece.substr(sp.a, sp.b - sp.a);
            else parts.push_back(piece.substr(sp.a, sp.b - sp.a));
            last_delim = sp.delim;
          }
          break;
        }
        case Step::merged_with_next: {
          bool pending = false;
          for (const auto& sp : spans) {
            if (pending) parts.back() += piece.substr(sp.a, sp.b - sp.a);
            else parts.push_back(piece.substr(sp.a, sp.b - sp.a));
            pending = sp.delim;
          }
          break;
        }
      }
      for (auto& p : parts)
        if (!p.empty()) out.push_back(std::move(p));
    }
    pieces = std::move(out);
  }

  void encode_segment(std::string_view text, std::vector<int>& ids) const {
    if (text.empty()) return;
    std::vector<std::string> pieces{std::string(text)};
    for (const auto& s : steps_) {
      if (s.kind == Step::split) {
        apply_split(s, pieces);
      } else {
        if (s.add_prefix_space && !pieces.empty() && pieces.front().front() != ' ') pieces.front().insert(pieces.front().begin(), ' ');
        if (s.use_regex) {
          Step gpt2;
          gpt2.regex = s.regex;
          apply_split(gpt2, pieces);
        }
        const auto& bm = detail_tok::byte_map();
        for (auto& p : pieces) {
          std::string mapped;
          mapped.reserve(p.size() * 2);
          for (unsigned char c : p) mapped += bm.to_str[c];
          p = std::move(mapped);
        }
      }
    }
    for (const auto& p : pieces) bpe(p, ids);
  }

  void bpe(const std::string& word, std::vector<int>& ids) const {
    if (ignore_merges_) {
      if (auto it = vocab_.find(word); it != vocab_.end()) {
        ids.push_back(it->second);
        return;
      }
    }
    std::vector<int> sym;
    for (std::size_t i = 0; i < word.size();) {
      std::size_t n = detail_tok::utf8_length(word, i);
      if (n == 0) n = 1;
      auto it = vocab_.find(word.substr(i, n));
      if (it != vocab_.end()) sym.push_back(it->second);
      else if (unk_id_ >= 0) sym.push_back(unk_id_);
      else fail("tokenizer ", file_, ": character '", word.substr(i, n), "' is not in the vocabulary and there is no unk_token");
      i += n;
    }
    while (sym.size() > 1) {
      int best_rank = std::numeric_limits<int>::max(), best_id = -1;
      std::size_t best_pos = 0;
      for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merges_.find(key(sym[i], sym[i + 1]));
        if (it != merges_.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          best_id = it->second.second;
          best_pos = i;
        }
      }
      if (best_id < 0) break;
      sym[best_pos] = best_id;
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
    }
    ids.insert(ids.end(), sym.begin(), sym.end());
  }

  std::string file_;
  std::unordered_map<std::string, int> vocab_;
  std::unordered_map<std::uint64_t, std::pair<int, int>> merges_;  // (left, right) -> (rank, merged id)
  std::vector<Added> added_;
  std::unordered_map<int, bool> special_ids_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_token_;
  std::vector<Step> steps_;
  std::vector<int> prefix_, suffix_;
  std::vector<std::string> warnings_;
  bool ignore_merges_ = false;
  bool byte_level_decoder_ = false;
  int unk_id_ = -1;
};

}  // namespace engine
