// --split strings: parsed parts select ranges inside any split size, or a SplitError names the problem.
#include "common.hpp"

#include "split.hpp"

#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static simcalkv::fuzz::Tally tally("split");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto s = simcalkv::eval::parse_split(text);
    simcalkv::fuzz::expect(!s.parts.empty(), "no part");
    for (std::size_t i = 0; i < s.parts.size(); ++i)
      for (std::size_t n : {0u, 1u, 7u, 100u, 12345u}) {
        const auto r = s.range(i, n);
        simcalkv::fuzz::expect(r.first <= r.last && r.last <= n, "a range outside the split");
      }
    ++tally.accepted;
  } catch (const simcalkv::eval::SplitError&) {
    ++tally.refused;
  }
  return 0;
}
