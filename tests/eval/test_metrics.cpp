// simcalkv-eval metrics (tools/eval/metrics.hpp) on hand-worked examples. Every expected number is derived in the
// comment next to it; the Porter stems were also checked against nltk 3.8's PorterStemmer() and the code_sim values
// against fuzzywuzzy 0.18 + python-Levenshtein 0.12.
#include "metrics.hpp"

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace ev = simcalkv::eval;
using Catch::Matchers::Contains;

namespace {
Approx near(double x) { return Approx(x).margin(1e-12); }
}  // namespace

// ------------------------------------------------------------------------------------------------ Porter stemmer

TEST_CASE("porter_stem: the paper's step 1 examples, NLTK extensions", "[eval][porter]") {
  // 1a: sses -> ss, ies -> i, ss stays, s dropped; NLTK: a 4-letter "-ies" word keeps "ie".
  CHECK(ev::porter_stem("caresses") == "caress");
  CHECK(ev::porter_stem("ponies") == "poni");
  CHECK(ev::porter_stem("ties") == "tie");
  CHECK(ev::porter_stem("cats") == "cat");
  // 1b: feed: "eed" with m("f") = 0 stays. agreed: m("agr") = 1 -> "agree", then 5a drops the e (m("agre") = 1 and
  // "gre" is not cvc).
  CHECK(ev::porter_stem("feed") == "feed");
  CHECK(ev::porter_stem("agreed") == "agre");
  // running: "ing" off -> "runn", double n (not l/s/z) -> "run". milling keeps the double l.
  CHECK(ev::porter_stem("running") == "run");
  CHECK(ev::porter_stem("matting") == "mat");
  CHECK(ev::porter_stem("milling") == "mill");
  CHECK(ev::porter_stem("messing") == "mess");
  // mating: "mat", m = 1 and cvc -> "mate"; filing -> "file"; failing: "fail" is not cvc -> "fail".
  CHECK(ev::porter_stem("mating") == "mate");
  CHECK(ev::porter_stem("filing") == "file");
  CHECK(ev::porter_stem("failing") == "fail");
  // at/bl/iz get their e back (conflat(ed) -> conflate, then 5a: m("conflat") = 2 drops it again).
  CHECK(ev::porter_stem("conflated") == "conflat");
  CHECK(ev::porter_stem("sized") == "size");
  // NLTK: "-ied" -> "ie" for a 4-letter word, else "i".
  CHECK(ev::porter_stem("died") == "die");
  CHECK(ev::porter_stem("spied") == "spi");
  // 1c (NLTK): y -> i only after a consonant that is not the whole stem: happy -> happi, cry -> cri, enjoy and by
  // stay (by also because words of <= 2 letters are not stemmed).
  CHECK(ev::porter_stem("happy") == "happi");
  CHECK(ev::porter_stem("cry") == "cri");
  CHECK(ev::porter_stem("enjoy") == "enjoy");
  CHECK(ev::porter_stem("by") == "by");
  CHECK(ev::porter_stem("is") == "is");
}

