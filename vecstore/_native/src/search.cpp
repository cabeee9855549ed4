// Exact top-k over the parts of a search. The exact scan scores every row. The FastScan
// scan first sums quantized nibble tables over the blocked codes (a SIMD kernel; codes
// split into a head and a tail take one pass of each), which bounds every row's key; a row is kept when its lower bound can reach the k-th smallest
// upper bound seen so far, and at the end only the kept rows whose lower bound reaches the
// final k-th upper bound are scored exactly. So the result is the exact scan's.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "clones.h"
#include "parallel.h"
#include "scan.h"

namespace vecstore {
namespace {

// Blocks one accumulate call covers: 2,048 rows, whose codes stay in cache while every
// query of a batch scores them.
constexpr std::ptrdiff_t kChunkBlocks = 64;
constexpr std::ptrdiff_t kChunkRows = kChunkBlocks * fastscan::kBlockRows;

// What one query's FastScan pass reads, and how far its kernel sums are from the real
// table sums: a row's real table sum is within err of low_sum + delta * (kernel sum).
struct KernelTables {
  // The table kernel's tables (n_quads, 2, 64) uint8, or the level-dot kernel's weights
  // (n_quads, 8) int8 (fastscan.h).
  std::vector<uint8_t> bytes;
  float low_sum = 0.0f;         // rounded to float32, its rounding inside err
  float delta = 1.0f;
  float err = 0.0f;
};

// Entries levels[i] = round((t[i] - lows[i / 16]) * inverse), at most 255, for the
// 16 * positions entries of the nibble tables t.
VECSTORE_CLONES
void quantize_entries(const float* nibbles, const float* lows, std::ptrdiff_t positions,
                      float inverse, uint8_t* levels) {
  for (std::ptrdiff_t i = 0; i < positions * 16; ++i) {
    const float level = std::floor((nibbles[i] - lows[i / 16]) * inverse + 0.5f);
    levels[i] = static_cast<uint8_t>(level < 255.0f ? level : 255.0f);
  }
}

// The table kernel's tables of one query: q[p][v] = round((t[p][v] - low[p]) / delta).
KernelTables quantize(const float* nibbles, std::ptrdiff_t n_bytes) {
  const std::ptrdiff_t positions = 2 * n_bytes;
  const std::ptrdiff_t n_quads = fastscan::quad_count(n_bytes);
  KernelTables out;
  out.bytes.assign(static_cast<std::size_t>(n_quads * 128), 0);
  std::vector<float> lows(positions);
  std::vector<uint8_t> levels(static_cast<std::size_t>(positions * 16));
  double low_sum = 0.0, abs_sum = 0.0;
  float range_max = 0.0f;
  for (std::ptrdiff_t p = 0; p < positions; ++p) {
    const float* t = nibbles + p * 16;
    float low = t[0], high = t[0];
    for (int v = 1; v < 16; ++v) {
      low = std::min(low, t[v]);
      high = std::max(high, t[v]);
    }
    lows[p] = low;
    low_sum += low;
    abs_sum += std::max(std::fabs(low), std::fabs(high));
    range_max = std::max(range_max, high - low);
  }
  float delta = range_max / 254.0f;
  if (!(delta > 0.0f)) delta = 1.0f;
  quantize_entries(nibbles, lows.data(), positions, 1.0f / delta, levels.data());
  for (std::ptrdiff_t p = 0; p < positions; ++p) {
    const std::ptrdiff_t byte = p / 2, half = p % 2;
    std::memcpy(out.bytes.data() + (byte / 4) * 128 + half * 64 + (byte % 4) * 16,
                levels.data() + p * 16, 16);
  }
  out.low_sum = static_cast<float>(low_sum);
  out.delta = delta;
  // An entry is within delta / 2 of its level, up to the float32 rounding of the level's
  // computation (the 1e-4 and the first epsilon term); float32 sums of the float tables
  // move by far less than the second epsilon term; the last covers the rounding of
  // low_sum to float32 and of delta * sum.
  out.err = static_cast<float>(positions * static_cast<double>(delta) * (0.5 + 1e-4) +
                               4.0 * FLT_EPSILON * abs_sum +
                               8.0 * (n_bytes + 1) * FLT_EPSILON * abs_sum +
                               1e-6 * (std::fabs(low_sum) + 255.0 * positions * delta));
  return out;
}

// The level-dot kernel's shared levels: round(level / scale) + bias, so that they are
// unsigned bytes, with scale = max |level| / range and bias = range + 1 (range 127: 1 to
// 255; 63: 1 to 127); `count` levels (16 for nibbles, 256 for bytes).
struct Levels {
  uint8_t biased[256];
  int count;
  int best;          // the level of largest magnitude
  double scale;
  int bias;
};

Levels quantize_levels(const float* levels, int count, int range) {
  Levels out{};
  out.count = count;
  out.best = 0;
  out.bias = range + 1;
  for (int v = 1; v < count; ++v)
    if (std::fabs(levels[v]) > std::fabs(levels[out.best])) out.best = v;
  out.scale = std::fabs(static_cast<double>(levels[out.best])) / range;
  if (!(out.scale > 0.0)) out.scale = 1.0;
  for (int v = 0; v < count; ++v)
    out.biased[v] = static_cast<uint8_t>(std::lround(levels[v] / out.scale) + out.bias);
  return out;
}

// The largest |entries[v] - weight * steps[v]| over the `count` entries of a position.
VECSTORE_CLONES
double worst_error(const float* entries, double weight, const double* steps, int count) {
  double worst = 0.0;
  for (int v = 0; v < count; ++v) {
    const double error = std::fabs(entries[v] - weight * steps[v]);
    worst = error > worst ? error : worst;
  }
  return worst;
}

// One query's level-dot weights: its tables (nibble tables for 16 levels, byte tables
// for 256) must be (its coordinate at position p) times levels[v]. Weight w[p] =
// round(coordinate / s), delta = s * levels.scale, and err adds each position's measured
// largest |t[p][v] - delta * w[p] * level_v| (levels unbiased). Weights are laid out as
// fastscan.h's level kernels read them.
KernelTables weigh(const float* tables, std::ptrdiff_t n_bytes, const float* levels,
                   const Levels& shared) {
  const bool bytes = shared.count == 256;
  const std::ptrdiff_t positions = bytes ? n_bytes : 2 * n_bytes;
  const int entries = shared.count;
  const std::ptrdiff_t n_quads = fastscan::quad_count(n_bytes);
  KernelTables out;
  out.bytes.assign(static_cast<std::size_t>(n_quads * (bytes ? 4 : 8)), 0);
  const double best_level = levels[shared.best];
  double largest = 0.0, abs_sum = 0.0;
  for (std::ptrdiff_t p = 0; p < positions; ++p) {
    largest = std::max(largest, std::fabs(tables[p * entries + shared.best] / best_level));
    abs_sum += std::fabs(tables[p * entries + shared.best]);
  }
  const double step = largest > 0.0 ? largest / 127.0 : 1.0;
  const double delta = step * shared.scale;
  double steps[256];
  for (int v = 0; v < entries; ++v) steps[v] = delta * (shared.biased[v] - shared.bias);
  double rounding = 0.0, weight_sum = 0.0;
  for (std::ptrdiff_t p = 0; p < positions; ++p) {
    const double coordinate = tables[p * entries + shared.best] / best_level;
    const long weight = std::max(-127L, std::min(127L, std::lround(coordinate / step)));
    const std::ptrdiff_t byte = bytes ? p : p / 2, half = bytes ? 0 : p % 2;
    const std::ptrdiff_t slot = bytes ? p : (byte / 4) * 8 + half * 4 + byte % 4;
    out.bytes[static_cast<std::size_t>(slot)] = static_cast<uint8_t>(static_cast<int8_t>(weight));
    weight_sum += static_cast<double>(weight);
    rounding += worst_error(tables + p * entries, static_cast<double>(weight), steps, entries);
  }
  const double low_sum = -static_cast<double>(shared.bias) * delta * weight_sum;
  out.low_sum = static_cast<float>(low_sum);
  out.delta = static_cast<float>(delta);
  // The entry of largest level is the largest of a position's entries (every entry is
  // the coordinate times a level), so abs_sum is the sum of the largest |entry|.
  // Float32 sums of the float tables move by far less than the second term; the last
  // covers float32 rounding of low_sum and of delta * sum.
  out.err = static_cast<float>(rounding * (1.0 + 1e-6) +
                               8.0 * (n_bytes + 1) * FLT_EPSILON * abs_sum +
                               1e-6 * (std::fabs(low_sum) + 255.0 * 127.0 * positions * delta));
  return out;
}

// Keeps the k smallest values seen (a max-heap); its top bounds the k-th best key.
class KthSmallest {
 public:
  explicit KthSmallest(std::size_t k) : k_(k) { heap_.reserve(std::min<std::size_t>(k, 1 << 16)); }
  void add(float value) {
    if (heap_.size() < k_) {
      heap_.push_back(value);
      std::push_heap(heap_.begin(), heap_.end());
    } else if (value < heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end());
      heap_.back() = value;
      std::push_heap(heap_.begin(), heap_.end());
    }
  }
  float bound() const { return heap_.size() < k_ ? INFINITY : heap_.front(); }
  const std::vector<float>& values() const { return heap_; }

