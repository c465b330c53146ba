// simcalkv: the paged layout, the CPU twin of cuda/layout.cuh's PagedLayout (vLLM's block table).
//
// A layer's rows live in a pool of pages (blocks) of `page_size` entries. Sequence s is KV head
// s % heads_per_table of the table s / heads_per_table; with heads_per_table = 1 every KV head has
// its own table (heads shrink independently and their freed pages go back to the pool), with
// heads_per_table = H the heads of a request share one table and are interleaved inside a page,
// vLLM's [num_blocks][block_size][num_kv_heads][head_dim] (key_stride = head_dim). Entry j of
// sequence s is row (table[j / page_size] * page_size + j % page_size) * heads_per_table + head
// of the key and value pools; its bias, position and score are at
// (table[j / page_size] * heads_per_table + head) * page_size + j % page_size, so the entries of one
// head in one page are a HeadView (strided rows, packed metadata) and attention runs page by page
// with one online softmax (decode_attention / block_attention below). With heads_per_table = 1
// both indices are the same, cuda/layout.cuh's.
//
// Compression plans on a packed copy of the heads (Staging), then moves surviving entries down
// in place through the table and lowers lengths[s]; apply_plan() returns the pages no sequence of a
// table reaches any more and marks them -1 in the table, for the host to put back in its pool.
#pragma once

#include "simcalkv/error.hpp"
#include "simcalkv/kernels/attention.hpp"
#include "simcalkv/layouts/compact.hpp"
#include "simcalkv/layouts/entries.hpp"
#include "simcalkv/page_table.hpp"
#include "simcalkv/plan.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace simcalkv {

template <StorageElement T>
struct PagedLayer {
  T* keys = nullptr;                // row e at keys + e * key_stride (head_dim contiguous elements)
  T* values = nullptr;
  std::ptrdiff_t key_stride = 0;
  std::ptrdiff_t value_stride = 0;
  float* bias = nullptr;            // per entry (metadata index), required
  Position* positions = nullptr;    // per entry, required, ascending along a sequence
  float* scores = nullptr;          // per entry, optional
  std::int32_t* page_table = nullptr;  // table t at page_table + t * table_stride; -1: no page
  std::ptrdiff_t table_stride = 0;     // also the most pages a table can hold
  int page_size = 16;
  int heads_per_table = 1;
  std::size_t* lengths = nullptr;   // [num_seqs]
  std::size_t num_seqs = 0;
  int head_dim = 0;

  [[nodiscard]] const std::int32_t* table_of(std::size_t s) const noexcept {
    return page_table_of(static_cast<const std::int32_t*>(page_table), table_stride, heads_per_table,
                         static_cast<std::int64_t>(s));
  }
  /// The key/value row of entry j of sequence s: the GPU's PagedLayout computes it with the same
  /// function (simcalkv/page_table.hpp).
  [[nodiscard]] std::int64_t row(std::size_t s, std::size_t j) const noexcept {
    return paged_row(table_of(s), page_size, heads_per_table,
                     static_cast<int>(s % static_cast<std::size_t>(heads_per_table)), static_cast<std::int64_t>(j));
  }
  [[nodiscard]] std::int64_t meta(std::size_t s, std::size_t j) const noexcept {
    const auto P = static_cast<std::size_t>(page_size);
    const std::int64_t page = table_of(s)[j / P];
    return (page * heads_per_table + static_cast<std::int64_t>(s % static_cast<std::size_t>(heads_per_table))) *
               page_size +
           static_cast<std::int64_t>(j % P);
  }
  [[nodiscard]] EntryRef<T> entry(std::size_t s, std::size_t j) const noexcept {
    const std::int64_t e = row(s, j), m = meta(s, j);
    return EntryRef<T>{keys + e * key_stride, 1, values + e * value_stride, 1, bias + m, positions + m,
                       scores ? scores + m : nullptr};
  }
  /// Sequence s page by page, as HeadViews in order (what attention reads).
  void segments(std::size_t s, std::vector<HeadView<T>>& out) const {
    out.clear();
    const auto P = static_cast<std::size_t>(page_size);
    for (std::size_t j = 0; j < lengths[s]; j += P) {
      const std::int64_t e = row(s, j), m = meta(s, j);
      HeadView<T> v;
      v.keys = keys + e * key_stride;
      v.key_token_stride = key_stride * heads_per_table;
      v.values = values + e * value_stride;
      v.value_token_stride = value_stride * heads_per_table;
      v.bias = bias + m;
      v.positions = positions + m;
      v.scores = scores ? scores + m : nullptr;
      v.length = std::min(P, lengths[s] - j);
      v.capacity = P;
      v.head_dim = head_dim;
      out.push_back(v);
    }
  }
};

