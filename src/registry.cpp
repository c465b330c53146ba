// The policy registry compiled once for the project's programs (the simcalkv_registry target, which
// gives them SIMCALKV_COMPILED_REGISTRY): every policy for every storage type is instantiated here,
// not again in each tool, test and example that builds policies by name.
#define SIMCALKV_REGISTRY_DEFINITION
#include "simcalkv/registry.hpp"
