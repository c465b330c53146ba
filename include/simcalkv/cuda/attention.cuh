// simcalkv CUDA: split-KV decode attention over a compressed layer, with the per-entry bias
// (kernels/attention.hpp's decode_attention on the GPU).
//
// For every sequence s (request b, KV head h) and each of its G query heads g:
//
//     out[b][h * G + g] = softmax_j(scale * q . k_j + bias_j) V   over j < lengths[s],
//
// with float accumulation from 16-bit storage. The G query heads of a group are served from one
// read of K and V. Each sequence's entries are split over `splits` blocks (split-KV, as FlashInfer
// and FlashDecoding do); a block streams its part through shared memory and keeps an online
// softmax per query head; the last block of a sequence to finish combines the splits (no second
// kernel). Over the ragged layout on sm_90 the TMA copies whole tiles (tma.cuh); otherwise K and V
// rows arrive by 16-byte cp.async copies, with the paged layout's row addresses resolved a stage
// ahead so that its page-table loads never stall the copies.
//
// The default kernel runs both products on the tensor cores (mma.sync m16n8k16): the G query
// heads are the rows of A (padded to 16), 16 entries per warp and step; the probabilities stay in
// registers (the accumulator layout of Q K^T is the A layout of P V), as one 16-bit term for a
// 16-bit output and as a hi + lo pair of 16-bit terms (about 16 significant bits) for a float
// output. The CUDA-core kernel (DecodeShape::tensor_cores = false) computes the same in float FMAs.
//
//   DecodeShape shape{num_seqs, num_kv_heads, head_dim, group, max_length};
//   std::size_t bytes = decode_workspace_bytes(shape);
//   decode_attention(kv, q, q_strides, out, out_strides, shape, workspace, bytes, stream);
//
// The workspace needs no initialisation: the per-sequence counters that elect the combining
// block are tagged with the launch, and the combining block resets its counter, so the same
// workspace serves every later call (CUDA-graph replays included).
#pragma once

#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/layout.cuh"
#include "simcalkv/cuda/mma_tile.cuh"
#include "simcalkv/cuda/tma.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <utility>

