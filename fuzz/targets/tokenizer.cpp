// tokenizer.json: a tokenizer is built and encodes and decodes with ids inside its vocabulary, or is refused.
#include "common.hpp"

#include "tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static simcalkv::fuzz::Tally tally("tokenizer");
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    const engine::Tokenizer tok(j, "tokenizer.json");
    for (const char* text : {"Hello world, 12 tokens!", " \n\t<|endoftext|> caf\xc3\xa9"}) {
      const auto ids = tok.encode(text, true);
      for (int id : ids)
        simcalkv::fuzz::expect(id >= 0 && static_cast<std::size_t>(id) < tok.vocab_size(), "id outside the vocabulary");
      (void)tok.decode(ids);
    }
    ++tally.accepted;
  } catch (const engine::EngineError&) {
    ++tally.refused;
  }
  return 0;
}
