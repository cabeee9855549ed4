// TurboQuant encoding kernels: norms and unit rows, and the nearest-centroid indices of
// rotated rows packed as codes, bit for bit as the numpy encoder writes them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vecstore::encode {

// Rows [begin, end) of x (n, d) float32: norms[r] = sqrt of the float64 sum of squares,
// rounded once to float32, and unit[r] = x[r] / norms[r] in float32 (zero rows stay zero).
void normalize(const float* x, std::ptrdiff_t d, std::ptrdiff_t begin, std::ptrdiff_t end,
               float* norms, float* unit);

// Rows [begin, end): the index of each of the D rotated coordinates is the number of
// boundaries (sorted, float32) strictly below it, packed little-endian at `bits` bits a
// value into codes + r * code_stride (packed_size bytes). `rotated` (n, D) float32 is a
// float32 product unit @ matrix; a coordinate within `margin` of a boundary is computed
// again in float64 from unit (n, d) float32 and the rotation's rows, matrix (D, d) float64,
// rounded once to float32, which is what the numpy encoder quantizes: a float64 sum of d
// products is within d * 2^-53 of its real value in any order, and rounds to the same
// float32 unless the real value lies that close to a float32 rounding midpoint.
void quantize_pack(const float* rotated, const float* unit, const double* matrix,
                   std::ptrdiff_t d, std::ptrdiff_t dim_out, const float* boundaries,
                   int n_boundaries, int bits, float margin, std::ptrdiff_t begin,
                   std::ptrdiff_t end, uint8_t* codes, std::ptrdiff_t code_stride);

}  // namespace vecstore::encode
