// GPU against CPU: the CUDA kernels under include/simcalkv/cuda/ compared with the CPU library
// (the reference implementation) on the same inputs, stage by stage, for odd lengths, head dims
// 64 and 128, group sizes 1 to 8, bf16 and fp16, float and 16-bit window queries, the ragged and
// both paged layouts, every GPU policy and bias mode; decode attention likewise; and the
// tensor-parallel property: compressing each head shard on its own equals compressing the layer.
//
//   test_cuda [--json FILE] [--quick]
//
// Exit status 0 when every case passes. Selection or assignment may legitimately differ from the
// CPU where two candidates tie to within float rounding (different summation order); such a
// "near tie" is counted and reported, never silently passed: the case records the CPU's own
// margin at the differing entries.
#include "test_support.cuh"

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>

using namespace tsupport;
namespace sc = simcalkv::cuda;

namespace {

struct Result {
  std::string group, name;
  bool pass = true;
  std::vector<std::string> notes;
  std::map<std::string, double> metrics;
  void fail(const std::string& why) {
    pass = false;
    if (notes.size() < 8) notes.push_back(why);
  }
  void note(const std::string& what) {
    if (notes.size() < 8) notes.push_back(what);
  }
  void max_metric(const std::string& k, double v) {
    auto it = metrics.find(k);
    if (it == metrics.end() || v > it->second) metrics[k] = v;
  }
  void add_metric(const std::string& k, double v) { metrics[k] += v; }
};

std::vector<Result> g_results;

const char* elem_name(ref::Elem e) { return e == ref::Elem::bf16 ? "bf16" : "fp16"; }

sc::PolicyConfig gpu_config(const ref::Policy& p) {
  sc::PolicyConfig c;
  c.method = p.method;  // one enum on both sides
  c.sink_tokens = p.sinks;
  c.recent_tokens = p.recent;
  c.pooling = p.pooling;
  c.pool_kernel = p.pool_kernel;
  c.search = p.exact ? sc::Search::exact : sc::Search::local;
  c.search_radius = p.radius;
  c.similarity_threshold = p.threshold;
  c.bias = p.bias;
  c.merge_keys = p.merge_keys;
  c.adakv = p.adakv;
  c.adakv_alpha = p.alpha;
  return c;
}

double ulps(ref::Elem e, std::uint16_t a, std::uint16_t b) {
  if (a == b) return 0.0;
  const float fa = ref::from_bits(e, a), fb = ref::from_bits(e, b);
  if (std::isnan(fa) || std::isnan(fb)) return 1e30;
  int ex = 0;
  std::frexp(std::max(std::fabs(fb), e == ref::Elem::bf16 ? 1e-30f : 6.1e-5f), &ex);
  const double ulp = std::ldexp(1.0, ex - 1 - (e == ref::Elem::bf16 ? 7 : 10));
  return std::fabs(static_cast<double>(fa) - fb) / ulp;
}

float cosine(const ref::Seq& s, int d, ref::Elem e, int a, int b) {
  double dot = 0, na = 0, nb = 0;
  for (int i = 0; i < d; ++i) {
    const double x = ref::from_bits(e, s.keys[static_cast<std::size_t>(a) * d + i]);
    const double y = ref::from_bits(e, s.keys[static_cast<std::size_t>(b) * d + i]);
    dot += x * y, na += x * x, nb += y * y;
  }
  return static_cast<float>(dot / std::sqrt(na * nb + 1e-300));
}

/// The sizes of a compression call over L.
sc::CompressShape shape_of(const HostLayer& L) {
  sc::CompressShape shape;
  shape.num_seqs = L.num_seqs();
  shape.num_kv_heads = L.H;
  shape.head_dim = L.d;
  shape.window_tokens = L.W;
  shape.group = L.G;
  shape.max_length = L.max_len();
  shape.total_length = L.total_len();
  return shape;
}

/// Intermediate arrays of the GPU compression, read from its workspace.
struct GpuStages {
  std::vector<std::int32_t> ws_off, budgets, order, vals, evicted;
  std::vector<std::uint32_t> keys, sel_key;
  std::vector<float> mass, score, inv_norm;
  std::uint32_t sentinel = 0;
};

template <class T, class Q, class Layout>
GpuStages run_gpu(DeviceLayer<T>& D, const HostLayer& L, const ref::Policy& pol, const Layout& layout,
                  double* ms = nullptr, const std::vector<std::int32_t>* budgets = nullptr) {
  const sc::PolicyConfig cfg = gpu_config(pol);
  DeviceBuffer<std::int32_t> explicit_budgets;
  if (budgets) explicit_budgets.upload(*budgets);
  const sc::CompressShape shape = shape_of(L);
  const std::size_t bytes = sc::compress_workspace_bytes<T, Q>(shape, cfg);
  DeviceBuffer<unsigned char> ws(bytes);
  CHECK_CUDA(cudaMemset(ws.ptr, 0xcd, bytes));  // poison
  const auto kv = D.kv(layout);
  const auto window = D.template window<Q>(L);
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  CHECK_CUDA(cudaEventRecord(e0));
  CHECK_CUDA(sc::compress_layer(kv, window, cfg, sc::BudgetRule{sc::BudgetKind::keep_fraction, pol.keep_fraction},
                                budgets ? explicit_budgets.ptr : nullptr, shape, ws.ptr, bytes));
  CHECK_CUDA(cudaEventRecord(e1));
  CHECK_CUDA(cudaDeviceSynchronize());
  float elapsed = 0;
  CHECK_CUDA(cudaEventElapsedTime(&elapsed, e0, e1));
  if (ms) *ms = elapsed;
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));

  GpuStages g;
  const auto plan = sc::detail::make_plan<T, Q>(shape, cfg);
  sc::detail::Carver carver(ws.ptr);
  const auto b = sc::detail::carve<T>(carver, shape, plan);
  const std::size_t S = static_cast<std::size_t>(shape.num_seqs), N = static_cast<std::size_t>(shape.total_length);
  g.ws_off = download(b.ws_off, S + 1);
  g.budgets = download(b.budgets, S);
  g.order = download(b.order, N);
  g.sel_key = download(b.sel_key, N);
  if (plan.scored) {
    g.mass = download(b.mass, N);
    const auto parts = download(b.score_part, static_cast<std::size_t>(plan.groups) * N);
    g.score.assign(N, 0.0f);
    for (int gr = 0; gr < plan.groups; ++gr)
      for (std::size_t i = 0; i < N; ++i) g.score[i] += parts[gr * N + i];
  }
  if (plan.merged) {
    g.inv_norm = download(b.inv_norm, N);
    g.keys = download(b.keys_in, N);
    g.vals = download(b.vals_in, N);
    g.evicted = download(b.evicted, S);
  }
  g.sentinel = plan.sentinel;
  return g;
}