TEST_CASE("porter_stem: steps 2 to 5 and NLTK's departures", "[eval][porter]") {
  // relational: step 2 ational -> ate (m("rel") = 1) -> "relate"; step 4 "ate" needs m("rel") > 1, no; step 5a
  // m("relat") = 2 drops the e -> "relat".
  CHECK(ev::porter_stem("relational") == "relat");
  // generalization: ization -> ize ("generalize", m = 3); step 3 alize -> al ("general"); step 4 al with
  // m("gener") = 2 -> "gener".
  CHECK(ev::porter_stem("generalization") == "gener");
  CHECK(ev::porter_stem("generalizations") == "gener");
  // conditional: tional -> tion; step 4 ion after t with m("condit") = 2 -> "condit". rational: m("rat") = 1 keeps
  // "ration" in step 4.
  CHECK(ev::porter_stem("conditional") == "condit");
  CHECK(ev::porter_stem("rational") == "ration");
  // NLTK: "-alli" is tried first and step 2 runs again: conditionally -> conditional -> condition -> condit.
  CHECK(ev::porter_stem("conditionally") == "condit");
  // hopefulness: fulness -> ful, step 3 ful -> "" -> "hope"; electrical: ical -> ic, step 4 ic -> "electr".
  CHECK(ev::porter_stem("hopefulness") == "hope");
  CHECK(ev::porter_stem("electrical") == "electr");
  CHECK(ev::porter_stem("adjustable") == "adjust");
  CHECK(ev::porter_stem("effective") == "effect");
  CHECK(ev::porter_stem("digitizer") == "digit");
  // formality: aliti -> al, then al off (m("form") = 1 is not > 1) -> "formal"; sensibility: biliti -> ble,
  // 5a: m("sensibl") = 2 -> "sensibl"; relativity: iviti -> ive, ative -> "", -> "rel".
  CHECK(ev::porter_stem("formality") == "formal");
  CHECK(ev::porter_stem("sensibility") == "sensibl");
  CHECK(ev::porter_stem("relativity") == "rel");
  // NLTK "logi" -> "log" with the l kept in the measured stem: m("geol") = 1 > 0.
  CHECK(ev::porter_stem("geology") == "geolog");
  // 5a: probate m("probat") = 2 -> "probat"; rate: m("rat") = 1 and cvc keeps e; cease: m = 1, "eas" not cvc.
  CHECK(ev::porter_stem("probate") == "probat");
  CHECK(ev::porter_stem("rate") == "rate");
  CHECK(ev::porter_stem("cease") == "ceas");
  // 5b: controll -> control (m = 2); roll stays (m("rol") = 1).
  CHECK(ev::porter_stem("controlling") == "control");
  CHECK(ev::porter_stem("roll") == "roll");
  CHECK(ev::porter_stem("oscillators") == "oscil");
  CHECK(ev::porter_stem("abilities") == "abil");
  CHECK(ev::porter_stem("analogously") == "analog");
  // A y after a consonant is a vowel and the reverse: "yyyy" is c v c v. 1c needs a consonant before the final y,
  // and y(2) is one -> "yyyi". syzygy: the final y follows g -> "syzygi".
  CHECK(ev::porter_stem("yyyy") == "yyyi");
  CHECK(ev::porter_stem("syzygy") == "syzygi");
}

TEST_CASE("porter_stem: irregular forms, case and nltk's quirks", "[eval][porter]") {
  CHECK(ev::porter_stem("skies") == "sky");
  CHECK(ev::porter_stem("dying") == "die");
  CHECK(ev::porter_stem("news") == "news");
  CHECK(ev::porter_stem("innings") == "inning");
  CHECK(ev::porter_stem("proceed") == "proceed");
  // The table is looked up with the word as given: "Skies" misses it and is stemmed as "skies" -> "ski".
  CHECK(ev::porter_stem("Skies") == "ski");
  CHECK(ev::porter_stem("Running") == "run");
  // A stem ending in the characters "*d" passes nltk's "*d" rule: "a*ded" -> "a*d" -> "a" + "d".
  CHECK(ev::porter_stem("a*ded") == "ad");
  // Code points, not bytes (ï and é are consonants to Porter). naïve: 5a, m("naïv") = 1 and "aïv" is v c c, not
  // c v c -> e dropped -> "naïv". ÉCOLES lowercases to "écoles", 1a -> "école"; 5a: m("écol") = 1 but "col" is
  // c v c -> e kept.
  CHECK(ev::porter_stem("na\xc3\xafve") == "na\xc3\xafv");
  CHECK(ev::porter_stem("\xc3\x89" "COLES") == "\xc3\xa9" "cole");
  // Invalid UTF-8 survives unchanged (2 bytes = 2 escaped code points: not stemmed).
  CHECK(ev::porter_stem("\xff\xfe") == "\xff\xfe");
  CHECK(ev::porter_stem("") == "");
}

// ------------------------------------------------------------------------------------------------------ ROUGE

