// simcalkv: errors raised at the API boundary.
#pragma once

#include <charconv>
#include <concepts>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

namespace simcalkv {

/// What went wrong, for callers that want to branch on it rather than parse messages.
enum class ErrorCode {
  invalid_argument,  // wrong shape, stride, null buffer, unknown name or option
  non_finite,        // NaN or Inf in keys, values, queries or a computed result
  budget_out_of_range,
  capacity_overflow,
  io,                // a file that cannot be read or is corrupt
};

/// The one exception type the library throws. Messages name the offending argument.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error("simcalkv: " + message), code_(code) {}
  [[nodiscard]] ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

namespace detail {

// Messages are built without iostreams: a host process may hold two copies of libstdc++'s locale
// machinery (PyTorch 2.11 wheels with a C++ extension built by the system g++ do), and there any
// std::ostringstream in the extension crashes. Numbers are written as "%g" writes them, in no locale.
inline void append_part(std::string& out, std::string_view text) { out += text; }
inline void append_part(std::string& out, const char* text) { out += text ? text : "(null)"; }
inline void append_part(std::string& out, char c) { out += c; }
template <class T>
  requires(std::is_arithmetic_v<T> || std::is_enum_v<T>)
void append_part(std::string& out, T value) {
  char buffer[64];
  std::to_chars_result written;
  if constexpr (std::is_enum_v<T>) {
    written = std::to_chars(buffer, buffer + sizeof buffer, static_cast<std::underlying_type_t<T>>(value));
  } else if constexpr (std::is_same_v<T, bool>) {
    written = std::to_chars(buffer, buffer + sizeof buffer, value ? 1 : 0);
  } else if constexpr (std::is_floating_point_v<T>) {
    written = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::general, 6);
  } else {
    written = std::to_chars(buffer, buffer + sizeof buffer, value);
  }
  out.append(buffer, written.ec == std::errc{} ? written.ptr : buffer);
}

/// The parts of a message, concatenated.
template <class... Parts>
std::string message_of(const Parts&... parts) {
  std::string message;
  (append_part(message, parts), ...);
  return message;
}

template <class... Parts>
[[noreturn]] void fail(ErrorCode code, const Parts&... parts) {
  throw Error(code, message_of(parts...));
}

template <class... Parts>
void require(bool condition, ErrorCode code, const Parts&... parts) {
  if (!condition) fail(code, parts...);
}

}  // namespace detail
}  // namespace simcalkv
