// AVX-512 FastScan kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vbmi
// -mavx512vnni). Both read the blocked layout of fastscan.h, where a zmm holds 16 rows of
// four code bytes. The table kernel: vpermb looks each byte up in the 16 entries of its
// own position (the index's bits 4-5 name the byte's place in its lane) and vpdpbusd adds
// a lane's four results into that row's 32-bit sum, so sums never wrap. The level-dot
// kernel: vpshufb turns nibbles into their shared levels and vpdpbusd multiplies them by
// the query's weights, so a batch pays one lookup a code for all its queries.
#include <immintrin.h>

#include <cstring>
#include <utility>

#include "fastscan.h"

namespace vecstore::fastscan::avx512 {

namespace {

// Queries scored together, their accumulators in registers.
constexpr int kGroup = 4;

// How far ahead of each load the scan prefetches. One query moves through the codes fast:
// over 19 MB of codes, 512 bytes measured best on one Xeon, and on another 2 KB ran twice
// as fast as 512 bytes, with 1 KB and 4-8 KB slower (tests/native/fastscan_check.cpp). A
// batch spends longer on each line, and a short distance leaves it waiting on memory.
constexpr std::ptrdiff_t kPrefetchBytes = 2048;
constexpr std::ptrdiff_t kBatchPrefetchBytes = 4096;

struct Constants {
  __m512i position = _mm512_set1_epi32(0x30201000);
  __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512i ones = _mm512_set1_epi8(1);
};

// The vpermb indices of the low and high nibbles of 64 code bytes.
inline void indices(const Constants& k, __m512i codes, __m512i& low, __m512i& high) {
  low = _mm512_ternarylogic_epi32(codes, k.nibble, k.position, 0xEA);  // (c & 15) | position
  high = _mm512_ternarylogic_epi32(_mm512_srli_epi16(codes, 4), k.nibble, k.position, 0xEA);
}

// acc += the table sums of the 16 rows whose indices are low and high.
inline __m512i add_lookups(const Constants& k, __m512i acc, __m512i low, __m512i high,
                           __m512i low_table, __m512i high_table) {
  acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(low, low_table), k.ones);
  return _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(high, high_table), k.ones);
}

inline __m512i load(const uint8_t* p) { return _mm512_loadu_si512(p); }

template <int NQ>
inline void prefetch(const uint8_t* p) {
  constexpr std::ptrdiff_t ahead = NQ == 1 ? kPrefetchBytes : kBatchPrefetchBytes;
  _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(p + ahead + 64), _MM_HINT_T0);
}

// Block i for NQ queries at once, sharing each load of codes and its indices.
template <int NQ>
void block(const Constants& k, const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
           const uint8_t* const* tables, int32_t* const* sums) {
  __m512i acc[NQ][2];
  for (int q = 0; q < NQ; ++q) acc[q][0] = acc[q][1] = _mm512_setzero_si512();
  for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
    prefetch<NQ>(codes + 128 * g);
    __m512i low0, high0, low1, high1;
    indices(k, load(codes + 128 * g), low0, high0);
    indices(k, load(codes + 128 * g + 64), low1, high1);
    for (int q = 0; q < NQ; ++q) {
      const __m512i low_table = load(tables[q] + 128 * g);
      const __m512i high_table = load(tables[q] + 128 * g + 64);
      acc[q][0] = add_lookups(k, acc[q][0], low0, high0, low_table, high_table);
      acc[q][1] = add_lookups(k, acc[q][1], low1, high1, low_table, high_table);
    }
  }
  for (int q = 0; q < NQ; ++q) {
    _mm512_storeu_si512(sums[q] + i * kBlockRows, acc[q][0]);
    _mm512_storeu_si512(sums[q] + i * kBlockRows + 16, acc[q][1]);
  }
}

}  // namespace

// Block by block, every query in groups of up to four: a block's codes stay in the first
// level cache while all the queries score them.
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, int32_t* const* sums) {
  const Constants k;
  const std::ptrdiff_t block_bytes = kBlockRows * 4 * n_quads;
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* codes = blocked + i * block_bytes;
    for (int q = 0; q < nq; q += kGroup) {
      switch (nq - q < kGroup ? nq - q : kGroup) {
        case 1: block<1>(k, codes, i, n_quads, tables + q, sums + q); break;
        case 2: block<2>(k, codes, i, n_quads, tables + q, sums + q); break;
        case 3: block<3>(k, codes, i, n_quads, tables + q, sums + q); break;
        default: block<4>(k, codes, i, n_quads, tables + q, sums + q); break;
      }
    }
  }
}