namespace simcalkv::cuda {

struct DecodeShape {
  int num_seqs = 0;      // requests x KV heads
  int num_kv_heads = 1;  // KV heads per request
  int head_dim = 128;    // 64 or 128
  int group = 1;         // G, query heads per KV head (1 to 8)
  int max_length = 0;    // upper bound of lengths[s]
  int splits = 0;        // 0: chosen from the shape and the GPU
  bool tensor_cores = true;  // mma.sync kernel (default); false: the CUDA-core kernel
  bool tma = true;           // ragged layout on sm_90+: full tiles copied by the TMA (tma.cuh)
};

/// Queries q[b * request_stride + (h * G + g) * head_stride + i] (Q: float or the storage type);
/// outputs out[b * out_request_stride + (h * G + g) * out_head_stride + i] (O: float or storage).
template <class Q, class O>
struct DecodeIO {
  const Q* q = nullptr;
  int64_t q_request_stride = 0;
  int64_t q_head_stride = 0;
  O* out = nullptr;
  int64_t out_request_stride = 0;
  int64_t out_head_stride = 0;
  float scale = 0.0f;  // 0: 1 / sqrt(head_dim)
};

namespace detail {

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeTile = 32;  // CUDA-core kernel: entries per stage, 8 per warp
inline constexpr int kDecodeStages = 4;
inline constexpr int kMmaTile = 64;     // tensor-core kernel: entries per stage, 16 per warp
inline constexpr int kMmaStages = 3;

template <class T, class Q, class O, class Layout>
struct DecodeParams {
  LayerKV<T, Layout> kv;
  DecodeIO<Q, O> io;
  int splits;
  float scale;
  float* part_acc;                // [S][G][splits][D]
  float* part_ml;                 // [S][G][splits][2]
  unsigned long long* tickets;    // [S]: which block of a sequence finishes last
  CUtensorMap kmap, vmap;         // TMA kernels: the maps of keys and values (tma.cuh)
};

// ---------------------------------------------------------------------------------------------
// Streaming a block's K, V and bias rows through shared memory

/// The rows of entries j0, j0 + TILE, j0 + 2 TILE, ... of one sequence, one tile after another:
/// next(load) reads what entry() needs (nothing for the ragged layout, the page id for the paged
/// one) and steps on, so that the read can be issued a stage before its value is used. Layouts
/// other than these two go through Seq::entry.
template <class Layout, int TILE>
struct RowCursor {
  using Seq = decltype(std::declval<const Layout&>().seq(0));
  using Fetched = int64_t;
  Seq seq;
  int j;
  __device__ __forceinline__ RowCursor(const Layout& layout, int s, int j0) : seq(layout.seq(s)), j(j0) {}
  __device__ __forceinline__ Fetched next(bool load) {
    const Fetched e = load ? seq.entry(j) : 0;
    j += TILE;
    return e;
  }
  __device__ __forceinline__ int64_t entry(Fetched e) const { return e; }
};

/// Paged: the page and the offset inside it are stepped by TILE rows (no division per tile), and
/// the page-table entry is the only load.
template <int TILE>
struct RowCursor<PagedLayout, TILE> {
  struct Fetched {
    int32_t id;  // table[page]
    int within;  // j % page_size
  };
  const int32_t* table;
  int page_size, heads, head;
  int page, within;             // j = page * page_size + within
  int step_pages, step_within;  // TILE = step_pages * page_size + step_within
  __device__ __forceinline__ RowCursor(const PagedLayout& layout, int s, int j0) {
    const PagedLayout::Seq seq = layout.seq(s);
    table = seq.table, page_size = seq.page_size, heads = seq.heads, head = seq.head;
    page = j0 / page_size, within = j0 - page * page_size;
    step_pages = TILE / page_size, step_within = TILE - step_pages * page_size;
  }
  __device__ __forceinline__ Fetched next(bool load) {
    const Fetched f{load ? table[page] : 0, within};
    page += step_pages, within += step_within;
    if (within >= page_size) within -= page_size, ++page;
    return f;
  }
  __device__ __forceinline__ int64_t entry(Fetched f) const {
    return (static_cast<int64_t>(f.id) * page_size + f.within) * heads + head;
  }
};


/// One block's entries [begin, end) of a sequence, streamed through STAGES shared-memory stages
/// of TILE rows by 16-byte cp.async copies: K [TILE][LD], V [TILE][LD] (16-byte aligned rows),
/// bias [TILE]. Rows past `end` are zero in shared memory, so that masked entries (probability 0)
/// add 0 * 0, never 0 * NaN, in P V.
///
/// Over the ragged layout a tile's rows are consecutive (kLinear): each thread's copy addresses
/// follow from the tile's first row, and nothing is looked up. Over other layouts the row of each
/// entry of a tile is resolved by one thread per row a stage before the tile's copies are issued,
/// into Shared::rows: fetch(u) starts that resolution and prepare(u) finishes it, and the caller
/// puts its compute in between, so the page-table load of the paged layout is hidden.
///
/// Usage: start(); then for each tile t: advance(t); pending = fetch(t + STAGES); compute on
/// stage t % STAGES; prepare(t + STAGES, pending). finish() before reusing the stages.
template <class T, int D, int TILE, int LD, int STAGES, int THREADS, class Layout>
struct KvStream {
  static_assert(TILE <= THREADS, "one thread per row");
  static_assert(STAGES >= 2, "double buffering at least");
  static constexpr int kChunks = D * static_cast<int>(sizeof(T)) / 16;  // 16-byte chunks per row
  static constexpr std::size_t stage_bytes = 2 * sizeof(T) * TILE * LD + sizeof(float) * TILE;
  static constexpr std::size_t bytes = STAGES * stage_bytes;
  static_assert(stage_bytes % 16 == 0 && (LD * sizeof(T)) % 16 == 0, "16-byte aligned rows");
  // Each thread copies the same 16-byte chunk of every kRowsPerPass-th row: the passes unroll and
  // the chunk's offsets are computed once per tile.
  static constexpr int kRowsPerPass = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && TILE % kRowsPerPass == 0, "whole passes over the tile");
  static constexpr bool kLinear = std::is_same_v<Layout, RaggedLayout>;
  static constexpr bool kTma = false;

  struct Shared {
    int64_t rows[STAGES][TILE];  // !kLinear: row of each entry of a tile (slot u % STAGES); -1 past the end
  };
  using Cursor = RowCursor<Layout, TILE>;
  struct Pending {
    typename Cursor::Fetched f;
    bool ok;
  };

  const T* keys;
  const T* values;
  const float* bias;
  int64_t key_stride, value_stride;
  unsigned char* smem;
  Shared& sh;
  int begin, end, tiles, tid;
  Cursor cur;
  int64_t first;  // kLinear: the row of entry `begin`

  __device__ __forceinline__ KvStream(const LayerKV<T, Layout>& kv, int s, int begin_, int end_, unsigned char* smem_,
                                      Shared& sh_)
      : keys(kv.keys),
        values(kv.values),
        bias(kv.bias),
        key_stride(kv.key_stride),
        value_stride(kv.value_stride),
        smem(smem_),
        sh(sh_),
        begin(begin_),
        end(end_),
        tiles(static_cast<int>(ceil_div(end_ - begin_, TILE))),
        tid(static_cast<int>(threadIdx.x)),
        cur(kv.layout, s, begin_ + static_cast<int>(threadIdx.x)),
        first(0) {
    if constexpr (kLinear) first = cur.seq.base + begin_;
  }