template <class T, class Q>
HostLayer gpu_compress(const HostLayer& L, const ref::Policy& pol, LayoutKind kind, GpuStages* stages,
                       double* ms = nullptr, const std::vector<std::int32_t>* budgets = nullptr) {
  DeviceLayer<T> D = upload<T>(L, kind, 1234);
  GpuStages g = kind == LayoutKind::ragged ? run_gpu<T, Q>(D, L, pol, D.ragged(), ms, budgets)
                                           : run_gpu<T, Q>(D, L, pol, D.paged(), ms, budgets);
  if (stages) *stages = std::move(g);
  return download(D, L);
}

HostLayer gpu_compress_any(const HostLayer& L, const ref::Policy& pol, LayoutKind kind, bool float_q,
                           GpuStages* stages, double* ms = nullptr,
                           const std::vector<std::int32_t>* budgets = nullptr) {
  if (L.elem == ref::Elem::bf16)
    return float_q ? gpu_compress<sc::bf16, float>(L, pol, kind, stages, ms, budgets)
                   : gpu_compress<sc::bf16, sc::bf16>(L, pol, kind, stages, ms, budgets);
  return float_q ? gpu_compress<sc::fp16, float>(L, pol, kind, stages, ms, budgets)
                 : gpu_compress<sc::fp16, sc::fp16>(L, pol, kind, stages, ms, budgets);
}

/// Compares two compressed layers entry by entry; `exact` demands identical bits.
void compare_layers(const HostLayer& got, const HostLayer& want, const std::vector<char>& skip, bool exact, Result& r,
                    double bias_tol = 2e-3) {
  const int d = want.d;
  for (int s = 0; s < want.num_seqs(); ++s) {
    if (!skip.empty() && skip[s]) continue;
    const ref::Seq& a = got.seq(s);
    const ref::Seq& b = want.seq(s);
    if (a.length != b.length) {
      r.fail("seq " + std::to_string(s) + ": length " + std::to_string(a.length) + " vs " + std::to_string(b.length));
      continue;
    }
    double worst = 0, worst_row = 0, bias_err = 0, score_err = 0;
    long mismatched = 0;
    // A merged value is a weighted mean: where it cancels to a small number its own ulp is tiny,
    // so rounding differences are measured in ulps of the row's largest element (row_ulps) and, for
    // information, of the element itself (element_ulps).
    auto row_error = [&](const std::vector<std::uint16_t>& x, const std::vector<std::uint16_t>& y, int j) {
      double big = 0, err = 0;
      for (int i = 0; i < d; ++i) {
        const double v = ref::from_bits(want.elem, y[static_cast<std::size_t>(j) * d + i]);
        const double u = ref::from_bits(want.elem, x[static_cast<std::size_t>(j) * d + i]);
        big = std::max(big, std::fabs(v));
        err = std::max(err, std::isnan(u) ? 1e30 : std::fabs(u - v));
      }
      int ex = 0;
      std::frexp(std::max(big, 1e-30), &ex);
      return err / std::ldexp(1.0, ex - 1 - (want.elem == ref::Elem::bf16 ? 7 : 10));
    };
    for (int j = 0; j < b.length; ++j) {
      if (a.pos[j] != b.pos[j]) {
        r.fail("seq " + std::to_string(s) + ": position of entry " + std::to_string(j) + " is " +
               std::to_string(a.pos[j]) + ", expected " + std::to_string(b.pos[j]));
        break;
      }
      for (int i = 0; i < d; ++i) {
        const std::size_t at = static_cast<std::size_t>(j) * d + i;
        const double u = std::max(ulps(want.elem, a.keys[at], b.keys[at]), ulps(want.elem, a.values[at], b.values[at]));
        if (u > 0) ++mismatched;
        worst = std::max(worst, u);
      }
      worst_row = std::max({worst_row, row_error(a.keys, b.keys, j), row_error(a.values, b.values, j)});
      const float ba = a.bias[j], bb = b.bias[j];
      if (!(ba == bb)) {
        const double e = (std::isinf(ba) || std::isinf(bb) || std::isnan(ba)) ? 1e30 : std::fabs(ba - bb);
        bias_err = std::max(bias_err, e);
      }
      if (!b.scores.empty()) score_err = std::max(score_err, std::fabs(static_cast<double>(a.scores[j]) - b.scores[j]) /
                                                                 (std::fabs(b.scores[j]) + 1e-6));
    }
    r.max_metric("value_element_ulps_max", worst);
    r.max_metric("value_row_ulps_max", worst_row);
    r.add_metric("value_elements_differing", static_cast<double>(mismatched));
    r.max_metric("bias_abs_err_max", bias_err);
    if (!b.scores.empty()) r.max_metric("score_rel_err_max", score_err);
    if (exact && (worst > 0 || bias_err > 0 || score_err > 0))
      r.fail("seq " + std::to_string(s) + ": not bit-identical (ulps " + std::to_string(worst) + ", bias " +
             std::to_string(bias_err) + ")");
    if (!exact && worst_row > 2.0)
      r.fail("seq " + std::to_string(s) + ": keys/values differ by " + std::to_string(worst_row) + " ulps of the row's largest element");
    if (!exact && bias_err > bias_tol) r.fail("seq " + std::to_string(s) + ": bias differs by " + std::to_string(bias_err));
    if (!exact && score_err > 1e-4) r.fail("seq " + std::to_string(s) + ": accumulated score differs by " + std::to_string(score_err));
  }
}

