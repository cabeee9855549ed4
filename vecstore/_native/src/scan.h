// Shared declarations of the CPU scan kernels: the exact byte-table scan and the fused
// top-k.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vecstore {

enum class Metric : int { kInnerProduct = 0, kL2 = 1 };

// A scan of byte-table codes: score(row) = norm[row] * sum_b table[b][code[row][b]], the
// sum taken in byte order in float32 (exactly as the numpy reference adds), then turned
// into a key where smaller is better.
struct LutScan {
  const float* tables;       // (n_bytes, 256) float32 of one query
  const uint8_t* codes;      // row r starts at codes + r * code_stride
  std::ptrdiff_t code_stride;
  std::ptrdiff_t n_bytes;    // table bytes read per row
  const float* norms;        // (n,) float32 multipliers
  const uint8_t* live;       // (n,) bool or nullptr for all rows
  const int64_t* ties;       // (n,) int64: equal keys go to the smaller
  Metric metric;
  float query_sq_norm;       // ||q||^2 for l2
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

inline float to_key(float sum, float norm, Metric metric, float query_sq_norm) {
  const float score = sum * norm;
  if (metric == Metric::kL2) {
    return (score * -2.0f + query_sq_norm) + norm * norm;
  }
  return -score;
}

// Rows [begin, end) of `scan` into `top`.
namespace scalar {
void lut_scan(const LutScan& scan, std::ptrdiff_t begin, std::ptrdiff_t end, TopK& top);
}

// A FastScan accumulate (fastscan.h): uint16 sums of quantized nibble tables, 32 rows a
// block.
using NibbleAccumulate = void (*)(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                                  std::ptrdiff_t n_bytes, const uint8_t* tables,
                                  uint16_t* sums);

// Whether codes of n_bytes bytes can take the nibble scan (its sums fit 16 bits).
bool nibble_fits(std::ptrdiff_t n_bytes);

// The exact k best of rows [0, n) of `exact` into `top`, through the quantized nibble
// tables (2 * n_bytes, 16) float32 of the same query over the blocked codes: a FastScan
// pass on `workers` threads bounds each row's key, and rows that can reach the k-th best
// bound are scored exactly.
void nibble_scan(const LutScan& exact, const float* nibble_tables, const uint8_t* blocked,
                 std::ptrdiff_t n, NibbleAccumulate accumulate, std::size_t workers,
                 TopK& top, std::size_t k);

}  // namespace vecstore
