// simcalkv: reading and writing safetensors files.
//
// The format: an 8-byte little-endian unsigned header length N, then N bytes of UTF-8 JSON, then
// the data section. The JSON object maps each tensor name to
//   {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
// with offsets counted from the start of the data section, plus an optional "__metadata__"
// object of string -> string. Data is little-endian and row-major.
//
// SafetensorsFile maps a file read-only and validates the whole header up front, so every view it
// hands out afterwards is known to lie inside the file. SafetensorsWriter builds a file in memory
// and writes it atomically (to "<path>.tmp", then rename).
//
// Errors are simcalkv::Error with ErrorCode::io; messages name the file and, where there is one,
// the tensor.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/kernels/convert.hpp"
#include "simcalkv/numeric.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace simcalkv::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader assumes a little-endian host");

// --- element types ---------------------------------------------------------------------------

/// Element types of a safetensors tensor (the names are those used in the file).
enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

inline constexpr std::array<DType, 10> all_dtypes = {DType::F32, DType::F16, DType::BF16, DType::F64,
                                                     DType::I64, DType::I32, DType::I16, DType::I8,
                                                     DType::U8,  DType::BOOL};

/// Bytes per element.
inline constexpr std::size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::F64:
    case DType::I64: return 8;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16: return 2;
    case DType::I8:
    case DType::U8:
    case DType::BOOL: return 1;
  }
  return 0;
}

/// The name the safetensors header uses ("F32", "BF16", ...).
inline constexpr const char* dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

/// Parses a header dtype name (exact, case-sensitive, as the format specifies); nullopt if unknown.
inline std::optional<DType> try_parse_dtype(std::string_view name) noexcept {
  for (DType d : all_dtypes)
    if (name == dtype_name(d)) return d;
  return std::nullopt;
}

/// Parses a header dtype name; throws Error(invalid_argument) naming the supported ones if unknown.
inline DType parse_dtype(std::string_view name) {
  if (auto d = try_parse_dtype(name)) return *d;
  std::string known;
  for (DType d : all_dtypes) {
    if (!known.empty()) known += ", ";
    known += dtype_name(d);
  }
  detail::fail(ErrorCode::invalid_argument, "unknown dtype '", name, "' (supported: ", known, ")");
}

