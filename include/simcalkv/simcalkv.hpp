// simcalkv: umbrella header. KV-cache compression by similarity-aware merging with bias
// calibration, for any host inference engine.
#pragma once

#include "simcalkv/any_policy.hpp"
#include "simcalkv/budget.hpp"
#include "simcalkv/decode_driver.hpp"
#include "simcalkv/error.hpp"
#include "simcalkv/executor.hpp"
#include "simcalkv/head_view.hpp"
#include "simcalkv/kernels/attention.hpp"
#include "simcalkv/kv_cache.hpp"
#include "simcalkv/layouts/compact.hpp"
#include "simcalkv/layouts/dense.hpp"
#include "simcalkv/layouts/paged.hpp"
#include "simcalkv/layouts/shared_cells.hpp"
#include "simcalkv/numeric.hpp"
#include "simcalkv/plan.hpp"
#include "simcalkv/policies/full.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policy.hpp"
#include "simcalkv/registry.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/window.hpp"
