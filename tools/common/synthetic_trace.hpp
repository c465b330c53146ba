// simcalkv tools: synthetic KV traces with the structure real models show.
//
// The model. A sequence has a latent "topic" z_t (latent_dim dimensions, each an AR(1) process
// whose correlation length is spread geometrically between topic_length_min and topic_length_max
// tokens), so it drifts slowly and neighbouring tokens share most of it. For each layer and KV head
// a random projection A maps z_t to the pre-RoPE key, plus a per-head mean, per-token noise and a
// few outlier channels (2-4, picked among the slowest-rotating RoPE pairs as in Llama-style
// models) whose magnitude is 5-10x that of the others; values are another projection of z_t plus
// noise. About duplicate_fraction of the positions repeat earlier tokens, as runs of one token or
// as copied phrases, and take that token's pre-RoPE key and value plus small noise. The first
// num_sinks tokens are attention sinks: their keys point along a per-head bias direction b that
// lives on the slowest RoPE pairs (so it hardly turns over the sequence), ordinary keys are flat
// along b, and sink values are near zero. A query is A applied to a head-specific random mix of
// z_t (query_topic_alignment of the identity plus a random matrix) plus noise, normalised, then
// scaled by alpha and shifted by beta * b. So a query favours keys whose topic resembles its own,
// which with the drifting topic and RoPE's fast channels also favours recent tokens, and its bias
// favours the sinks. alpha and beta are fitted per query head on a few queries of the second half
// (ending with the last): alpha makes the logits over ordinary keys have standard deviation
// logit_std (2.2 leaves most of the mass on one to a few hundred of 2048 keys; heads differ, some
// favour the current token, some distant passages), beta makes the sinks draw sink_mass of the
// attention on average. RoPE is applied to q and k at their positions with the HF rotate_half
// convention (channel i pairs with i + head_dim/2). Random numbers come from std::mt19937_64
// through our own uniform and Box-Muller mappings, one stream for the sequence, one per KV head
// and one per query head, so a seed gives the same trace with any standard library and fewer
// layers give a prefix of more layers' trace. Bit-identical output across builds also needs the
// same floating-point contraction (FMA) and libm; simcalkv-tracegen is built with
// -ffp-contract=off, which makes its output independent of -march.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/io/trace.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace simcalkv::tools {

struct SyntheticTraceConfig {
  int num_layers = 4;
  int num_q_heads = 8;
  int num_kv_heads = 2;
  int head_dim = 128;
  std::int64_t n = 2048;
  std::uint64_t seed = 1;
  float rope_theta = 10000.0f;

  int latent_dim = 32;                // dimensions of the topic
  float topic_length_min = 8.0f;      // shortest correlation length of a topic dimension, tokens
  float topic_length_max = 512.0f;    // longest
  float key_noise = 0.6f;             // per-token key noise (the topic part has unit variance per channel)
  float value_noise = 0.8f;           // per-token value noise
  float duplicate_fraction = 0.1f;    // share of positions that repeat an earlier token
  float duplicate_noise = 0.05f;      // noise on a repeat, relative to a channel's typical size
  int num_sinks = 4;                  // attention-sink tokens at the start
  float sink_mass = 0.3f;             // attention the last queries give the sinks, together
  int num_outlier_channels = 3;       // key channels with large magnitude
  float outlier_scale_min = 5.0f;     // their magnitude relative to a typical channel
  float outlier_scale_max = 10.0f;
  float logit_std = 2.2f;             // std of the last queries' logits over ordinary keys
  float query_topic_alignment = 0.5f; // weight of the key's own topic in a query's (random) topic mix
};

namespace detail_synth {

inline std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// mt19937_64 with portable mappings to uniform and normal numbers.
class Rng {
 public:
  Rng(std::uint64_t seed, std::uint64_t stream, std::uint64_t a = 0, std::uint64_t b = 0)
      : engine_(splitmix64(splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ (a + 1)) ^ (b + 1))) {}

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  /// Uniform integer in [0, m), m > 0.
  std::int64_t below(std::int64_t m) {
    const auto i = static_cast<std::int64_t>(uniform() * static_cast<double>(m));
    return std::min(i, m - 1);
  }