/// "[2, 3, 4]"
inline std::string shape_string(std::span<const std::int64_t> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

namespace detail_st {

/// Product of the dimensions, or nullopt on a negative dimension or overflow of `limit`.
inline std::optional<std::uint64_t> element_count(std::span<const std::int64_t> shape,
                                                  std::uint64_t limit = std::numeric_limits<std::uint64_t>::max()) {
  std::uint64_t count = 1;
  for (std::int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    const auto d = static_cast<std::uint64_t>(dim);
    if (d != 0 && count > limit / d) return std::nullopt;
    count *= d;
  }
  return count;
}

/// A JSON number that is a non-negative integer, as uint64.
inline std::optional<std::uint64_t> as_u64(const nlohmann::json& j) {
  if (j.is_number_unsigned()) return j.get<std::uint64_t>();
  if (j.is_number_integer()) {
    const auto v = j.get<std::int64_t>();
    if (v >= 0) return static_cast<std::uint64_t>(v);
  }
  return std::nullopt;
}

}  // namespace detail_st

// --- reading ---------------------------------------------------------------------------------

/// One tensor of a mapped file. `bytes` views the mapping and lives as long as the file object.
struct TensorInfo {
  DType dtype{};
  std::vector<std::int64_t> shape;
  std::span<const std::byte> bytes;

  [[nodiscard]] std::uint64_t numel() const { return *detail_st::element_count(shape); }
};

/// A safetensors file mapped read-only. Move-only; unmaps on destruction.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(std::string path) : path_(std::move(path)) {
    map_file();
    try {
      parse_header();
    } catch (...) {
      unmap();
      throw;
    }
  }

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&& other) noexcept { swap(other); }
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept {
    if (this != &other) {
      unmap();
      tensors_.clear();
      metadata_.clear();
      swap(other);
    }
    return *this;
  }
  ~SafetensorsFile() { unmap(); }

  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] std::size_t size() const noexcept { return tensors_.size(); }

  /// Tensor names, sorted.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& [name, info] : tensors_) out.push_back(name);
    return out;
  }

  [[nodiscard]] bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// The tensor's dtype, shape and bytes; throws if the file has no such tensor.
  [[nodiscard]] const TensorInfo& info(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': tensor '", name, "' is absent (the file holds ",
                   tensors_.size(), " tensor", tensors_.size() == 1 ? "" : "s", ")");
    }
    return it->second;
  }

  /// The "__metadata__" map (empty when the header has none).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// One metadata value; throws if the key is missing.
  [[nodiscard]] const std::string& metadata_value(const std::string& key) const {
    const auto it = metadata_.find(key);
    if (it == metadata_.end())
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': metadata key '", key, "' is absent");
    return it->second;
  }

  /// The tensor's elements widened to float (F32, F16 or BF16 only).
  [[nodiscard]] std::vector<float> read_as_float(const std::string& name) const {
    const TensorInfo& t = info(name);
    const std::size_t count = static_cast<std::size_t>(t.numel());
    std::vector<float> out(count);
    switch (t.dtype) {
      case DType::F32: widen<float>(t.bytes, out.data(), count); break;
      case DType::F16: widen<half>(t.bytes, out.data(), count); break;
      case DType::BF16: widen<bfloat16>(t.bytes, out.data(), count); break;
      default:
        detail::fail(ErrorCode::io, "safetensors file '", path_, "': tensor '", name, "' has dtype ",
                     dtype_name(t.dtype), ", which cannot be read as float (expected F32, F16 or BF16)");
    }
    return out;
  }

  /// As read_as_float(name), after checking the tensor has exactly `expected_shape`.
  [[nodiscard]] std::vector<float> read_as_float(const std::string& name,
                                                 std::span<const std::int64_t> expected_shape) const {
    const TensorInfo& t = info(name);
    if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end())) {
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': tensor '", name, "' has shape ",
                   shape_string(t.shape), ", expected ", shape_string(expected_shape));
    }
    return read_as_float(name);
  }
  [[nodiscard]] std::vector<float> read_as_float(const std::string& name,
                                                 std::initializer_list<std::int64_t> expected_shape) const {
    return read_as_float(name, std::span<const std::int64_t>(expected_shape.begin(), expected_shape.size()));
  }

 private:
  template <class T>
  static void widen(std::span<const std::byte> bytes, float* dst, std::size_t count) {
    // The data section need not be aligned for T, so stage through an aligned buffer.
    constexpr std::size_t chunk = 4096;
    T staging[chunk];
    for (std::size_t i = 0; i < count; i += chunk) {
      const std::size_t m = std::min(chunk, count - i);
      std::memcpy(staging, bytes.data() + i * sizeof(T), m * sizeof(T));
      load_row(staging, dst + i, m);
    }
  }

  template <class... Parts>
  [[noreturn]] void corrupt(Parts&&... parts) const {
    detail::fail(ErrorCode::io, "safetensors file '", path_, "': ", std::forward<Parts>(parts)...);
  }

  void map_file() {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': cannot open: ", std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': cannot stat: ", std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ < 8) {
      ::close(fd);
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': truncated: ", size_,
                   " bytes, too short for the 8-byte header length");
    }
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (p == MAP_FAILED) {
      detail::fail(ErrorCode::io, "safetensors file '", path_, "': cannot mmap: ", std::strerror(err));
    }
    base_ = static_cast<const std::byte*>(p);
  }

  void unmap() noexcept {
    if (base_ != nullptr) ::munmap(const_cast<std::byte*>(base_), size_);
    base_ = nullptr;
    size_ = 0;
  }

  void swap(SafetensorsFile& other) noexcept {
    std::swap(path_, other.path_);
    std::swap(base_, other.base_);
    std::swap(size_, other.size_);
    std::swap(tensors_, other.tensors_);
    std::swap(metadata_, other.metadata_);
  }

  void parse_header() {
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, base_, 8);
    if (header_len > size_ - 8) {
      corrupt("header length ", header_len, " exceeds the file size (", size_, " bytes, ", size_ - 8,
              " after the length field); the file is truncated or not safetensors");
    }
    const auto* text = reinterpret_cast<const char*>(base_ + 8);
    const std::size_t data_start = 8 + static_cast<std::size_t>(header_len);
    const std::size_t data_size = size_ - data_start;

    // nlohmann's parser stops at a NUL, so "...}\0GARBAGE" would pass; the format pads with spaces only.
    if (const void* nul = std::memchr(text, 0, static_cast<std::size_t>(header_len))) {
      corrupt("the header holds a NUL byte at offset ", 8 + (static_cast<const char*>(nul) - text),
              " (the format pads its header with spaces only)");
    }
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text, text + header_len);
    } catch (const nlohmann::json::exception& e) {
      corrupt("bad JSON header: ", e.what());
    }
    if (!header.is_object()) corrupt("bad JSON header: expected an object, got ", header.type_name());

    struct Range {
      std::uint64_t begin, end;
      const std::string* name;
    };
    std::vector<Range> ranges;

    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (entry.is_null()) continue;
        if (!entry.is_object()) corrupt("__metadata__ must be an object of strings, got ", entry.type_name());
        for (const auto& [key, value] : entry.items()) {
          if (!value.is_string()) {
            corrupt("metadata value for key '", key, "' must be a string, got ", value.type_name(), " ",
                    value.dump());
          }
          metadata_.emplace(key, value.get<std::string>());
        }
        continue;
      }
      if (!entry.is_object()) corrupt("tensor '", name, "': entry must be an object, got ", entry.type_name());

      const auto dtype_it = entry.find("dtype");
      const auto shape_it = entry.find("shape");
      const auto offsets_it = entry.find("data_offsets");
      if (dtype_it == entry.end()) corrupt("tensor '", name, "': missing dtype");
      if (shape_it == entry.end()) corrupt("tensor '", name, "': missing shape");
      if (offsets_it == entry.end()) corrupt("tensor '", name, "': missing data_offsets");

      TensorInfo t;
      if (!dtype_it->is_string()) corrupt("tensor '", name, "': dtype must be a string, got ", dtype_it->dump());
      const auto dtype = try_parse_dtype(dtype_it->get<std::string>());
      if (!dtype) {
        corrupt("tensor '", name, "': unknown dtype '", dtype_it->get<std::string>(),
                "' (supported: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
      }
      t.dtype = *dtype;

      if (!shape_it->is_array()) corrupt("tensor '", name, "': shape must be an array, got ", shape_it->dump());
      for (const auto& dim : *shape_it) {
        const auto d = detail_st::as_u64(dim);
        if (!d || *d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          corrupt("tensor '", name, "': shape ", shape_it->dump(), " must hold non-negative integers");
        }
        t.shape.push_back(static_cast<std::int64_t>(*d));
      }

      const auto& offsets = *offsets_it;
      std::optional<std::uint64_t> begin, end;
      if (offsets.is_array() && offsets.size() == 2) {
        begin = detail_st::as_u64(offsets[0]);
        end = detail_st::as_u64(offsets[1]);
      }
      if (!begin || !end || *begin > *end) {
        corrupt("tensor '", name, "': data_offsets ", offsets.dump(),
                " must be [begin, end] with 0 <= begin <= end");
      }
      if (*end > data_size) {
        corrupt("tensor '", name, "': data_offsets end ", *end, " lies beyond the data section (", data_size,
                " bytes); the file is truncated or corrupt");
      }
      const auto count = detail_st::element_count(t.shape, std::numeric_limits<std::uint64_t>::max() /
                                                               dtype_size(t.dtype));
      const std::uint64_t bytes = *end - *begin;
      if (!count || *count * dtype_size(t.dtype) != bytes) {
        corrupt("tensor '", name, "': byte size ", bytes, " does not match shape ", shape_string(t.shape), " x ",
                dtype_name(t.dtype), count ? " (" + std::to_string(*count * dtype_size(t.dtype)) + " bytes)" : "");
      }
      t.bytes = std::span<const std::byte>(base_ + data_start + *begin, static_cast<std::size_t>(bytes));
      const auto [it, inserted] = tensors_.emplace(name, std::move(t));
      ranges.push_back({*begin, *end, &it->first});
    }

    // Overlap check: empty tensors occupy nothing and cannot overlap.
    std::erase_if(ranges, [](const Range& r) { return r.begin == r.end; });
    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (std::size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].begin < ranges[i - 1].end) {
        corrupt("tensors '", *ranges[i - 1].name, "' [", ranges[i - 1].begin, ", ", ranges[i - 1].end, ") and '",
                *ranges[i].name, "' [", ranges[i].begin, ", ", ranges[i].end, ") overlap");
      }
    }
  }

  std::string path_;
  const std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// --- writing ---------------------------------------------------------------------------------

