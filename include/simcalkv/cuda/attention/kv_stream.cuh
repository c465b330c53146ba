// simcalkv CUDA decode attention: K, V and bias rows streamed through shared memory (cp.async per row, or TMA tiles) (the file comment of cuda/attention.cuh describes the whole).
#pragma once

#include "simcalkv/cuda/attention/params.cuh"
#include "simcalkv/cuda/mma_tile.cuh"
#include "simcalkv/cuda/tma.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <mutex>
#include <utility>

namespace simcalkv::cuda {

namespace detail {

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

}  // namespace detail

}  // namespace simcalkv::cuda