TEST_CASE("rouge: rouge-score's README example", "[eval][rouge]") {
  // reference: the quick brown fox jumps over the lazy dog (9 tokens); prediction: the quick brown dog jumps on
  // the log (8). Unigram overlap: the x2, quick, brown, jumps, dog = 6 -> F1 = 2*6/(8+9) = 12/17.
  // Bigrams: 8 and 7, shared "the quick", "quick brown" -> 2*2/15 = 4/15.
  // LCS "the quick brown jumps the" = 5 -> 2*5/17 = 10/17 (P = 0.625 as in the README); one line each, so
  // ROUGE-Lsum = ROUGE-L. Stemming (jumps -> jump, lazy -> lazi on both sides) changes nothing.
  for (bool stem : {false, true}) {
    const auto s = ev::rouge("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog",
                             stem);
    CHECK(s.rouge1 == near(12.0 / 17));
    CHECK(s.rouge2 == near(4.0 / 15));
    CHECK(s.rougeL == near(10.0 / 17));
    CHECK(s.rougeLsum == near(10.0 / 17));
  }
}

TEST_CASE("rouge: stemming, tokenisation and empty sides", "[eval][rouge]") {
  // "running runs" -> run run (stemmed, > 3 letters); "run" has 3 letters and is not stemmed. Overlap
  // min(2, 1) = 1: P = 1/2, R = 1 -> F = 2/3. Without the stemmer nothing matches.
  CHECK(ev::rouge("running runs", "run", true).rouge1 == near(2.0 / 3));
  CHECK(ev::rouge("running runs", "run", false).rouge1 == 0.0);
  // Case folded, punctuation and non-ASCII separate: "Café-au-lait!" -> caf au lait; vs "CAF au lait" -> 1.
  CHECK(ev::rouge("Caf\xc3\xa9-au-lait!", "CAF au lait", false).rouge1 == near(1.0));
  // U+0130 lowercases to "i" + U+0307 (a separator), U+212A KELVIN SIGN to "k": "İstanbul 5K" -> i stanbul 5k.
  CHECK(ev::rouge("\xc4\xb0stanbul 5\xe2\x84\xaa", "i stanbul 5k", false).rouge1 == near(1.0));
  // rouge-score gives 0 when either side has no token, even when both have none.
  for (const auto& [p, r] : std::vector<std::pair<std::string, std::string>>{{"", "abc"}, {"abc", ""}, {"!!", "..."}}) {
    const auto s = ev::rouge(p, r);
    CHECK(s.rouge1 == 0.0);
    CHECK(s.rouge2 == 0.0);
    CHECK(s.rougeL == 0.0);
    CHECK(s.rougeLsum == 0.0);
  }
  // One token each: no bigram on either side -> ROUGE-2 is 0 (overlap 0), ROUGE-1 and L are 1.
  const auto one = ev::rouge("word", "word");
  CHECK(one.rouge1 == near(1.0));
  CHECK(one.rouge2 == 0.0);
  CHECK(one.rougeL == near(1.0));
  CHECK(one.rougeLsum == near(1.0));
  // Invalid UTF-8 bytes are separators, not undefined behaviour.
  CHECK(ev::rouge("\xff\xfe" "abc\xc3", "abc").rouge1 == near(1.0));
}

