// A llama.cpp-shaped host: per layer one K tensor [kv_size][n_embd_k_gqa] and a transposed V
// tensor [n_embd_v_gqa][kv_size] (no flash attention), indexed by cells that every layer and head
// share (llama_kv_cells: a position and a sequence set per cell). After prefill every layer is
// compressed with one kept set per layer (shared selection), merged rows and biases written in
// place; decode attention is computed the way build_attn_mha does it, kq = K q, kq += kq_b (our
// per-head bias plane expanded to query heads), then the kq_mask's -inf for empty cells and the
// softmax; cells no layer keeps are freed with one seq_rm each. The outputs must equal the compact
// layout's under the same plan.
#include "host_common.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <set>

namespace {

/// llama_kv_cells' essentials: per cell a position (-1: empty) and the sequences that hold it.
struct KVCells {
  std::vector<simcalkv::Position> pos;
  std::vector<std::set<int>> seq;
  std::vector<std::uint8_t> used;  // derived: a cell holds a token
  explicit KVCells(std::size_t size) : pos(size, -1), seq(size), used(size, 0) {}
  void seq_rm(int s, std::size_t cell) {  // llama_memory_seq_rm over one cell
    seq[cell].erase(s);
    if (seq[cell].empty()) pos[cell] = -1, used[cell] = 0;
  }
};

/// One layer of llama.cpp's cache: k_l, v_l (transposed) and the bias plane we keep beside it.
struct LayerTensors {
  std::vector<float> k, v, kq_b;  // kq_b: [n_kv_heads][kv_size]
};

}  // namespace

int main() {
  const example::Prefill prefill(7);
  const int H = prefill.kv_heads, D = prefill.dim, G = prefill.group(), layers = 2;
  const std::size_t kv_size = prefill.tokens + 64, n_embd_gqa = static_cast<std::size_t>(H * D);
  KVCells cells(kv_size);
  std::vector<LayerTensors> tensors(layers);
  // Prefill: token t goes to cell t in every layer (the same K/V per layer, for brevity).
  for (auto& L : tensors) {
    L.k.assign(kv_size * n_embd_gqa, 0.0f);
    L.v.assign(kv_size * n_embd_gqa, 0.0f);
    L.kq_b.assign(static_cast<std::size_t>(H) * kv_size, 0.0f);
    for (std::size_t t = 0; t < prefill.tokens; ++t)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < D; ++i) {
          L.k[t * n_embd_gqa + static_cast<std::size_t>(h * D + i)] = prefill.key(h, t)[i];
          L.v[static_cast<std::size_t>(h * D + i) * kv_size + t] = prefill.value(h, t)[i];
        }
  }
  for (std::size_t t = 0; t < prefill.tokens; ++t) {
    cells.pos[t] = static_cast<simcalkv::Position>(t);
    cells.seq[t] = {0};
    cells.used[t] = 1;
  }

  const auto policy = simcalkv::make_policy("SimCalKV");
  const auto budget = simcalkv::Budget::compress_ratio(0.75);
  std::vector<simcalkv::SharedCellsLayer<float>> views;
  simcalkv::Workspace ws;
  simcalkv::Staging<float> staging;
  for (auto& L : tensors) {
    simcalkv::SharedCellsLayer<float> layer;
    layer.k = L.k.data();
    layer.k_row_stride = static_cast<std::ptrdiff_t>(n_embd_gqa);
    layer.v = L.v.data();
    layer.v_transposed = true;
    layer.v_row_stride = static_cast<std::ptrdiff_t>(kv_size);
    layer.bias = L.kq_b.data();
    layer.cell_positions = cells.pos.data();
    layer.cell_used = cells.used.data();
    layer.kv_size = kv_size;
    layer.n_kv_heads = H;
    layer.head_dim = D;
    simcalkv::LayerRequest<float> request;
    request.heads = simcalkv::stage_shared_cells(layer, staging);
    request.window = prefill.window_view();
    request.budget = budget;
    request.shared_selection = true;
    simcalkv::apply_plan(policy.plan(request, ws), layer);
    views.push_back(layer);
  }
  // Cells every layer masked are free: one seq_rm each, and their bias columns reset.
  const auto freeable = simcalkv::freeable_cells<float>(views);
  for (const auto c : freeable) {
    cells.seq_rm(0, c);
    for (auto& L : tensors)
      for (int h = 0; h < H; ++h) L.kq_b[static_cast<std::size_t>(h) * kv_size + c] = 0.0f;
  }
  std::printf("llama.cpp cells: %zu of %zu cells freed after compressing %d layers\n", freeable.size(), prefill.tokens,
              layers);

  // Decode attention of layer 0 as ggml computes it (all cells, kq_b added, kq_mask for empty ones).
  example::CompactReference reference(prefill, policy, budget, /*shared=*/true);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  double worst = 0.0;
  const auto& L = tensors[0];
  for (int h = 0; h < H; ++h) {
    std::vector<float> q(static_cast<std::size_t>(G * D));
    for (auto& x : q) x = normal(rng);
    std::vector<float> out(q.size(), 0.0f);
    for (int g = 0; g < G; ++g) {
      std::vector<double> kq(kv_size, -std::numeric_limits<double>::infinity());
      double m = -std::numeric_limits<double>::infinity();
      for (std::size_t c = 0; c < kv_size; ++c) {
        if (!cells.used[c]) continue;  // kq_mask: -inf for cells of no sequence
        double dot = 0.0;
        for (int i = 0; i < D; ++i)
          dot += static_cast<double>(q[static_cast<std::size_t>(g * D + i)]) * L.k[c * n_embd_gqa + static_cast<std::size_t>(h * D + i)];
        kq[c] = dot / std::sqrt(static_cast<double>(D)) + L.kq_b[static_cast<std::size_t>(h) * kv_size + c];
        m = std::max(m, kq[c]);
      }
      double sum = 0.0;
      std::vector<double> acc(static_cast<std::size_t>(D), 0.0);
      for (std::size_t c = 0; c < kv_size; ++c) {
        if (kq[c] == -std::numeric_limits<double>::infinity()) continue;
        const double p = std::exp(kq[c] - m);
        sum += p;
        for (int i = 0; i < D; ++i) acc[static_cast<std::size_t>(i)] += p * L.v[static_cast<std::size_t>(h * D + i) * kv_size + c];
      }
      for (int i = 0; i < D; ++i) out[static_cast<std::size_t>(g * D + i)] = static_cast<float>(acc[static_cast<std::size_t>(i)] / sum);
    }
    worst = std::max(worst, example::max_abs_diff(out, reference.attend(h, q, G)));
  }
  return example::report("llama.cpp cells", worst, 1e-5);
}
