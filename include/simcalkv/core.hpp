// simcalkv: the library without the policy registry -- containers, layouts, plans, stages, the
// kernels, the decode driver, and the SimCalKV and Full policies. Include a policy's own header
// (simcalkv/policies/snapkv.hpp, ...) for the others. It compiles in about half the time of
// simcalkv.hpp, whose registry (make_policy) brings every policy in; scripts/header_cost.sh measures it.
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
#include "simcalkv/paged_cache.hpp"
#include "simcalkv/numeric.hpp"
#include "simcalkv/plan.hpp"
#include "simcalkv/policies/full.hpp"
#include "simcalkv/policies/simcalkv.hpp"
#include "simcalkv/policy.hpp"
#include "simcalkv/stages.hpp"
#include "simcalkv/window.hpp"