/// GPU against CPU for one layer and policy.
Result check_compress(const std::string& group, const std::string& name, const HostLayer& L, const ref::Policy& pol,
                      LayoutKind kind, bool float_q) {
  std::fprintf(stderr, "[run] %s\n", name.c_str());
  Result r;
  r.group = group;
  r.name = name;
  // CPU reference.
  HostLayer cpu = L;
  std::vector<std::vector<std::size_t>> cpu_budgets;
  for (auto& req : cpu.reqs) {
    std::string error;
    cpu_budgets.push_back(ref::budgets(L.elem, L.d, L.G, L.W, pol, req));
    if (!ref::compress(L.elem, L.d, L.G, L.W, pol, req, &error)) {
      r.fail("the CPU policy threw: " + error);
      return r;
    }
  }
  GpuStages g;
  const HostLayer gpu = gpu_compress_any(L, pol, kind, float_q, &g);
  const bool scored = pol.method != ref::Method::streaming_llm;
  const bool merged = pol.method == ref::Method::simcalkv;
  std::vector<char> skip(static_cast<std::size_t>(L.num_seqs()), 0);
  int near_ties = 0;
  double mass_err = 0, score_err = 0, inv_err = 0;
  for (int s = 0; s < L.num_seqs(); ++s) {
    const int b = s / L.H, h = s % L.H;
    const ref::Seq& seq = L.seq(s);
    const int n = seq.length;
    const std::size_t B = cpu_budgets[b][h];
    const std::int64_t off = g.ws_off[s];
    if (static_cast<std::size_t>(g.budgets[s]) != B) {
      // AdaKV budgets can move by one across heads when two scores tie to within rounding.
      r.fail("seq " + std::to_string(s) + ": budget " + std::to_string(g.budgets[s]) + " vs CPU " + std::to_string(B));
      skip[s] = 1;
      continue;
    }
    const ref::Plan plan = ref::plan_head(L.elem, L.d, L.G, L.W, pol, L.reqs[b], h, B);
    // The CPU policy scores only heads that lose entries; identity heads compare their final state.
    if (scored && B < static_cast<std::size_t>(n)) {
      double mx = 0, sx = 0;
      for (int j = 0; j < n; ++j) mx = std::max(mx, static_cast<double>(plan.mass[j])), sx = std::max(sx, static_cast<double>(plan.score[j]));
      for (int j = 0; j < n; ++j) {
        mass_err = std::max(mass_err, std::fabs(g.mass[off + j] - plan.mass[j]) / (std::fabs(plan.mass[j]) + 1e-6 * mx));
        score_err = std::max(score_err, std::fabs(g.score[off + j] - plan.score[j]) / (std::fabs(plan.score[j]) + 1e-6 * sx));
        if (merged) inv_err = std::max(inv_err, std::fabs(g.inv_norm[off + j] - plan.inv_norm[j]) / (plan.inv_norm[j] + 1e-30));
      }
    }
    // Selection.
    if (B < static_cast<std::size_t>(n)) {
      std::vector<std::uint32_t> keep(g.order.begin() + off, g.order.begin() + off + static_cast<std::int64_t>(B));
      if (keep != plan.keep) {
        // Near tie? The CPU's threshold score against the differing entries' scores.
        bool tie = scored;
        if (scored) {
          float thr = std::numeric_limits<float>::infinity();
          for (auto j : plan.keep) {
            const bool prot = static_cast<int>(j) < pol.sinks || static_cast<int>(j) + (pol.recent >= 0 ? pol.recent : L.W) >= n;
            if (!prot) thr = std::min(thr, plan.sel[j]);
          }
          std::vector<std::uint32_t> diff;
          std::set_symmetric_difference(keep.begin(), keep.end(), plan.keep.begin(), plan.keep.end(), std::back_inserter(diff));
          for (auto j : diff)
            if (std::fabs(plan.sel[j] - thr) > 1e-4f * thr + 1e-12f) tie = false;
        }
        if (tie) {
          ++near_ties;
          r.note("seq " + std::to_string(s) + ": selection differs at a near tie");
        } else {
          r.fail("seq " + std::to_string(s) + ": selection differs from the CPU's");
        }
        skip[s] = 1;
        continue;
      }
    }
    // Assignment.
    if (merged && B < static_cast<std::size_t>(n)) {
      bool flip = false;
      int evicted = 0;
      for (std::size_t c = 0; c < plan.cand.size(); ++c) {
        const std::uint32_t key = g.keys[off + B + c];
        const int gs = key == g.sentinel ? -1 : static_cast<int>(key - off);
        evicted += gs < 0;
        if (gs == plan.slot[c]) continue;
        const int e = static_cast<int>(plan.cand[c]);
        const float sg = gs >= 0 ? cosine(seq, L.d, L.elem, e, static_cast<int>(plan.keep[gs])) : -2.0f;
        const float sc_ = plan.slot[c] >= 0 ? cosine(seq, L.d, L.elem, e, static_cast<int>(plan.keep[plan.slot[c]])) : -2.0f;
        const bool threshold_tie = (gs < 0 || plan.slot[c] < 0) && std::fabs(std::max(sg, sc_) - pol.threshold) < 1e-4f;
        if (std::fabs(sg - sc_) < 1e-4f || threshold_tie) {
          flip = true;
        } else {
          r.fail("seq " + std::to_string(s) + ": candidate " + std::to_string(c) + " goes to slot " + std::to_string(gs) +
                 " (cos " + std::to_string(sg) + "), CPU slot " + std::to_string(plan.slot[c]) + " (cos " +
                 std::to_string(sc_) + ")");
          skip[s] = 1;
          break;
        }
      }
      if (evicted != g.evicted[s]) r.fail("seq " + std::to_string(s) + ": evicted count mismatch");
      if (flip && !skip[s]) {
        ++near_ties;
        r.note("seq " + std::to_string(s) + ": assignment differs at a near tie");
        skip[s] = 1;
      }
    }
  }
  if (scored) {
    r.metrics["mass_rel_err_max"] = mass_err;
    r.metrics["score_rel_err_max"] = score_err;
    if (float_q ? (mass_err > 2e-3 || score_err > 2e-3) : (mass_err > 1e-4 || score_err > 1e-4))
      r.fail("window scores differ from the CPU's");
  }
  if (merged) {
    r.metrics["inv_norm_rel_err_max"] = inv_err;
    if (inv_err > 1e-5) r.fail("key norms differ from the CPU's");
  }
  r.metrics["near_ties"] = near_ties;
  r.metrics["seqs"] = L.num_seqs();
  compare_layers(gpu, cpu, skip, false, r);
  return r;
}

ref::Policy policy(ref::Method m) {
  ref::Policy p;
  p.method = m;
  if (m == ref::Method::snapkv) p.pooling = ref::Pool::max;
  return p;
}

