// Shared declarations of the CPU scan: the parts a search scans, the exact keys of rows,
// the fused top-k, and the searches themselves (exact, and FastScan-bounded).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fastscan.h"

namespace vecstore {

enum class Metric : int { kInnerProduct = 0, kL2 = 1 };

// One part of a search: n_bytes code bytes a row (read from the stored rows as the
// search's Values say), score(row) = scales[row] * (the row's table sum), keys
// smaller-is-better (l2 adds norms[row]^2), equal keys to the smaller ties[row]; rows where
// live is false are never returned. Rows come back numbered by row_map[r], or offset + r
// without a map. blocked is the FastScan layout of the code bytes before the search's
// split, blocked_tail that of the rest, or nullptr. Where a search splits its code bytes,
// a row's table sum is (sum of the head) + (sum of the tail) * tail_scales[row].
struct Part {
  const uint8_t* codes;      // row r starts at codes + r * stride
  std::ptrdiff_t stride;
  std::ptrdiff_t rows;
  const float* scales;       // (rows,) float32
  const float* norms;        // (rows,) float32
  const uint8_t* live;       // (rows,) bool, or nullptr for all rows
  const int64_t* ties;       // (rows,) int64
  const uint8_t* blocked;    // blocked_size(rows, split) bytes, or nullptr
  const int64_t* row_map;    // (rows,) int64, or nullptr
  int64_t offset;
  const float* tail_scales;  // (rows,) float32, or nullptr without a split
  const uint8_t* blocked_tail;  // blocked_size(rows, n_bytes - split) bytes, or nullptr

  int64_t global(std::ptrdiff_t r) const { return row_map ? row_map[r] : offset + r; }
  bool alive(std::ptrdiff_t r) const { return live == nullptr || live[r]; }
};

// The tables of one query; its score of a row is the row's scale times its table sum,
// plus the query's offset. A row's table sum adds, in byte order and in float32, one entry
// a byte: bytes[b * 256 + code_b] where byte tables are given, else
// nibbles[2b][code_b & 15] + nibbles[2b+1][code_b >> 4] (rounded to float32 first), which
// equals the byte table built from the nibble tables.
struct Query {
  const float* nibbles;      // (2 * n_bytes, 16) float32, or nullptr
  const float* bytes;        // (n_bytes, 256) float32, or nullptr (then nibbles is set)
  float sq_norm;             // ||q||^2, for l2
  float offset;              // added to every score of the query (0: none)
};

// One candidate of a top-k.
struct Candidate {
  float key;
  int64_t tie;
  int64_t row;
};

// Keeps the k candidates with the smallest (key, tie), as a max-heap on (key, tie).
class TopK {
 public:
  explicit TopK(std::size_t k) : k_(k) { heap_.reserve(k); }
  bool accepts(float key, int64_t tie) const {
    return heap_.size() < k_ || worse(heap_.front(), {key, tie, 0});
  }
  void push(float key, int64_t tie, int64_t row);
  // The candidates, best first; the heap is emptied.
  std::vector<Candidate> sorted();
  static bool worse(const Candidate& a, const Candidate& b) {
    return a.key > b.key || (a.key == b.key && a.tie > b.tie);
  }
  static bool better(const Candidate& a, const Candidate& b) { return worse(b, a); }

 private:
  std::size_t k_;
  std::vector<Candidate> heap_;
};

inline float to_key(float sum, float scale, float norm, Metric metric, float query_sq_norm,
                    float offset) {
  float score = sum * scale;
  if (offset != 0.0f) score = score + offset;
  if (metric == Metric::kL2) {
    return (score * -2.0f + query_sq_norm) + norm * norm;
  }
  return -score;
}

// The float32 table sum of code bytes [begin, end) of one row's code.
inline float table_sum(const Query& query, const uint8_t* code, std::ptrdiff_t begin,
                       std::ptrdiff_t end) {
  float sum = 0.0f;
  if (query.bytes != nullptr) {
    for (std::ptrdiff_t b = begin; b < end; ++b) sum += query.bytes[b * 256 + code[b]];
  } else {
    const float* t = query.nibbles;
    for (std::ptrdiff_t b = begin; b < end; ++b) {
      const float entry = t[32 * b + (code[b] & 15)] + t[32 * b + 16 + (code[b] >> 4)];
      sum += entry;
    }
  }
  return sum;
}

// What a search scans: its parts, how their stored rows give n_bytes code bytes, where
// the code bytes split into head and tail (split == n_bytes: no tail), the metric and k.
struct Search {
  std::vector<Part> parts;
  std::ptrdiff_t n_bytes;
  fastscan::Values values;
  std::ptrdiff_t split;
  Metric metric;
  std::size_t k;

  float exact_key(const Query& query, const Part& part, std::ptrdiff_t r) const {
    const uint8_t* code = part.codes + r * part.stride;
    thread_local std::vector<uint8_t> row;
    if (values.bits != 0) {
      row.resize(static_cast<std::size_t>(n_bytes));
      fastscan::code_bytes(code, values, n_bytes, row.data());
      code = row.data();
    }
    float sum = table_sum(query, code, 0, split);
    if (split < n_bytes) sum = sum + table_sum(query, code, split, n_bytes) * part.tail_scales[r];
    return to_key(sum, part.scales[r], part.norms[r], metric, query.sq_norm, query.offset);
  }
};

// The FastScan kernels a search may take: the table kernel, and a level-dot kernel with
// the levels every position's table is a multiple of: (16,) float32 for nibble tables,
// (256,) for byte tables (nullptr where the tables are not of that form).
struct Kernel {
  fastscan::Accumulate accumulate = nullptr;
  fastscan::LevelAccumulate level_accumulate = nullptr;
  const float* levels = nullptr;
  // The largest magnitude a quantized level takes: 127 (8-bit levels), or 63 for the
  // avx2 level-dot kernel, whose biased levels must stay below 128.
  int level_range = 127;
};

// Per query, the exact k best rows of every part, best first, rows split across `workers`
// threads. With a kernel (every part then has its blocked layouts and every query its
// nibble tables), quantized tables or levels bound each row's key and only rows that can
// reach the k best are scored exactly; without (all nullptr), every row is. The level-dot
// kernel runs on the head where it and the levels are given; a tail takes the table
// kernel.
std::vector<std::vector<Candidate>> search_topk(const Search& search,
                                                const std::vector<Query>& queries,
                                                const Kernel& kernel, std::size_t workers);

}  // namespace vecstore