  __device__ __forceinline__ T* k(int st) const { return reinterpret_cast<T*>(smem + st * stage_bytes); }
  __device__ __forceinline__ T* v(int st) const { return k(st) + TILE * LD; }
  __device__ __forceinline__ float* b(int st) const { return reinterpret_cast<float*>(v(st) + TILE * LD); }
  /// Element offset of 16-byte chunk c of row r in a K or V stage.
  __device__ static __forceinline__ int at(int r, int c) { return r * LD + c * 8; }

  /// Starts the resolution of tile u's rows (tiles in order, every thread calls it).
  __device__ __forceinline__ Pending fetch(int u) {
    if constexpr (kLinear) return Pending{};
    const bool ok = tid < TILE && begin + u * TILE + tid < end;
    return Pending{cur.next(ok), ok};
  }
  /// Finishes it.
  __device__ __forceinline__ void prepare(int u, const Pending& pd) {
    if constexpr (!kLinear)
      if (tid < TILE) sh.rows[u % STAGES][tid] = pd.ok ? cur.entry(pd.f) : -1;
  }

  /// Resolves the first STAGES tiles (their loads in flight together) and issues STAGES - 1.
  __device__ __forceinline__ void start() {
    if constexpr (!kLinear) {
      Pending pd[STAGES];
#pragma unroll
      for (int u = 0; u < STAGES; ++u) pd[u] = fetch(u);
#pragma unroll
      for (int u = 0; u < STAGES; ++u) prepare(u, pd[u]);
      __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < STAGES - 1; ++u) issue(u);
  }

  /// Issues the copies of tile u into stage u % STAGES (nothing past the last tile), and commits
  /// a cp.async group either way so that the waits count groups by tile.
  __device__ __forceinline__ void issue(int u) {
    if (u < tiles) {
      const int st = u % STAGES;
      if constexpr (kLinear)
        issue_linear(u, st);
      else
        issue_rows(st);
    }
    cp_async_commit();
  }

  /// The ragged layout's copies of tile u into stage st.
  __device__ __forceinline__ void issue_linear(int u, int st) {
    const int q = tid % kChunks, r0 = tid / kChunks;
    const int valid = end - (begin + u * TILE);  // rows of this tile inside the sequence
    const int64_t row = first + static_cast<int64_t>(u) * TILE;
    const T* const ks = keys + (row + r0) * key_stride + q * 8;
    const T* const vs = values + (row + r0) * value_stride + q * 8;
    T* const kd = k(st) + r0 * LD + q * 8;
    T* const vd = v(st) + r0 * LD + q * 8;
#pragma unroll
    for (int pass = 0; pass < TILE / kRowsPerPass; ++pass) {
      const int r = pass * kRowsPerPass;
      const bool ok = r0 + r < valid;  // rows past the end: zero-filled, the source not read
      cp_async16<128>(kd + r * LD, ok ? ks + r * key_stride : ks, ok);
      cp_async16<128>(vd + r * LD, ok ? vs + r * value_stride : vs, ok);
    }
    if (tid < TILE) cp_async4(b(st) + tid, bias + row + (tid < valid ? tid : 0), tid < valid);
  }

  /// The copies of the rows resolved into sh.rows[st].
  __device__ __forceinline__ void issue_rows(int st) {
    const int q = tid % kChunks, r0 = tid / kChunks;
    T* const kd = k(st) + q * 8;
    T* const vd = v(st) + q * 8;
    const T* const ks = keys + q * 8;
    const T* const vs = values + q * 8;
#pragma unroll
    for (int pass = 0; pass < TILE / kRowsPerPass; ++pass) {
      const int r = r0 + pass * kRowsPerPass;
      const int64_t e = sh.rows[st][r];
      const bool ok = e >= 0;
      const int64_t row = ok ? e : 0;
      cp_async16<128>(kd + r * LD, ks + row * key_stride, ok);
      cp_async16<128>(vd + r * LD, vs + row * value_stride, ok);
    }
    if (tid < TILE) {
      const int64_t e = sh.rows[st][tid];
      cp_async4(b(st) + tid, bias + (e >= 0 ? e : 0), e >= 0);
    }
  }

  /// Issues tile t + STAGES - 1 into the stage that tile t - 1 used, then waits until tile t is
  /// in stage t % STAGES for every thread. Issuing before waiting keeps STAGES - 1 tiles in flight
  /// during the wait (issuing after it, one fewer); it costs a second barrier per tile, for every
  /// thread to be done with tile t - 1 first.
  __device__ __forceinline__ void advance(int t) {
    if (t > 0) __syncthreads();
    issue(t + STAGES - 1);
    cp_async_wait<STAGES - 1>();
    __syncthreads();
  }

