// simcalkv-eval: a progress bar with ETA on stderr (redrawn in place on a terminal, a line per sample otherwise).
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

#include <unistd.h>

namespace simcalkv::eval {

inline std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  const long long t = static_cast<long long>(s + 0.5);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%llds", t);
  return buf;
}

class Progress {
 public:
  Progress(std::size_t total_units, std::size_t total_samples, bool enabled)
      : total_(total_units), samples_(total_samples), enabled_(enabled), tty_(::isatty(2) != 0),
        start_(std::chrono::steady_clock::now()) {}

  /// `units` decodes finished in all, `sample` (1-based) being worked on, of dataset `what`.
  void update(std::size_t units, std::size_t sample, const std::string& what, bool sample_done = false) {
    if (!enabled_) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double frac = total_ ? static_cast<double>(units) / static_cast<double>(total_) : 1.0;
    const double eta = units ? elapsed / static_cast<double>(units) * static_cast<double>(total_ - units) : -1.0;
    if (tty_) {
      const int width = 28, fill = static_cast<int>(frac * width);
      std::string bar(static_cast<std::size_t>(fill), '=');
      if (fill < width) bar += '>';
      bar.resize(width, ' ');
      std::fprintf(stderr, "\r[%s] %3d%% sample %zu/%zu %-24.24s elapsed %s ETA %s   ", bar.c_str(),
                   static_cast<int>(frac * 100), sample, samples_, what.c_str(), format_duration(elapsed).c_str(),
                   units ? format_duration(eta).c_str() : "?");
      std::fflush(stderr);
      drawn_ = true;
    } else if (sample_done) {
      std::fprintf(stderr, "[%3d%%] sample %zu/%zu (%s) done, elapsed %s, ETA %s\n", static_cast<int>(frac * 100),
                   sample, samples_, what.c_str(), format_duration(elapsed).c_str(), format_duration(eta).c_str());
    }
  }
  /// Ends the bar's line before other output.
  void finish() {
    if (drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }
  [[nodiscard]] double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::size_t total_, samples_;
  bool enabled_, tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace simcalkv::eval