namespace {

// Queries the level-dot kernel scores together.
constexpr int kLevelGroup = 8;

// The shared levels of the low and high nibbles of 64 code bytes.
inline void nibble_levels(__m512i levels, __m512i codes, __m512i& low, __m512i& high) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  low = _mm512_shuffle_epi8(levels, _mm512_and_si512(codes, nibble));
  high = _mm512_shuffle_epi8(levels, _mm512_and_si512(_mm512_srli_epi16(codes, 4), nibble));
}

// A query's weights of quad g for its low and high nibbles, each broadcast to every lane.
inline void quad_weights(const int8_t* weights, std::ptrdiff_t g, __m512i& low, __m512i& high) {
  int32_t low_weights, high_weights;
  std::memcpy(&low_weights, weights + 8 * g, 4);
  std::memcpy(&high_weights, weights + 8 * g + 4, 4);
  low = _mm512_set1_epi32(low_weights);
  high = _mm512_set1_epi32(high_weights);
}

// Block i for NQ queries: the nibbles' levels are looked up once (vpshufb) and each
// query's weights of a quad, broadcast, are multiplied in by vpdpbusd.
template <int NQ>
void level_block(const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
                 __m512i levels, const int8_t* const* weights, int32_t* const* sums) {
  __m512i acc[NQ][2];
  for (int q = 0; q < NQ; ++q) acc[q][0] = acc[q][1] = _mm512_setzero_si512();
  for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
    prefetch<NQ>(codes + 128 * g);
    __m512i low0, high0, low1, high1;
    nibble_levels(levels, load(codes + 128 * g), low0, high0);
    nibble_levels(levels, load(codes + 128 * g + 64), low1, high1);
    for (int q = 0; q < NQ; ++q) {
      __m512i wl, wh;
      quad_weights(weights[q], g, wl, wh);
      acc[q][0] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[q][0], low0, wl), high0, wh);
      acc[q][1] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[q][1], low1, wl), high1, wh);
    }
  }
  for (int q = 0; q < NQ; ++q) {
    _mm512_storeu_si512(sums[q] + i * kBlockRows, acc[q][0]);
    _mm512_storeu_si512(sums[q] + i * kBlockRows + 16, acc[q][1]);
  }
}

// level_block for one query. Its sums would otherwise wait on one vpdpbusd after another
// (two chains of two a quad): here eight accumulators, low and high nibbles apart and
// quads taken in pairs, keep every vpdpbusd independent of the last few.
template <>
void level_block<1>(const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
                    __m512i levels, const int8_t* const* weights, int32_t* const* sums) {
  __m512i acc[2][4];
  for (auto& pair : acc)
    for (auto& a : pair) a = _mm512_setzero_si512();
  auto quad = [&](std::ptrdiff_t g, __m512i* a) {
    prefetch<1>(codes + 128 * g);
    __m512i low0, high0, low1, high1, wl, wh;
    nibble_levels(levels, load(codes + 128 * g), low0, high0);
    nibble_levels(levels, load(codes + 128 * g + 64), low1, high1);
    quad_weights(weights[0], g, wl, wh);
    a[0] = _mm512_dpbusd_epi32(a[0], low0, wl);
    a[1] = _mm512_dpbusd_epi32(a[1], high0, wh);
    a[2] = _mm512_dpbusd_epi32(a[2], low1, wl);
    a[3] = _mm512_dpbusd_epi32(a[3], high1, wh);
  };
  std::ptrdiff_t g = 0;
  for (; g + 1 < n_quads; g += 2) {
    quad(g, acc[0]);
    quad(g + 1, acc[1]);
  }
  if (g < n_quads) quad(g, acc[0]);
  const __m512i first = _mm512_add_epi32(_mm512_add_epi32(acc[0][0], acc[0][1]),
                                         _mm512_add_epi32(acc[1][0], acc[1][1]));
  const __m512i second = _mm512_add_epi32(_mm512_add_epi32(acc[0][2], acc[0][3]),
                                          _mm512_add_epi32(acc[1][2], acc[1][3]));
  _mm512_storeu_si512(sums[0] + i * kBlockRows, first);
  _mm512_storeu_si512(sums[0] + i * kBlockRows + 16, second);
}