  /// Standard normal by Box-Muller (both outputs used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(angle);
    has_spare_ = true;
    return r * std::cos(angle);
  }
  float normalf(double scale = 1.0) { return static_cast<float>(scale * normal()); }

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

enum Stream : std::uint64_t { sequence_stream = 1, kv_head_stream = 2, q_head_stream = 3 };

/// cos/sin of position * inv_freq[i] for every position and i < head_dim/2.
struct RopeTable {
  int half = 0;
  std::vector<float> cos, sin;  // [n][half]

  RopeTable(std::int64_t n, int head_dim, double theta) : half(head_dim / 2) {
    const auto h = static_cast<std::size_t>(half);
    cos.resize(static_cast<std::size_t>(n) * h);
    sin.resize(cos.size());
    std::vector<double> inv_freq(h);
    for (std::size_t i = 0; i < h; ++i) inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / head_dim);
    for (std::int64_t t = 0; t < n; ++t) {
      for (std::size_t i = 0; i < h; ++i) {
        const double angle = static_cast<double>(t) * inv_freq[i];
        cos[static_cast<std::size_t>(t) * h + i] = static_cast<float>(std::cos(angle));
        sin[static_cast<std::size_t>(t) * h + i] = static_cast<float>(std::sin(angle));
      }
    }
  }

  /// In place, HF rotate_half: (x_i, x_{i+half}) -> (x_i c - x_{i+half} s, x_{i+half} c + x_i s).
  void rotate(float* x, std::int64_t position) const noexcept {
    const auto h = static_cast<std::size_t>(half);
    const float* c = cos.data() + static_cast<std::size_t>(position) * h;
    const float* s = sin.data() + static_cast<std::size_t>(position) * h;
    for (std::size_t i = 0; i < h; ++i) {
      const float x1 = x[i];
      const float x2 = x[i + h];
      x[i] = x1 * c[i] - x2 * s[i];
      x[i + h] = x2 * c[i] + x1 * s[i];
    }
  }
};