TEST_CASE("rouge: ROUGE-Lsum is the summary-level union LCS", "[eval][rouge]") {
  // Reference "x y", prediction lines "y" and "x". ROUGE-L over the whole texts: LCS of (x y) and (y x) is 1 ->
  // 2*1/4 = 0.5. ROUGE-Lsum: LCS(ref, "y") covers y, LCS(ref, "x") covers x, union = both -> P = R = 1.
  const auto s = ev::rouge("y\nx", "x y");
  CHECK(s.rougeL == near(0.5));
  CHECK(s.rougeLsum == near(1.0));

  // The ROUGE paper's example: r = w1 w2 w3 w4 w5, c1 = w1 w2 w6 w7 w8, c2 = w1 w3 w8 w9 w5. Union LCS
  // {w1 w2} u {w1 w3 w5} = 4 hits; P = 4/10, R = 4/5 -> F = 2*0.4*0.8/1.2 = 8/15.
  CHECK(ev::rouge("w1 w2 w6 w7 w8\nw1 w3 w8 w9 w5", "w1 w2 w3 w4 w5").rougeLsum == near(8.0 / 15));

  // Double-count guard: reference lines "x y" and "x z", prediction "x". Each line's union LCS is {x}, but the
  // prediction has one x: 1 hit. P = 1/1, R = 1/4 -> F = 2*0.25/1.25 = 0.4 (0.667 without the guard).
  CHECK(ev::rouge("x", "x y\nx z").rougeLsum == near(0.4));

  // Which LCS the table walk reads matters: reference "a b", prediction lines "b a" and "a". For (a b) vs (b a)
  // the walk starts at (2,2): b != a, t[2][1] = 1 is not > t[1][2] = 1, so it moves up and takes "a". Union = {a}
  // -> 1 hit: P = 1/3, R = 1/2 -> F = 0.4. (Taking "b" there would give 2 hits and 0.8.)
  CHECK(ev::rouge("b a\na", "a b").rougeLsum == near(0.4));

  // Empty lines are dropped and blank ones have no token: "\n\nx y\n \n" scores like "x y".
  CHECK(ev::rouge("\n\nx y\n \n", "x y").rougeLsum == near(1.0));
}

// ------------------------------------------------------------------------------------------------ LongBench QA

TEST_CASE("qa_f1: LongBench normalize_answer and token F1", "[eval][qa]") {
  // "The Eiffel Tower." -> the eiffel tower -> article dropped -> [eiffel, tower] = reference -> 1.
  CHECK(ev::qa_f1("The Eiffel Tower.", "Eiffel tower") == near(1.0));
  // 7 prediction tokens [it was built in 1889 in paris], 1 shared: P = 1/7, R = 1 -> F = 2/8 = 0.25.
  CHECK(ev::qa_f1("It was built in 1889 in Paris", "1889") == near(0.25));
  // [red apple and green apple] vs [green apples]: only "green" is shared: P = 1/5, R = 1/2 -> 2/7.
  CHECK(ev::qa_f1("a red apple and a green apple", "green apples") == near(2.0 / 7));
  // Multiset overlap: "paris" x3 vs "paris": 1 shared, P = 1/3, R = 1 -> F = 0.5.
  CHECK(ev::qa_f1("paris paris paris", "paris") == near(0.5));
  // Punctuation is deleted, not a separator: "U.S.A." -> usa; "don't" -> dont.
  CHECK(ev::qa_f1("U.S.A.", "usa") == near(1.0));
  CHECK(ev::qa_f1("don't", "dont") == near(1.0));
  // Only whole words are articles: "anthem" and "theater" keep their letters.
  CHECK(ev::qa_f1("anthem theater", "anthem theater") == near(1.0));
  // No overlap -> 0; nothing left after normalisation on both sides -> 0 (LongBench returns 0 when num_same is 0).
  CHECK(ev::qa_f1("London", "Paris") == 0.0);
  CHECK(ev::qa_f1("", "") == 0.0);
  CHECK(ev::qa_f1("the", "a an") == 0.0);
}

TEST_CASE("qa_f1: Unicode lowercase and word boundaries as Python's", "[eval][qa]") {
  // "ÉCOLE" lowercases to "école".
  CHECK(ev::qa_f1("\xc3\x89" "COLE", "\xc3\xa9" "cole") == near(1.0));
  // Curly quotes are not \w, so "the" after one is an article: “the answer” -> [“, answer”], same as “ answer”.
  // (Were “ a word character, the prediction would be [“the, answer”] and F1 0.5.)
  CHECK(ev::qa_f1("\xe2\x80\x9cThe answer\xe2\x80\x9d", "\xe2\x80\x9c answer\xe2\x80\x9d") == near(1.0));
  // U+00B2 is \w (a digit), so "a²" is one word, not the article "a" before "²": [a²] vs [²] -> 0 (1 otherwise).
  CHECK(ev::qa_f1("a\xc2\xb2", "\xc2\xb2") == 0.0);
  CHECK(ev::exact_match("a\xc2\xb2", "a\xc2\xb2") == 1.0);
  // A combining mark (U+0301) is not \w: "the" + U+0301 loses its article and leaves the mark, as Python's does.
  CHECK(ev::exact_match("the\xcc\x81", "\xcc\x81") == 1.0);
  // Invalid UTF-8: the stray byte is a token of its own on both sides -> 1.
  CHECK(ev::qa_f1("\xc3", "\xc3") == near(1.0));
}