  /// No copy in flight afterwards (every issued tile has been waited for, but for empty groups).
  __device__ __forceinline__ void finish() { cp_async_wait<0>(); }
};

/// The tensor-core kernel's stream over the ragged layout on sm_90: tiles of 64 rows by TMA (two
/// boxes of K and two of V per tile at head dim 128, issued by one thread, completing on the
/// stage's mbarrier), swizzled in shared memory (tma_tile_offset). A block's last tile, when it
/// is partial, comes by cp.async into the same swizzled places with the rows past the end zeroed
/// (a box would bring the next sequence's rows); the bias always does (4-byte aligned only). The
/// same interface as KvStream.
template <class T, int D, int STAGES, int THREADS>
struct TmaKvStream {
  static constexpr int TILE = kTmaBoxRows;
  static constexpr bool kTma = true;
  static_assert(D % kTmaBoxElems == 0, "head_dim a multiple of 64");
  static_assert(TILE <= THREADS, "one thread per row");
  static constexpr int kChunks = D * static_cast<int>(sizeof(T)) / 16;
  static constexpr int kBoxes = D / kTmaBoxElems;
  static constexpr int kMatBytes = TILE * D * static_cast<int>(sizeof(T));  // one K or V tile
  static constexpr std::size_t stage_bytes = 2 * kMatBytes;                 // a multiple of 1024
  static constexpr std::size_t kAlign = 1024;                               // the 128-byte swizzle's period
  static constexpr std::size_t bytes = STAGES * stage_bytes + STAGES * TILE * sizeof(float) + kAlign;
  static constexpr int kRowsPerPass = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0 && TILE % kRowsPerPass == 0, "whole passes over the tile");

  struct Shared {
    uint64_t full[STAGES];  // the stage's boxes have landed
  };
  struct Pending {};

  const CUtensorMap* kmap;
  const CUtensorMap* vmap;
  const T* keys;
  const T* values;
  const float* bias;
  int64_t key_stride, value_stride;
  unsigned char* smem;  // 1024-byte aligned
  Shared& sh;
  int begin, end, tiles, tid;
  int64_t first;  // the row of entry `begin`

  __device__ __forceinline__ TmaKvStream(const LayerKV<T, RaggedLayout>& kv, const CUtensorMap* kmap_,
                                         const CUtensorMap* vmap_, int s, int begin_, int end_,
                                         unsigned char* smem_, Shared& sh_)
      : kmap(kmap_),
        vmap(vmap_),
        keys(kv.keys),
        values(kv.values),
        bias(kv.bias),
        key_stride(kv.key_stride),
        value_stride(kv.value_stride),
        smem(reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_) + kAlign - 1) & ~(kAlign - 1))),
        sh(sh_),
        begin(begin_),
        end(end_),
        tiles(static_cast<int>(ceil_div(end_ - begin_, TILE))),
        tid(static_cast<int>(threadIdx.x)),
        first(kv.layout.offsets[s] + begin_) {}

  __device__ __forceinline__ T* k(int st) const { return reinterpret_cast<T*>(smem + st * stage_bytes); }
  __device__ __forceinline__ T* v(int st) const { return reinterpret_cast<T*>(smem + st * stage_bytes + kMatBytes); }
  __device__ __forceinline__ float* b(int st) const {
    return reinterpret_cast<float*>(smem + STAGES * stage_bytes) + st * TILE;
  }
  __device__ static __forceinline__ int at(int r, int c) {
    return tma_tile_offset(r, c) / static_cast<int>(sizeof(T));
  }
  __device__ __forceinline__ bool full(int u) const { return end - (begin + u * TILE) >= TILE; }

  __device__ __forceinline__ Pending fetch(int) { return Pending{}; }
  __device__ __forceinline__ void prepare(int, const Pending&) {}

  __device__ __forceinline__ void start() {
    if (tid == 0) {
#pragma unroll
      for (int st = 0; st < STAGES; ++st) mbar_init(&sh.full[st], 1);
      mbar_init_fence();
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < STAGES - 1; ++u) issue(u);
  }

  __device__ __forceinline__ void issue(int u) {
    if (u < tiles) {
      const int st = u % STAGES;
      const int valid = end - (begin + u * TILE);
      const int64_t row = first + static_cast<int64_t>(u) * TILE;
      if (valid >= TILE) {
        if (tid == 0) {
          mbar_arrive_expect_tx(&sh.full[st], static_cast<unsigned>(stage_bytes));
          const int y = static_cast<int>(row);
#pragma unroll
          for (int bx = 0; bx < kBoxes; ++bx) {
            tma_load_box(reinterpret_cast<unsigned char*>(k(st)) + bx * TILE * 128, kmap, bx * kTmaBoxElems, y,
                         &sh.full[st]);
            tma_load_box(reinterpret_cast<unsigned char*>(v(st)) + bx * TILE * 128, vmap, bx * kTmaBoxElems, y,
                         &sh.full[st]);
          }
        }
      } else {
        const int q = tid % kChunks, r0 = tid / kChunks;
#pragma unroll
        for (int pass = 0; pass < TILE / kRowsPerPass; ++pass) {
          const int r = r0 + pass * kRowsPerPass;
          const bool ok = r < valid;
          const int64_t src = (row + (ok ? r : 0));
          cp_async16<128>(k(st) + at(r, q), keys + src * key_stride + q * 8, ok);
          cp_async16<128>(v(st) + at(r, q), values + src * value_stride + q * 8, ok);
        }
      }
      if (tid < TILE) cp_async4(b(st) + tid, bias + row + (tid < valid ? tid : 0), tid < valid);
    }
    cp_async_commit();
  }

  /// As KvStream::advance; a full tile is also waited for on its stage's mbarrier (phase t /
  /// STAGES: only a block's last tile can be partial, so every earlier use of the stage was a box).
  __device__ __forceinline__ void advance(int t) {
    if (t > 0) __syncthreads();
    issue(t + STAGES - 1);
    cp_async_wait<STAGES - 1>();
    if (full(t)) mbar_wait(&sh.full[t % STAGES], static_cast<unsigned>(t / STAGES) & 1u);
    __syncthreads();
  }

  __device__ __forceinline__ void finish() { cp_async_wait<0>(); }
};