inline double dot(const float* a, const float* b, int d) noexcept {
  double s = 0.0;
  for (int i = 0; i < d; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

/// out = base + sum_j z[j] * rows[j] (rows is [r][d]).
inline void project(const float* z, const std::vector<float>& rows, int r, int d, float* out) noexcept {
  for (int j = 0; j < r; ++j) {
    const float w = z[j];
    const float* row = rows.data() + static_cast<std::size_t>(j) * static_cast<std::size_t>(d);
    for (int c = 0; c < d; ++c) out[c] += w * row[c];
  }
}

inline void validate(const SyntheticTraceConfig& c) {
  using detail::require;
  constexpr auto bad = ErrorCode::invalid_argument;
  require(c.num_layers > 0 && c.num_q_heads > 0 && c.num_kv_heads > 0 && c.n > 0, bad,
          "synthetic trace: num_layers, num_q_heads, num_kv_heads and n must be positive");
  require(c.num_q_heads % c.num_kv_heads == 0, bad, "synthetic trace: num_q_heads (", c.num_q_heads,
          ") is not a multiple of num_kv_heads (", c.num_kv_heads, ")");
  require(c.head_dim >= 2 && c.head_dim % 2 == 0, bad, "synthetic trace: head_dim (", c.head_dim,
          ") must be even and at least 2 for RoPE");
  require(c.rope_theta > 1.0f, bad, "synthetic trace: rope_theta must exceed 1");
  require(c.latent_dim > 0, bad, "synthetic trace: latent_dim must be positive");
  require(c.topic_length_min >= 1.0f && c.topic_length_max >= c.topic_length_min, bad,
          "synthetic trace: need 1 <= topic_length_min <= topic_length_max");
  require(c.key_noise >= 0.0f && c.value_noise >= 0.0f && c.duplicate_noise >= 0.0f, bad,
          "synthetic trace: noise levels must be non-negative");
  require(c.duplicate_fraction >= 0.0f && c.duplicate_fraction < 0.9f, bad,
          "synthetic trace: duplicate_fraction must lie in [0, 0.9)");
  require(c.num_sinks >= 0 && c.num_outlier_channels >= 0, bad,
          "synthetic trace: num_sinks and num_outlier_channels must be non-negative");
  require(c.sink_mass > 0.0f && c.sink_mass < 1.0f, bad, "synthetic trace: sink_mass must lie in (0, 1)");
  require(c.outlier_scale_min > 0.0f && c.outlier_scale_max >= c.outlier_scale_min, bad,
          "synthetic trace: need 0 < outlier_scale_min <= outlier_scale_max");
  require(c.logit_std > 0.0f && c.query_topic_alignment >= 0.0f, bad,
          "synthetic trace: need logit_std > 0 and query_topic_alignment >= 0");
}

/// Which earlier position each position repeats (itself if none). Positions below `first` are
/// never repeats nor repeated.
inline std::vector<std::int64_t> duplicate_sources(Rng& rng, std::int64_t n, std::int64_t first, double fraction) {
  std::vector<std::int64_t> src(static_cast<std::size_t>(n));
  for (std::int64_t t = 0; t < n; ++t) src[static_cast<std::size_t>(t)] = t;
  if (fraction <= 0.0) return src;
  constexpr std::int64_t max_run = 8;
  const double mean_run = (1.0 + max_run) / 2.0;
  const double start_probability = fraction / ((1.0 - fraction) * mean_run);
  std::int64_t t = first + 1;
  while (t < n) {
    if (rng.uniform() >= start_probability) {
      ++t;
      continue;
    }
    const std::int64_t len = std::min<std::int64_t>(1 + rng.below(max_run), n - t);
    const bool phrase = rng.uniform() < 0.5 && t - first >= 2 * len;
    if (phrase) {  // copy the phrase [s, s + len) from earlier in the text
      const std::int64_t s = first + rng.below(t - first - len + 1);
      for (std::int64_t i = 0; i < len; ++i) src[static_cast<std::size_t>(t + i)] = s + i;
    } else {  // a run of the token just before
      for (std::int64_t i = 0; i < len; ++i) src[static_cast<std::size_t>(t + i)] = t - 1;
    }
    t += len + 1;  // at least one fresh token between repeats
  }
  return src;
}

}  // namespace detail_synth

/// A deterministic synthetic trace (see the comment at the top of this file).
inline io::Trace make_synthetic_trace(const SyntheticTraceConfig& config) {
  using namespace detail_synth;
  validate(config);

  io::Trace trace;
  trace.num_layers = config.num_layers;
  trace.num_q_heads = config.num_q_heads;
  trace.num_kv_heads = config.num_kv_heads;
  trace.head_dim = config.head_dim;
  trace.n = config.n;
  trace.allocate();
  trace.metadata["source"] = "simcalkv-synthetic";
  trace.metadata["seed"] = std::to_string(config.seed);
  std::ostringstream theta;
  theta << config.rope_theta;
  trace.metadata["rope_theta"] = theta.str();

  const int d = config.head_dim;
  const int half = d / 2;
  const int r = config.latent_dim;
  const std::int64_t n = config.n;
  const auto ud = static_cast<std::size_t>(d);
  const auto ur = static_cast<std::size_t>(r);
  const std::int64_t sinks = std::min<std::int64_t>(config.num_sinks, n);
  const double sqrt_d = std::sqrt(static_cast<double>(d));
  const RopeTable rope(n, d, static_cast<double>(config.rope_theta));

  // --- the sequence: topic and repeats ---
  Rng seq(config.seed, sequence_stream);
  std::vector<float> z(static_cast<std::size_t>(n) * ur);  // [n][r]
  for (int j = 0; j < r; ++j) {
    const double frac = r > 1 ? static_cast<double>(j) / (r - 1) : 0.0;
    const double length = config.topic_length_min * std::pow(config.topic_length_max / config.topic_length_min, frac);
    const double a = std::exp(-1.0 / length);
    const double b = std::sqrt(1.0 - a * a);
    double value = seq.normal();
    for (std::int64_t t = 0; t < n; ++t) {
      if (t > 0) value = a * value + b * seq.normal();
      z[static_cast<std::size_t>(t) * ur + static_cast<std::size_t>(j)] = static_cast<float>(value);
    }
  }
  const std::vector<std::int64_t> src = duplicate_sources(seq, n, sinks, config.duplicate_fraction);

  const double key_rms = std::sqrt(1.0 + config.key_noise * config.key_noise + 0.25);
  const double value_rms = std::sqrt(1.0 + config.value_noise * config.value_noise + 0.04);
  const int group = config.num_q_heads / config.num_kv_heads;
  const double sigma = config.logit_std;

  std::vector<float> u(static_cast<std::size_t>(n) * ud);  // one query head's unscaled queries
  std::vector<float> zmix(ur);
  std::vector<float> scratch(ud), rotated(ud);

  for (int l = 0; l < config.num_layers; ++l) {
    for (int h = 0; h < config.num_kv_heads; ++h) {
      Rng rng(config.seed, kv_head_stream, static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(h));
      std::vector<float> key_proj(ur * ud), value_proj(ur * ud), key_mean(ud), value_mean(ud);
      for (auto& x : key_proj) x = rng.normalf(1.0 / std::sqrt(r));
      for (auto& x : value_proj) x = rng.normalf(1.0 / std::sqrt(r));
      for (auto& x : key_mean) x = rng.normalf(0.5);
      for (auto& x : value_mean) x = rng.normalf(0.2);

      // Outlier channels among the slowest RoPE pairs; the bias direction on the slow pairs left over.
      const int outlier_pairs = std::min(half, std::max(2, half / 8));
      std::vector<int> candidates;
      for (int i = half - outlier_pairs; i < half; ++i) {
        candidates.push_back(i);
        candidates.push_back(i + half);
      }
      for (std::size_t i = candidates.size(); i > 1; --i) {
        std::swap(candidates[i - 1], candidates[static_cast<std::size_t>(rng.below(static_cast<std::int64_t>(i)))]);
      }
      const auto num_outliers = std::min<std::size_t>(static_cast<std::size_t>(config.num_outlier_channels),
                                                      candidates.size());
      std::vector<int> outliers(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(num_outliers));
      std::vector<float> outlier_scale(num_outliers), outlier_sign(num_outliers);
      for (std::size_t o = 0; o < num_outliers; ++o) {
        outlier_scale[o] =
            static_cast<float>(rng.uniform(config.outlier_scale_min, config.outlier_scale_max) * key_rms);
        outlier_sign[o] = rng.uniform() < 0.5 ? -1.0f : 1.0f;
      }
      auto is_outlier = [&](int c) { return std::find(outliers.begin(), outliers.end(), c) != outliers.end(); };

      std::vector<float> bias(ud, 0.0f);
      const int bias_pairs = std::min(half, std::max(2, half / 16));
      std::vector<int> support;
      for (int i = half - bias_pairs; i < half; ++i) {
        if (!is_outlier(i)) support.push_back(i);
        if (!is_outlier(i + half)) support.push_back(i + half);
      }
      if (support.empty())
        for (int c = 0; c < d; ++c)
          if (!is_outlier(c)) support.push_back(c);
      if (support.empty())
        for (int c = 0; c < d; ++c) support.push_back(c);
      double bias_norm = 0.0;
      for (int c : support) {
        const double x = rng.normal();
        bias[static_cast<std::size_t>(c)] = static_cast<float>(x);
        bias_norm += x * x;
      }
      bias_norm = std::sqrt(bias_norm);
      if (bias_norm == 0.0) {
        bias[static_cast<std::size_t>(support.front())] = 1.0f;
        bias_norm = 1.0;
      }
      for (auto& x : bias) x = static_cast<float>(x / bias_norm);
      const double bias_offset = dot(key_mean.data(), bias.data(), d);

      // Sinks: keys along the bias direction (length of an ordinary key) plus the outlier channels'
      // offsets; values near zero.
      const double sink_length = key_rms * sqrt_d;
      for (std::int64_t s = 0; s < sinks; ++s) {
        float* key = trace.key(l, h, s);
        for (int c = 0; c < d; ++c) {
          key[c] = static_cast<float>(sink_length * (bias[static_cast<std::size_t>(c)] + rng.normal() * 0.1 / sqrt_d));
        }
        for (std::size_t o = 0; o < num_outliers; ++o) key[outliers[o]] += outlier_scale[o] * outlier_sign[o];
        float* val = trace.value(l, h, s);
        for (int c = 0; c < d; ++c) val[c] = rng.normalf(0.02);
      }

      // Ordinary keys and values (pre-RoPE), repeats copying their source.
      for (std::int64_t t = sinks; t < n; ++t) {
        float* key = trace.key(l, h, t);
        float* val = trace.value(l, h, t);
        const std::int64_t from = src[static_cast<std::size_t>(t)];
        if (from != t) {
          const float* key_from = trace.key(l, h, from);
          const float* val_from = trace.value(l, h, from);
          for (int c = 0; c < d; ++c) key[c] = key_from[c] + rng.normalf(config.duplicate_noise * key_rms);
          for (int c = 0; c < d; ++c) val[c] = val_from[c] + rng.normalf(config.duplicate_noise * value_rms);
          continue;
        }
        const float* zt = z.data() + static_cast<std::size_t>(t) * ur;
        for (int c = 0; c < d; ++c) key[c] = key_mean[static_cast<std::size_t>(c)] + rng.normalf(config.key_noise);
        project(zt, key_proj, r, d, key);
        for (std::size_t o = 0; o < num_outliers; ++o) {
          float& x = key[outliers[o]];
          x = outlier_scale[o] * (outlier_sign[o] + 0.3f * x / static_cast<float>(key_rms));
        }
        // Ordinary keys barely vary along the bias direction: only sinks answer the query bias.
        const double along = dot(key, bias.data(), d);
        const double wanted = bias_offset + 0.1 * rng.normal();
        for (int c = 0; c < d; ++c) key[c] += static_cast<float>((wanted - along) * bias[static_cast<std::size_t>(c)]);
        for (int c = 0; c < d; ++c) val[c] = value_mean[static_cast<std::size_t>(c)] + rng.normalf(config.value_noise);
        project(zt, value_proj, r, d, val);
      }
      for (std::int64_t t = 0; t < n; ++t) rope.rotate(trace.key(l, h, t), t);

      // Calibration queries: the last position and others spread over the second half.
      std::vector<std::int64_t> calib;
      for (std::int64_t i = 0; i < 8; ++i) {
        const std::int64_t t = n - 1 - i * (n / 16);
        if (t >= sinks && (calib.empty() || t != calib.back())) calib.push_back(t);
      }

      for (int g = h * group; g < (h + 1) * group; ++g) {
        Rng qrng(config.seed, q_head_stream, static_cast<std::uint64_t>(l), static_cast<std::uint64_t>(g));
        std::vector<float> mix(ur * ur);
        for (auto& x : mix) x = qrng.normalf(1.0 / std::sqrt(r));
        for (std::size_t i = 0; i < ur; ++i) mix[i * ur + i] += config.query_topic_alignment;
        for (std::int64_t t = 0; t < n; ++t) {
          const float* zt = z.data() + static_cast<std::size_t>(t) * ur;
          for (std::size_t i = 0; i < ur; ++i) {
            float m = 0.0f;
            for (std::size_t j = 0; j < ur; ++j) m += mix[i * ur + j] * zt[j];
            zmix[i] = m;
          }
          float* ut = u.data() + static_cast<std::size_t>(t) * ud;
          for (int c = 0; c < d; ++c) ut[c] = qrng.normalf(0.5);
          project(zmix.data(), key_proj, r, d, ut);
          const double along = dot(ut, bias.data(), d);  // the bias direction is added separately
          for (int c = 0; c < d; ++c) ut[c] -= static_cast<float>(along * bias[static_cast<std::size_t>(c)]);
          const double norm = std::sqrt(dot(ut, ut, d));
          if (norm > 0.0)
            for (int c = 0; c < d; ++c) ut[c] = static_cast<float>(ut[c] / norm);
        }

        // For calibration query t, ordinary key j gets logit alpha * x_j + beta * y_j and sink s
        // gets alpha * a_s + beta * b_s (u and the bias direction dotted with the rotated keys).
        struct Probe {
          std::vector<double> x, y, a, b;
        };
        std::vector<Probe> probes;
        double vxx = 0.0;
        for (const std::int64_t t : calib) {
          std::copy_n(u.data() + static_cast<std::size_t>(t) * ud, ud, scratch.data());
          rope.rotate(scratch.data(), t);
          std::copy(bias.begin(), bias.end(), rotated.begin());
          rope.rotate(rotated.data(), t);
          Probe p;
          for (std::int64_t j = 0; j <= t; ++j) {
            const float* kj = trace.key(l, h, j);
            const double x = dot(scratch.data(), kj, d) / sqrt_d;
            const double y = dot(rotated.data(), kj, d) / sqrt_d;
            (j < sinks ? p.a : p.x).push_back(x);
            (j < sinks ? p.b : p.y).push_back(y);
          }
          double mean = 0.0, var = 0.0;
          for (double x : p.x) mean += x;
          mean /= static_cast<double>(p.x.size());
          for (double x : p.x) var += (x - mean) * (x - mean);
          vxx += var / static_cast<double>(p.x.size());
          probes.push_back(std::move(p));
        }

        // alpha: the ordinary logits' spread is logit_std.
        double alpha = 1.0;
        if (!probes.empty() && vxx > 1e-12) alpha = sigma / std::sqrt(vxx / static_cast<double>(probes.size()));

        // beta: the sinks draw sink_mass of the attention on average over the calibration queries,
        // i.e. mean_t [log sum_s e^sink_s - log sum_j e^logit_j] = log(sink_mass / (1 - sink_mass)).
        // That is increasing in beta (sinks answer the bias, ordinary keys hardly); Newton from 0.
        double beta = 0.0;
        if (sinks > 0 && !probes.empty()) {
          const double goal = std::log(config.sink_mass / (1.0 - config.sink_mass));
          auto log_sum_exp = [&](const std::vector<double>& x, const std::vector<double>& y, double b,
                                 double& slope) {
            double top = -1e300;
            for (std::size_t j = 0; j < x.size(); ++j) top = std::max(top, alpha * x[j] + b * y[j]);
            double sum = 0.0, weighted = 0.0;
            for (std::size_t j = 0; j < x.size(); ++j) {
              const double w = std::exp(alpha * x[j] + b * y[j] - top);
              sum += w;
              weighted += w * y[j];
            }
            slope = weighted / sum;
            return top + std::log(sum);
          };
          for (int iteration = 0; iteration < 8; ++iteration) {
            double f = 0.0, df = 0.0;
            for (const Probe& p : probes) {
              double slope_sinks = 0.0, slope_rest = 0.0;
              f += log_sum_exp(p.a, p.b, beta, slope_sinks) - log_sum_exp(p.x, p.y, beta, slope_rest) - goal;
              df += slope_sinks - slope_rest;
            }
            if (df <= 1e-12) break;
            const double next = std::max(0.0, beta - f / df);
            const bool done = std::abs(next - beta) < 1e-6 * (1.0 + beta);
            beta = next;
            if (done) break;
          }
        }

        for (std::int64_t t = 0; t < n; ++t) {
          const float* ut = u.data() + static_cast<std::size_t>(t) * ud;
          float* qt = trace.query(l, g, t);
          for (int c = 0; c < d; ++c)
            qt[c] = static_cast<float>(alpha * ut[c] + beta * bias[static_cast<std::size_t>(c)]);
          rope.rotate(qt, t);
        }
      }
    }
  }
  return trace;
}

}  // namespace simcalkv::tools
