// simcalkv: umbrella header. KV-cache compression by similarity-aware merging with bias
// calibration, for any host inference engine: simcalkv/core.hpp and the registry of every policy
// by name (make_policy). Lighter: simcalkv/core.hpp plus the policy headers a host uses.
#pragma once

#include "simcalkv/core.hpp"
#include "simcalkv/registry.hpp"