template <class T, int D, class Layout>
using FmaStream = KvStream<T, D, kDecodeTile, D, kDecodeStages, kDecodeThreads, Layout>;
template <class T, int D, class Layout>
using MmaStream = KvStream<T, D, kMmaTile, D + 8, kMmaStages, kDecodeThreads, Layout>;  // padded rows
template <class T, int D>
using MmaTmaStream = TmaKvStream<T, D, kMmaStages, kDecodeThreads>;

// ---------------------------------------------------------------------------------------------
// Combining the splits

/// Whether this block is the last of its sequence's `splits` blocks to get here; the last one
/// resets the counter to 0 for the next call. The counter holds a tag of the launch (high half,
/// from %gridid) and the count (low half): a value with another tag (a fresh workspace's garbage)
/// counts as 0, so the workspace needs no initialisation.
__device__ __forceinline__ bool last_of_splits(unsigned long long* counter, int splits) {
  unsigned long long grid;
  asm("mov.u64 %0, %%gridid;\n" : "=l"(grid));
  const unsigned long long tag =
      static_cast<unsigned long long>(static_cast<uint32_t>((grid * 0x9e3779b97f4a7c15ull) >> 32) | 1u) << 32;
  unsigned long long seen = 0, want;
  for (;;) {
    want = (seen & 0xffffffff00000000ull) == tag ? seen + 1 : (tag | 1u);
    const unsigned long long prev = atomicCAS(counter, seen, want);
    if (prev == seen) break;
    seen = prev;
  }
  if (static_cast<uint32_t>(want) < static_cast<uint32_t>(splits)) return false;
  atomicExch(counter, 0ull);
  return true;
}

