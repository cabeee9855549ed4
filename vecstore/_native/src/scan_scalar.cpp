// The portable scan: one row at a time, and the fused top-k every ISA shares.
#include <algorithm>
#include <thread>

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
    const float key = exact_key(scan, row);
    if (top.accepts(key, scan.ties[row])) top.push(key, scan.ties[row], row);
  }
}

}  // namespace scalar

std::vector<Candidate> exact_topk(const LutScan& scan, std::ptrdiff_t n, std::size_t k,
                                  std::size_t workers) {
  std::vector<TopK> tops(workers, TopK(k));
  std::vector<std::thread> pool;
  const std::ptrdiff_t per = (n + workers - 1) / workers;
  for (std::size_t w = 0; w < workers; ++w) {
    const std::ptrdiff_t begin = std::min<std::ptrdiff_t>(n, w * per);
    const std::ptrdiff_t end = std::min<std::ptrdiff_t>(n, begin + per);
    if (w + 1 == workers) {
      scalar::lut_scan(scan, begin, end, tops[w]);
    } else {
      pool.emplace_back([&, w, begin, end] { scalar::lut_scan(scan, begin, end, tops[w]); });
    }
  }
  for (auto& t : pool) t.join();
  TopK merged(k);
  for (auto& top : tops)
    for (const Candidate& c : top.sorted()) merged.push(c.key, c.tie, c.row);
  return merged.sorted();
}

}  // namespace vecstore
