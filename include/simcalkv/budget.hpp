// simcalkv: how many entries a head keeps.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/options.hpp"

#include <cmath>
#include <cstddef>

namespace simcalkv {

/// A per-head budget: an absolute entry count, a fraction kept, or the research harness's
/// compression ratio (the fraction removed: budget = round((1 - r) * n)).
class Budget {
 public:
  using Kind = BudgetKind;  // options.hpp

  static Budget entries(std::size_t count) {
    Budget b(Kind::entries, static_cast<double>(count));
    b.count_ = count;  // exact: a double loses counts above 2^53 (SIZE_MAX - 4 would read back as 0)
    return b;
  }
  static Budget keep_fraction(double fraction) {
    detail::require(std::isfinite(fraction) && fraction > 0.0 && fraction <= 1.0, ErrorCode::budget_out_of_range,
                    "keep fraction must be in (0, 1], got ", fraction);
    return Budget(Kind::keep_fraction, fraction);
  }
  static Budget compress_ratio(double removed) {
    detail::require(std::isfinite(removed) && removed >= 0.0 && removed < 1.0, ErrorCode::budget_out_of_range,
                    "compress ratio (fraction removed) must be in [0, 1), got ", removed);
    return Budget(Kind::compress_ratio, removed);
  }

  [[nodiscard]] Kind kind() const noexcept { return kind_; }
  [[nodiscard]] double value() const noexcept { return value_; }
  /// The exact entry count of a Budget::entries (0 for the fractional kinds).
  [[nodiscard]] std::size_t count() const noexcept { return count_; }

  /// Entries to keep out of n. An absolute budget above n is an error: the caller asked for
  /// something the head cannot hold.
  [[nodiscard]] std::size_t for_length(std::size_t n) const {
    switch (kind_) {
      case Kind::entries:
        detail::require(count_ <= n, ErrorCode::budget_out_of_range, "budget ", count_,
                        " exceeds the head's length ", n);
        return count_;
      case Kind::keep_fraction:
        return static_cast<std::size_t>(std::llround(value_ * static_cast<double>(n)));
      case Kind::compress_ratio:
        return static_cast<std::size_t>(std::llround((1.0 - value_) * static_cast<double>(n)));
    }
    return n;
  }

  /// The kept fraction this budget means for a head of n entries.
  [[nodiscard]] double kept_fraction(std::size_t n) const {
    return n == 0 ? 1.0 : static_cast<double>(for_length(n)) / static_cast<double>(n);
  }

 private:
  Budget(Kind kind, double value) : kind_(kind), value_(value) {}
  Kind kind_;
  double value_;
  std::size_t count_ = 0;  // Kind::entries
};

}  // namespace simcalkv
