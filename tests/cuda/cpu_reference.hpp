// The CPU library as the reference for the CUDA tests, behind a plain interface (no Eigen, no
// CUDA), so the reference compiles with the host compiler and the GPU test with nvcc.
#pragma once

#include <simcalkv/options.hpp>
#include <simcalkv/plan.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace ref {

enum class Elem { bf16, fp16 };
using Method = simcalkv::KernelMethod;  // the library's, as the GPU config uses it
using Pool = simcalkv::Pooling;   // the library's option enums (simcalkv/options.hpp)
using Bias = simcalkv::BiasMode;

struct Policy {
  Method method = Method::simcalkv;
  int sinks = 4;
  int recent = -1;
  Pool pooling = Pool::none;
  int pool_kernel = 7;
  bool exact = false;
  int radius = 64;
  float threshold = -std::numeric_limits<float>::infinity();
  Bias bias = Bias::bounded;
  bool merge_keys = true;
  bool adakv = false;
  double alpha = 0.2;
  double keep_fraction = 0.3;
};

/// One sequence (a KV head of a request): rows of 16-bit bits, [length][d].
struct Seq {
  std::vector<std::uint16_t> keys, values;
  std::vector<float> bias;
  std::vector<std::int32_t> pos;
  std::vector<float> scores;  // empty: no score buffer
  int length = 0;
};

/// One request of a layer: its KV heads and its window (queries [H * G][W][d] as float).
struct Request {
  std::vector<Seq> heads;
  std::vector<float> queries;
  std::vector<std::int32_t> window_pos;  // [W]
};

/// Everything a policy computes for one head before committing, for stage-wise comparisons.
struct Plan {
  std::vector<float> score, mass, inv_norm, sel;  // per entry (sel: the selection score)
  std::vector<std::uint32_t> keep, cand;           // ascending
  std::vector<std::int32_t> slot;                  // per candidate: kept slot or -1
  std::vector<float> similarity;                   // per candidate
};

float from_bits(Elem e, std::uint16_t bits);
std::uint16_t to_bits(Elem e, float x);

/// The CPU policy (with AdaKV when policy.adakv) on one request, in place. Returns false and
/// fills `error` if the CPU library threw.
bool compress(Elem e, int d, int group, int window, const Policy& policy, Request& request, std::string* error);

/// The per-head budgets the CPU policy uses (AdaKV's allocation, or the uniform rule).
std::vector<std::size_t> budgets(Elem e, int d, int group, int window, const Policy& policy, const Request& request);

/// The CPU kernels' intermediate results for head `head` with `budget` (no commit).
Plan plan_head(Elem e, int d, int group, int window, const Policy& policy, const Request& request, int head,
               std::size_t budget);

/// The CPU policy's plan of one request (its public plan(): AdaKV's budgets when policy.adakv),
/// flattened to the plain view the GPU shares (simcalkv/plan_view.hpp).
simcalkv::FlatLayerPlan layer_plan(Elem e, int d, int group, int window, const Policy& policy, const Request& request);

/// The plan of any registry policy `spec` ("H2O", "TOVA", "KeepKV", ...) keeping `keep_fraction`,
/// flattened; false and `error` filled if the library threw.
bool layer_plan(Elem e, int d, int group, int window, const std::string& spec, double keep_fraction,
                const Request& request, simcalkv::FlatLayerPlan* plan, std::string* error);

/// Every registry policy name.
std::vector<std::string> policy_names();

/// Applies a flattened plan to the request's heads (the compact layout); false and `error` if the
/// plan does not fit.
bool apply(Elem e, int d, const simcalkv::FlatLayerPlan& plan, Request& request, std::string* error);

/// CPU decode attention: queries [G][d] over the sequence, out [G][d].
void decode(Elem e, int d, int group, const Seq& seq, const float* queries, float* out);

}  // namespace ref
