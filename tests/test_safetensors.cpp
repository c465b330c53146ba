// Tests for include/simcalkv/io/safetensors.hpp.
#include "simcalkv/io/safetensors.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using simcalkv::Error;
using simcalkv::ErrorCode;
using simcalkv::io::DType;
using simcalkv::io::SafetensorsFile;
using simcalkv::io::SafetensorsWriter;
using Catch::Matchers::Contains;

/// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<unsigned> counter{0};
    std::random_device entropy;
    dir_ = fs::temp_directory_path() /
           ("simcalkv_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
            std::to_string(entropy()));
    fs::create_directories(dir_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] std::string file(const std::string& name) const { return (dir_ / name).string(); }
  [[nodiscard]] const fs::path& path() const { return dir_; }

 private:
  fs::path dir_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// 8-byte little-endian length (the header's size unless overridden), header, data.
std::string raw_file(const std::string& header, const std::string& data, std::optional<std::uint64_t> length = {}) {
  const std::uint64_t len = length.value_or(header.size());
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 8);
  return out + header + data;
}

std::string floats_bytes(std::initializer_list<float> values) {
  std::string out(values.size() * sizeof(float), '\0');
  std::memcpy(out.data(), values.begin(), out.size());
  return out;
}

/// Runs f, which must throw simcalkv::Error with `code`; returns the message.
template <class F>
std::string error_of(F&& f, ErrorCode code = ErrorCode::io) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.code() == code);
    return e.what();
  }
  FAIL("expected a simcalkv::Error");
  return {};
}

/// Writes a raw file named `name` and returns the message of opening it.
std::string open_error(const TempDir& tmp, const std::string& name, const std::string& bytes) {
  const std::string path = tmp.file(name);
  write_bytes(path, bytes);
  return error_of([&] { SafetensorsFile file(path); });
}

template <class T>
std::vector<T> iota_values(std::size_t count, double start, double step) {
  std::vector<T> out(count);
  for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<T>(start + step * static_cast<double>(i));
  return out;
}

}  // namespace

TEST_CASE("safetensors: dtype names, sizes and parsing", "[io]") {
  using namespace simcalkv::io;
  for (DType d : all_dtypes) {
    CHECK(parse_dtype(dtype_name(d)) == d);
    CHECK(dtype_size(d) > 0);
  }
  CHECK(dtype_size(DType::BF16) == 2);
  CHECK(dtype_size(DType::F64) == 8);
  CHECK(dtype_size(DType::BOOL) == 1);
  CHECK_FALSE(try_parse_dtype("f32").has_value());  // names are case-sensitive, as in the format
  const std::string msg = error_of([] { (void)parse_dtype("F8_E4M3"); }, ErrorCode::invalid_argument);
  CHECK_THAT(msg, Contains("unknown dtype 'F8_E4M3'") && Contains("BF16"));
}