TEST_CASE("exact_match: equal after normalize_answer", "[eval][qa]") {
  CHECK(ev::exact_match("The  Answer!", "answer") == 1.0);
  CHECK(ev::exact_match("An apple.", "apple") == 1.0);
  CHECK(ev::exact_match("answers", "answer") == 0.0);
  CHECK(ev::exact_match("red apple", "apple red") == 0.0);
  CHECK(ev::exact_match("", "the") == 1.0);  // both normalise to nothing
}

TEST_CASE("qa_f1_zh: characters for Han text, words for ASCII, LongBench punctuation", "[eval][qa]") {
  // [北 京 大 学] vs [北 京]: 2 shared, P = 2/4, R = 1 -> F = 2/3.
  CHECK(ev::qa_f1_zh("北京大学", "北京") == near(2.0 / 3));
  // "答案是：北京。": the fullwidth colon and the ideographic full stop are dropped -> [答 案 是 北 京];
  // P = 2/5, R = 1 -> F = 0.8/1.4 = 4/7.
  CHECK(ev::qa_f1_zh("答案是：北京。", "北京") == near(4.0 / 7));
  // "GPT-4模型" -> [gpt 4 模 型] ('-' dropped, case folded) vs "gpt 4": P = 2/4, R = 1 -> 2/3.
  CHECK(ev::qa_f1_zh("GPT-4模型", "gpt 4") == near(2.0 / 3));
  // jieba keeps "3.5%" whole; normalised it is "35". "v1.2.3" -> v1.2 . 3 -> [v12, 3].
  CHECK(ev::qa_f1_zh("3.5%", "35") == near(1.0));
  CHECK(ev::qa_f1_zh("v1.2.3", "v12 3") == near(1.0));
  // LongBench's list has 》 but not 《: "《红楼梦》" -> [《 红 楼 梦] vs [红 楼 梦]: P = 3/4, R = 1 -> 6/7.
  CHECK(ev::qa_f1_zh("《红楼梦》", "红楼梦") == near(6.0 / 7));
  // Other scripts one code point per token, as jieba: "café" -> [caf, é] vs "caf" -> P = 1/2, R = 1 -> 2/3.
  CHECK(ev::qa_f1_zh("caf\xc3\xa9", "caf") == near(2.0 / 3));
  // Nothing left of the prediction -> 0.
  CHECK(ev::qa_f1_zh("。", "北京") == 0.0);
}

// ---------------------------------------------------------------------------------------------------- accuracy

