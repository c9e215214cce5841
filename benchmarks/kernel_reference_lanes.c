/* The numpy kernel's definition (protocol.md §11.1-11.2) for a range of streams, in C,
 * W streams side by side in SIMD lanes, seeding included: the reference for mcpi's lane
 * kernel (mcpi_worker/kernels/lanes.py) that benchmarks/kernel.py compiles with
 * `cc -O3 -march=native -ffp-contract=off` and runs beside it in the same run.
 *
 *     kernel_reference_lanes SEED FIRST STREAMS POINTS
 *     kernel_reference_lanes clock
 *
 * Counts STREAMS streams from FIRST, POINTS points each, and prints
 * "INSIDE CPU_SECONDS": the sum of their counts (the same as mcpi's) and the process CPU
 * time of the whole range, each stream's SeedSequence and SFC64 seeding included.
 * `clock` prints the core's cycles per CPU second in GHz, timed over a chain of dependent
 * one-cycle adds (x86-64 only; 0 elsewhere): where no performance counter can be read
 * (a VM), what turns points per second into points per cycle.
 *
 * The state of W streams lives in four arrays (a, b, c, counter); the loop over lanes
 * is the innermost one, which gcc and clang vectorise (with AVX-512: 8 lanes a vector,
 * a 64-bit rotate in one instruction), and UNROLL generator steps are taken per lane
 * with the state in registers. A group short of W streams is padded with the streams
 * that follow (their counts dropped). -ffp-contract=off: x*x + y*y is two roundings,
 * never one fused multiply-add.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef W
#define W 64
#endif
#ifndef UNROLL
#define UNROLL 4
#endif
#define TWO_TO_48 281474976710656.0f

static uint32_t hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= 0x931E8875u;
    value *= *hash_const;
    return value ^ (value >> 16);
}

static uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = 0xCA01F9DDu * x - 0x4973F715u * y;
    return r ^ (r >> 16);
}

/* SFC64 (a, b, c, counter) of SeedSequence(seed, spawn_key=(stream,)), 12 outputs
 * discarded: §11.1-11.2 step by step. */
static void seed_stream(uint64_t seed, uint64_t stream, uint64_t s[4]) {
    uint32_t entropy[6] = {(uint32_t)seed, (uint32_t)(seed >> 32), 0, 0, (uint32_t)stream,
                           (uint32_t)(stream >> 32)};
    int n = (stream >> 32) ? 6 : 5;
    uint32_t pool[4];
    uint32_t hash_const = 0x43B0D7E5u;
    for (int i = 0; i < 4; i++) pool[i] = hashmix(entropy[i], &hash_const);
    for (int src = 0; src < 4; src++)
        for (int dst = 0; dst < 4; dst++)
            if (dst != src) pool[dst] = mix(pool[dst], hashmix(pool[src], &hash_const));
    for (int k = 4; k < n; k++)
        for (int dst = 0; dst < 4; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[k], &hash_const));
    uint32_t out_const = 0x8B51F9DDu, words[6];
    for (int i = 0; i < 6; i++) {
        uint32_t value = pool[i % 4] ^ out_const;
        out_const *= 0x58F38DEDu;
        value *= out_const;
        words[i] = value ^ (value >> 16);
    }
    uint64_t a = words[0] | ((uint64_t)words[1] << 32), b = words[2] | ((uint64_t)words[3] << 32);
    uint64_t c = words[4] | ((uint64_t)words[5] << 32), counter = 1;
    for (int i = 0; i < 12; i++) {
        uint64_t out = a + b + counter++;
        a = b ^ (b >> 11);
        b = c + (c << 3);
        c = ((c << 24) | (c >> 40)) + out;
    }
    s[0] = a, s[1] = b, s[2] = c, s[3] = counter;
}

static inline int64_t inside(uint64_t out) {
    float x = (float)(int32_t)((out >> 8) & 0xFFFFFF);
    float y = (float)(int32_t)(out >> 40);
    return x * x + y * y < TWO_TO_48;
}

static int64_t count_range(uint64_t seed, uint64_t first, int64_t streams, int64_t points) {
    static uint64_t a[W], b[W], c[W], w[W];
    static int64_t counts[W];
    int64_t total = 0;
    for (int64_t group = 0; group < streams; group += W) {
        for (int j = 0; j < W; j++) {
            uint64_t s[4];
            seed_stream(seed, first + (uint64_t)group + (uint64_t)j, s);
            a[j] = s[0], b[j] = s[1], c[j] = s[2], w[j] = s[3], counts[j] = 0;
        }
        int64_t passes = points / UNROLL;
        for (int64_t p = 0; p < passes; p++) {
            for (int j = 0; j < W; j++) {
                uint64_t sa = a[j], sb = b[j], sc = c[j], sw = w[j];
                int64_t in = 0;
                for (int k = 0; k < UNROLL; k++) {
                    uint64_t out = sa + sb + sw++;
                    sa = sb ^ (sb >> 11);
                    sb = sc + (sc << 3);
                    sc = ((sc << 24) | (sc >> 40)) + out;
                    in += inside(out);
                }
                a[j] = sa, b[j] = sb, c[j] = sc, w[j] = sw, counts[j] += in;
            }
        }
        for (int64_t p = passes * UNROLL; p < points; p++) {
            for (int j = 0; j < W; j++) {
                uint64_t out = a[j] + b[j] + w[j]++;
                uint64_t sb = b[j], sc = c[j];
                a[j] = sb ^ (sb >> 11);
                b[j] = sc + (sc << 3);
                c[j] = ((sc << 24) | (sc >> 40)) + out;
                counts[j] += inside(out);
            }
        }
        int64_t real = streams - group < W ? streams - group : W;
        for (int j = 0; j < real; j++) total += counts[j];
    }
    return total;
}

static double clock_ghz(void) {
#if defined(__x86_64__)
    const int64_t iterations = 3000000;
    uint64_t x = 0;
    struct timespec start, end;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start);
    for (int64_t i = 0; i < iterations; i++) __asm__ volatile(".rept 100\n\taddq $1, %0\n\t.endr" : "+r"(x));
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + 1e-9 * (double)(end.tv_nsec - start.tv_nsec);
    return (double)x / seconds / 1e9;
#else
    return 0.0;
#endif
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "clock") == 0) {
        printf("%.4f\n", clock_ghz());
        return 0;
    }
    if (argc != 5) {
        fprintf(stderr, "usage: %s SEED FIRST STREAMS POINTS\n", argv[0]);
        return 2;
    }
    uint64_t seed = strtoull(argv[1], NULL, 10), first = strtoull(argv[2], NULL, 10);
    int64_t streams = strtoll(argv[3], NULL, 10), points = strtoll(argv[4], NULL, 10);
    struct timespec start, end;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start);
    int64_t count = count_range(seed, first, streams, points);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + 1e-9 * (double)(end.tv_nsec - start.tv_nsec);
    printf("%" PRId64 " %.9f\n", count, seconds);
    return 0;
}