TEST_CASE("safetensors: round trip of every dtype", "[io]") {
  TempDir tmp;
  const std::string path = tmp.file("all.safetensors");

  const auto f32 = iota_values<float>(6, -1.5, 0.25);
  std::vector<simcalkv::half> f16(6);
  std::vector<simcalkv::bfloat16> bf16(6);
  for (std::size_t i = 0; i < 6; ++i) {
    f16[i] = simcalkv::half(static_cast<float>(i) * 0.5f - 1.0f);
    bf16[i] = simcalkv::bfloat16(static_cast<float>(i) * 4.0f - 8.0f);
  }
  const auto f64 = iota_values<double>(4, 0.1, 0.3);
  const auto i64 = iota_values<std::int64_t>(3, -5, 1000000000000.0);
  const auto i32 = iota_values<std::int32_t>(5, -7, 3);
  const auto i16 = iota_values<std::int16_t>(2, -300, 700);
  const auto i8 = iota_values<std::int8_t>(4, -100, 50);
  const auto u8 = iota_values<std::uint8_t>(3, 1, 100);
  const std::vector<std::uint8_t> flags = {1, 0, 1, 1};

  SafetensorsWriter w;
  w.add("z.f32", DType::F32, {2, 3}, f32.data(), f32.size() * 4);
  w.add("a.f16", DType::F16, {3, 2}, f16.data(), f16.size() * 2);
  w.add("m.bf16", DType::BF16, {6}, bf16.data(), bf16.size() * 2);
  w.add("f64", DType::F64, {2, 2}, f64.data(), f64.size() * 8);
  w.add("i64", DType::I64, {3}, i64.data(), i64.size() * 8);
  w.add("i32", DType::I32, {5, 1}, i32.data(), i32.size() * 4);
  w.add("i16", DType::I16, {2}, i16.data(), i16.size() * 2);
  w.add("i8", DType::I8, {2, 2}, i8.data(), i8.size());
  w.add("u8", DType::U8, {3}, u8.data(), u8.size());
  w.add("bool", DType::BOOL, {4}, flags.data(), flags.size());
  const float scalar = 42.0f;
  w.add("scalar", DType::F32, {}, &scalar, 4);
  w.add("empty", DType::F32, {0, 3}, nullptr, 0);
  w.set_metadata("purpose", "test");
  w.write(path);
  CHECK_FALSE(fs::exists(path + ".tmp"));

  // Layout: header padded with spaces to a multiple of 8, offsets contiguous in insertion order.
  const std::string raw = read_bytes(path);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  CHECK(header_len % 8 == 0);
  const std::string header_text = raw.substr(8, header_len);
  CHECK(header_text.find_last_not_of(' ') + 1 >= header_text.size() - 7);
  const auto header = nlohmann::ordered_json::parse(header_text);
  std::uint64_t expected_begin = 0;
  std::vector<std::string> order;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    order.push_back(name);
    CHECK(entry["data_offsets"][0].get<std::uint64_t>() == expected_begin);
    expected_begin = entry["data_offsets"][1].get<std::uint64_t>();
  }
  CHECK(expected_begin == raw.size() - 8 - header_len);
  CHECK(order == std::vector<std::string>{"z.f32", "a.f16", "m.bf16", "f64", "i64", "i32", "i16", "i8", "u8",
                                          "bool", "scalar", "empty"});

  const SafetensorsFile file(path);
  CHECK(file.size() == 12);
  const auto names = file.names();
  CHECK(std::is_sorted(names.begin(), names.end()));
  CHECK(file.contains("i8"));
  CHECK_FALSE(file.contains("nope"));
  CHECK(file.metadata_value("purpose") == "test");

  auto same_bytes = [&](const std::string& name, const void* data, std::size_t bytes) {
    const auto& info = file.info(name);
    REQUIRE(info.bytes.size() == bytes);
    CHECK(std::memcmp(info.bytes.data(), data, bytes) == 0);
  };
  same_bytes("f64", f64.data(), 32);
  same_bytes("i64", i64.data(), 24);
  same_bytes("i32", i32.data(), 20);
  same_bytes("i16", i16.data(), 4);
  same_bytes("i8", i8.data(), 4);
  same_bytes("u8", u8.data(), 3);
  same_bytes("bool", flags.data(), 4);
  CHECK(file.info("i32").dtype == DType::I32);
  CHECK(file.info("i32").shape == std::vector<std::int64_t>{5, 1});
  CHECK(file.info("bool").dtype == DType::BOOL);

  CHECK(file.read_as_float("z.f32") == f32);
  CHECK(file.read_as_float("z.f32", {2, 3}) == f32);
  const auto f16_back = file.read_as_float("a.f16", {3, 2});
  const auto bf16_back = file.read_as_float("m.bf16", {6});
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(f16_back[i] == simcalkv::to_float(f16[i]));
    CHECK(bf16_back[i] == simcalkv::to_float(bf16[i]));
  }
  CHECK(file.info("a.f16").dtype == DType::F16);
  CHECK(file.info("m.bf16").dtype == DType::BF16);
  CHECK(file.read_as_float("scalar") == std::vector<float>{42.0f});
  CHECK(file.info("scalar").shape.empty());
  CHECK(file.read_as_float("empty", {0, 3}).empty());

  // Moving keeps the mapping alive.
  SafetensorsFile moved = SafetensorsFile(path);
  SafetensorsFile other(std::move(moved));
  CHECK(other.read_as_float("z.f32") == f32);
}