 private:
  std::size_t k_;
  std::vector<float> heap_;
};

// A row kept by the FastScan pass: its key's lower bound, part and row.
struct Kept {
  float low;
  int32_t part;
  int64_t row;
};

// What one worker learns about one query.
struct QueryBounds {
  explicit QueryBounds(std::size_t k) : uppers(k) {}
  KthSmallest uppers;
  std::vector<Kept> kept;
};

// A worker's share of the rows: blocks [first, last) of part `part`.
struct Span {
  std::size_t part;
  std::ptrdiff_t first, last;
};

// Splits every part's blocks into `workers` shares of about equal size.
std::vector<std::vector<Span>> split(const Search& search, std::size_t workers) {
  std::ptrdiff_t total = 0;
  for (const Part& p : search.parts) total += fastscan::block_count(p.rows);
  const std::ptrdiff_t per = std::max<std::ptrdiff_t>(1, (total + workers - 1) / workers);
  std::vector<std::vector<Span>> shares(workers);
  std::size_t w = 0;
  std::ptrdiff_t room = per;
  for (std::size_t i = 0; i < search.parts.size(); ++i) {
    const std::ptrdiff_t n = fastscan::block_count(search.parts[i].rows);
    std::ptrdiff_t first = 0;
    while (first < n) {
      const std::ptrdiff_t take = std::min(room, n - first);
      shares[w].push_back(Span{i, first, first + take});
      first += take;
      room -= take;
      if (room == 0 && w + 1 < workers) {
        ++w;
        room = per;
      }
    }
  }
  return shares;
}


// Per row r < count, the lower bound of its key and the width of its key interval, from
// its quantized sum. Key = c - f * (table sum), c = ||q||^2 + ||x||^2 and f = 2 scale for
// l2, c = 0 and f = scale for ip (scales may be negative); the relative slack covers
// float32 rounding here and in the exact key.
VECSTORE_CLONES
void row_bounds(const int32_t* sums, const float* scales, const float* norms,
                std::ptrdiff_t count, bool l2, float query_sq_norm, float low_sum, float delta,
                float err, float* lows, float* widths) {
  const float base = std::fabs(low_sum) + err;
  if (l2) {
    for (std::ptrdiff_t r = 0; r < count; ++r) {
      const float quantized = delta * static_cast<float>(sums[r]);
      const float f = 2.0f * scales[r];
      const float c = query_sq_norm + norms[r] * norms[r];
      const float width =
          std::fabs(f) * (err + 1e-5f * (base + std::fabs(quantized))) + 1e-5f * c + 1e-30f;
      lows[r] = (c - f * (low_sum + quantized)) - width;
      widths[r] = 2.0f * width;
    }
  } else {
    for (std::ptrdiff_t r = 0; r < count; ++r) {
      const float quantized = delta * static_cast<float>(sums[r]);
      const float f = scales[r];
      const float width = std::fabs(f) * (err + 1e-5f * (base + std::fabs(quantized))) + 1e-30f;
      lows[r] = -(f * (low_sum + quantized)) - width;
      widths[r] = 2.0f * width;
    }
  }
}

// row_bounds for codes whose sum is (head sum) + (tail sum) * tails[r], each sum known
// from its own quantized sum and tables.
VECSTORE_CLONES
void split_row_bounds(const int32_t* sums, const int32_t* tail_sums, const float* scales,
                      const float* tails, const float* norms, std::ptrdiff_t count, bool l2,
                      float query_sq_norm, const KernelTables& head, const KernelTables& tail,
                      float* lows, float* widths) {
  const float head_base = std::fabs(head.low_sum) + head.err;
  const float tail_base = std::fabs(tail.low_sum) + tail.err;
  for (std::ptrdiff_t r = 0; r < count; ++r) {
    const float head_sum = head.delta * static_cast<float>(sums[r]);
    const float tail_sum = tail.delta * static_cast<float>(tail_sums[r]);
    const float c = std::fabs(tails[r]);
    const float sum = (head.low_sum + head_sum) + tails[r] * (tail.low_sum + tail_sum);
    const float err = head.err + c * tail.err +
                      1e-5f * (head_base + std::fabs(head_sum) + c * (tail_base + std::fabs(tail_sum)));
    const float f = (l2 ? 2.0f : 1.0f) * scales[r];
    const float base = l2 ? query_sq_norm + norms[r] * norms[r] : 0.0f;
    const float width = std::fabs(f) * err + 1e-5f * base + 1e-30f;
    lows[r] = (base - f * sum) - width;
    widths[r] = 2.0f * width;
  }
}

// Moves the first count key bounds by -shift, widening them by the rounding that adding
// a query's offset to its scores costs.
VECSTORE_CLONES
void shift_bounds(float* lows, float* widths, std::ptrdiff_t count, float shift) {
  const float slack = 1e-5f * std::fabs(shift);
  for (std::ptrdiff_t r = 0; r < count; ++r) {
    lows[r] = (lows[r] - shift) - slack;
    widths[r] += 2.0f * slack;
  }
}

// Which of the first count lows reach tau: flags[r] = 1 or 0, and 0 up to a multiple of 8.
VECSTORE_CLONES
void reaching(const float* lows, std::ptrdiff_t count, float tau, uint8_t* flags) {
  for (std::ptrdiff_t r = 0; r < count; ++r) flags[r] = lows[r] <= tau ? 1 : 0;
  for (std::ptrdiff_t r = count; r % 8 != 0; ++r) flags[r] = 0;
}

// The FastScan tables of one query: for the head of its codes, and for the tail where the
// search splits them.
struct SplitTables {
  KernelTables head, tail;
};

// Bounds rows [row0, row0 + count) of `part` from their quantized sums (and tail sums, or
// nullptr) and keeps those that can reach the k best (a kept row's lower bound reaches
// the k-th upper bound as of the chunk's start, which only falls).
void keep_rows(const Search& search, const Part& part, std::size_t part_index,
               std::ptrdiff_t row0, std::ptrdiff_t count, const int32_t* sums,
               const int32_t* tail_sums, const SplitTables& t, const Query& query,
               QueryBounds& bounds) {
  const float query_sq_norm = query.sq_norm;
  alignas(64) float lows[kChunkRows];
  alignas(64) float widths[kChunkRows];
  alignas(64) uint8_t flags[kChunkRows];
  const bool l2 = search.metric == Metric::kL2;
  if (tail_sums == nullptr) {
    row_bounds(sums, part.scales + row0, part.norms + row0, count, l2, query_sq_norm,
               t.head.low_sum, t.head.delta, t.head.err, lows, widths);
  } else {
    split_row_bounds(sums, tail_sums, part.scales + row0, part.tail_scales + row0,
                     part.norms + row0, count, l2, query_sq_norm, t.head, t.tail, lows,
                     widths);
  }
  if (query.offset != 0.0f) shift_bounds(lows, widths, count, (l2 ? 2.0f : 1.0f) * query.offset);
  reaching(lows, count, bounds.uppers.bound(), flags);
  for (std::ptrdiff_t r0 = 0; r0 < count; r0 += 8) {
    uint64_t word;
    std::memcpy(&word, flags + r0, sizeof(word));
    for (; word != 0; word &= word - 1) {
      const std::ptrdiff_t r = r0 + __builtin_ctzll(word) / 8;
      if (!part.alive(row0 + r) || !(lows[r] <= bounds.uppers.bound())) continue;
      bounds.kept.push_back(Kept{lows[r], static_cast<int32_t>(part_index), row0 + r});
      bounds.uppers.add(lows[r] + widths[r]);
    }
  }
}

// One worker's FastScan pass over its spans for every query.
void bound_spans(const Search& search, const std::vector<Span>& spans,
                 const std::vector<Query>& queries, const std::vector<SplitTables>& tables,
                 const Kernel& kernel, const Levels& levels, std::vector<QueryBounds>& bounds) {
  const bool split = search.split < search.n_bytes;
  const std::ptrdiff_t n_quads = fastscan::quad_count(search.split);
  const std::ptrdiff_t tail_quads = split ? fastscan::quad_count(search.n_bytes - search.split) : 0;
  const std::ptrdiff_t block_bytes = fastscan::kBlockRows * 4 * n_quads;
  const std::ptrdiff_t tail_block_bytes = fastscan::kBlockRows * 4 * tail_quads;
  // Kept per thread: a fresh buffer a call would cost page faults on every search.
  thread_local std::vector<int32_t> sums(static_cast<std::size_t>(fastscan::kMaxGroup * kChunkRows));
  thread_local std::vector<int32_t> tail_sums;
  if (split) tail_sums.resize(static_cast<std::size_t>(fastscan::kMaxGroup * kChunkRows));
  const std::size_t nq = queries.size();
  for (const Span& span : spans) {
    const Part& part = search.parts[span.part];
    for (std::ptrdiff_t first = span.first; first < span.last; first += kChunkBlocks) {
      const std::ptrdiff_t n_blocks = std::min(kChunkBlocks, span.last - first);
      const std::ptrdiff_t row0 = first * fastscan::kBlockRows;
      const std::ptrdiff_t count =
          std::min(n_blocks * fastscan::kBlockRows, part.rows - row0);
      for (std::size_t q0 = 0; q0 < nq; q0 += fastscan::kMaxGroup) {
        const int group = static_cast<int>(std::min<std::size_t>(fastscan::kMaxGroup, nq - q0));
        const uint8_t* group_tables[fastscan::kMaxGroup];
        const uint8_t* group_tail_tables[fastscan::kMaxGroup];
        int32_t* group_sums[fastscan::kMaxGroup];
        int32_t* group_tail_sums[fastscan::kMaxGroup];
        for (int g = 0; g < group; ++g) {
          group_tables[g] = tables[q0 + g].head.bytes.data();
          group_tail_tables[g] = tables[q0 + g].tail.bytes.data();
          group_sums[g] = sums.data() + g * kChunkRows;
          group_tail_sums[g] = split ? tail_sums.data() + g * kChunkRows : nullptr;
        }
        const uint8_t* codes = part.blocked + first * block_bytes;
        if (kernel.levels != nullptr) {
          kernel.level_accumulate(codes, n_blocks, n_quads, levels.biased,
                                  reinterpret_cast<const int8_t* const*>(group_tables), group,
                                  group_sums);
        } else {
          kernel.accumulate(codes, n_blocks, n_quads, group_tables, group, group_sums);
        }
        if (split)
          kernel.accumulate(part.blocked_tail + first * tail_block_bytes, n_blocks, tail_quads,
                            group_tail_tables, group, group_tail_sums);
        for (int g = 0; g < group; ++g)
          keep_rows(search, part, span.part, row0, count, group_sums[g], group_tail_sums[g],
                    tables[q0 + g], queries[q0 + g], bounds[q0 + g]);
      }
    }
  }
}

// One worker's exact scan of its spans for every query.
void score_spans(const Search& search, const std::vector<Span>& spans,
                 const std::vector<Query>& queries, std::vector<TopK>& tops) {
  for (const Span& span : spans) {
    const Part& part = search.parts[span.part];
    const std::ptrdiff_t end = std::min(span.last * fastscan::kBlockRows, part.rows);
    for (std::size_t q = 0; q < queries.size(); ++q) {
      for (std::ptrdiff_t r = span.first * fastscan::kBlockRows; r < end; ++r) {
        if (!part.alive(r)) continue;
        const float key = search.exact_key(queries[q], part, r);
        if (tops[q].accepts(key, part.ties[r])) tops[q].push(key, part.ties[r], part.global(r));
      }
    }
  }
}

}  // namespace

