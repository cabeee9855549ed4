// Exact top-k over the parts of a search: parts without a blocked layout are scanned
// exactly; a FastScan pass over the blocked ones bounds every row's key through quantized
// nibble tables, and only rows whose lower bound can reach the k-th best upper bound are
// scored exactly, by the byte-table scan. So the result is the exact scan's.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <thread>
#include <vector>

#include "fastscan.h"
#include "scan.h"

namespace vecstore {
namespace {

// Quantized tables: q[p][v] = round((t[p][v] - low[p]) / delta), so a row's sum of
// quantized entries, times delta, plus the sum of lows, is within positions * delta / 2 of
// its float table sum, and cannot pass 65535.
struct Quantized {
  std::vector<uint8_t> tables;
  double delta = 1.0;
  double low_sum = 0.0;
  double abs_sum = 0.0;
};

Quantized quantize(const float* tables, std::ptrdiff_t positions) {
  Quantized out;
  out.tables.resize(positions * 16);
  double range_sum = 0.0, range_max = 0.0;
  std::vector<double> lows(positions);
  for (std::ptrdiff_t p = 0; p < positions; ++p) {
    const float* t = tables + p * 16;
    const double low = *std::min_element(t, t + 16), high = *std::max_element(t, t + 16);
    lows[p] = low;
    out.low_sum += low;
    out.abs_sum += std::max(std::fabs(low), std::fabs(high));
    range_sum += high - low;
    range_max = std::max(range_max, high - low);
  }
  out.delta = std::max(range_sum / (65535.0 - positions), range_max / 255.0);
  if (!(out.delta > 0.0)) out.delta = 1.0;
  for (std::ptrdiff_t p = 0; p < positions; ++p)
    for (int v = 0; v < 16; ++v)
      out.tables[p * 16 + v] = static_cast<uint8_t>(
          std::min(255.0, std::nearbyint((tables[p * 16 + v] - lows[p]) / out.delta)));
  return out;
}

// Each row's key interval [lows[r], highs[r]] for table sums in [sum - err, sum + err]
// (sum = low_sum + delta * sums[r]), its score multiplier scale[r] >= 0 and stored norm;
// dead rows get an empty interval (+inf). One branch-free loop the compiler vectorizes.
void key_bounds(const LutScan& s, std::ptrdiff_t rows, const uint16_t* sums, double low_sum,
                double delta, double err, float* lows, float* highs) {
  const bool l2 = s.metric == Metric::kL2;
  for (std::ptrdiff_t r = 0; r < rows; ++r) {
    const double sum = low_sum + delta * sums[r];
    const double scale = s.scales[r], norm = s.norms[r];
    const double factor = l2 ? 2.0 * scale : scale;
    const double center = (l2 ? s.query_sq_norm + norm * norm : 0.0) - sum * factor;
    // The float key computations, and these bounds' own rounding to float, move a key
    // by far less than this slack.
    const double width = err * factor + 2e-5 * (std::fabs(center) + err * factor) + 1e-30;
    const bool dead = s.live != nullptr && !s.live[r];
    lows[r] = dead ? INFINITY : static_cast<float>(center - width);
    highs[r] = dead ? INFINITY : static_cast<float>(center + width);
  }
}

// Per-row uint16 sums of the quantized tables over a part's blocked codes, blocks split
// across `workers` threads.
std::vector<uint16_t> part_sums(const ScanPart& part, const Quantized& q,
                                NibbleAccumulate accumulate, std::size_t workers) {
  const std::ptrdiff_t n_bytes = part.exact.n_bytes;
  const std::ptrdiff_t n_blocks = (part.rows + fastscan::kBlockRows - 1) / fastscan::kBlockRows;
  std::vector<uint16_t> sums(n_blocks * fastscan::kBlockRows);
  const std::ptrdiff_t block_bytes = fastscan::kBlockRows * n_bytes;
  workers = std::max<std::size_t>(1, std::min<std::size_t>(workers, (n_blocks + 127) / 128));
  const std::ptrdiff_t per = (n_blocks + workers - 1) / workers;
  std::vector<std::thread> pool;
  for (std::size_t w = 0; w < workers; ++w) {
    const std::ptrdiff_t begin = std::min<std::ptrdiff_t>(n_blocks, w * per);
    const std::ptrdiff_t count = std::min<std::ptrdiff_t>(n_blocks, begin + per) - begin;
    auto run = [&, begin, count] {
      accumulate(part.blocked + begin * block_bytes, count, n_bytes, q.tables.data(),
                 sums.data() + begin * fastscan::kBlockRows);
    };
    if (w + 1 == workers) {
      run();
    } else {
      pool.emplace_back(run);
    }
  }
  for (auto& t : pool) t.join();
  return sums;
}

// Keeps the k smallest values seen (a max-heap); its top bounds the k-th best key.
class KthSmallest {
 public:
  explicit KthSmallest(std::size_t k) : k_(k) { heap_.reserve(k); }
  void add(double value) {
    if (heap_.size() < k_) {
      heap_.push_back(value);
      std::push_heap(heap_.begin(), heap_.end());
    } else if (value < heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end());
      heap_.back() = value;
      std::push_heap(heap_.begin(), heap_.end());
    }
  }
  double bound() const { return heap_.size() < k_ ? INFINITY : heap_.front(); }