TEST_CASE("accuracy: the prediction's first choice against the reference label", "[eval][accuracy]") {
  // Label "b" (from "B", "(B)", "B.", " b "): matches when the first choice starts with it, not followed by \w.
  for (const char* ref : {"B", "(B)", "B.", " b "}) {
    INFO("reference '" << ref << "'");
    CHECK(ev::accuracy("B", ref) == 1.0);
    CHECK(ev::accuracy("b) Paris", ref) == 1.0);
    CHECK(ev::accuracy("(B) Paris", ref) == 1.0);
    CHECK(ev::accuracy("**B**", ref) == 1.0);
    CHECK(ev::accuracy("  B.", ref) == 1.0);
    CHECK(ev::accuracy("Answer: B", ref) == 1.0);
    CHECK(ev::accuracy("The answer is (B).", ref) == 1.0);
    CHECK(ev::accuracy("The correct answer: b", ref) == 1.0);
    CHECK(ev::accuracy("Because of A", ref) == 0.0);  // "b" then "e": a word, not the label
    CHECK(ev::accuracy("BA", ref) == 0.0);
    CHECK(ev::accuracy("A or B", ref) == 0.0);         // only the first choice counts
    CHECK(ev::accuracy("Answer: A", ref) == 0.0);
    CHECK(ev::accuracy("Answers: B", ref) == 0.0);     // "answers" is not the preamble "answer"
    CHECK(ev::accuracy("", ref) == 0.0);
  }
  // Text answers: the same prefix rule.
  CHECK(ev::accuracy("Paris is the capital.", "Paris") == 1.0);
  CHECK(ev::accuracy("Parisian", "Paris") == 0.0);
  // A reference that begins like a preamble still matches itself before any preamble is skipped.
  CHECK(ev::accuracy("Answer", "answer") == 1.0);
  // An empty label scores 0 whatever the prediction.
  CHECK(ev::accuracy("", "") == 0.0);
  CHECK(ev::accuracy("()", "( )") == 0.0);
}

// ------------------------------------------------------------------------------------------------------- RULER

TEST_CASE("string_match_all / string_match_part: RULER's case-insensitive substring tests", "[eval][ruler]") {
  const std::vector<std::string> refs = {"Paris", "London"};
  // "paris" found, "london" not: all = 1/2, part = 1.
  CHECK(ev::string_match_all("The answer is PARIS.", refs) == near(0.5));
  CHECK(ev::string_match_part("The answer is PARIS.", refs) == 1.0);
  CHECK(ev::string_match_all("paris and london", refs) == near(1.0));
  CHECK(ev::string_match_all("", refs) == 0.0);
  CHECK(ev::string_match_part("", refs) == 0.0);
  // Three needles, two found: 2/3.
  const std::vector<std::string> needles = {"7421", "1234", "9999"};
  CHECK(ev::string_match_all("The numbers are 1234 and 7421.", needles) == near(2.0 / 3));
  // An empty reference is in every string (Python: "" in s).
  const std::vector<std::string> empty_ref = {""};
  CHECK(ev::string_match_all("anything", empty_ref) == 1.0);
  // Unicode lowercase: "ÉCOLE" is found in "une école".
  const std::vector<std::string> ecole = {"\xc3\x89" "COLE"};
  CHECK(ev::string_match_part("une \xc3\xa9" "cole", ecole) == 1.0);
  const std::vector<std::string> none;
  CHECK_THROWS_AS(ev::string_match_all("x", none), std::invalid_argument);
  CHECK_THROWS_AS(ev::string_match_part("x", none), std::invalid_argument);
}

// -------------------------------------------------------------------------------------------------------- BLEU

TEST_CASE("bleu: sacrebleu sentence BLEU with exp smoothing and effective order", "[eval][bleu]") {
  CHECK(ev::bleu("the cat sat on the mat", "the cat sat on the mat") == near(1.0));
  // hyp: the cat is on the mat; ref: the cat sat on the mat (6 tokens each, BP = 1).
  // p1 = 5/6 (the x2, cat, on, mat); p2 = 3/5 (the cat, on the, the mat); p3 = 1/4 (on the mat);
  // p4 = 0/3 -> exp smoothing 1/(2*3) = 1/6. BLEU = (5/6 * 3/5 * 1/4 * 1/6)^(1/4) = (1/48)^(1/4) = 0.379918...
  CHECK(ev::bleu("the cat is on the mat", "the cat sat on the mat") == near(std::pow(48.0, -0.25)));
  // hyp: a b c d; ref: a x b y. p1 = 2/4; p2 = 0/3 -> 1/(2*3); p3 = 0/2 -> 1/(4*2); p4 = 0/1 -> 1/(8*1).
  // BLEU = (1/2 * 1/6 * 1/8 * 1/8)^(1/4) = 768^(-1/4) = 0.189958...
  CHECK(ev::bleu("a b c d", "a x b y") == near(std::pow(768.0, -0.25)));
  // Effective order: "the cat" has no 3- or 4-grams, so the mean is over p1 = p2 = 1; BP = exp(1 - 6/2) = e^-2.
  CHECK(ev::bleu("the cat", "the cat sat on the mat") == near(std::exp(-2.0)));
  // No unigram match, or an empty hypothesis: 0.
  CHECK(ev::bleu("foo", "bar") == 0.0);
  CHECK(ev::bleu("", "bar") == 0.0);
  CHECK(ev::bleu("bar", "") == 0.0);
}

