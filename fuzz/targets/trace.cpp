// Trace files (simcalkv-trace safetensors): read_trace either returns a trace that validates, or refuses.
#include "common.hpp"

#include <simcalkv/io/trace.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static simcalkv::fuzz::Tally tally("trace");
  const auto& path = simcalkv::fuzz::input_file(data, size, ".trace");
  try {
    const simcalkv::io::Trace trace = simcalkv::io::read_trace(path);
    trace.validate();  // throws simcalkv::Error as well: an accepted trace must pass it
    ++tally.accepted;
  } catch (const simcalkv::Error&) {
    ++tally.refused;
  }
  return 0;
}