/// The end of both kernels: red_acc [WARPS][G][D] and red_ml [WARPS][G] (max, sum) hold the
/// warps' partial results in shared memory. With one split the block writes the output; with
/// more it writes its partial to the workspace, and the last block of the sequence combines the
/// partials in split order (deterministic, the same arithmetic as a separate combine pass).
template <int D, int G, int WARPS, class T, class Q, class O, class Layout>
__device__ __forceinline__ void decode_finish(const DecodeParams<T, Q, O, Layout>& p, const float* red_acc,
                                              const float (*red_ml)[G][2], int s, int x) {
  const int tid = static_cast<int>(threadIdx.x);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
  for (int i = tid; i < G * D; i += kDecodeThreads) {
    const int gg = i / D, d = i % D;
    float mm = kNegInf;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) mm = fmaxf(mm, red_ml[w][gg][0]);
    float ll = 0.0f, aa = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const float f = exp_diff(red_ml[w][gg][0], mm);
      ll += red_ml[w][gg][1] * f;
      aa += red_acc[(w * G + gg) * D + d] * f;
    }
    if (p.splits == 1) {
      O* out = p.io.out + b * p.io.out_request_stride + (h * G + gg) * p.io.out_head_stride;
      out[d] = from_float<O>(ll > 0.0f ? aa / ll : 0.0f);
    } else {
      const int64_t slot = (static_cast<int64_t>(s) * G + gg) * p.splits + x;
      p.part_acc[slot * D + d] = aa;
      if (d == 0) {
        p.part_ml[slot * 2] = mm;
        p.part_ml[slot * 2 + 1] = ll;
      }
    }
  }
  if (p.splits == 1) return;
  __shared__ bool last;
  __threadfence();  // the partials are visible GPU-wide before the ticket is taken
  __syncthreads();
  if (tid == 0) last = last_of_splits(p.tickets + s, p.splits);
  __syncthreads();
  if (!last) return;
  __threadfence();  // acquire the other blocks' partials; read them from L2 (__ldcg), not L1
  for (int i = tid; i < G * D; i += kDecodeThreads) {
    const int gg = i / D, d = i % D;
    const int64_t base = (static_cast<int64_t>(s) * G + gg) * p.splits;
    float mm = kNegInf;
    for (int xx = 0; xx < p.splits; ++xx) mm = fmaxf(mm, __ldcg(p.part_ml + (base + xx) * 2));
    float ll = 0.0f, aa = 0.0f;
    for (int xx = 0; xx < p.splits; ++xx) {
      const float f = exp_diff(__ldcg(p.part_ml + (base + xx) * 2), mm);
      ll += __ldcg(p.part_ml + (base + xx) * 2 + 1) * f;
      aa += __ldcg(p.part_acc + (base + xx) * D + d) * f;
    }
    O* out = p.io.out + b * p.io.out_request_stride + (h * G + gg) * p.io.out_head_stride;
    out[d] = from_float<O>(ll > 0.0f ? aa / ll : 0.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// CUDA-core decode

/// grid (splits, S), 128 threads.
template <class T, int D, int G, class Q, class O, class Layout>
__global__ void __launch_bounds__(kDecodeThreads) decode_kernel(DecodeParams<T, Q, O, Layout> p) {
  constexpr int LPR = D / 8;           // lanes per row: 8 elements (16 bytes) each
  constexpr int RPP = 32 / LPR;        // rows per warp pass
  constexpr int WARPS = kDecodeThreads / 32;
  constexpr int ROWS_PER_WARP = kDecodeTile / WARPS;
  constexpr int PASSES = ROWS_PER_WARP / RPP;
  using Stream = FmaStream<T, D, Layout>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ typename Stream::Shared stream_sh;
  __shared__ float red_ml[WARPS][G][2];

  const int x = blockIdx.x, s = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rig = lane / LPR, ch = lane % LPR;
  const int n = p.kv.lengths[s];
  const int per = static_cast<int>(ceil_div(ceil_div(n, p.splits), kDecodeTile) * kDecodeTile);
  const int begin = min(n, x * per), end = min(n, begin + per);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
  Stream kv(p.kv, s, begin, end, smem_raw, stream_sh);
  kv.start();

  // Pre-scaled queries: 8 dims (chunk ch) of each of the G heads.
  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const Q* qp = p.io.q + b * p.io.q_request_stride + (h * G + g) * p.io.q_head_stride + ch * 8;
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[g][i] = to_float(qp[i]) * p.scale;
  }
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = kNegInf;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  }

  for (int t = 0; t < kv.tiles; ++t) {
    kv.advance(t);
    const auto ahead = kv.fetch(t + kDecodeStages);
    const int st = t % kDecodeStages;
    const T* ks = kv.k(st);
    const T* vs = kv.v(st);
    const float* bs = kv.b(st);
    const int j0 = begin + t * kDecodeTile;
    float lg[PASSES][G];
#pragma unroll
    for (int ps = 0; ps < PASSES; ++ps) {
      const int row = warp * ROWS_PER_WARP + ps * RPP + rig;
      float k[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(ks + row * D + ch * 8), k);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) d = fmaf(qf[g][i], k[i], d);
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        lg[ps][g] = j0 + row < end ? d + bs[row] : kNegInf;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float tm = lg[0][g];
#pragma unroll
      for (int ps = 1; ps < PASSES; ++ps) tm = fmaxf(tm, lg[ps][g]);
#pragma unroll
      for (int o = LPR; o < 32; o <<= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, o));
      const float mn = fmaxf(m[g], tm);
      const float alpha = exp_diff(m[g], mn);
      float ps_sum = 0.0f;
#pragma unroll
      for (int ps = 0; ps < PASSES; ++ps) {
        lg[ps][g] = exp_diff(lg[ps][g], mn);
        ps_sum += lg[ps][g];
      }
#pragma unroll
      for (int o = LPR; o < 32; o <<= 1) ps_sum += __shfl_xor_sync(0xffffffffu, ps_sum, o);
      l[g] = l[g] * alpha + ps_sum;
      m[g] = mn;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= alpha;
    }
