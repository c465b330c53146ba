// simcalkv: errors raised at the API boundary.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
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

template <class... Parts>
[[noreturn]] void fail(ErrorCode code, Parts&&... parts) {
  std::ostringstream message;
  (message << ... << std::forward<Parts>(parts));
  throw Error(code, message.str());
}

template <class... Parts>
void require(bool condition, ErrorCode code, Parts&&... parts) {
  if (!condition) fail(code, std::forward<Parts>(parts)...);
}

}  // namespace detail
}  // namespace simcalkv
