// Tools: OpenMP threads that wait passively by default, so a tool stays fast on a shared machine.
#pragma once

#include <cstdlib>

#include <unistd.h>

namespace simcalkv::tools {

/// OpenMP threads that spin at barriers lose a whole scheduler slice at every parallel region when
/// the cores are shared with other jobs (measured: 25x slower decoding on a busy 2-core machine).
/// Passive waiting costs little on an idle machine, so it is the tools' default; libgomp reads the
/// setting when it loads, before main, hence the re-exec of the program with the variable set.
/// OMP_WAIT_POLICY in the environment (any value) keeps the user's choice. Call first in main.
inline void prefer_passive_openmp_wait([[maybe_unused]] char** argv) {
#ifdef _OPENMP
  if (!std::getenv("OMP_WAIT_POLICY") && ::setenv("OMP_WAIT_POLICY", "passive", 1) == 0) {
    ::execv("/proc/self/exe", argv);
    ::unsetenv("OMP_WAIT_POLICY");  // exec failed: go on as we are
  }
#endif
}

}  // namespace simcalkv::tools
