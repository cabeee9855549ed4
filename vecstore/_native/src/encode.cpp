// TurboQuant encoding kernels (encode.h).
#include "encode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "clones.h"

namespace vecstore::encode {

void normalize(const float* x, std::ptrdiff_t d, std::ptrdiff_t begin, std::ptrdiff_t end,
               float* norms, float* unit) {
  for (std::ptrdiff_t r = begin; r < end; ++r) {
    const float* row = x + r * d;
    double sum = 0.0;
    for (std::ptrdiff_t i = 0; i < d; ++i) sum += static_cast<double>(row[i]) * row[i];
    const float norm = static_cast<float>(std::sqrt(sum));
    norms[r] = norm;
    const float divisor = norm > 0.0f ? norm : 1.0f;
    for (std::ptrdiff_t i = 0; i < d; ++i) unit[r * d + i] = row[i] / divisor;
  }
}

namespace {

// For each of the D coordinates y[j]: index[j] = the number of boundaries strictly below
// it, and gap[j] = its distance to the nearest boundary.
VECSTORE_CLONES
void count_below(const float* y, std::ptrdiff_t dim_out, const float* boundaries,
                 int n_boundaries, int32_t* index, float* gap) {
  for (std::ptrdiff_t j = 0; j < dim_out; ++j) {
    index[j] = 0;
    gap[j] = INFINITY;
  }
  for (int b = 0; b < n_boundaries; ++b) {
    const float boundary = boundaries[b];
    for (std::ptrdiff_t j = 0; j < dim_out; ++j) {
      index[j] += y[j] > boundary ? 1 : 0;
      const float distance = std::fabs(y[j] - boundary);
      gap[j] = distance < gap[j] ? distance : gap[j];
    }
  }
}

// Packs D indices little-endian at `bits` bits a value into `packed` bytes.
void pack(const int32_t* index, std::ptrdiff_t dim_out, int bits, uint8_t* out,
          std::ptrdiff_t packed) {
  std::memset(out, 0, static_cast<std::size_t>(packed));
  if (bits == 4) {
    for (std::ptrdiff_t j = 0; j + 1 < dim_out; j += 2)
      out[j / 2] = static_cast<uint8_t>(index[j] | (index[j + 1] << 4));
    if (dim_out % 2) out[dim_out / 2] = static_cast<uint8_t>(index[dim_out - 1]);
    return;
  }
  uint64_t word = 0;
  int filled = 0;
  std::ptrdiff_t written = 0;
  for (std::ptrdiff_t j = 0; j < dim_out; ++j) {
    word |= static_cast<uint64_t>(index[j]) << filled;
    filled += bits;
    while (filled >= 8) {
      out[written++] = static_cast<uint8_t>(word);
      word >>= 8;
      filled -= 8;
    }
  }
  if (filled > 0) out[written] = static_cast<uint8_t>(word);
}

}  // namespace

void quantize_pack(const float* rotated, const float* unit, const double* matrix,
                   std::ptrdiff_t d, std::ptrdiff_t dim_out, const float* boundaries,
                   int n_boundaries, int bits, float margin, std::ptrdiff_t begin,
                   std::ptrdiff_t end, uint8_t* codes, std::ptrdiff_t code_stride) {
  const std::ptrdiff_t packed = (dim_out * bits + 7) / 8;
  std::vector<int32_t> index(static_cast<std::size_t>(dim_out));
  std::vector<float> gap(static_cast<std::size_t>(dim_out));
  for (std::ptrdiff_t r = begin; r < end; ++r) {
    const float* y = rotated + r * dim_out;
    count_below(y, dim_out, boundaries, n_boundaries, index.data(), gap.data());
    for (std::ptrdiff_t j = 0; j < dim_out; ++j) {
      if (!(gap[j] <= margin)) continue;
      // Any order of the float64 sum rounds to the same float32 (encode.h), so eight
      // partial sums run side by side.
      double partial[8] = {};
      const float* u = unit + r * d;
      const double* m = matrix + j * d;
      std::ptrdiff_t i = 0;
      for (; i + 8 <= d; i += 8)
        for (int lane = 0; lane < 8; ++lane)
          partial[lane] += static_cast<double>(u[i + lane]) * m[i + lane];
      for (; i < d; ++i) partial[0] += static_cast<double>(u[i]) * m[i];
      double exact = 0.0;
      for (const double p : partial) exact += p;
      const float value = static_cast<float>(exact);
      index[j] = static_cast<int32_t>(
          std::lower_bound(boundaries, boundaries + n_boundaries, value) - boundaries);
    }
    pack(index.data(), dim_out, bits, codes + r * code_stride, packed);
  }
}

}  // namespace vecstore::encode
