// Exact top-k through quantized nibble tables: a FastScan pass over the blocked codes
// bounds every row's key, and only rows whose lower bound can reach the k-th best upper
// bound are scored exactly, by the byte-table scan. So the result is the exact scan's.
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

// The key interval [low, high] of a row with table sum in [sum - err, sum + err].
void key_bounds(double sum, double err, double norm, Metric metric, double query_sq_norm,
                double& low, double& high) {
  if (metric == Metric::kL2) {
    const double base = query_sq_norm + norm * norm;
    low = base - 2.0 * (sum + err) * norm;
    high = base - 2.0 * (sum - err) * norm;
  } else {
    low = -(sum + err) * norm;
    high = -(sum - err) * norm;
  }
  // The float key computations round a few times: widen by far more than they can move.
  const double slack = 1e-5 * (std::fabs(low) + std::fabs(high)) + 1e-30;
  low -= slack;
  high += slack;
}

}  // namespace

bool nibble_fits(std::ptrdiff_t n_bytes) { return 2 * n_bytes < 32768; }

void nibble_scan(const LutScan& exact, const float* nibble_tables, const uint8_t* blocked,
                 std::ptrdiff_t n, NibbleAccumulate accumulate, std::size_t workers,
                 TopK& top, std::size_t k) {
  const std::ptrdiff_t positions = 2 * exact.n_bytes;
  const Quantized q = quantize(nibble_tables, positions);
  const std::ptrdiff_t n_blocks = (n + fastscan::kBlockRows - 1) / fastscan::kBlockRows;
  std::vector<uint16_t> sums(n_blocks * fastscan::kBlockRows);
  const std::ptrdiff_t block_bytes = fastscan::kBlockRows * exact.n_bytes;
  workers = std::max<std::size_t>(1, std::min<std::size_t>(workers, (n_blocks + 127) / 128));
  const std::ptrdiff_t per = (n_blocks + workers - 1) / workers;
  std::vector<std::thread> pool;
  for (std::size_t w = 0; w < workers; ++w) {
    const std::ptrdiff_t begin = std::min<std::ptrdiff_t>(n_blocks, w * per);
    const std::ptrdiff_t count = std::min<std::ptrdiff_t>(n_blocks, begin + per) - begin;
    auto run = [&, begin, count] {
      accumulate(blocked + begin * block_bytes, count, exact.n_bytes, q.tables.data(),
                 sums.data() + begin * fastscan::kBlockRows);
    };
    if (w + 1 == workers) {
      run();
    } else {
      pool.emplace_back(run);
    }
  }
  for (auto& t : pool) t.join();

  const double err = q.delta * exact.n_bytes + 4.0 * positions * FLT_EPSILON * q.abs_sum;
  auto bounds = [&](std::ptrdiff_t r, double& low, double& high) {
    key_bounds(q.low_sum + q.delta * sums[r], err, exact.norms[r], exact.metric,
               exact.query_sq_norm, low, high);
  };
  // The k-th smallest upper bound, by a max-heap of the k smallest seen.
  std::vector<double> heap;
  heap.reserve(k);
  for (std::ptrdiff_t r = 0; r < n; ++r) {
    if (exact.live != nullptr && !exact.live[r]) continue;
    double low, high;
    bounds(r, low, high);
    if (heap.size() < k) {
      heap.push_back(high);
      std::push_heap(heap.begin(), heap.end());
    } else if (high < heap.front()) {
      std::pop_heap(heap.begin(), heap.end());
      heap.back() = high;
      std::push_heap(heap.begin(), heap.end());
    }
  }
  const double threshold = heap.size() < k ? INFINITY : heap.front();
  for (std::ptrdiff_t r = 0; r < n; ++r) {
    if (exact.live != nullptr && !exact.live[r]) continue;
    double low, high;
    bounds(r, low, high);
    if (low <= threshold) scalar::lut_scan(exact, r, r + 1, top);
  }
}

}  // namespace vecstore