TEST_CASE("bleu: the 13a tokenizer", "[eval][bleu]") {
  // "Hello, world!" -> Hello , world ! (comma after a letter, '!' always split off) = the pre-split reference.
  CHECK(ev::bleu("Hello, world!", "Hello , world !") == near(1.0));
  // Case is kept: hello vs Hello. p1 = 3/4; p2 = 2/3 (", world", "world !"); p3 = 1/2; p4 = 0/1 -> 1/2.
  // BLEU = (3/4 * 2/3 * 1/2 * 1/2)^(1/4) = (1/8)^(1/4) = 2^(-3/4).
  CHECK(ev::bleu("hello, world!", "Hello , world !") == near(std::pow(2.0, -0.75)));
  // Digits: "3.14" stays whole, the comma after 4 is followed by a space and split, "2-3" -> 2 - 3.
  CHECK(ev::bleu("3.14, 2-3", "3.14 , 2 - 3") == near(1.0));
  // ... so "3.14" and "3 . 14" share no token.
  CHECK(ev::bleu("3.14", "3 . 14") == 0.0);
  // Entities are decoded, "-\n" joins, '\n' is a space, "<skipped>" goes.
  CHECK(ev::bleu("a &amp; b", "a & b") == near(1.0));
  CHECK(ev::bleu("co-\noperate now<skipped>", "cooperate now") == near(1.0));
  CHECK(ev::bleu("co-\noperate\nnow", "cooperate now") == near(1.0));
  // The text is right-stripped first, so a final "-\n" is not joined: [abc-] vs [abc] share nothing.
  CHECK(ev::bleu("abc-\n", "abc") == 0.0);
}

// ----------------------------------------------------------------------------------------------------- code_sim

TEST_CASE("code_sim: first code line, fuzz.ratio rounded to a percent", "[eval][code]") {
  // The fence and the comment are skipped: "x = a + b" equals the reference.
  CHECK(ev::code_sim("```python\n# add\nx = a + b\n```", "x = a + b") == 1.0);
  CHECK(ev::code_sim("// c\n#x\n`y`\nreturn 0;", "return 0;") == 1.0);
  // Leading newlines go; "y = a + b" vs "x = a + b": LCS 8 of 9 + 9 -> 16/18 = 88.9% -> 89 -> 0.89.
  CHECK(ev::code_sim("\n\ny = a + b", "x = a + b") == near(0.89));
  // Round half to even: LCS 1 of 8 + 8 -> 2/16 = 12.5% -> 12; LCS 3 -> 6/16 = 37.5% -> 38.
  CHECK(ev::code_sim("abcdefgh", "aXXXXXXX") == near(0.12));
  CHECK(ev::code_sim("abcdefgh", "abcXXXXX") == near(0.38));
  // Code points: "éa" vs "ea" -> LCS 1 of 2 + 2 = 50% (bytes would give 2/5).
  CHECK(ev::code_sim("\xc3\xa9" "a", "ea") == near(0.5));
  // A blank line is a line: the first line after the fence is "" -> 0 against a non-empty reference.
  CHECK(ev::code_sim("```\n\nx = 1", "x = 1") == 0.0);
  // No code line at all -> "" : 0 against a non-empty reference, 1 against an empty one (fuzz: equal -> 100).
  CHECK(ev::code_sim("# only a comment", "x") == 0.0);
  CHECK(ev::code_sim("# only a comment", "") == 1.0);
  CHECK(ev::code_sim("x", "") == 0.0);
  // Whitespace and case count.
  CHECK(ev::code_sim("  ab", "ab") == near(0.67));  // 2*2/6 = 66.7% -> 67
  CHECK(ev::code_sim("AB", "ab") == 0.0);
}