std::vector<std::vector<Candidate>> search_topk(const Search& search,
                                                const std::vector<Query>& queries,
                                                const Kernel& kernel, std::size_t workers) {
  const std::size_t nq = queries.size(), k = search.k;
  workers = std::max<std::size_t>(1, workers);
  const std::vector<std::vector<Span>> shares = split(search, workers);
  std::vector<std::vector<Candidate>> best(nq);
  if (kernel.accumulate == nullptr && kernel.level_accumulate == nullptr) {
    std::vector<std::vector<TopK>> tops(workers, std::vector<TopK>(nq, TopK(k)));
    in_parallel(workers, [&](std::size_t w) { score_spans(search, shares[w], queries, tops[w]); });
    for (std::size_t q = 0; q < nq; ++q) {
      TopK merged(k);
      for (auto& top : tops)
        for (const Candidate& c : top[q].sorted()) merged.push(c.key, c.tie, c.row);
      best[q] = merged.sorted();
    }
    return best;
  }
  const bool level_dot = kernel.level_accumulate != nullptr && kernel.levels != nullptr;
  const bool bytes = nq > 0 && queries[0].nibbles == nullptr;
  const Levels levels = level_dot ? quantize_levels(kernel.levels, bytes ? 256 : 16,
                                                    kernel.level_range)
                                   : Levels{};
  const std::ptrdiff_t head = search.split, tail = search.n_bytes - search.split;
  std::vector<SplitTables> tables(nq);
  for (std::size_t q = 0; q < nq; ++q) {
    const float* t = bytes ? queries[q].bytes : queries[q].nibbles;
    tables[q].head = level_dot ? weigh(t, head, kernel.levels, levels) : quantize(t, head);
    if (tail > 0) tables[q].tail = quantize(t + 2 * head * 16, tail);
  }
  const Kernel chosen = level_dot ? kernel : Kernel{kernel.accumulate, nullptr, nullptr};
  std::vector<std::vector<QueryBounds>> bounds(workers, std::vector<QueryBounds>(nq, QueryBounds(k)));
  in_parallel(workers, [&](std::size_t w) {
    bound_spans(search, shares[w], queries, tables, chosen, levels, bounds[w]);
  });
  for (std::size_t q = 0; q < nq; ++q) {
    KthSmallest uppers(k);
    for (auto& worker : bounds)
      for (const float upper : worker[q].uppers.values()) uppers.add(upper);
    const float threshold = uppers.bound();
    TopK top(k);
    for (auto& worker : bounds) {
      for (const Kept& kept : worker[q].kept) {
        if (!(kept.low <= threshold)) continue;
        const Part& part = search.parts[kept.part];
        const float key = search.exact_key(queries[q], part, kept.row);
        if (top.accepts(key, part.ties[kept.row]))
          top.push(key, part.ties[kept.row], part.global(kept.row));
      }
    }
    best[q] = top.sorted();
  }
  return best;
}

}  // namespace vecstore
