// VECSTORE_CLONES: compiles a plain loop function for AVX-512, AVX2 and the baseline, the
// loader picking one (GCC target_clones on x86-64 Linux); elsewhere the baseline only.
// The clones round identically: no fused multiply-adds, and every vector lane does the
// scalar operation.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define VECSTORE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECSTORE_CLONES
#endif