#pragma unroll
    for (int ps = 0; ps < PASSES; ++ps) {
      const int row = warp * ROWS_PER_WARP + ps * RPP + rig;
      float v[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(vs + row * D + ch * 8), v);
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(lg[ps][g], v[i], acc[g][i]);
    }
    kv.prepare(t + kDecodeStages, ahead);
  }
  kv.finish();
  // Rows of a warp share m and l: add their accumulators.
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int o = LPR; o < 32; o <<= 1) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
  __syncthreads();  // the stages are reused for the cross-warp reduction
  float* red_acc = reinterpret_cast<float*>(smem_raw);  // [WARPS][G][D]
  if (rig == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int i = 0; i < 8; ++i) red_acc[(warp * G + g) * D + ch * 8 + i] = acc[g][i];
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      red_ml[warp][g][0] = m[g];
      red_ml[warp][g][1] = l[g];
    }
  }
  __syncthreads();
  decode_finish<D, G, WARPS>(p, red_acc, red_ml, s, x);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core decode

template <class Stream, class T, class Q, class O, class Layout>
__device__ __forceinline__ Stream make_stream(const DecodeParams<T, Q, O, Layout>& p, int s, int begin, int end,
                                              unsigned char* smem, typename Stream::Shared& sh) {
  if constexpr (Stream::kTma)
    return Stream(p.kv, &p.kmap, &p.vmap, s, begin, end, smem, sh);
  else
    return Stream(p.kv, s, begin, end, smem, sh);
}