TEST_CASE("safetensors: large F16 and BF16 tensors convert exactly", "[io]") {
  // Longer than the reader's staging chunk, so the chunked path and the SIMD widening are used.
  TempDir tmp;
  const std::string path = tmp.file("big.safetensors");
  const std::size_t count = 10007;
  std::vector<simcalkv::half> h(count);
  std::vector<simcalkv::bfloat16> b(count);
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> dist(-100.0f, 100.0f);
  for (std::size_t i = 0; i < count; ++i) {
    h[i] = simcalkv::half(dist(gen));
    b[i] = simcalkv::bfloat16(dist(gen));
  }
  SafetensorsWriter w;
  w.add<simcalkv::half>("h", {static_cast<std::int64_t>(count)}, std::span<const simcalkv::half>(h));
  w.add<simcalkv::bfloat16>("b", {static_cast<std::int64_t>(count)}, std::span<const simcalkv::bfloat16>(b));
  w.write(path);
  const SafetensorsFile file(path);
  const auto hf = file.read_as_float("h");
  const auto bf = file.read_as_float("b");
  REQUIRE(hf.size() == count);
  REQUIRE(bf.size() == count);
  bool all_equal = true;
  for (std::size_t i = 0; i < count; ++i) {
    all_equal = all_equal && hf[i] == simcalkv::to_float(h[i]) && bf[i] == simcalkv::to_float(b[i]);
  }
  CHECK(all_equal);
}

TEST_CASE("safetensors: key order, unpadded headers and unaligned data", "[io]") {
  TempDir tmp;
  const std::string path = tmp.file("reversed.safetensors");
  // Entries in reverse order, keys within entries reversed, metadata last, no padding: the data
  // section starts at an odd offset, so the float reads are unaligned.
  const std::string header =
      R"({"second":{"data_offsets":[8,20],"shape":[3],"dtype":"F32"},)"
      R"("first":{"data_offsets":[0,8],"shape":[1,2],"dtype":"F32"},)"
      R"("__metadata__":{"z":"last","a":"first"}})";
  REQUIRE(header.size() % 2 == 1);
  write_bytes(path, raw_file(header, floats_bytes({1.0f, 2.0f}) + floats_bytes({3.0f, 4.0f, 5.0f})));
  const SafetensorsFile file(path);
  CHECK(file.names() == std::vector<std::string>{"first", "second"});
  CHECK(file.read_as_float("first", {1, 2}) == std::vector<float>{1.0f, 2.0f});
  CHECK(file.read_as_float("second", {3}) == std::vector<float>{3.0f, 4.0f, 5.0f});
  CHECK(file.metadata().size() == 2);
  CHECK(file.metadata_value("a") == "first");
  CHECK(file.metadata_value("z") == "last");

  // Holes between tensors are tolerated (some writers align tensors).
  const std::string gap_path = tmp.file("gap.safetensors");
  write_bytes(gap_path, raw_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                 floats_bytes({9.0f, 7.0f})));
  CHECK(SafetensorsFile(gap_path).read_as_float("x") == std::vector<float>{7.0f});
}

TEST_CASE("safetensors: metadata", "[io]") {
  TempDir tmp;
  SECTION("written and read back") {
    const std::string path = tmp.file("meta.safetensors");
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    w.set_metadata("note", "spaces and \"quotes\" and unicode \xc3\xa9");
    w.set_metadata("format", "np");  // last value wins
    const float x = 1.0f;
    w.add("x", DType::F32, {1}, &x, 4);
    w.write(path);
    const SafetensorsFile file(path);
    CHECK(file.metadata().size() == 2);
    CHECK(file.metadata_value("format") == "np");
    CHECK(file.metadata_value("note") == "spaces and \"quotes\" and unicode \xc3\xa9");
    const std::string msg = error_of([&] { (void)file.metadata_value("missing"); });
    CHECK_THAT(msg, Contains("meta.safetensors") && Contains("metadata key 'missing' is absent"));
  }
  SECTION("absent metadata is an empty map") {
    const std::string path = tmp.file("nometa.safetensors");
    write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", floats_bytes({1.0f})));
    CHECK(SafetensorsFile(path).metadata().empty());
  }
  SECTION("a file with no tensors") {
    const std::string path = tmp.file("none.safetensors");
    SafetensorsWriter w;
    w.set_metadata("k", "v");
    w.write(path);
    const SafetensorsFile file(path);
    CHECK(file.names().empty());
    CHECK(file.metadata_value("k") == "v");
  }
}

