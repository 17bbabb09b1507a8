/* Reductions the SNASNet score needs on the CPU, with results that do not depend on the thread count
 * (the search promises the same scores in one process or spread over workers).
 *
 * spike_gram: x @ x.T of B spike maps of N values each, as exact counts. Each sample's spikes are packed
 * into 64-bit words and every pair costs N/64 AND+popcounts instead of N multiply-adds (a float32 matmul
 * on 256 x 12544 maps was a fifth of a candidate's scoring time). Any non-zero value counts as a spike.
 *
 * channel_stats: per-channel mean and biased variance of x laid out [M, C] (a channels-last feature
 * map), for train-mode BatchNorm. Rows are summed in float64 in fixed chunks that are combined in chunk
 * order, so the result is the same for any number of threads, where torch's channels-last batch norm
 * splits its reduction by thread. */
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define X86 1
#define POPCNT_TARGET __attribute__((target("popcnt")))
#else
#define X86 0
#define POPCNT_TARGET
#endif

#define STATS_ROWS 512

/* Pairs (i, j <= i) in blocks of four j's, so each word of row i is loaded once per four popcounts. The
 * same loop twice: once compiled for the popcnt instruction, once portable (a libgcc call per word). */
#define GRAM_ROWS(name, attr)                                                                                \
    static attr void name(const uint64_t *bits, int64_t B, int64_t W, float *out, int threads) {           \
        _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 4)")                              \
        for (int64_t i = 0; i < B; i++) {                                                                  \
            const uint64_t *a = bits + i * W;                                                              \
            int64_t j = 0;                                                                                 \
            for (; j + 4 <= i + 1; j += 4) {                                                               \
                const uint64_t *b0 = bits + j * W, *b1 = b0 + W, *b2 = b1 + W, *b3 = b2 + W;               \
                int64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;                                                    \
                for (int64_t w = 0; w < W; w++) {                                                          \
                    uint64_t v = a[w];                                                                     \
                    c0 += __builtin_popcountll(v & b0[w]);                                                 \
                    c1 += __builtin_popcountll(v & b1[w]);                                                 \
                    c2 += __builtin_popcountll(v & b2[w]);                                                 \
                    c3 += __builtin_popcountll(v & b3[w]);                                                 \
                }                                                                                          \
                out[i * B + j] = out[j * B + i] = (float)c0;                                               \
                out[i * B + j + 1] = out[(j + 1) * B + i] = (float)c1;                                     \
                out[i * B + j + 2] = out[(j + 2) * B + i] = (float)c2;                                     \
                out[i * B + j + 3] = out[(j + 3) * B + i] = (float)c3;                                     \
            }                                                                                              \
            for (; j <= i; j++) {                                                                          \
                const uint64_t *b = bits + j * W;                                                          \
                int64_t c = 0;                                                                             \
                for (int64_t w = 0; w < W; w++) c += __builtin_popcountll(a[w] & b[w]);                    \
                out[i * B + j] = out[j * B + i] = (float)c;                                                \
            }                                                                                              \
        }                                                                                                  \
    }
GRAM_ROWS(gram_popcnt, POPCNT_TARGET)
GRAM_ROWS(gram_portable, )

/* Bit k of word w is row[64 w + k] != 0; the words past N are zero. */
static void pack_portable(const float *row, int64_t N, uint64_t *words) {
    for (int64_t start = 0; start < N; start += 64) {
        uint64_t word = 0;
        int64_t n = N - start < 64 ? N - start : 64;
        for (int64_t k = 0; k < n; k++) word |= (uint64_t)(row[start + k] != 0.0f) << k;
        words[start / 64] = word;
    }
}

#if X86
static __attribute__((target("avx2"))) void pack_avx2(const float *row, int64_t N, uint64_t *words) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t full = N / 64;
    for (int64_t w = 0; w < full; w++) {
        uint64_t word = 0;
        for (int q = 0; q < 8; q++) {
            __m256 v = _mm256_loadu_ps(row + w * 64 + q * 8);
            word |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ)) << (8 * q);
        }
        words[w] = word;
    }
    if (full * 64 < N) pack_portable(row + full * 64, N - full * 64, words + full);
}
#endif

/* Returns 0, or -1 when the packed copy could not be allocated. */
int spike_gram(const float *x, int64_t B, int64_t N, float *out, int threads) {
    int64_t W = (N + 63) / 64;
    uint64_t *bits = malloc(sizeof(uint64_t) * (size_t)(B * W));
    if (!bits) return -1;
#if X86
    int avx2 = __builtin_cpu_supports("avx2"), popcnt = __builtin_cpu_supports("popcnt");
#else
    int avx2 = 0, popcnt = 0;
#endif
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < B; i++) {
#if X86
        if (avx2) {
            pack_avx2(x + i * N, N, bits + i * W);
            continue;
        }
#endif
        pack_portable(x + i * N, N, bits + i * W);
    }
    if (popcnt)
        gram_popcnt(bits, B, W, out, threads);
    else
        gram_portable(bits, B, W, out, threads);
    free(bits);
    return 0;
}

/* Returns 0, or -1 when the partial sums could not be allocated. */
int channel_stats(const float *x, int64_t M, int64_t C, float *mean, float *var, int threads) {
    int64_t chunks = (M + STATS_ROWS - 1) / STATS_ROWS;
    double *part = calloc((size_t)(2 * chunks * C), sizeof(double));
    if (!part) return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < chunks; k++) {
        double *s = part + 2 * k * C, *q = s + C;
        int64_t end = (k + 1) * STATS_ROWS < M ? (k + 1) * STATS_ROWS : M;
        for (int64_t r = k * STATS_ROWS; r < end; r++) {
            const float *row = x + r * C;
            for (int64_t c = 0; c < C; c++) {
                double v = row[c];
                s[c] += v;
                q[c] += v * v;
            }
        }
    }
    for (int64_t c = 0; c < C; c++) {
        double s = 0.0, q = 0.0;
        for (int64_t k = 0; k < chunks; k++) {
            s += part[2 * k * C + c];
            q += part[(2 * k + 1) * C + c];
        }
        double m = s / (double)M, v = q / (double)M - m * m;
        mean[c] = (float)m;
        var[c] = (float)(v > 0.0 ? v : 0.0);
    }
    free(part);
    return 0;
}
