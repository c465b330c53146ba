// config.json of a checkpoint: parse_config either gives a configuration the engine can run, or refuses.
#include "common.hpp"

#include "model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static simcalkv::fuzz::Tally tally("model_config");
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;  // not JSON: read_json_file's error, not the parser's
  using simcalkv::fuzz::expect;
  try {
    const engine::ModelConfig c = engine::parse_config(j, "config.json");
    expect(c.hidden_size > 0 && c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 && c.vocab_size > 0,
           "a size is not positive");
    expect(c.num_heads % c.num_kv_heads == 0, "query heads not a multiple of KV heads");
    expect(c.head_dim > 0 && c.head_dim % 2 == 0, "head_dim not positive and even");
    for (int e : c.eos_token_ids) expect(e >= 0 && e < c.vocab_size, "eos_token_id outside the vocabulary");
    expect(c.bos_token_id >= -1 && c.bos_token_id < c.vocab_size, "bos_token_id outside the vocabulary");
    expect(c.sliding_window >= 0 && c.max_position_embeddings >= 0, "negative window or context length");
    expect(c.rope_theta > 0 && c.rms_norm_eps >= 0, "rope_theta or rms_norm_eps out of range");
    (void)engine::rope_inv_freq(c);
    ++tally.accepted;
  } catch (const engine::EngineError&) {
    ++tally.refused;
  }
  return 0;
}
