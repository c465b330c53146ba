// simcalkv CUDA decode attention: the number of splits per sequence, the workspace, the launch (the file comment of cuda/attention.cuh describes the whole).
#pragma once

#include "simcalkv/cuda/attention/kernels.cuh"
#include "simcalkv/cuda/attention/params.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <utility>

namespace simcalkv::cuda {

namespace detail {

// ---------------------------------------------------------------------------------------------
// Launch: the number of splits, the workspace

/// What the split rule needs of the current GPU.
struct DecodeDevice {
  int sms = 132;
  int smem_per_sm = 228 * 1024;
  int smem_reserved = 1024;  // per block
  int threads_per_sm = 2048;
  int blocks_per_sm = 32;
  int major = 0;  // compute capability
};

/// The current device's attributes, asked once per device: an engine calls decode every layer
/// of every step, and the attribute queries would cost it microseconds of host time each.
inline DecodeDevice decode_device() {
  DecodeDevice d;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return d;
  constexpr int kCached = 16;
  static std::mutex mutex;
  static DecodeDevice cache[kCached];
  static bool known[kCached] = {};
  if (device >= 0 && device < kCached) {
    std::lock_guard<std::mutex> lock(mutex);
    if (known[device]) return cache[device];
  }
  auto get = [&](int& v, cudaDeviceAttr a) {
    int x = 0;
    if (cudaDeviceGetAttribute(&x, a, device) == cudaSuccess && x > 0) v = x;
  };
  get(d.sms, cudaDevAttrMultiProcessorCount);
  get(d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor);
  get(d.smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock);
  get(d.threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor);
  get(d.blocks_per_sm, cudaDevAttrMaxBlocksPerMultiprocessor);
  get(d.major, cudaDevAttrComputeCapabilityMajor);
  if (device >= 0 && device < kCached) {
    std::lock_guard<std::mutex> lock(mutex);
    cache[device] = d;
    known[device] = true;
  }
  return d;
}

/// Shared memory of the kernel for this shape: the stages, and the static part but for the
/// small reduction arrays (the same for both 16-bit storage types and both layouts).
template <int D>
constexpr std::size_t decode_smem_bytes(bool tensor_cores) {
  using M = MmaStream<bf16, D, RaggedLayout>;
  using F = FmaStream<bf16, D, RaggedLayout>;
  return tensor_cores ? M::bytes + sizeof(typename M::Shared) : F::bytes + sizeof(typename F::Shared);
}

/// Resident blocks per SM allowed by shared memory and threads alone: an upper bound of the
/// kernel's occupancy that needs no kernel instance (it sizes the workspace).
inline int decode_blocks_bound(const DecodeShape& shape, const DecodeDevice& dev) {
  const std::size_t smem =
      shape.head_dim == 64 ? decode_smem_bytes<64>(shape.tensor_cores) : decode_smem_bytes<128>(shape.tensor_cores);
  const std::size_t per_block = smem + static_cast<std::size_t>(dev.smem_reserved);
  const int by_smem = static_cast<int>(static_cast<std::size_t>(dev.smem_per_sm) / per_block);
  return std::max(1, std::min({by_smem, dev.threads_per_sm / kDecodeThreads, dev.blocks_per_sm}));
}

inline constexpr long long kSplitMinEntries = 256;  // a split streams at least this many entries
inline constexpr long long kSplitMaxWaves = 4;      // more blocks than this many waves never pay
inline constexpr long long kSplitOverhead = 64;     // a block's start, partial and combine, in entries

/// The most splits the rule picks with `blocks_per_sm` resident blocks (it grows with them).
inline int decode_max_splits(const DecodeShape& shape, int sms, int blocks_per_sm) {
  if (shape.splits > 0) return shape.splits;
  const long long slots = static_cast<long long>(std::max(1, sms)) * std::max(1, blocks_per_sm);
  const long long by_length = ceil_div(std::max(1, shape.max_length), kSplitMinEntries);
  const long long by_waves = ceil_div(kSplitMaxWaves * slots, std::max(1, shape.num_seqs));
  return static_cast<int>(std::max(1LL, std::min(by_length, by_waves)));
}

/// Splits per sequence: the count that minimises a model of the time. Blocks run in waves of
/// `slots` (SMs x the blocks per SM that it takes to keep an SM's share of DRAM busy), and every
/// wave, the last one too, takes as long as a full one: (entries per block + a fixed cost). A
/// single wave that fills less than 90% of the slots reads more slowly in proportion (on the H200,
/// 152 cp.async blocks of 16384 entries on 264 slots read at 0.69 of the rate of a full wave;
/// 72 TMA blocks leave 60 SMs idle). The cp.async kernels need their full occupancy per SM; one
/// TMA block per SM reads at its SM's share. On the H200 this picks the fastest of the measured
/// counts: for the TMA kernel 1 split for 504 sequences of 8192 and for 120 of 32768 (0.443
/// against 0.460 ms with 2); for the cp.async kernel (2 blocks per SM) 1 and 2.
inline int decode_choose_splits(const DecodeShape& shape, int sms, int blocks_per_sm) {
  if (shape.splits > 0) return shape.splits;
  const long long tile = shape.tensor_cores ? kMmaTile : kDecodeTile;
  const long long sm = std::max(1, sms);
  const long long slots = sm * std::max(1, blocks_per_sm);
  const long long seqs = std::max(1, shape.num_seqs), n = std::max(1, shape.max_length);
  const int most = decode_max_splits(shape, sms, blocks_per_sm);
  int best = 1;
  double best_cost = 0.0;
  for (int x = 1; x <= most; ++x) {
    const long long per = ceil_div(ceil_div(n, x), tile) * tile;  // as the kernels cut a sequence
    const long long blocks = seqs * x;
    const double waves = static_cast<double>(ceil_div(blocks, slots));
    const double fill = std::min(1.0, static_cast<double>(blocks) / (0.9 * static_cast<double>(slots)));
    const double cost = waves * static_cast<double>(per + kSplitOverhead) / fill;
    if (x == 1 || cost < best_cost) best = x, best_cost = cost;  // ties: fewer splits
  }
  return best;
}

/// The splits decode_attention uses when the kernel's occupancy is the shared-memory bound (which
/// it is for the tensor-core kernels on sm_90: they use fewer registers than that allows).
inline int decode_splits(const DecodeShape& shape) {
  const DecodeDevice dev = decode_device();
  return decode_choose_splits(shape, dev.sms, decode_blocks_bound(shape, dev));
}

/// The workspace: tickets [S], partial accumulators [S][G][max_splits][D], (max, sum) pairs
/// [S][G][max_splits][2]; a call with fewer splits uses the front of each.
struct DecodeWork {
  unsigned long long* tickets = nullptr;
  float* acc = nullptr;
  float* ml = nullptr;
  int max_splits = 1;
  int blocks_bound = 1;
  DecodeDevice dev;
};

inline DecodeWork decode_carve(const DecodeShape& shape, void* base, std::size_t* bytes) {
  DecodeWork w;
  w.dev = decode_device();
  w.blocks_bound = decode_blocks_bound(shape, w.dev);
  w.max_splits = decode_max_splits(shape, w.dev.sms, w.blocks_bound);
  if (w.max_splits <= 1) {
    *bytes = 256;
    return w;
  }
  const std::size_t slots = static_cast<std::size_t>(shape.num_seqs) * shape.group * w.max_splits;
  Carver c(base);
  w.tickets = c.take<unsigned long long>(static_cast<std::size_t>(shape.num_seqs));
  w.acc = c.take<float>(slots * shape.head_dim);
  w.ml = c.take<float>(slots * 2);
  *bytes = c.bytes();
  return w;
}

/// One kernel instance (its occupancy is cached per instance): KIND 0 the CUDA-core kernel, 1 the
/// tensor-core kernel, 2 the tensor-core kernel with TMA copies.
template <class T, int D, int G, class Q, class O, class Layout, int KIND>
struct DecodeKernelTag {};

/// Whether the kernel was compiled for sm_90 or newer (PTX version, so that a JIT-compiled older
/// build, whose TMA code is empty, never counts), asked once per instance.
template <class Tag, class Kernel>
bool kernel_has_sm90(Kernel kernel) {
  static const bool yes = [&] {
    cudaFuncAttributes a{};
    const bool ok = cudaFuncGetAttributes(&a, kernel) == cudaSuccess && a.ptxVersion >= 90;
    (void)cudaGetLastError();
    return ok;
  }();
  return yes;
}

template <class T, int D, int G, class Q, class O, class Layout>
cudaError_t decode_launch(const LayerKV<T, Layout>& kv, const DecodeIO<Q, O>& io, const DecodeShape& shape,
                          const DecodeWork& work, cudaStream_t stream) {
  static_assert(FmaStream<T, D, Layout>::bytes >= sizeof(float) * (kDecodeThreads / 32) * 8 * D, "reduction fits");
  static_assert(MmaStream<T, D, Layout>::bytes >= sizeof(float) * (kDecodeThreads / 32) * 8 * D, "reduction fits");
  static_assert(MmaTmaStream<T, D>::bytes >= sizeof(float) * (kDecodeThreads / 32) * 8 * D, "reduction fits");
  const float scale = io.scale != 0.0f ? io.scale : 1.0f / std::sqrt(static_cast<float>(D));
  DecodeParams<T, Q, O, Layout> p{kv, io, 1, scale, work.acc, work.ml, work.tickets, {}, {}};
  // saturating: blocks per SM that keep its share of DRAM busy (0: the kernel's occupancy).
  auto run = [&](auto kernel, std::size_t smem, auto tag, int saturating = 0) -> cudaError_t {
    // (Raises the kernel's shared-memory limit on the first call for each kernel and device.)
    int occupancy = 0;
    SIMCALKV_CUDA_TRY((kernel_occupancy<decltype(tag)>(kernel, smem, kDecodeThreads, &occupancy)));
    int splits = shape.splits;
    if (splits <= 0) {
      occupancy = std::clamp(saturating > 0 ? saturating : occupancy, 1, work.blocks_bound);  // (the workspace's bound)
      splits = std::min(decode_choose_splits(shape, work.dev.sms, occupancy), work.max_splits);
    }
    p.splits = splits;
    kernel<<<dim3(splits, shape.num_seqs), kDecodeThreads, smem, stream>>>(p);
    return cudaGetLastError();
  };
  if (!shape.tensor_cores)
    return run(decode_kernel<T, D, G, Q, O, Layout>, FmaStream<T, D, Layout>::bytes,
               DecodeKernelTag<T, D, G, Q, O, Layout, 0>{});
  if constexpr (std::is_same_v<Layout, RaggedLayout>) {
    using Tag = DecodeKernelTag<T, D, G, Q, O, Layout, 2>;
    auto tma_kernel = decode_mma_kernel<T, D, G, Q, O, Layout, true>;
    if (shape.tma && work.dev.major >= 9 && kernel_has_sm90<Tag>(tma_kernel) &&
        encode_row_map(&p.kmap, kv.keys, D, kv.key_stride) && encode_row_map(&p.vmap, kv.values, D, kv.value_stride))
      return run(tma_kernel, MmaTmaStream<T, D>::bytes, Tag{}, /*saturating blocks per SM*/ 1);
  }
  return run(decode_mma_kernel<T, D, G, Q, O, Layout, false>, MmaStream<T, D, Layout>::bytes,
             DecodeKernelTag<T, D, G, Q, O, Layout, 1>{});
}

template <class T, int D, class Q, class O, class Layout>
cudaError_t decode_dispatch_group(const LayerKV<T, Layout>& kv, const DecodeIO<Q, O>& io, const DecodeShape& shape,
                                  const DecodeWork& work, cudaStream_t stream) {
  switch (shape.group) {
    case 1: return decode_launch<T, D, 1>(kv, io, shape, work, stream);
    case 2: return decode_launch<T, D, 2>(kv, io, shape, work, stream);
    case 3: return decode_launch<T, D, 3>(kv, io, shape, work, stream);
    case 4: return decode_launch<T, D, 4>(kv, io, shape, work, stream);
    case 5: return decode_launch<T, D, 5>(kv, io, shape, work, stream);
    case 6: return decode_launch<T, D, 6>(kv, io, shape, work, stream);
    case 7: return decode_launch<T, D, 7>(kv, io, shape, work, stream);
    case 8: return decode_launch<T, D, 8>(kv, io, shape, work, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace detail

/// Workspace bytes for decode_attention with this shape (on the current device).
inline std::size_t decode_workspace_bytes(const DecodeShape& shape) {
  std::size_t bytes = 0;
  detail::decode_carve(shape, nullptr, &bytes);
  return bytes;
}

/// Decode attention of one layer (see the file comment); asynchronous on `stream`. The workspace
/// needs no initialisation and may be reused by the next call right away (stream order).
template <class T, class Layout, class Q, class O>
cudaError_t decode_attention(const LayerKV<T, Layout>& kv, const DecodeIO<Q, O>& io, const DecodeShape& shape,
                             void* workspace, std::size_t workspace_bytes, cudaStream_t stream = nullptr) {
  static_assert(is_storage_v<T>, "storage must be bf16 or fp16");
  if (shape.num_seqs <= 0) return cudaSuccess;
  if (shape.num_kv_heads <= 0 || shape.num_seqs % shape.num_kv_heads != 0) return cudaErrorInvalidValue;
  std::size_t need = 0;
  const detail::DecodeWork work = detail::decode_carve(shape, workspace, &need);
  if (workspace_bytes < need) return cudaErrorInvalidValue;
  switch (shape.head_dim) {
    case 64: return detail::decode_dispatch_group<T, 64>(kv, io, shape, work, stream);
    case 128: return detail::decode_dispatch_group<T, 128>(kv, io, shape, work, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace simcalkv::cuda
