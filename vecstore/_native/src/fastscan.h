// FastScan: 4-bit product-quantization codes scored with 16-entry uint8 lookup tables.
//
// A row has n_bytes code bytes; byte b holds nibble position 2b in its low 4 bits and
// position 2b+1 in its high 4 bits. A query gives tables of shape (2*n_bytes, 16): entry
// [p][v] is what nibble value v contributes at nibble position p. The score of a row is
//   sum over b of tables[2b][code_b & 15] + tables[2b+1][code_b >> 4]   (mod 2^16).
//
// Blocked layout (what block_codes writes and every accumulate reads): rows are grouped
// into blocks of kBlockRows = 32, the last block zero-filled past n. Block i occupies
// 32*n_bytes bytes starting at i*32*n_bytes; inside it, byte position b of row 32i+j is at
// offset b*32 + j, i.e. [block i][byte position b][32 rows of block i].
#pragma once

#include <cstddef>
#include <cstdint>

namespace vecstore::fastscan {

constexpr std::ptrdiff_t kBlockRows = 32;

// Bytes of the blocked layout of n rows: ceil(n/32)*32*n_bytes.
std::ptrdiff_t blocked_size(std::ptrdiff_t n, std::ptrdiff_t n_bytes);

// Writes the blocked layout of n rows (row r at codes + r*stride) into out, which holds
// blocked_size(n, n_bytes) bytes.
void block_codes(const uint8_t* codes, std::ptrdiff_t n, std::ptrdiff_t stride,
                 std::ptrdiff_t n_bytes, uint8_t* out);

// Each accumulate writes sums[32*i + j] = score of row j of block i for the n_blocks
// blocks of blocked, from tables of shape (2*n_bytes, 16). All three give equal sums.
namespace scalar {
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums);
}
namespace avx2 {
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums);
}
namespace avx512 {
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums);
}

// Whether this CPU can run avx2::accumulate / avx512::accumulate.
bool cpu_has_avx2();
bool cpu_has_avx512();

}  // namespace vecstore::fastscan
