// The safetensors reader: any bytes either open with every tensor inside the data section and convertible, or are
// refused with simcalkv::Error.
#include "common.hpp"

#include <simcalkv/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static simcalkv::fuzz::Tally tally("safetensors");
  const auto& path = simcalkv::fuzz::input_file(data, size, ".safetensors");
  try {
    const simcalkv::io::SafetensorsFile file(path);
    for (const auto& name : file.names()) {
      const auto& t = file.info(name);
      simcalkv::fuzz::expect(t.bytes.size() == static_cast<std::size_t>(t.numel()) * simcalkv::io::dtype_size(t.dtype),
                             "byte count differs from shape x dtype size");
      if (t.numel() <= (1u << 16) && (t.dtype == simcalkv::io::DType::F32 || t.dtype == simcalkv::io::DType::F16 ||
                                     t.dtype == simcalkv::io::DType::BF16))
        (void)file.read_as_float(name);
    }
    ++tally.accepted;
  } catch (const simcalkv::Error&) {
    ++tally.refused;
  }
  return 0;
}