/// grid (splits, S), 128 threads: 4 warps, each 16 entries of every 64-entry stage. TMA: the
/// copies of full tiles by the tensor memory accelerator (ragged layout, sm_90).
template <class T, int D, int G, class Q, class O, class Layout, bool TMA>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_mma_kernel(const __grid_constant__ DecodeParams<T, Q, O, Layout> p) {
  static_assert(G >= 1 && G <= 8, "group size 1 to 8");
  constexpr int KS = D / 16;          // k-steps of Q K^T
  constexpr int NB = D / 8;           // n-blocks of P V
  constexpr int NQ = std::is_same_v<Q, float> ? 2 : 1;  // float queries: hi + lo terms
  constexpr int NP = std::is_same_v<O, float> ? 2 : 1;  // float output: probabilities as hi + lo
  constexpr int WARPS = kDecodeThreads / 32;
  using Stream = std::conditional_t<TMA, MmaTmaStream<T, D>, MmaStream<T, D, Layout>>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ typename Stream::Shared stream_sh;
  __shared__ float red_ml[WARPS][G][2];

  const int x = blockIdx.x, s = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;  // fragment row (query head) and column pair
  const int n = p.kv.lengths[s];
  const int per = static_cast<int>(ceil_div(ceil_div(n, p.splits), kMmaTile) * kMmaTile);
  const int begin = min(n, x * per), end = min(n, begin + per);
  const int b = s / p.kv.num_kv_heads, h = s % p.kv.num_kv_heads;
  Stream kv = make_stream<Stream>(p, s, begin, end, smem_raw, stream_sh);
  kv.start();  // the first copies fly while the queries load

  // Q as the A operand: row g (query head), 16 dims per k-step; rows 8..15 are zero.
  uint32_t qa[KS][4], ql[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (g < G) {
      const Q* qp = p.io.q + b * p.io.q_request_stride + (h * G + g) * p.io.q_head_stride + ks * 16 + t4 * 2;
      v[0] = to_float(qp[0]), v[1] = to_float(qp[1]), v[2] = to_float(qp[8]), v[3] = to_float(qp[9]);
    }
    qa[ks][1] = qa[ks][3] = ql[ks][1] = ql[ks][3] = 0u;
    if constexpr (NQ == 2) {
      split2<T>(v[0], v[1], qa[ks][0], ql[ks][0]);
      split2<T>(v[2], v[3], qa[ks][2], ql[ks][2]);
    } else {
      qa[ks][0] = pack2<T>(v[0], v[1]);
      qa[ks][2] = pack2<T>(v[2], v[3]);
    }
  }
  float o[NB][4];
#pragma unroll
  for (int i = 0; i < NB; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  // Row g's running max and sum, in base 2 (logits times log2 e); the four lanes of a row agree.
  float m = kNegInf, l = 0.0f;
  const float scale2 = p.scale * kLog2e;

  const int e0 = warp * 16;  // this warp's entries within a stage
  // ldmatrix addresses: lane l gives row l % 8 of matrix l / 8. For K the four matrices are
  // (entries 0-7, dims 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) of a k-step: the B fragments of
  // both n-blocks. For V (transposed) they are (entries 0-7, dims 0-7), (8-15, 0-7), (0-7, 8-15),
  // (8-15, 8-15) of a pair of n-blocks.
  const int mi = lane >> 3, ri = lane & 7;
  const int k_row = e0 + (mi >> 1) * 8 + ri, k_chunk = mi & 1;
  const int v_row = e0 + (mi & 1) * 8 + ri, v_chunk = mi >> 1;
  for (int t = 0; t < kv.tiles; ++t) {
    kv.advance(t);
    const auto ahead = kv.fetch(t + kMmaStages);
    const int st = t % kMmaStages;
    const T* ks = kv.k(st);
    const T* vs = kv.v(st);
    const float* bs = kv.b(st);
    const int j0 = begin + t * kMmaTile;
    // S = Q K^T for entries e0 .. e0 + 15 (two n-blocks of 8, two independent chains).
    float sacc[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t kb[4];
      ldsm_x4(kb, ks + Stream::at(k_row, kk * 2 + k_chunk));
      mma_m16n8k16<T>(sacc[0], qa[kk], kb[0], kb[1]);
      mma_m16n8k16<T>(sacc[1], qa[kk], kb[2], kb[3]);
      if constexpr (NQ == 2) {
        mma_m16n8k16<T>(sacc[0], ql[kk], kb[0], kb[1]);
        mma_m16n8k16<T>(sacc[1], ql[kk], kb[2], kb[3]);
      }
    }
    // Online softmax of row g over the 16 entries: this lane holds entries t4*2, +1 of each block.
    float xs[4];
    float tile_max = kNegInf;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = e0 + (i >> 1) * 8 + t4 * 2 + (i & 1);
      const bool ok = g < G && j0 + e < end;
      xs[i] = ok ? fmaf(sacc[i >> 1][i & 1], scale2, bs[e] * kLog2e) : kNegInf;
      tile_max = fmaxf(tile_max, xs[i]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float mn = fmaxf(m, tile_max);
    const float base = mn == kNegInf ? 0.0f : mn;  // every entry so far masked: 2^(-inf - 0) = 0
    const float alpha = mn == m ? 1.0f : fast_exp2(m - base);
    float psum = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xs[i] = fast_exp2(xs[i] - base);
      psum += xs[i];
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    l = l * alpha + psum;
    m = mn;
    // Once the maxima settle (most tiles), no row of the warp rescales: skip the multiplies.
    if (__any_sync(0xffffffffu, alpha != 1.0f)) {
#pragma unroll
      for (int i = 0; i < NB; ++i) o[i][0] *= alpha, o[i][1] *= alpha;
    }
    // P as the A operand (rows 8..15 zero): one 16-bit term when the output is 16-bit (its own
    // rounding is as coarse), hi + lo for float output.
    uint32_t pa[4] = {0u, 0u, 0u, 0u}, pl[4] = {0u, 0u, 0u, 0u};
    if constexpr (NP == 2) {
      split2<T>(xs[0], xs[1], pa[0], pl[0]);
      split2<T>(xs[2], xs[3], pa[2], pl[2]);
    } else {
      pa[0] = pack2<T>(xs[0], xs[1]);
      pa[2] = pack2<T>(xs[2], xs[3]);
    }
    // O += P V: V fragments by transposing loads of the warp's 16 rows, two n-blocks at a time.
#pragma unroll
    for (int nbp = 0; nbp < NB / 2; ++nbp) {
      uint32_t vb[4];
      ldsm_x4_trans(vb, vs + Stream::at(v_row, nbp * 2 + v_chunk));
      mma_m16n8k16<T>(o[2 * nbp], pa, vb[0], vb[1]);
      mma_m16n8k16<T>(o[2 * nbp + 1], pa, vb[2], vb[3]);
      if constexpr (NP == 2) {
        mma_m16n8k16<T>(o[2 * nbp], pl, vb[0], vb[1]);
        mma_m16n8k16<T>(o[2 * nbp + 1], pl, vb[2], vb[3]);
      }
    }
    kv.prepare(t + kMmaStages, ahead);
  }
  kv.finish();
  __syncthreads();  // the stages are reused for the cross-warp reduction
  float* red_acc = reinterpret_cast<float*>(smem_raw);  // [WARPS][G][D]
  if (g < G) {
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      red_acc[(warp * G + g) * D + i * 8 + t4 * 2] = o[i][0];
      red_acc[(warp * G + g) * D + i * 8 + t4 * 2 + 1] = o[i][1];
    }
    if (t4 == 0) {
      red_ml[warp][g][0] = m * kLn2;  // back to natural units for decode_finish
      red_ml[warp][g][1] = l;
    }
  }
  __syncthreads();
  decode_finish<D, G, WARPS>(p, red_acc, red_ml, s, x);
}

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

