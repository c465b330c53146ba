// A seeded mutation driver for compilers without libFuzzer (GCC): runs a target's LLVMFuzzerTestOneInput on every
// file of the corpus folders given, then on mutations of them (bit flips, byte edits, insertions and deletions of
// runs, splices of two inputs, bytes from the dictionary of JSON punctuation) for -runs=N inputs or
// -max_total_time=S seconds, with -seed=K fixed so that a run can be repeated. Takes the libFuzzer flags it knows
// and ignores the others. A crash ends the run with the sanitizer's report; the same -seed reproduces it.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

std::vector<std::uint8_t> read(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void mutate(std::vector<std::uint8_t>& x, const std::vector<std::vector<std::uint8_t>>& corpus, std::mt19937_64& rng,
            std::size_t max_len) {
  static const char* const tokens[] = {"{", "}", "[", "]", ":", ",", "\"", "0", "-1", "1e309", "null", "true",
                                       "4294967301", "2147483647", "\\u0000", " ", "\n", "=", ";", "+", "%"};
  auto pick = [&](std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rng() % n); };
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    switch (rng() % 6) {
      case 0:
        if (!x.empty()) x[pick(x.size())] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        if (!x.empty()) x[pick(x.size())] = static_cast<std::uint8_t>(rng());
        break;
      case 2: {  // delete a run
        if (x.empty()) break;
        const std::size_t at = pick(x.size()), n = 1 + pick(std::min<std::size_t>(16, x.size() - at));
        x.erase(x.begin() + static_cast<std::ptrdiff_t>(at), x.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      case 3: {  // duplicate a run
        if (x.empty()) break;
        const std::size_t at = pick(x.size()), n = 1 + pick(std::min<std::size_t>(16, x.size() - at));
        std::vector<std::uint8_t> run(x.begin() + static_cast<std::ptrdiff_t>(at), x.begin() + static_cast<std::ptrdiff_t>(at + n));
        x.insert(x.begin() + static_cast<std::ptrdiff_t>(pick(x.size() + 1)), run.begin(), run.end());
        break;
      }
      case 4: {  // a dictionary token
        const char* t = tokens[pick(sizeof tokens / sizeof *tokens)];
        x.insert(x.begin() + static_cast<std::ptrdiff_t>(pick(x.size() + 1)), t, t + std::strlen(t));
        break;
      }
      default: {  // splice with another input
        const auto& other = corpus[pick(corpus.size())];
        if (other.empty()) break;
        const std::size_t cut = pick(x.size() + 1), from = pick(other.size());
        x.resize(cut);
        x.insert(x.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
      }
    }
  }
  if (x.size() > max_len) x.resize(max_len);
}

}  // namespace

int main(int argc, char** argv) {
  long long runs = -1;
  double seconds = 10;
  std::uint64_t seed = 1;
  std::size_t max_len = 1 << 20;
  std::vector<std::filesystem::path> dirs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* flag) { return a.substr(std::strlen(flag)); };
    if (a.rfind("-runs=", 0) == 0) runs = std::stoll(value("-runs="));
    else if (a.rfind("-max_total_time=", 0) == 0) seconds = std::stod(value("-max_total_time="));
    else if (a.rfind("-seed=", 0) == 0) seed = std::stoull(value("-seed="));
    else if (a.rfind("-max_len=", 0) == 0) max_len = std::stoull(value("-max_len="));
    else if (a[0] != '-') dirs.emplace_back(a);
  }
  std::vector<std::vector<std::uint8_t>> corpus;
  for (const auto& d : dirs) {
    if (std::filesystem::is_regular_file(d)) {
      corpus.push_back(read(d));
      continue;
    }
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(d))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) corpus.push_back(read(f));
  }
  if (corpus.empty()) corpus.push_back({});
  for (const auto& c : corpus) LLVMFuzzerTestOneInput(c.data(), c.size());
  std::mt19937_64 rng(seed);
  const auto t0 = std::chrono::steady_clock::now();
  long long n = 0;
  std::vector<std::uint8_t> x;
  while (runs < 0 ? std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds : n < runs) {
    x = corpus[static_cast<std::size_t>(rng() % corpus.size())];
    mutate(x, corpus, rng, max_len);
    LLVMFuzzerTestOneInput(x.data(), x.size());
    ++n;
  }
  std::fprintf(stderr, "#%lld DONE (seed %llu, %zu corpus inputs, %.1f s)\n", n + static_cast<long long>(corpus.size()),
               static_cast<unsigned long long>(seed), corpus.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}