 private:
  std::size_t k_;
  std::vector<double> heap_;
};

}  // namespace

bool nibble_fits(std::ptrdiff_t n_bytes) { return 2 * n_bytes < 32768; }

std::vector<Candidate> scan_parts(const std::vector<ScanPart>& parts,
                                  const float* nibble_tables, NibbleAccumulate accumulate,
                                  std::size_t workers, std::size_t k) {
  TopK top(k);
  for (const ScanPart& part : parts) {
    if (part.blocked != nullptr) continue;
    for (const Candidate& c : exact_topk(part.exact, part.rows, k, workers))
      top.push(c.key, c.tie, part.global(c.row));
  }
  std::vector<const ScanPart*> blocked;
  for (const ScanPart& part : parts)
    if (part.blocked != nullptr && part.rows > 0) blocked.push_back(&part);
  if (blocked.empty()) return top.sorted();

  const std::ptrdiff_t n_bytes = blocked.front()->exact.n_bytes;
  const Quantized q = quantize(nibble_tables, 2 * n_bytes);
  const double err = q.delta * n_bytes + 8.0 * n_bytes * FLT_EPSILON * q.abs_sum;
  // Every live row's key interval, and the k-th smallest upper bound; the exact keys
  // found so far are bounds too.
  std::vector<std::vector<float>> lows(blocked.size()), highs(blocked.size());
  KthSmallest kth(k);
  std::vector<Candidate> found = top.sorted();
  for (const Candidate& c : found) {
    kth.add(c.key);
    top.push(c.key, c.tie, c.row);
  }
  for (std::size_t p = 0; p < blocked.size(); ++p) {
    const ScanPart& part = *blocked[p];
    const std::vector<uint16_t> sums = part_sums(part, q, accumulate, workers);
    lows[p].resize(part.rows);
    highs[p].resize(part.rows);
    key_bounds(part.exact, part.rows, sums.data(), q.low_sum, q.delta, err, lows[p].data(),
               highs[p].data());
    for (const float high : highs[p])
      if (high < kth.bound()) kth.add(high);
  }
  const double threshold = kth.bound();
  for (std::size_t p = 0; p < blocked.size(); ++p) {
    const ScanPart& part = *blocked[p];
    for (std::ptrdiff_t r = 0; r < part.rows; ++r) {
      if (!(lows[p][r] <= threshold) || (part.exact.live && !part.exact.live[r])) continue;
      const float key = exact_key(part.exact, r);
      if (top.accepts(key, part.exact.ties[r])) top.push(key, part.exact.ties[r],
                                                          part.global(r));
    }
  }
  return top.sorted();
}

}  // namespace vecstore