HostLayer sub_layer(const HostLayer& L, int h0, int hs) {
  HostLayer out = L;
  out.H = hs;
  for (std::size_t b = 0; b < L.reqs.size(); ++b) {
    auto& r = out.reqs[b];
    r.heads.assign(L.reqs[b].heads.begin() + h0, L.reqs[b].heads.begin() + h0 + hs);
    const std::size_t per_head = static_cast<std::size_t>(L.W) * L.d;
    r.queries.assign(L.reqs[b].queries.begin() + static_cast<std::ptrdiff_t>(h0 * L.G * per_head),
                     L.reqs[b].queries.begin() + static_cast<std::ptrdiff_t>((h0 + hs) * L.G * per_head));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

void compress_matrix(bool quick) {
  // Element type x head dim x group size, rotating layouts, window sizes and query types.
  const int windows[] = {32, 7, 16, 5};
  const LayoutKind layouts[] = {LayoutKind::ragged, LayoutKind::paged_per_head, LayoutKind::paged_shared};
  int k = 0;
  for (ref::Elem e : {ref::Elem::bf16, ref::Elem::fp16})
    for (int d : {64, 128})
      for (int G = 1; G <= 8; ++G, ++k) {
        if (quick && G % 3 != 1) continue;
        const int W = windows[k % 4];
        const LayoutKind lay = layouts[k % 3];
        const bool float_q = k % 2 == 1;
        const int H = 2 + k % 3;
        const HostLayer L = make_layer(e, d, H, G, W, 1 + k % 2, 301 + 37 * (k % 5), 100 + k, float_q, k % 4 == 0);
        ref::Policy p = policy(ref::Method::simcalkv);
        std::ostringstream name;
        name << "SimCalKV " << elem_name(e) << " d" << d << " G" << G << " W" << W << " H" << H << " "
             << layout_name(lay) << (float_q ? " f32-queries" : " 16-bit-queries");
        g_results.push_back(check_compress("agreement: types x head dims x groups", name.str(), L, p, lay, float_q));
      }
}

void policy_matrix(bool quick) {
  struct V {
    std::string name;
    ref::Policy p;
  };
  std::vector<V> variants;
  auto add = [&](const std::string& n, ref::Policy p) { variants.push_back({n, p}); };
  add("StreamingLLM", policy(ref::Method::streaming_llm));
  add("SnapKV max-pool", policy(ref::Method::snapkv));
  {
    auto p = policy(ref::Method::snapkv);
    p.pooling = ref::Pool::avg;
    p.pool_kernel = 5;
    add("SnapKV avg-pool k5", p);
  }
  {
    auto p = policy(ref::Method::snapkv);
    p.pooling = ref::Pool::none;
    p.sinks = 0;
    p.recent = 3;
    add("SnapKV no-pool sinks0 recent3", p);
  }
  add("SimCalKV bounded", policy(ref::Method::simcalkv));
  for (auto [n, b] : {std::pair{"calibrated", ref::Bias::calibrated}, {"log_count", ref::Bias::log_count}, {"none", ref::Bias::none}}) {
    auto p = policy(ref::Method::simcalkv);
    p.bias = b;
    add(std::string("SimCalKV ") + n, p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.merge_keys = false;
    add("SimCalKV keep-keys", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.threshold = 0.35f;
    add("SimCalKV threshold 0.35", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.radius = 5;
    add("SimCalKV radius 5", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.exact = true;
    add("SimCalKV exact", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.pooling = ref::Pool::max;
    p.keep_fraction = 0.1;
    p.recent = 8;
    add("SimCalKV max-pool keep 0.1 recent 8", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.keep_fraction = 0.6;
    add("SimCalKV keep 0.6", p);
  }
  {
    auto p = policy(ref::Method::snapkv);
    p.adakv = true;
    add("AdaKV+SnapKV", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.adakv = true;
    add("AdaKV+SimCalKV", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.adakv = true;
    p.exact = true;
    p.alpha = 0.5;
    add("AdaKV+SimCalKV exact alpha 0.5", p);
  }
  {
    auto p = policy(ref::Method::simcalkv);
    p.keep_fraction = 1.0;
    add("SimCalKV keep 1.0 (identity)", p);
  }
  int k = 0;
  for (const auto& v : variants) {
    for (LayoutKind lay : {LayoutKind::ragged, LayoutKind::paged_per_head, LayoutKind::paged_shared}) {
      if (quick && lay != LayoutKind::ragged) continue;
      const bool float_q = (k++ % 2) == 1;
      const HostLayer L = make_layer(ref::Elem::bf16, 128, 4, 4, 32, 2, 700 + 3 * k, 500 + k, float_q, true);
      g_results.push_back(check_compress("agreement: policies x layouts", v.name + " " + layout_name(lay), L, v.p, lay,
                                         float_q));
    }
  }
  // Long sequences: many score splits, compaction chunks and several row groups (G 8, W 32).
  if (!quick) {
    const HostLayer L = make_layer(ref::Elem::bf16, 128, 4, 8, 32, 1, 6007, 900, false, false);
    for (bool exact : {false, true}) {
      auto p = policy(ref::Method::simcalkv);
      p.exact = exact;
      p.keep_fraction = 0.25;
      g_results.push_back(check_compress("agreement: long sequences", std::string("SimCalKV n~6000 G8 W32 ") + (exact ? "exact" : "local"),
                                         L, p, LayoutKind::ragged, false));
    }
    const HostLayer L2 = make_layer(ref::Elem::fp16, 64, 2, 2, 32, 2, 4099, 901, true, false);
    g_results.push_back(check_compress("agreement: long sequences", "SnapKV n~4100 fp16 d64", L2, policy(ref::Method::snapkv),
                                       LayoutKind::paged_per_head, true));
  }
}

/// Tensor parallelism: each head shard compressed on its own (its own buffers and window rows, as
/// on its own GPU) gives the same bits as compressing the whole layer; AdaKV instead reallocates
/// within the shard and then equals the CPU's AdaKV run on that shard.
void shard_tests(bool quick) {
  const HostLayer L = make_layer(ref::Elem::bf16, 128, 8, 4, 32, 2, 1501, 4242, false, true);
  struct V {
    std::string name;
    ref::Policy p;
  };
  std::vector<V> per_head = {{"StreamingLLM", policy(ref::Method::streaming_llm)},
                             {"SnapKV", policy(ref::Method::snapkv)},
                             {"SimCalKV local", policy(ref::Method::simcalkv)}};
  {
    auto p = policy(ref::Method::simcalkv);
    p.exact = true;
    per_head.push_back({"SimCalKV exact", p});
  }
  for (const auto& v : per_head) {
    const HostLayer whole = gpu_compress_any(L, v.p, LayoutKind::ragged, false, nullptr);
    for (int shards : {2, 4, 8}) {
      if (quick && shards != 2) continue;
      Result r;
      r.group = "tensor parallel: shard = whole layer";
      r.name = v.name + ", " + std::to_string(shards) + " shards of " + std::to_string(8 / shards) + " heads";
      const int hs = 8 / shards;
      for (int sh = 0; sh < shards; ++sh) {
        const HostLayer part = sub_layer(L, sh * hs, hs);
        const HostLayer got = gpu_compress_any(part, v.p, LayoutKind::ragged, false, nullptr);
        const HostLayer want = sub_layer(whole, sh * hs, hs);
        compare_layers(got, want, {}, true, r);
      }
      g_results.push_back(r);
    }
  }
  // AdaKV: per shard it equals the CPU's AdaKV on the shard; report how budgets move.
  for (ref::Method m : {ref::Method::snapkv, ref::Method::simcalkv}) {
    auto p = policy(m);
    p.adakv = true;
    const std::string pname = m == ref::Method::snapkv ? "AdaKV+SnapKV" : "AdaKV+SimCalKV";
    for (int shards : {2, 4}) {
      const int hs = 8 / shards;
      for (int sh = 0; sh < shards; ++sh) {
        const HostLayer part = sub_layer(L, sh * hs, hs);
        Result r = check_compress("tensor parallel: AdaKV per shard = CPU AdaKV on the shard",
                                  pname + ", shard " + std::to_string(sh) + " of " + std::to_string(shards), part, p,
                                  LayoutKind::ragged, false);
        // Budget movement against the whole layer's allocation (CPU), request 0.
        const auto whole_b = ref::budgets(L.elem, L.d, L.G, L.W, p, L.reqs[0]);
        const auto part_b = ref::budgets(L.elem, L.d, L.G, L.W, p, part.reqs[0]);
        long whole_sum = 0, part_sum = 0, moved = 0;
        for (int h = 0; h < hs; ++h) {
          whole_sum += static_cast<long>(whole_b[sh * hs + h]);
          part_sum += static_cast<long>(part_b[h]);
          moved += std::labs(static_cast<long>(whole_b[sh * hs + h]) - static_cast<long>(part_b[h]));
        }
        r.metrics["shard_budget_sum"] = static_cast<double>(part_sum);
        r.metrics["same_heads_budget_sum_in_whole_layer"] = static_cast<double>(whole_sum);
        r.metrics["entries_moved_vs_whole_layer"] = static_cast<double>(moved);
        g_results.push_back(r);
      }
    }
  }
  // Global AdaKV: the whole layer's budgets (what the ranks get from gathering every head's scores:
  // the CPU's AdaKV allocation of the whole request, equal to simcalkv::global_budgets there)
  // passed to each shard as explicit budgets, AdaKV off, equal the whole layer's GPU AdaKV bit for bit.
  for (ref::Method m : {ref::Method::snapkv, ref::Method::simcalkv}) {
    auto p = policy(m);
    p.adakv = true;
    const std::string pname = m == ref::Method::snapkv ? "AdaKV+SnapKV" : "AdaKV+SimCalKV";
    const HostLayer whole = gpu_compress_any(L, p, LayoutKind::ragged, false, nullptr);
    std::vector<std::vector<std::size_t>> layer_budgets;
    for (const auto& req : L.reqs) layer_budgets.push_back(ref::budgets(L.elem, L.d, L.G, L.W, p, req));
    auto inner = p;
    inner.adakv = false;
    for (int shards : {2, 4}) {
      Result r;
      r.group = "tensor parallel: global AdaKV (gathered budgets) = whole-layer AdaKV";
      r.name = pname + ", " + std::to_string(shards) + " shards";
      const int hs = 8 / shards;
      long moved = 0;
      for (int sh = 0; sh < shards; ++sh) {
        const HostLayer part = sub_layer(L, sh * hs, hs);
        std::vector<std::int32_t> budgets;  // per sequence of the shard: request b, head h
        for (std::size_t b = 0; b < L.reqs.size(); ++b) {
          long share = 0, got = 0;
          for (int h = 0; h < hs; ++h) {
            budgets.push_back(static_cast<std::int32_t>(layer_budgets[b][static_cast<std::size_t>(sh * hs + h)]));
            got += budgets.back();
            share += std::lround(p.keep_fraction * L.reqs[b].heads[static_cast<std::size_t>(sh * hs + h)].length);
          }
          moved += std::labs(got - share);
        }
        const HostLayer got = gpu_compress_any(part, inner, LayoutKind::ragged, false, nullptr, nullptr, &budgets);
        compare_layers(got, sub_layer(whole, sh * hs, hs), {}, true, r);
      }
      r.metrics["entries_moved_between_shards"] = static_cast<double>(moved);
      if (moved == 0) r.fail("AdaKV moved nothing between shards: the case tests nothing");
      g_results.push_back(r);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One plan type on both sides (simcalkv/plan_view.hpp): the GPU's recorded plan against the CPU
// policy's LayerPlan, and CPU plans of every registry policy applied by the GPU's apply_plan.

/// Runs compress_layer with plan_out on `kv` and returns the recorded plan, on the host.
template <class T, class Layout>
simcalkv::FlatLayerPlan gpu_recorded_plan(DeviceLayer<T>& D, const HostLayer& L, const ref::Policy& pol,
                                          const Layout& layout) {
  const sc::PolicyConfig cfg = gpu_config(pol);
  const sc::CompressShape shape = shape_of(L);
  const std::size_t S = static_cast<std::size_t>(shape.num_seqs), N = static_cast<std::size_t>(shape.total_length);
  const std::size_t d = static_cast<std::size_t>(L.d);
  const std::size_t bytes = sc::compress_workspace_bytes<T, float>(shape, cfg);
  DeviceBuffer<unsigned char> ws(bytes);
  DeviceBuffer<std::int32_t> first(S), kept(S), keep(N), row_of_slot(N);
  DeviceBuffer<std::uint8_t> updates(N);
  DeviceBuffer<float> rk(N * d), rv(N * d), rb(N), rs(N);
  CHECK_CUDA(cudaMemset(row_of_slot.ptr, 0xff, N * sizeof(std::int32_t)));
  simcalkv::LayerPlanBuffers out{shape.num_seqs, L.d, first.ptr, kept.ptr, keep.ptr, row_of_slot.ptr,
                                 updates.ptr,    rk.ptr, rv.ptr,  rb.ptr,   rs.ptr};
  CHECK_CUDA(sc::compress_layer(D.kv(layout), D.template window<float>(L), cfg,
                                sc::BudgetRule{sc::BudgetKind::keep_fraction, pol.keep_fraction}, nullptr, shape,
                                ws.ptr, bytes, nullptr, nullptr, &out));
  CHECK_CUDA(cudaDeviceSynchronize());
  simcalkv::FlatLayerPlan f;
  f.head_dim = L.d;
  f.first_slot = download(first.ptr, S);
  f.kept = download(kept.ptr, S);
  f.keep = download(keep.ptr, N);
  f.row_of_slot = download(row_of_slot.ptr, N);
  f.row_updates = download(updates.ptr, N);
  f.row_keys = download(rk.ptr, N * d);
  f.row_values = download(rv.ptr, N * d);
  f.row_bias = download(rb.ptr, N);
  f.row_score = download(rs.ptr, N);
  for (int s = 0; s < L.num_seqs(); ++s) f.length_before.push_back(static_cast<std::size_t>(L.seq(s).length));
  return f;
}

/// The CPU plans of every request of L, as one flattened plan of the layer's S sequences.
simcalkv::FlatLayerPlan join_plans(const std::vector<simcalkv::FlatLayerPlan>& parts) {
  simcalkv::FlatLayerPlan f;
  for (const auto& p : parts) {
    f.head_dim = p.head_dim;
    const auto slot_base = static_cast<std::int32_t>(f.keep.size());
    const auto row_base = static_cast<std::int32_t>(f.row_updates.size());
    for (std::size_t h = 0; h < p.first_slot.size(); ++h) {
      f.first_slot.push_back(slot_base + p.first_slot[h]);
      f.kept.push_back(p.kept[h]);
      f.length_before.push_back(p.length_before[h]);
    }
    f.keep.insert(f.keep.end(), p.keep.begin(), p.keep.end());
    for (const auto r : p.row_of_slot) f.row_of_slot.push_back(r < 0 ? -1 : row_base + r);
    f.row_updates.insert(f.row_updates.end(), p.row_updates.begin(), p.row_updates.end());
    f.row_keys.insert(f.row_keys.end(), p.row_keys.begin(), p.row_keys.end());
    f.row_values.insert(f.row_values.end(), p.row_values.begin(), p.row_values.end());
    f.row_bias.insert(f.row_bias.end(), p.row_bias.begin(), p.row_bias.end());
    f.row_score.insert(f.row_score.end(), p.row_score.begin(), p.row_score.end());
    if (!p.slot_scores.empty() || !f.slot_scores.empty()) {
      f.slot_scores.resize(slot_base, std::nanf(""));
      if (p.slot_scores.empty()) f.slot_scores.insert(f.slot_scores.end(), p.keep.size(), std::nanf(""));
      else f.slot_scores.insert(f.slot_scores.end(), p.slot_scores.begin(), p.slot_scores.end());
    }
  }
  return f;
}

/// The GPU's recorded plan against the CPU policy's plan, sequence by sequence: the same kept
/// entries, the same rewritten slots with the same update bits, rows within rounding.
Result check_recorded_plan(const std::string& name, const HostLayer& L, const ref::Policy& pol, LayoutKind kind) {
  std::fprintf(stderr, "[run] %s\n", name.c_str());
  Result r;
  r.group = "plans: the GPU's recorded plan = the CPU policy's LayerPlan";
  r.name = name;
  std::vector<simcalkv::FlatLayerPlan> parts;
  for (const auto& req : L.reqs) parts.push_back(ref::layer_plan(L.elem, L.d, L.G, L.W, pol, req));
  const simcalkv::FlatLayerPlan cpu = join_plans(parts);
  simcalkv::FlatLayerPlan gpu;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    DeviceLayer<T> D = upload<T>(L, kind, 99);
    gpu = kind == LayoutKind::ragged ? gpu_recorded_plan<T>(D, L, pol, D.ragged())
                                     : gpu_recorded_plan<T>(D, L, pol, D.paged());
  };
  if (L.elem == ref::Elem::bf16) run(sc::bf16{});
  else run(sc::fp16{});
  const std::size_t d = static_cast<std::size_t>(L.d);
  double worst_row = 0, bias_err = 0, score_err = 0;
  long rewritten = 0;
  for (int s = 0; s < L.num_seqs(); ++s) {
    const std::string at = "seq " + std::to_string(s);
    if (gpu.kept[s] != cpu.kept[s]) {
      r.fail(at + ": keeps " + std::to_string(gpu.kept[s]) + ", the CPU " + std::to_string(cpu.kept[s]));
      continue;
    }
    for (int k = 0; k < cpu.kept[s]; ++k) {
      const std::size_t g = static_cast<std::size_t>(gpu.first_slot[s] + k), c = static_cast<std::size_t>(cpu.first_slot[s] + k);
      if (gpu.keep[g] != cpu.keep[c]) {
        r.fail(at + ": slot " + std::to_string(k) + " keeps entry " + std::to_string(gpu.keep[g]) + ", the CPU " +
               std::to_string(cpu.keep[c]));
        break;
      }
      const int gr = gpu.row_of_slot[g], cr = cpu.row_of_slot[c];
      if ((gr < 0) != (cr < 0)) {
        r.fail(at + ": slot " + std::to_string(k) + (gr < 0 ? " is not rewritten on the GPU" : " is rewritten on the GPU only"));
        break;
      }
      if (cr < 0) continue;
      ++rewritten;
      if (gpu.row_updates[gr] != cpu.row_updates[cr]) {
        r.fail(at + ": slot " + std::to_string(k) + ": update bits " + std::to_string(gpu.row_updates[gr]) + " vs " +
               std::to_string(cpu.row_updates[cr]));
        break;
      }
      // The GPU row is the stored (narrowed) row; the CPU's is float until a layout narrows it.
      for (const auto* pair : {&gpu.row_keys, &gpu.row_values}) {
        const auto& other = pair == &gpu.row_keys ? cpu.row_keys : cpu.row_values;
        if (pair == &gpu.row_keys && !(cpu.row_updates[cr] & simcalkv::update_key)) continue;
        double big = 0, err = 0;
        for (std::size_t i = 0; i < d; ++i) {
          const double want = ref::from_bits(L.elem, ref::to_bits(L.elem, other[cr * d + i]));
          big = std::max(big, std::fabs(want));
          err = std::max(err, std::fabs((*pair)[gr * d + i] - want));
        }
        int ex = 0;
        std::frexp(std::max(big, 1e-30), &ex);
        worst_row = std::max(worst_row, err / std::ldexp(1.0, ex - 1 - (L.elem == ref::Elem::bf16 ? 7 : 10)));
      }
      const float bg = gpu.row_bias[gr], bc = cpu.row_bias[cr];
      if (!(bg == bc)) bias_err = std::max(bias_err, (std::isinf(bg) || std::isinf(bc)) ? 1e30 : std::fabs(bg - bc));
      score_err = std::max(score_err, std::fabs(static_cast<double>(gpu.row_score[gr]) - cpu.row_score[cr]) /
                                          (std::fabs(cpu.row_score[cr]) + 1e-6));
    }
  }
  r.metrics["rewritten_slots"] = static_cast<double>(rewritten);
  r.metrics["row_ulps_max"] = worst_row;
  r.metrics["bias_abs_err_max"] = bias_err;
  r.metrics["score_rel_err_max"] = score_err;
  if (worst_row > 2.0) r.fail("merged rows differ by " + std::to_string(worst_row) + " ulps of the row's largest element");
  if (bias_err > 2e-3) r.fail("merged biases differ by " + std::to_string(bias_err));
  if (score_err > 1e-4) r.fail("merged scores differ by " + std::to_string(score_err));
  if (pol.method == ref::Method::simcalkv && rewritten == 0) r.fail("nothing was merged: the case tests nothing");
  return r;
}

/// A CPU plan of registry policy `spec` applied by the GPU's apply_plan equals the CPU's apply.
Result check_applied_plan(const std::string& spec, const HostLayer& L, LayoutKind kind) {
  std::fprintf(stderr, "[run] apply %s\n", spec.c_str());
  Result r;
  r.group = "plans: a CPU policy's plan applied on the GPU = applied on the CPU";
  r.name = spec + ", " + elem_name(L.elem) + " d" + std::to_string(L.d) + ", " + layout_name(kind);
  std::vector<simcalkv::FlatLayerPlan> parts;
  HostLayer want = L;
  for (auto& req : want.reqs) {
    simcalkv::FlatLayerPlan p;
    std::string error;
    if (!ref::layer_plan(L.elem, L.d, L.G, L.W, spec, 0.4, req, &p, &error) ||
        !ref::apply(L.elem, L.d, p, req, &error)) {
      r.fail("the CPU library threw: " + error);
      return r;
    }
    parts.push_back(std::move(p));
  }
  const simcalkv::FlatLayerPlan flat = join_plans(parts);
  std::vector<std::int32_t> lengths;
  for (int s = 0; s < L.num_seqs(); ++s) lengths.push_back(L.seq(s).length);
  int bad = -1;
  if (const char* why = simcalkv::plan_view_problem(flat.view(), lengths.data(),
                                                    static_cast<std::int64_t>(flat.rows()), &bad)) {
    r.fail(std::string("the CPU plan does not fit: ") + why);
    return r;
  }
  // A corrupt copy is refused on the host before anything reaches the device.
  {
    simcalkv::FlatLayerPlan broken = flat;
    broken.keep[static_cast<std::size_t>(broken.first_slot[1])] = lengths[1];
    if (!simcalkv::plan_view_problem(broken.view(), lengths.data(), static_cast<std::int64_t>(broken.rows()), &bad) ||
        bad != 1)
      r.fail("a kept index past the length was not reported for sequence 1");
  }
  long rewritten = 0;
  for (const auto x : flat.row_of_slot) rewritten += x >= 0;
  r.metrics["rewritten_slots"] = static_cast<double>(rewritten);
  auto run = [&](auto tag) -> HostLayer {
    using T = decltype(tag);
    DeviceLayer<T> D = upload<T>(L, kind, 77);
    DeviceBuffer<std::int32_t> first(flat.first_slot.size()), kept(flat.kept.size()), keep(flat.keep.size() + 1),
        rows(flat.row_of_slot.size() + 1);
    DeviceBuffer<std::uint8_t> upd(flat.row_updates.size() + 1);
    DeviceBuffer<float> rk(flat.row_keys.size() + 1), rv(flat.row_values.size() + 1), rb(flat.row_bias.size() + 1),
        rs(flat.row_score.size() + 1), ss(flat.slot_scores.size() + 1);
    first.upload(flat.first_slot), kept.upload(flat.kept), keep.upload(flat.keep), rows.upload(flat.row_of_slot);
    if (!flat.row_updates.empty()) {
      upd.upload(flat.row_updates), rk.upload(flat.row_keys), rv.upload(flat.row_values);
      rb.upload(flat.row_bias), rs.upload(flat.row_score);
    }
    if (!flat.slot_scores.empty()) ss.upload(flat.slot_scores);
    simcalkv::LayerPlanView view{L.num_seqs(), L.d,    first.ptr, kept.ptr, keep.ptr, rows.ptr, upd.ptr,
                                 rk.ptr,       rv.ptr, rb.ptr,    rs.ptr,   flat.slot_scores.empty() ? nullptr : ss.ptr};
    const sc::ApplyShape shape{L.num_seqs(), L.max_len()};
    const std::size_t bytes = sc::apply_workspace_bytes(shape);
    DeviceBuffer<unsigned char> ws(bytes);
    if (kind == LayoutKind::ragged)
      CHECK_CUDA(sc::apply_plan(D.kv(D.ragged()), view, shape, ws.ptr, bytes));
    else
      CHECK_CUDA(sc::apply_plan(D.kv(D.paged()), view, shape, ws.ptr, bytes));
    CHECK_CUDA(cudaDeviceSynchronize());
    return download(D, L);
  };
  const HostLayer got = L.elem == ref::Elem::bf16 ? run(sc::bf16{}) : run(sc::fp16{});
  compare_layers(got, want, {}, true, r);
  return r;
}

void plan_tests(bool quick) {
  // Recorded GPU plans: every GPU policy on both layouts.
  const HostLayer L = make_layer(ref::Elem::bf16, 128, 4, 2, 16, 2, 333, 515, true, true);
  struct V {
    std::string name;
    ref::Policy p;
  };
  std::vector<V> variants = {{"StreamingLLM", policy(ref::Method::streaming_llm)},
                             {"SnapKV", policy(ref::Method::snapkv)},
                             {"SimCalKV", policy(ref::Method::simcalkv)}};
  {
    auto p = policy(ref::Method::simcalkv);
    p.adakv = true;
    variants.push_back({"AdaKV+SimCalKV", p});
    p = policy(ref::Method::simcalkv);
    p.bias = ref::Bias::log_count;
    p.merge_keys = false;
    variants.push_back({"SimCalKV bias=log_count merge_keys=false", p});
  }
  for (const auto& v : variants)
    for (LayoutKind kind : {LayoutKind::ragged, LayoutKind::paged_shared})
      g_results.push_back(check_recorded_plan(v.name + ", " + layout_name(kind), L, v.p, kind));
  // CPU plans of every registry policy, applied on the GPU. Equal head lengths (drop_step 0): TOVA
  // and PyramidInfer keep one set per layer.
  for (const ref::Elem e : {ref::Elem::bf16, ref::Elem::fp16}) {
    const int d = e == ref::Elem::bf16 ? 128 : 64;
    const HostLayer A = make_layer(e, d, 4, 2, 16, 2, 257, 616, true, true, false, 0);
    for (const auto& spec : ref::policy_names())
      for (LayoutKind kind : {LayoutKind::ragged, LayoutKind::paged_per_head, LayoutKind::paged_shared}) {
        if (quick && kind == LayoutKind::paged_per_head) continue;
        g_results.push_back(check_applied_plan(spec, A, kind));
      }
  }
}

// ---------------------------------------------------------------------------------------------
// Decode attention

template <class T, class O>
void check_decode_t(const std::string& name, ref::Elem e, int d, int G, LayoutKind lay, const std::vector<int>& lens,
                    int H, int splits, std::uint64_t seed, bool tma = true) {
  std::fprintf(stderr, "[run] %s\n", name.c_str());
  Result r;
  r.group = "agreement: decode attention";
  r.name = name;
  HostLayer L;
  L.elem = e, L.d = d, L.H = H, L.G = G, L.W = 0;
  Rng rng(seed);
  const int requests = static_cast<int>(lens.size()) / H;
  std::vector<float> q(static_cast<std::size_t>(requests) * H * G * d);
  for (auto& x : q) x = ref::from_bits(e, ref::to_bits(e, 1.5f * rng.normal()));
  for (int b = 0; b < requests; ++b) {
    ref::Request req;
    for (int h = 0; h < H; ++h) {
      ref::Seq s;
      const int n = lens[b * H + h];
      std::vector<float> drift(static_cast<std::size_t>(d));
      for (auto& x : drift) x = rng.normal();
      for (int j = 0; j < n; ++j) {
        for (int i = 0; i < d; ++i) {
          drift[i] = 0.9f * drift[i] + 0.45f * rng.normal();
          s.keys.push_back(ref::to_bits(e, drift[i]));
          s.values.push_back(ref::to_bits(e, rng.normal()));
        }
        const float u = rng.uniform();
        s.bias.push_back(u < 0.01f ? -std::numeric_limits<float>::infinity() : u < 0.2f ? std::log(1.0f + 4.0f * u) : 0.0f);
        s.pos.push_back(j);
      }
      s.length = n;
      req.heads.push_back(std::move(s));
    }
    L.reqs.push_back(std::move(req));
  }
  DeviceLayer<T> D = upload<T>(L, lay, seed + 1, 3);
  std::vector<std::uint16_t> qt;
  for (float x : q) qt.push_back(ref::to_bits(e, x));
  DeviceBuffer<T> dq(qt.size());
  CHECK_CUDA(cudaMemcpy(dq.ptr, qt.data(), qt.size() * 2, cudaMemcpyHostToDevice));
  DeviceBuffer<O> dout(q.size());
  CHECK_CUDA(cudaMemset(dout.ptr, 0xff, q.size() * sizeof(O)));
  sc::DecodeShape shape{L.num_seqs(), H, d, G, L.max_len(), splits};
  shape.tma = tma;
  sc::DecodeIO<T, O> io;
  io.q = dq.ptr, io.q_request_stride = static_cast<std::int64_t>(H) * G * d, io.q_head_stride = d;
  io.out = dout.ptr, io.out_request_stride = io.q_request_stride, io.out_head_stride = d;
  const std::size_t bytes = sc::decode_workspace_bytes(shape);
  DeviceBuffer<unsigned char> ws(bytes);
  if (lay == LayoutKind::ragged)
    CHECK_CUDA(sc::decode_attention(D.kv(D.ragged()), io, shape, ws.ptr, bytes));
  else
    CHECK_CUDA(sc::decode_attention(D.kv(D.paged()), io, shape, ws.ptr, bytes));
  CHECK_CUDA(cudaDeviceSynchronize());
  const auto out = dout.download();
  double worst = 0;
  for (int s = 0; s < L.num_seqs(); ++s) {
    std::vector<float> want(static_cast<std::size_t>(G) * d);
    const int b = s / H, h = s % H;
    const float* qs = q.data() + (static_cast<std::size_t>(b) * H + h) * G * d;
    ref::decode(e, d, G, L.seq(s), qs, want.data());
    for (int g = 0; g < G; ++g) {
      double num = 0, den = 0;
      for (int i = 0; i < d; ++i) {
        const std::size_t at = ((static_cast<std::size_t>(b) * H + h) * G + g) * d + i;
        float got;
        if constexpr (std::is_same_v<O, float>) got = out[at];
        else {
          std::uint16_t bits;
          std::memcpy(&bits, &out[at], 2);
          got = ref::from_bits(e, bits);
        }
        const double w = want[static_cast<std::size_t>(g) * d + i];
        num += (got - w) * (got - w);
        den += w * w;
      }
      const double rel = std::sqrt(num / (den + 1e-30));
      worst = std::max(worst, std::isnan(rel) ? 1e30 : rel);
    }
  }
  r.metrics["rel_l2_err_max"] = worst;
  r.metrics["splits"] = sc::detail::decode_splits(shape);
  const double tol = std::is_same_v<O, float> ? 1e-4 : 1e-2;
  if (worst > tol) r.fail("decode output differs from the CPU's by " + std::to_string(worst));
  g_results.push_back(r);
}

void decode_matrix(bool quick) {
  int k = 0;
  const LayoutKind layouts[] = {LayoutKind::ragged, LayoutKind::paged_per_head, LayoutKind::paged_shared};
  for (ref::Elem e : {ref::Elem::bf16, ref::Elem::fp16})
    for (int d : {64, 128})
      for (int G = 1; G <= 8; ++G, ++k) {
        if (quick && G % 3 != 1) continue;
        const LayoutKind lay = layouts[k % 3];
        const std::vector<int> lens = {1, 33, 517, 4099, 9001 - 2 * k, 65};
        std::ostringstream name;
        name << "decode " << elem_name(e) << " d" << d << " G" << G << " " << layout_name(lay);
        if (e == ref::Elem::bf16)
          check_decode_t<sc::bf16, float>(name.str(), e, d, G, lay, lens, 2, 0, 77 + k);
        else
          check_decode_t<sc::fp16, float>(name.str(), e, d, G, lay, lens, 2, 0, 77 + k);
        // The ragged layout again with cp.async copies only (on sm_90 the runs above use the TMA).
        if (lay == LayoutKind::ragged) {
          if (e == ref::Elem::bf16)
            check_decode_t<sc::bf16, float>(name.str() + ", cp.async", e, d, G, lay, lens, 2, 0, 77 + k, false);
          else
            check_decode_t<sc::fp16, float>(name.str() + ", cp.async", e, d, G, lay, lens, 2, 0, 77 + k, false);
        }
      }
  check_decode_t<sc::bf16, sc::bf16>("decode bf16 out d128 G4 ragged, 1 split", ref::Elem::bf16, 128, 4, LayoutKind::ragged,
                                     {700, 1201}, 1, 1, 5);
  // 16-bit outputs: the probabilities enter P V as one 16-bit term (float outputs: two).
  check_decode_t<sc::bf16, sc::bf16>("decode bf16 out d128 G8 paged (shared tables)", ref::Elem::bf16, 128, 8,
                                     LayoutKind::paged_shared, {1, 33, 517, 4099, 9001, 65}, 2, 0, 7);
  check_decode_t<sc::fp16, sc::fp16>("decode fp16 out d64 G3 ragged", ref::Elem::fp16, 64, 3, LayoutKind::ragged,
                                     {1, 33, 517, 4099, 9001, 65}, 2, 0, 8);
  check_decode_t<sc::fp16, sc::fp16>("decode fp16 out d128 G1 paged, 5 splits", ref::Elem::fp16, 128, 1,
                                     LayoutKind::paged_per_head, {700, 1201}, 1, 5, 9);
  check_decode_t<sc::bf16, float>("decode bf16 d128 G4 ragged, 7 splits", ref::Elem::bf16, 128, 4, LayoutKind::ragged,
                                  {700, 1201}, 1, 7, 6);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, only;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else if (a == "--quick") quick = true;
  }
  auto want = [&](const char* g) { return only.empty() || only == g; };
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  const auto t0 = std::chrono::steady_clock::now();
  if (want("types")) compress_matrix(quick);
  if (want("policies")) policy_matrix(quick);
  if (want("shards")) shard_tests(quick);
  if (want("plans")) plan_tests(quick);
  if (want("decode")) decode_matrix(quick);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  int failed = 0, near_ties = 0;
  std::string last_group;
  for (const auto& r : g_results) {
    if (r.group != last_group) std::printf("\n== %s\n", (last_group = r.group).c_str());
    std::printf("%s  %s", r.pass ? "PASS" : "FAIL", r.name.c_str());
    for (const auto& [k, v] : r.metrics) std::printf("  %s=%.3g", k.c_str(), v);
    std::printf("\n");
    for (const auto& n : r.notes) std::printf("      %s\n", n.c_str());
    failed += !r.pass;
    auto it = r.metrics.find("near_ties");
    if (it != r.metrics.end()) near_ties += static_cast<int>(it->second);
  }
  std::printf("\n%zu cases, %d failed, %d sequences with near ties; %.1f s\n", g_results.size(), failed, near_ties, secs);
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << "{\n  \"device\": \"" << prop.name << "\",\n  \"cases\": " << g_results.size() << ",\n  \"failed\": " << failed
      << ",\n  \"near_tie_sequences\": " << near_ties << ",\n  \"results\": [\n";
    for (std::size_t i = 0; i < g_results.size(); ++i) {
      const auto& r = g_results[i];
      f << "    {\"group\": \"" << r.group << "\", \"name\": \"" << r.name << "\", \"pass\": " << (r.pass ? "true" : "false");
      for (const auto& [k, v] : r.metrics) f << ", \"" << k << "\": " << (std::isfinite(v) ? v : -1.0);
      f << ", \"notes\": [";
      for (std::size_t n = 0; n < r.notes.size(); ++n) {
        std::string s = r.notes[n];
        for (auto& ch : s)
          if (ch == '"' || ch == '\\') ch = '\'';
        f << (n ? ", " : "") << "\"" << s << "\"";
      }
      f << "]}" << (i + 1 < g_results.size() ? ",\n" : "\n");
    }
    f << "  ]\n}\n";
  }
  return failed == 0 ? 0 : 1;
}