namespace detail {
/// Staging reads head_dim() from a layout; PagedLayer keeps head_dim a plain field.
template <StorageElement T>
struct PagedShape {
  const PagedLayer<T>& p;
  [[nodiscard]] std::size_t num_heads() const noexcept { return p.num_seqs; }
  [[nodiscard]] int head_dim() const noexcept { return p.head_dim; }
  [[nodiscard]] std::size_t length(std::size_t s) const noexcept { return p.lengths[s]; }
  [[nodiscard]] bool has_scores() const noexcept { return p.scores != nullptr; }
  [[nodiscard]] EntryRef<T> entry(std::size_t s, std::size_t j) const noexcept { return p.entry(s, j); }
};

inline std::size_t pages_for(std::size_t length, int page_size) {
  return (length + static_cast<std::size_t>(page_size) - 1) / static_cast<std::size_t>(page_size);
}
}  // namespace detail

/// Throws unless the paged layer is well formed: positive sizes, every page a sequence reaches
/// named in its table and inside the table's capacity.
template <StorageElement T>
void validate_paged(const PagedLayer<T>& layer, const std::string& where) {
  using detail::require;
  require(layer.keys && layer.values && layer.bias && layer.positions && layer.page_table && layer.lengths,
          ErrorCode::invalid_argument, where, ": a required buffer is null");
  require(layer.page_size > 0 && layer.heads_per_table > 0 && layer.head_dim > 0, ErrorCode::invalid_argument, where,
          ": page_size, heads_per_table and head_dim must be positive");
  require(layer.num_seqs % static_cast<std::size_t>(layer.heads_per_table) == 0, ErrorCode::invalid_argument, where,
          ": ", layer.num_seqs, " sequences do not fill tables of ", layer.heads_per_table, " heads");
  require(layer.key_stride >= layer.head_dim && layer.value_stride >= layer.head_dim, ErrorCode::invalid_argument,
          where, ": row strides must be at least head_dim");
  for (std::size_t s = 0; s < layer.num_seqs; ++s) {
    const std::size_t pages = detail::pages_for(layer.lengths[s], layer.page_size);
    require(pages <= static_cast<std::size_t>(layer.table_stride), ErrorCode::capacity_overflow, where,
            ": sequence ", s, " holds ", layer.lengths[s], " entries, more than its table's ", layer.table_stride,
            " pages");
    for (std::size_t p = 0; p < pages; ++p)
      require(layer.table_of(s)[p] >= 0, ErrorCode::invalid_argument, where, ": sequence ", s, " reaches page slot ",
              p, " of its table, which names no page");
  }
}

/// Packs the paged layer's sequences into `staging` and returns one HeadView per sequence to plan
/// on (LayerRequest::heads). Reads only.
template <StorageElement T>
std::vector<HeadView<T>>& stage_paged(const PagedLayer<T>& layer, Staging<T>& staging) {
  validate_paged(layer, "paged layout");
  return staging.gather(detail::PagedShape<T>{layer});
}

/// What applying a plan to a paged layer did.
struct PagedApplyResult {
  CompressionStats stats;
  std::vector<std::int32_t> freed_pages;  // for the host's free list; marked -1 in their tables
};

