// TurboQuant encoding kernels (encode.h).
#include "encode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "clones.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace vecstore::encode {
namespace {

// sum over i < d of a[i] * b[i] in float64. Any order of such a sum rounds to the same
// float32 (encode.h), so eight partial sums run side by side. Always inlined, so that it
// takes the instruction set of each clone that calls it.
template <typename B>
__attribute__((always_inline)) inline double dot64(const float* a, const B* b, std::ptrdiff_t d) {
  double partial[8] = {};
  std::ptrdiff_t i = 0;
  for (; i + 8 <= d; i += 8)
    for (int lane = 0; lane < 8; ++lane)
      partial[lane] += static_cast<double>(a[i + lane]) * static_cast<double>(b[i + lane]);
  for (; i < d; ++i) partial[0] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  double sum = 0.0;
  for (const double p : partial) sum += p;
  return sum;
}

}  // namespace

VECSTORE_CLONES
void normalize(const float* x, std::ptrdiff_t d, std::ptrdiff_t begin, std::ptrdiff_t end,
               float* norms, float* unit) {
  for (std::ptrdiff_t r = begin; r < end; ++r) {
    const float* row = x + r * d;
    const float norm = static_cast<float>(std::sqrt(dot64(row, row, d)));
    norms[r] = norm;
    const float divisor = norm > 0.0f ? norm : 1.0f;
    for (std::ptrdiff_t k = 0; k < d; ++k) unit[r * d + k] = row[k] / divisor;
  }
}

namespace {

// For each of the D coordinates y[j]: index[j] = the number of boundaries strictly below
// it. The coordinates within `margin` of their nearest boundary, which is the one below
// (lower[index]) or the one above (upper[index]), are listed in `near`, in order; returns
// how many. lower and upper hold n_boundaries + 1 entries, with -inf and +inf past the
// ends.
int32_t count_below(const float* y, std::ptrdiff_t dim_out, const float* boundaries,
                    int n_boundaries, const float* lower, const float* upper, float margin,
                    int32_t* index, int32_t* near) {
  int32_t n_near = 0;
  for (std::ptrdiff_t j = 0; j < dim_out; ++j) {
    int32_t count = 0;
    for (int b = 0; b < n_boundaries; ++b) count += y[j] > boundaries[b] ? 1 : 0;
    index[j] = count;
    const float below = y[j] - lower[count], above = upper[count] - y[j];
    if ((below < above ? below : above) <= margin) near[n_near++] = static_cast<int32_t>(j);
  }
  return n_near;
}

#if defined(__x86_64__) && defined(__GNUC__)
// count_below on AVX-512, sixteen coordinates a register. Up to 15 boundaries (widths up
// to 4 bits, 2^b - 1 of them) sit in registers: the count is a binary search over them
// and the neighbouring boundaries are looked up with vpermps; more boundaries are counted
// one by one and their neighbours gathered. Near coordinates are compressed into the
// list. Counts and gaps are count_below's (the same comparisons and subtractions).
__attribute__((target("avx512f")))
int32_t count_below_avx512(const float* y, std::ptrdiff_t dim_out, const float* boundaries,
                           int n_boundaries, const float* lower, const float* upper,
                           float margin, int32_t* index, int32_t* near) {
  const bool in_registers = n_boundaries < 16;
  __m512 lower_table = _mm512_set1_ps(0.0f), upper_table = _mm512_set1_ps(0.0f);
  if (in_registers) {
    const __mmask16 used = static_cast<__mmask16>((1u << (n_boundaries + 1)) - 1);
    lower_table = _mm512_maskz_loadu_ps(used, lower);
    upper_table = _mm512_maskz_loadu_ps(used, upper);
  }
  const __m512i one = _mm512_set1_epi32(1);
  const __m512 limit = _mm512_set1_ps(margin);
  __m512i positions = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int32_t n_near = 0;
  for (std::ptrdiff_t j = 0; j < dim_out; j += 16) {
    const std::ptrdiff_t left = dim_out - j;
    const __mmask16 lanes =
        left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(lanes, y + j);
    __m512i count = _mm512_setzero_si512();
    if (in_registers) {
      // 2^b - 1 sorted boundaries: a branch-free binary search, b steps, each probing the
      // boundary just below count + step (upper[i] is boundaries[i]).
      for (int step = (n_boundaries + 1) / 2; step > 0; step /= 2) {
        const __m512i probe = _mm512_add_epi32(count, _mm512_set1_epi32(step));
        const __m512 boundary = _mm512_permutexvar_ps(_mm512_sub_epi32(probe, one), upper_table);
        count = _mm512_mask_mov_epi32(count, _mm512_cmp_ps_mask(v, boundary, _CMP_GT_OQ), probe);
      }
    } else {
      for (int b = 0; b < n_boundaries; ++b) {
        const __mmask16 above =
            _mm512_cmp_ps_mask(v, _mm512_set1_ps(boundaries[b]), _CMP_GT_OQ);
        count = _mm512_mask_add_epi32(count, above, count, one);
      }
    }
    const __m512 low = in_registers ? _mm512_permutexvar_ps(count, lower_table)
                                    : _mm512_i32gather_ps(count, lower, 4);
    const __m512 high = in_registers ? _mm512_permutexvar_ps(count, upper_table)
                                     : _mm512_i32gather_ps(count, upper, 4);
    const __m512 gap = _mm512_min_ps(_mm512_sub_ps(v, low), _mm512_sub_ps(high, v));
    const __mmask16 close = _mm512_mask_cmp_ps_mask(lanes, gap, limit, _CMP_LE_OQ);
    _mm512_mask_storeu_epi32(index + j, lanes, count);
    _mm512_mask_compressstoreu_epi32(near + n_near, close, positions);
    n_near += __builtin_popcount(close);
    positions = _mm512_add_epi32(positions, _mm512_set1_epi32(16));
  }
  return n_near;
}
#endif

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
  std::vector<int32_t> near(static_cast<std::size_t>(dim_out));
  std::vector<float> lower(static_cast<std::size_t>(n_boundaries + 1), -INFINITY);
  std::vector<float> upper(static_cast<std::size_t>(n_boundaries + 1), INFINITY);
  std::copy(boundaries, boundaries + n_boundaries, lower.begin() + 1);
  std::copy(boundaries, boundaries + n_boundaries, upper.begin());
#if defined(__x86_64__) && defined(__GNUC__)
  const auto count = __builtin_cpu_supports("avx512f") ? count_below_avx512 : count_below;
#else
  const auto count = count_below;
#endif
  for (std::ptrdiff_t r = begin; r < end; ++r) {
    const float* y = rotated + r * dim_out;
    const int32_t n_near = count(y, dim_out, boundaries, n_boundaries, lower.data(),
                                 upper.data(), margin, index.data(), near.data());
    for (int32_t c = 0; c < n_near; ++c) {
      const std::ptrdiff_t j = near[c];
      const float value = static_cast<float>(dot64(unit + r * d, matrix + j * d, d));
      index[j] = static_cast<int32_t>(
          std::lower_bound(boundaries, boundaries + n_boundaries, value) - boundaries);
    }
    pack(index.data(), dim_out, bits, codes + r * code_stride, packed);
  }
}

}  // namespace vecstore::encode
