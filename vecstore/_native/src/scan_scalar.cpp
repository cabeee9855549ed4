// The portable scan: one row at a time, and the fused top-k every ISA shares.
#include <algorithm>

#include "scan.h"

namespace vecstore {

void TopK::push(float key, int64_t tie, int64_t row) {
  const Candidate candidate{key, tie, row};
  if (heap_.size() < k_) {
    heap_.push_back(candidate);
    std::push_heap(heap_.begin(), heap_.end(), better);
  } else if (worse(heap_.front(), candidate)) {
    std::pop_heap(heap_.begin(), heap_.end(), better);
    heap_.back() = candidate;
    std::push_heap(heap_.begin(), heap_.end(), better);
  }
}

std::vector<Candidate> TopK::sorted() {
  std::vector<Candidate> out;
  out.swap(heap_);
  std::sort(out.begin(), out.end(), better);
  return out;
}

namespace scalar {

void lut_scan(const LutScan& scan, std::ptrdiff_t begin, std::ptrdiff_t end, TopK& top) {
  for (std::ptrdiff_t row = begin; row < end; ++row) {
    if (scan.live != nullptr && !scan.live[row]) continue;
    const uint8_t* code = scan.codes + row * scan.code_stride;
    float sum = 0.0f;
    for (std::ptrdiff_t b = 0; b < scan.n_bytes; ++b) sum += scan.tables[b * 256 + code[b]];
    const float key = to_key(sum, scan.norms[row], scan.metric, scan.query_sq_norm);
    if (top.accepts(key, scan.ties[row])) top.push(key, scan.ties[row], row);
  }
}

}  // namespace scalar
}  // namespace vecstore
