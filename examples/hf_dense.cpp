// A Hugging Face transformers-shaped host: DynamicCache's per-layer key and value tensors
// [batch, num_kv_heads, seq_len, head_dim] (batch 1 here), one sequence length per layer. After
// prefill the layer is compressed in place with a uniform budget (every head the same length),
// the tensors are sliced to the new length, and attention runs as scaled_dot_product_attention
// with a float attn_mask per head that holds the merged entries' biases (repeat_kv expands KV
// heads to query heads). The outputs must equal the compact layout's under the same plan.
#include "host_common.hpp"

#include <limits>

int main() {
  const example::Prefill prefill(13);
  const int H = prefill.kv_heads, D = prefill.dim, G = prefill.group();
  const std::size_t seq = prefill.tokens;
  // key_cache[layer] and value_cache[layer] as contiguous [1][H][seq][D] tensors.
  std::vector<float> key_cache(prefill.keys), value_cache(prefill.values);
  std::vector<float> attn_bias(static_cast<std::size_t>(H) * seq, 0.0f);  // kept with the cache
  std::vector<simcalkv::Position> positions(static_cast<std::size_t>(H) * seq);
  for (int h = 0; h < H; ++h)
    for (std::size_t t = 0; t < seq; ++t) positions[static_cast<std::size_t>(h) * seq + t] = static_cast<simcalkv::Position>(t);

  simcalkv::DenseLayer<float> layer{key_cache.data(), value_cache.data(), attn_bias.data(), positions.data(), nullptr,
                                    seq, seq, H, D};
  const auto policy = simcalkv::make_policy("SimCalKV");
  const auto budget = simcalkv::Budget::compress_ratio(0.75);
  auto heads = layer.views();
  simcalkv::LayerRequest<float> request;
  request.heads = heads;
  request.window = prefill.window_view();
  request.budget = budget;
  simcalkv::Workspace ws;
  simcalkv::apply_plan(policy.plan(request, ws), layer);
  std::printf("transformers dense: seq_len %zu -> %zu per layer (key_cache[l][..., :%zu, :])\n", seq, layer.length,
              layer.length);

  // SDPA: softmax(q k^T / sqrt(d) + attn_mask) v over the first layer.length entries of each head.
  example::CompactReference reference(prefill, policy, budget, /*shared=*/false);
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  double worst = 0.0;
  for (int h = 0; h < H; ++h) {
    std::vector<float> q(static_cast<std::size_t>(G * D)), out(q.size());
    for (auto& x : q) x = normal(rng);
    const float* K = key_cache.data() + static_cast<std::size_t>(h) * seq * static_cast<std::size_t>(D);
    const float* V = value_cache.data() + static_cast<std::size_t>(h) * seq * static_cast<std::size_t>(D);
    const float* mask = attn_bias.data() + static_cast<std::size_t>(h) * seq;
    for (int g = 0; g < G; ++g) {  // query head h * G + g reads KV head h (repeat_kv)
      std::vector<double> s(layer.length);
      double m = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (std::size_t j = 0; j < layer.length; ++j) {
        double dot = 0.0;
        for (int i = 0; i < D; ++i) dot += static_cast<double>(q[static_cast<std::size_t>(g * D + i)]) * K[j * static_cast<std::size_t>(D) + static_cast<std::size_t>(i)];
        s[j] = dot / std::sqrt(static_cast<double>(D)) + mask[j];
        m = std::max(m, s[j]);
      }
      std::vector<double> acc(static_cast<std::size_t>(D), 0.0);
      for (std::size_t j = 0; j < layer.length; ++j) {
        const double p = std::exp(s[j] - m);
        sum += p;
        for (int i = 0; i < D; ++i) acc[static_cast<std::size_t>(i)] += p * V[j * static_cast<std::size_t>(D) + static_cast<std::size_t>(i)];
      }
      for (int i = 0; i < D; ++i) out[static_cast<std::size_t>(g * D + i)] = static_cast<float>(acc[static_cast<std::size_t>(i)] / sum);
    }
    worst = std::max(worst, example::max_abs_diff(out, reference.attend(h, q, G)));
  }
  return example::report("transformers dense", worst, 1e-5);
}
