// Dataset JSON lines as simcalkv-eval reads them (format detected from the first record): samples with unique ids
// and string prompts, or a DatasetError naming the line.
#include "common.hpp"

#include "datasets.hpp"
#include "split.hpp"

#include <set>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static simcalkv::fuzz::Tally tally("dataset_rows");
  static const auto split = simcalkv::eval::parse_split("test[:4]");
  const auto& path = simcalkv::fuzz::input_file(data, size, ".jsonl");
  try {
    const auto sets = simcalkv::eval::resolve_datasets(path, split, {});
    std::set<std::string> ids;
    for (const auto& ds : sets)
      for (const auto& s : ds.samples) {
        simcalkv::fuzz::expect(ids.insert(s.id).second, "two samples share an id");
        simcalkv::fuzz::expect(!s.references.empty(), "a sample without a reference");
      }
    ++tally.accepted;
  } catch (const simcalkv::eval::DatasetError&) {
    ++tally.refused;
  }
  return 0;
}
