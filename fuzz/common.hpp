// What every fuzz target shares: the input as a file (the parsers under test read paths), and a tally of the
// inputs accepted and refused, printed when the run ends. A target aborts when it accepts an input that breaks
// an invariant the parser promises (a silent acceptance), so that libFuzzer reports it like a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>

namespace simcalkv::fuzz {

struct Tally {
  const char* target;
  unsigned long long accepted = 0, refused = 0;
  explicit Tally(const char* name) : target(name) {}
  ~Tally() { std::fprintf(stderr, "%s: %llu inputs accepted, %llu refused with an error\n", target, accepted, refused); }
};

/// Writes the input to a per-process file (in /dev/shm when there is one) and returns its path.
inline const std::string& input_file(const std::uint8_t* data, std::size_t size, const char* suffix) {
  static const std::string path = [&] {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return std::string(dir) + "/simcalkv_fuzz_" + std::to_string(getpid()) + suffix;
  }();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

/// Aborts with `what` when an accepted input breaks an invariant.
inline void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "silent acceptance: %s\n", what);
    std::abort();
  }
}

}  // namespace simcalkv::fuzz
