/* The numpy kernel's definition (protocol.md §11.2) as plain C: the reference that
 * benchmarks/kernel.py compiles with `cc -O3 -march=native -ffp-contract=off` and runs
 * beside mcpi's kernels in the same run.
 *
 *     kernel_reference one|two-pass|generate|test A B C COUNTER POINTS
 *
 * A B C COUNTER: SFC64's state after NumPy's seeding (mcpi_worker.kernels.fused.sfc64_state).
 * Prints "INSIDE SECONDS", the process CPU seconds measured around the loop alone.
 *
 * `one`: one loop that steps SFC64 and tests each point (the reference).
 * `two-pass`: SFC64 into a 256-word buffer, then the test over it; the test loop then
 * vectorises (the target for one stream).
 * `generate`, `test`: the two passes of `two-pass` timed apart (what each costs): the
 * generator pass alone (prints the last word, not a count), and the test pass alone,
 * over the stream's first 256 outputs again and again (a count of other points).
 * -ffp-contract=off: x*x + y*y must be two roundings, never one fused multiply-add.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WORDS_PER_PASS 256
#define TWO_TO_48 281474976710656.0f

typedef struct { uint64_t a, b, c, counter; } sfc64;

static inline uint64_t next(sfc64 *s) {
    uint64_t out = s->a + s->b + s->counter++;
    s->a = s->b ^ (s->b >> 11);
    s->b = s->c + (s->c << 3);
    s->c = ((s->c << 24) | (s->c >> 40)) + out;
    return out;
}

static inline int inside(uint64_t word) {
    float x = (float)(int32_t)((word >> 8) & 0xFFFFFF);
    float y = (float)(int32_t)(word >> 40);
    return x * x + y * y < TWO_TO_48;
}

static int64_t count_one_loop(sfc64 s, int64_t points) {
    int64_t count = 0;
    for (int64_t i = 0; i < points; i++) count += inside(next(&s));
    return count;
}

static int64_t count_two_pass(sfc64 s, int64_t points) {
    uint64_t words[WORDS_PER_PASS];
    int64_t count = 0;
    for (int64_t done = 0; done < points;) {
        int64_t n = points - done < WORDS_PER_PASS ? points - done : WORDS_PER_PASS;
        for (int64_t i = 0; i < n; i++) words[i] = next(&s);
        int32_t part = 0;
        for (int64_t i = 0; i < n; i++) part += inside(words[i]);
        count += part;
        done += n;
    }
    return count;
}

static int64_t generate_only(sfc64 s, int64_t points) {
    uint64_t words[WORDS_PER_PASS];
    for (int64_t done = 0; done < points;) {
        int64_t n = points - done < WORDS_PER_PASS ? points - done : WORDS_PER_PASS;
        for (int64_t i = 0; i < n; i++) words[i] = next(&s);
        __asm__ volatile("" : : "r"(words) : "memory"); /* the stores are kept, as if tested */
        done += n;
    }
    return (int64_t)(s.a + s.b + s.counter);
}

static int64_t test_only(sfc64 s, int64_t points) {
    uint64_t words[WORDS_PER_PASS];
    for (int64_t i = 0; i < WORDS_PER_PASS; i++) words[i] = next(&s);
    int64_t count = 0;
    for (int64_t done = 0; done < points;) {
        int64_t n = points - done < WORDS_PER_PASS ? points - done : WORDS_PER_PASS;
        __asm__ volatile("" : : "r"(words) : "memory"); /* tested afresh on every pass */
        int32_t part = 0;
        for (int64_t i = 0; i < n; i++) part += inside(words[i]);
        count += part;
        done += n;
    }
    return count;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s one|two-pass|generate|test A B C COUNTER POINTS\n", argv[0]);
        return 2;
    }
    sfc64 s = {strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10),
               strtoull(argv[4], NULL, 10), strtoull(argv[5], NULL, 10)};
    int64_t points = strtoll(argv[6], NULL, 10);
    int64_t (*loop)(sfc64, int64_t) = count_one_loop;
    if (strcmp(argv[1], "two-pass") == 0) loop = count_two_pass;
    if (strcmp(argv[1], "generate") == 0) loop = generate_only;
    if (strcmp(argv[1], "test") == 0) loop = test_only;
    struct timespec start, end;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &start);
    int64_t count = loop(s, points);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + 1e-9 * (double)(end.tv_nsec - start.tv_nsec);
    printf("%" PRId64 " %.9f\n", count, seconds);
    return 0;
}