/// Applies `plan` (planned on stage_paged's views of this layer) through the block tables.
template <StorageElement T>
PagedApplyResult apply_plan(const LayerPlan& plan, PagedLayer<T>& layer) {
  const std::string where = plan.policy + " (paged layout)";
  validate_paged(layer, where);
  detail::require(plan.heads.size() == layer.num_seqs, ErrorCode::invalid_argument, where, ": the plan has ",
                  plan.heads.size(), " KV heads, the layer ", layer.num_seqs, " sequences");
  for (std::size_t s = 0; s < layer.num_seqs; ++s)
    detail::check_head_plan(plan.heads[s], s, layer.lengths[s], layer.lengths[s], layer.head_dim, plan.head_dim,
                            where);
  const std::size_t H = static_cast<std::size_t>(layer.heads_per_table);
  const std::size_t tables = layer.num_seqs / H;
  // Pages in use per table before, to know which ones the new lengths free.
  std::vector<std::size_t> used_before(tables, 0);
  for (std::size_t s = 0; s < layer.num_seqs; ++s)
    used_before[s / H] = std::max(used_before[s / H], detail::pages_for(layer.lengths[s], layer.page_size));

  PagedApplyResult result;
  result.freed_pages.reserve(tables);  // may allocate: before the first write
  for (std::size_t t = 0; t < tables; ++t) {
    std::size_t after = 0;
    for (std::size_t h = 0; h < H; ++h) after = std::max(after, detail::pages_for(plan.kept(t * H + h), layer.page_size));
    for (std::size_t p = after; p < used_before[t]; ++p) result.freed_pages.push_back(layer.table_of(t * H)[p]);
  }
  const detail::PagedShape<T> shape{layer};
  for (std::size_t s = 0; s < layer.num_seqs; ++s) {
    const detail::LayoutEntries<detail::PagedShape<T>, T> entries{shape, s, static_cast<std::size_t>(layer.head_dim)};
    detail::write_head_plan(plan.heads[s], static_cast<std::size_t>(plan.head_dim), entries);
    layer.lengths[s] = plan.kept(s);
  }
  for (std::size_t t = 0; t < tables; ++t) {
    std::size_t after = 0;
    for (std::size_t h = 0; h < H; ++h) after = std::max(after, detail::pages_for(layer.lengths[t * H + h], layer.page_size));
    std::int32_t* table = layer.page_table + static_cast<std::ptrdiff_t>(t) * layer.table_stride;
    for (std::size_t p = after; p < used_before[t]; ++p) table[p] = -1;
  }
  result.stats = plan.stats();
  return result;
}

/// Plans and applies `policy` to a paged layer: `request` gives everything but the heads (window,
/// budget, layer, executor, shared_selection); the heads come from staging the layer.
template <class Policy, StorageElement T>
PagedApplyResult compress_paged(const Policy& policy, PagedLayer<T>& layer, LayerRequest<T> request,
                                Workspace& workspace, Staging<T>& staging) {
  auto& views = stage_paged(layer, staging);
  request.heads = views;
  LayerPlan plan = policy.plan(request, workspace);
  PagedApplyResult result = apply_plan(plan, layer);
  workspace.recycle(std::move(plan));
  return result;
}

/// Decode attention of sequence s of a paged layer: the G query heads of one token over its
/// pages (see decode_attention); with pages a multiple of kernels::simd::attend_tile entries the
/// result has the bits of the same entries packed in one HeadView.
template <StorageElement T>
void decode_attention(const PagedLayer<T>& layer, std::size_t s, std::span<const float> queries, int num_query_heads,
                      std::span<float> out, const AttentionOptions& options = {}) {
  thread_local std::vector<HeadView<T>> pages;
  layer.segments(s, pages);
  decode_attention(std::span<const HeadView<T>>(pages), queries, num_query_heads, out, options);
}

/// Block attention of sequence s of a paged layer (see block_attention).
template <StorageElement T>
void block_attention(const PagedLayer<T>& layer, std::size_t s, std::span<const float> queries, int num_query_heads,
                     std::span<const Position> query_positions, std::span<float> out,
                     const AttentionOptions& options = {}) {
  thread_local std::vector<HeadView<T>> pages;
  layer.segments(s, pages);
  block_attention(std::span<const HeadView<T>>(pages), queries, num_query_heads, query_positions, out, options);
}

}  // namespace simcalkv
