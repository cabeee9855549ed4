// The fused top-k every path shares.
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

}  // namespace vecstore
