// Shared declarations of the CPU scan kernels: the exact byte-table scan and the fused
// top-k.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vecstore {

enum class Metric : int { kInnerProduct = 0, kL2 = 1 };

// A scan of byte-table codes: score(row) = scale[row] * sum_b table[b][code[row][b]], the
// sum taken in byte order in float32 (exactly as the numpy reference adds), then turned
// into a key where smaller is better (l2 adds the stored norm[row] squared).
struct LutScan {
  const float* tables;       // (n_bytes, 256) float32 of one query
  const uint8_t* codes;      // row r starts at codes + r * code_stride
  std::ptrdiff_t code_stride;
  std::ptrdiff_t n_bytes;    // table bytes read per row
  const float* scales;       // (n,) float32 multipliers of the table sums
  const float* norms;        // (n,) float32 stored norms, for l2
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

inline float to_key(float sum, float scale, float norm, Metric metric, float query_sq_norm) {
  const float score = sum * scale;
  if (metric == Metric::kL2) {
    return (score * -2.0f + query_sq_norm) + norm * norm;
  }
  return -score;
}

// Rows [begin, end) of `scan` into `top`.
namespace scalar {
void lut_scan(const LutScan& scan, std::ptrdiff_t begin, std::ptrdiff_t end, TopK& top);
}

// The exact key of one row of `scan`.
inline float exact_key(const LutScan& scan, std::ptrdiff_t row) {
  const uint8_t* code = scan.codes + row * scan.code_stride;
  float sum = 0.0f;
  for (std::ptrdiff_t b = 0; b < scan.n_bytes; ++b) sum += scan.tables[b * 256 + code[b]];
  return to_key(sum, scan.scales[row], scan.norms[row], scan.metric, scan.query_sq_norm);
}

// The exact k best of rows [0, n) of `scan`, rows split across `workers` threads.
std::vector<Candidate> exact_topk(const LutScan& scan, std::ptrdiff_t n, std::size_t k,
                                  std::size_t workers);


// A FastScan accumulate (fastscan.h): uint16 sums of quantized nibble tables, 32 rows a
// block.
using NibbleAccumulate = void (*)(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                                  std::ptrdiff_t n_bytes, const uint8_t* tables,
                                  uint16_t* sums);

// Whether codes of n_bytes bytes can take the nibble scan (its sums fit 16 bits).
bool nibble_fits(std::ptrdiff_t n_bytes);

// One part of a search over several: its exact scan (codes, scales, norms, live rows, ties), its
// blocked codes for the FastScan pass (nullptr: scanned exactly), and where its rows go
// in the search's numbering (row_map[r], or offset + r without a map).
struct ScanPart {
  LutScan exact;
  std::ptrdiff_t rows;
  const uint8_t* blocked;
  const int64_t* row_map;
  int64_t offset;

  int64_t global(std::ptrdiff_t r) const { return row_map ? row_map[r] : offset + r; }
};

// The exact k best rows of every part for one query, in one top-k: exact parts first,
// then a FastScan pass over the blocked parts with the quantized `nibble_tables`
// (2 * n_bytes, 16) float32 bounds every row, and rows that can reach the k-th best bound
// (exact keys found so far included) are scored exactly.
std::vector<Candidate> scan_parts(const std::vector<ScanPart>& parts,
                                  const float* nibble_tables, NibbleAccumulate accumulate,
                                  std::size_t workers, std::size_t k);

}  // namespace vecstore