template <int... NQ>
void level_group(int n, const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
                 __m512i levels, const int8_t* const* weights, int32_t* const* sums,
                 std::integer_sequence<int, NQ...>) {
  ((n == NQ + 1 ? level_block<NQ + 1>(codes, i, n_quads, levels, weights, sums) : void()), ...);
}

// Calls group(n, codes, i, q) for every block i (its codes at `codes`) and every group of
// n <= kLevelGroup queries from query q: a block stays in the first level cache while
// every query scores it.
template <typename Group>
void over_groups(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                 int nq, const Group& group) {
  const std::ptrdiff_t block_bytes = kBlockRows * 4 * n_quads;
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    for (int q = 0; q < nq; q += kLevelGroup)
      group(nq - q < kLevelGroup ? nq - q : kLevelGroup, blocked + i * block_bytes, i, q);
  }
}

}  // namespace

void level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                      const uint8_t* levels, const int8_t* const* weights, int nq,
                      int32_t* const* sums) {
  const __m512i table = _mm512_broadcast_i32x4(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(levels)));
  over_groups(blocked, n_blocks, n_quads, nq,
              [&](int n, const uint8_t* codes, std::ptrdiff_t i, int q) {
                level_group(n, codes, i, n_quads, table, weights + q, sums + q,
                            std::make_integer_sequence<int, kLevelGroup>{});
              });
}

namespace {

// Block i for NQ queries of 8-bit code bytes: two vpermi2b look up the levels of values
// 0-127 and 128-255, the top bit of each byte picks one, and vpdpbusd multiplies them by
// each query's weights of the quad.
template <int NQ>
void byte_level_block(const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
                      const __m512i* levels, const int8_t* const* weights,
                      int32_t* const* sums) {
  __m512i acc[NQ][2];
  for (int q = 0; q < NQ; ++q) acc[q][0] = acc[q][1] = _mm512_setzero_si512();
  for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
    prefetch<NQ>(codes + 128 * g);
    __m512i looked[2];
    for (int h = 0; h < 2; ++h) {
      const __m512i c = load(codes + 128 * g + 64 * h);
      const __m512i low = _mm512_permutex2var_epi8(levels[0], c, levels[1]);
      const __m512i high = _mm512_permutex2var_epi8(levels[2], c, levels[3]);
      looked[h] = _mm512_mask_blend_epi8(_mm512_movepi8_mask(c), low, high);
    }
    for (int q = 0; q < NQ; ++q) {
      int32_t quad_weights;
      std::memcpy(&quad_weights, weights[q] + 4 * g, 4);
      const __m512i w = _mm512_set1_epi32(quad_weights);
      acc[q][0] = _mm512_dpbusd_epi32(acc[q][0], looked[0], w);
      acc[q][1] = _mm512_dpbusd_epi32(acc[q][1], looked[1], w);
    }
  }
  for (int q = 0; q < NQ; ++q) {
    _mm512_storeu_si512(sums[q] + i * kBlockRows, acc[q][0]);
    _mm512_storeu_si512(sums[q] + i * kBlockRows + 16, acc[q][1]);
  }
}

template <int... NQ>
void byte_level_group(int n, const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
                      const __m512i* levels, const int8_t* const* weights,
                      int32_t* const* sums, std::integer_sequence<int, NQ...>) {
  ((n == NQ + 1 ? byte_level_block<NQ + 1>(codes, i, n_quads, levels, weights, sums)
                : void()), ...);
}

}  // namespace

void byte_level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                           std::ptrdiff_t n_quads, const uint8_t* levels,
                           const int8_t* const* weights, int nq, int32_t* const* sums) {
  const __m512i tables[4] = {load(levels), load(levels + 64), load(levels + 128),
                             load(levels + 192)};
  over_groups(blocked, n_blocks, n_quads, nq,
              [&](int n, const uint8_t* codes, std::ptrdiff_t i, int q) {
                byte_level_group(n, codes, i, n_quads, tables, weights + q, sums + q,
                                 std::make_integer_sequence<int, kLevelGroup>{});
              });
}

}  // namespace vecstore::fastscan::avx512