/// Collects tensors and metadata, then writes one safetensors file.
class SafetensorsWriter {
 public:
  /// Copies `bytes` bytes from `data` as tensor `name`. The size must equal product(shape) times
  /// the dtype's size; names must be unique and not "__metadata__".
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape, const void* data,
           std::size_t bytes) {
    detail::require(!name.empty(), ErrorCode::invalid_argument, "safetensors writer: empty tensor name");
    detail::require(name != "__metadata__", ErrorCode::invalid_argument,
                    "safetensors writer: '__metadata__' is reserved and cannot name a tensor");
    for (const auto& e : entries_) {
      detail::require(e.name != name, ErrorCode::invalid_argument, "safetensors writer: duplicate tensor name '",
                      name, "'");
    }
    const auto count = detail_st::element_count(shape, std::numeric_limits<std::uint64_t>::max() / dtype_size(dtype));
    detail::require(count.has_value(), ErrorCode::invalid_argument, "safetensors writer: tensor '", name,
                    "': invalid shape ", shape_string(shape));
    detail::require(*count * dtype_size(dtype) == bytes, ErrorCode::invalid_argument, "safetensors writer: tensor '",
                    name, "': size mismatch: shape ", shape_string(shape), " x ", dtype_name(dtype), " needs ",
                    *count * dtype_size(dtype), " bytes, got ", bytes);
    detail::require(bytes == 0 || data != nullptr, ErrorCode::invalid_argument, "safetensors writer: tensor '", name,
                    "': null data");
    Entry e{name, dtype, std::move(shape), std::vector<std::byte>(bytes)};
    if (bytes != 0) std::memcpy(e.data.data(), data, bytes);
    entries_.push_back(std::move(e));
  }

  /// Typed convenience: F32, F16 or BF16 from a span of the matching element type.
  template <StorageElement T>
  void add(const std::string& name, std::vector<std::int64_t> shape, std::span<const T> values) {
    constexpr DType dtype = std::is_same_v<T, float> ? DType::F32 : std::is_same_v<T, half> ? DType::F16 : DType::BF16;
    add(name, dtype, std::move(shape), values.data(), values.size_bytes());
  }

  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

  /// Writes the file: header padded with spaces to a multiple of 8 bytes, tensors in insertion
  /// order. Goes through "<path>.tmp" and a rename, so a failure leaves no partial file at `path`.
  void write(const std::string& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) meta[k] = v;
      header["__metadata__"] = std::move(meta);
    }
    std::uint64_t offset = 0;
    for (const auto& e : entries_) {
      nlohmann::ordered_json t = nlohmann::ordered_json::object();
      t["dtype"] = dtype_name(e.dtype);
      t["shape"] = e.shape;
      t["data_offsets"] = {offset, offset + e.data.size()};
      header[e.name] = std::move(t);
      offset += e.data.size();
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& e) {  // e.g. a name or value that is not UTF-8
      detail::fail(ErrorCode::invalid_argument, "safetensors writer: cannot write '", path, "': ", e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');

    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      detail::fail(ErrorCode::io, "safetensors writer: cannot create '", tmp, "' (writing '", path,
                   "'): ", std::strerror(errno));
    }
    auto put = [&](const void* p, std::size_t n) {
      const auto* c = static_cast<const char*>(p);
      while (n > 0) {
        const ssize_t w = ::write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        c += w;
        n -= static_cast<std::size_t>(w);
      }
      return true;
    };
    const std::uint64_t len = text.size();
    bool ok = put(&len, 8) && put(text.data(), text.size());
    for (const auto& e : entries_) ok = ok && put(e.data.data(), e.data.size());
    int err = ok ? 0 : errno;
    if (::close(fd) != 0 && ok) {
      ok = false;
      err = errno;
    }
    if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
      ok = false;
      err = errno;
    }
    if (!ok) {
      std::remove(tmp.c_str());
      detail::fail(ErrorCode::io, "safetensors writer: cannot write '", path, "': ",
                   err ? std::strerror(err) : "short write");
    }
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace simcalkv::io