TEST_CASE("safetensors: corrupt files are rejected with the path and the problem", "[io]") {
  TempDir tmp;
  const std::string x4 = floats_bytes({1.0f});
  const std::string ok_entry = R"("x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";

  SECTION("empty file") {
    CHECK_THAT(open_error(tmp, "empty.safetensors", ""), Contains("empty.safetensors") && Contains("truncated"));
  }
  SECTION("shorter than the length field") {
    CHECK_THAT(open_error(tmp, "short.safetensors", "abc"), Contains("short.safetensors") && Contains("truncated"));
  }
  SECTION("header length beyond the file size") {
    const std::string bytes = raw_file("{" + ok_entry + "}", x4, 1000);
    CHECK_THAT(open_error(tmp, "hlen.safetensors", bytes),
               Contains("hlen.safetensors") && Contains("header length 1000 exceeds the file size"));
  }
  SECTION("absurd header length") {
    const std::string bytes = raw_file("{}", "", 0xFFFFFFFFFFFFFFF0ull);
    CHECK_THAT(open_error(tmp, "huge.safetensors", bytes),
               Contains("huge.safetensors") && Contains("exceeds the file size"));
  }
  SECTION("bad JSON") {
    CHECK_THAT(open_error(tmp, "json.safetensors", raw_file(R"({"x":{"dtype":"F32",)", x4)),
               Contains("json.safetensors") && Contains("bad JSON header"));
  }
  SECTION("a NUL byte inside the header (the format pads with spaces)") {
    const std::string header = "{" + ok_entry + std::string("}\0GARBAGE", 9);
    CHECK_THAT(open_error(tmp, "nul.safetensors", raw_file(header, x4)),
               Contains("nul.safetensors") && Contains("NUL byte at offset 62"));
  }
  SECTION("header not an object") {
    CHECK_THAT(open_error(tmp, "array.safetensors", raw_file("[1,2]", "")),
               Contains("array.safetensors") && Contains("expected an object"));
  }
  SECTION("entry not an object") {
    CHECK_THAT(open_error(tmp, "entry.safetensors", raw_file(R"({"x":3})", "")),
               Contains("entry.safetensors") && Contains("tensor 'x'") && Contains("must be an object"));
  }
  SECTION("missing dtype") {
    CHECK_THAT(open_error(tmp, "nodtype.safetensors", raw_file(R"({"x":{"shape":[1],"data_offsets":[0,4]}})", x4)),
               Contains("nodtype.safetensors") && Contains("tensor 'x'") && Contains("missing dtype"));
  }
  SECTION("missing shape") {
    CHECK_THAT(open_error(tmp, "noshape.safetensors", raw_file(R"({"x":{"dtype":"F32","data_offsets":[0,4]}})", x4)),
               Contains("noshape.safetensors") && Contains("tensor 'x'") && Contains("missing shape"));
  }
  SECTION("missing data_offsets") {
    CHECK_THAT(open_error(tmp, "nooff.safetensors", raw_file(R"({"x":{"dtype":"F32","shape":[1]}})", x4)),
               Contains("nooff.safetensors") && Contains("tensor 'x'") && Contains("missing data_offsets"));
  }
  SECTION("unknown dtype") {
    CHECK_THAT(open_error(tmp, "dtype.safetensors",
                          raw_file(R"({"x":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[0,4]}})", x4)),
               Contains("dtype.safetensors") && Contains("tensor 'x'") && Contains("unknown dtype 'F8_E5M2'"));
  }
  SECTION("negative or fractional shape") {
    CHECK_THAT(open_error(tmp, "neg.safetensors", raw_file(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", x4)),
               Contains("neg.safetensors") && Contains("tensor 'x'") && Contains("non-negative integers"));
    CHECK_THAT(open_error(tmp, "frac.safetensors", raw_file(R"({"x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", x4)),
               Contains("frac.safetensors") && Contains("non-negative integers"));
  }
  SECTION("offsets not [begin, end]") {
    for (const char* offsets : {"[0]", "[0,4,8]", "[4,0]", "[\"0\",\"4\"]", "[-4,4]", "{}", "[0.0,4.0]"}) {
      INFO(offsets);
      const std::string header = std::string(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":)") + offsets + "}}";
      CHECK_THAT(open_error(tmp, "offsets.safetensors", raw_file(header, x4 + x4)),
                 Contains("offsets.safetensors") && Contains("tensor 'x'") && Contains("must be [begin, end]"));
    }
  }
  SECTION("end beyond the data section") {
    CHECK_THAT(open_error(tmp, "end.safetensors", raw_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", x4)),
               Contains("end.safetensors") && Contains("tensor 'x'") && Contains("beyond the data section"));
  }
  SECTION("byte size does not match the shape") {
    CHECK_THAT(open_error(tmp, "size.safetensors",
                          raw_file(R"({"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", x4 + x4 + x4)),
               Contains("size.safetensors") && Contains("tensor 'x'") && Contains("byte size 12 does not match shape [2, 2]"));
  }
  SECTION("overlapping tensors") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
    CHECK_THAT(open_error(tmp, "overlap.safetensors", raw_file(header, x4 + x4 + x4)),
               Contains("overlap.safetensors") && Contains("'a'") && Contains("'b'") && Contains("overlap"));
  }
  SECTION("non-string metadata value") {
    const std::string header = R"({"__metadata__":{"ok":"yes","n":3},)" + ok_entry + "}";
    CHECK_THAT(open_error(tmp, "meta.safetensors", raw_file(header, x4)),
               Contains("meta.safetensors") && Contains("metadata value for key 'n' must be a string"));
  }
  SECTION("metadata not an object") {
    const std::string header = R"({"__metadata__":["a"],)" + ok_entry + "}";
    CHECK_THAT(open_error(tmp, "metaarr.safetensors", raw_file(header, x4)),
               Contains("metaarr.safetensors") && Contains("__metadata__ must be an object"));
  }
  SECTION("a valid file truncated inside its data") {
    const std::string path = tmp.file("cut.safetensors");
    std::vector<float> values(64, 1.0f);
    SafetensorsWriter w;
    w.add("t", DType::F32, {64}, values.data(), values.size() * 4);
    w.write(path);
    fs::resize_file(path, fs::file_size(path) - 10);
    const std::string msg = error_of([&] { SafetensorsFile file(path); });
    CHECK_THAT(msg, Contains("cut.safetensors") && Contains("tensor 't'") && Contains("beyond the data section"));
  }
  SECTION("a valid file truncated inside its header") {
    const std::string path = tmp.file("cuthead.safetensors");
    const float x = 1.0f;
    SafetensorsWriter w;
    w.add("t", DType::F32, {1}, &x, 4);
    w.write(path);
    fs::resize_file(path, 20);
    const std::string msg = error_of([&] { SafetensorsFile file(path); });
    CHECK_THAT(msg, Contains("cuthead.safetensors") && Contains("exceeds the file size"));
  }
  SECTION("missing file") {
    const std::string msg = error_of([&] { SafetensorsFile file(tmp.file("absent.safetensors")); });
    CHECK_THAT(msg, Contains("absent.safetensors") && Contains("cannot open"));
  }
  SECTION("a directory") {
    const std::string msg = error_of([&] { SafetensorsFile file(tmp.path().string()); });
    CHECK_THAT(msg, Contains(tmp.path().filename().string()) && Contains("not a regular file"));
  }
}

TEST_CASE("safetensors: lookup and conversion errors", "[io]") {
  TempDir tmp;
  const std::string path = tmp.file("lookup.safetensors");
  const std::vector<float> f = {1, 2, 3, 4, 5, 6};
  const std::vector<std::int32_t> i = {1, 2};
  SafetensorsWriter w;
  w.add("weights", DType::F32, {2, 3}, f.data(), f.size() * 4);
  w.add("ids", DType::I32, {2}, i.data(), i.size() * 4);
  w.write(path);
  const SafetensorsFile file(path);

  CHECK_THAT(error_of([&] { (void)file.info("bias"); }),
             Contains("lookup.safetensors") && Contains("tensor 'bias' is absent"));
  CHECK_THAT(error_of([&] { (void)file.read_as_float("bias"); }), Contains("tensor 'bias' is absent"));
  CHECK_THAT(error_of([&] { (void)file.read_as_float("ids"); }),
             Contains("lookup.safetensors") && Contains("tensor 'ids'") && Contains("I32") &&
                 Contains("cannot be read as float"));
  CHECK_THAT(error_of([&] { (void)file.read_as_float("weights", {3, 2}); }),
             Contains("lookup.safetensors") && Contains("tensor 'weights'") && Contains("has shape [2, 3]") &&
                 Contains("expected [3, 2]"));
  const std::vector<std::int64_t> rank3 = {2, 3, 1};
  CHECK_THAT(error_of([&] { (void)file.read_as_float("weights", rank3); }), Contains("expected [2, 3, 1]"));
}

TEST_CASE("safetensors: writer errors", "[io]") {
  TempDir tmp;
  const std::vector<float> f = {1, 2, 3, 4};
  SafetensorsWriter w;
  w.add("a", DType::F32, {4}, f.data(), 16);

  CHECK_THAT(error_of([&] { w.add("a", DType::F32, {4}, f.data(), 16); }, ErrorCode::invalid_argument),
             Contains("duplicate tensor name 'a'"));
  CHECK_THAT(error_of([&] { w.add("b", DType::F32, {2, 3}, f.data(), 16); }, ErrorCode::invalid_argument),
             Contains("tensor 'b'") && Contains("size mismatch") && Contains("24 bytes, got 16"));
  CHECK_THAT(error_of([&] { w.add("c", DType::F32, {-1}, f.data(), 16); }, ErrorCode::invalid_argument),
             Contains("tensor 'c'") && Contains("invalid shape"));
  CHECK_THAT(error_of([&] { w.add("__metadata__", DType::F32, {4}, f.data(), 16); }, ErrorCode::invalid_argument),
             Contains("reserved"));
  CHECK(w.size() == 1);

  SECTION("names and metadata must be UTF-8") {
    SafetensorsWriter bad;
    bad.set_metadata("k", "\xff\xfe");
    const std::string path = tmp.file("utf8.safetensors");
    CHECK_THAT(error_of([&] { bad.write(path); }, ErrorCode::invalid_argument), Contains("utf8.safetensors"));
    CHECK_FALSE(fs::exists(path));
  }

  SECTION("write into a missing directory leaves nothing behind") {
    const std::string path = (tmp.path() / "no" / "such" / "dir.safetensors").string();
    CHECK_THAT(error_of([&] { w.write(path); }), Contains("dir.safetensors") && Contains("cannot"));
    CHECK_FALSE(fs::exists(path));
    CHECK_FALSE(fs::exists(path + ".tmp"));
  }
  SECTION("failed rename removes the temporary file and keeps the target") {
    // The target is a non-empty directory, so rename() fails after the data was written.
    const fs::path target = tmp.path() / "target.safetensors";
    fs::create_directories(target / "inside");
    CHECK_THAT(error_of([&] { w.write(target.string()); }),
               Contains("target.safetensors") && Contains("cannot write"));
    CHECK(fs::is_directory(target));
    CHECK_FALSE(fs::exists(target.string() + ".tmp"));
  }
  SECTION("overwriting an existing file") {
    const std::string path = tmp.file("over.safetensors");
    write_bytes(path, "old contents");
    w.write(path);
    CHECK(SafetensorsFile(path).read_as_float("a") == f);
  }
}