// -------------------------------------------------------------------------------------------- registry, score()

TEST_CASE("metric names round-trip and unknown names list the valid ones", "[eval][registry]") {
  const auto names = ev::metric_names();
  REQUIRE(names.size() == 12);
  CHECK(names.front() == "rouge1");
  CHECK(names.back() == "code_sim");
  for (std::size_t i = 0; i < names.size(); ++i) {
    const ev::Metric m = ev::metric_from_name(names[i]);
    CHECK(static_cast<std::size_t>(m) == i);
    CHECK(ev::metric_name(m) == names[i]);
  }
  CHECK(ev::metric_from_name("rougeLsum") == ev::Metric::rougeLsum);
  CHECK(ev::metric_from_name("string_match_part") == ev::Metric::string_match_part);
  CHECK_THROWS_AS(ev::metric_from_name("ROUGE1"), std::invalid_argument);  // case-sensitive
  CHECK_THROWS_WITH(ev::metric_from_name("f1"), Contains("'f1'") && Contains("rouge1, rouge2, rougeL, rougeLsum") &&
                                                    Contains("qa_f1_zh") && Contains("string_match_all") &&
                                                    Contains("code_sim"));
}

TEST_CASE("score: max over references, string_match_* over all of them", "[eval][score]") {
  const std::vector<std::string> refs = {"London", "Paris France"};
  // qa_f1: 0 against London; [paris] vs [paris france]: P = 1, R = 1/2 -> 2/3. Max = 2/3.
  CHECK(ev::score(ev::Metric::qa_f1, "Paris", refs) == near(2.0 / 3));
  CHECK(ev::score(ev::Metric::exact_match, "london", refs) == 1.0);
  CHECK(ev::score(ev::Metric::accuracy, "(B)", std::vector<std::string>{"A", "B"}) == 1.0);
  // string_match_all uses every reference: "paris" found, "london" not -> 1/2 (a max would give 1).
  const std::vector<std::string> needles = {"Paris", "London"};
  CHECK(ev::score(ev::Metric::string_match_all, "paris", needles) == near(0.5));
  CHECK(ev::score(ev::Metric::string_match_part, "paris", needles) == 1.0);
  // Each ROUGE variant picks its field; the stemmer flag is passed on.
  const std::vector<std::string> run = {"run"};
  CHECK(ev::score(ev::Metric::rouge1, "running", run, true) == near(1.0));
  CHECK(ev::score(ev::Metric::rouge1, "running", run, false) == 0.0);
  const std::vector<std::string> xy = {"x y"};
  CHECK(ev::score(ev::Metric::rougeL, "y\nx", xy) == near(0.5));
  CHECK(ev::score(ev::Metric::rougeLsum, "y\nx", xy) == near(1.0));
  CHECK(ev::score(ev::Metric::rouge2, "x y", xy) == near(1.0));
  // The rest dispatch to their functions.
  CHECK(ev::score(ev::Metric::qa_f1_zh, "北京大学", std::vector<std::string>{"上海", "北京"}) == near(2.0 / 3));
  CHECK(ev::score(ev::Metric::bleu, "the cat", std::vector<std::string>{"the cat sat on the mat", "the cat"}) ==
        near(1.0));
  CHECK(ev::score(ev::Metric::code_sim, "abcdefgh", std::vector<std::string>{"aXXXXXXX", "abcXXXXX"}) == near(0.38));
  // No reference: an error for every metric.
  const std::vector<std::string> none;
  for (std::string_view name : ev::metric_names()) {
    INFO(name);
    CHECK_THROWS_AS(ev::score(ev::metric_from_name(name), "x", none), std::invalid_argument);
  }
}
