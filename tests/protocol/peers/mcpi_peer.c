/*
 * mcpi_peer.c: an independent peer of the mcpi worker protocol (versions 1 and 2),
 * written from protocol.md alone, in C99 with POSIX and nothing else (no msgpack
 * library: the strict decoder of protocol.md section 3 is part of what is tested).
 *
 *   mcpi_peer worker [--versions 1|1,2] [--max-inflight N] [--kernels numpy,python]
 *       a worker that `mcpi estimate --worker-cmd` can drive: kernels numpy and python
 *       (section 11), stream ranges (section 6.1), ping, cancel, shutdown; single
 *       threaded: it computes in slices of points and polls stdin between them, so a
 *       ping or a cancel is seen within a slice.
 *   mcpi_peer client [--versions 1|1,2] -- WORKER ARGV...
 *       a client that starts WORKER ARGV once per scenario, drives it (handshake,
 *       samples, ranges, pings, cancel, shutdown, and malformed frames) and checks each
 *       answer, exit code and the MUSTs of protocol.md; one line per scenario, exit 0
 *       if every scenario passed, 1 otherwise.
 *   mcpi_peer count KERNEL SEED STREAM POINTS
 *       the kernel's count, for checking the golden kernel table.
 *
 * Build: cc -std=c99 -O2 -ffp-contract=off -o mcpi_peer mcpi_peer.c
 * (-ffp-contract=off: section 11 counts round every product before the sum; a fused
 * multiply-add would give different counts.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAME 1048576u
#define MAX_POINTS (UINT64_C(1) << 40)
#define MAX_STREAMS 1048576u
#define MAX_GROUPS 4096u
#define MAX_TEXT 4096u
#define MAX_ARRAY 64u
#define MAX_DEPTH 16

/* ------------------------------------------------------------------ byte buffers */

typedef struct {
    unsigned char *p;
    size_t len, cap;
} buf;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("mcpi_peer: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void buf_put(buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) die("out of memory");
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}
static void buf_byte(buf *b, unsigned v) { unsigned char c = (unsigned char)v; buf_put(b, &c, 1); }
static void buf_be(buf *b, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) buf_byte(b, (unsigned)(v >> (8 * i)) & 0xff);
}
static void buf_drop(buf *b, size_t n) {
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

/* ------------------------------------------------------------------ msgpack encoding (shortest forms) */

static void mp_map(buf *b, uint32_t n) {
    if (n < 16) buf_byte(b, 0x80 | n);
    else if (n < 65536) { buf_byte(b, 0xde); buf_be(b, n, 2); }
    else { buf_byte(b, 0xdf); buf_be(b, n, 4); }
}
static void mp_array(buf *b, uint32_t n) {
    if (n < 16) buf_byte(b, 0x90 | n);
    else if (n < 65536) { buf_byte(b, 0xdc); buf_be(b, n, 2); }
    else { buf_byte(b, 0xdd); buf_be(b, n, 4); }
}
static void mp_strn(buf *b, const char *s, size_t n) {
    if (n < 32) buf_byte(b, 0xa0 | (unsigned)n);
    else if (n < 256) { buf_byte(b, 0xd9); buf_be(b, n, 1); }
    else if (n < 65536) { buf_byte(b, 0xda); buf_be(b, n, 2); }
    else { buf_byte(b, 0xdb); buf_be(b, n, 4); }
    buf_put(b, s, n);
}
static void mp_str(buf *b, const char *s) { mp_strn(b, s, strlen(s)); }
static void mp_uint(buf *b, uint64_t v) {
    if (v < 128) buf_byte(b, (unsigned)v);
    else if (v < 256) { buf_byte(b, 0xcc); buf_be(b, v, 1); }
    else if (v < 65536) { buf_byte(b, 0xcd); buf_be(b, v, 2); }
    else if (v <= 0xffffffffu) { buf_byte(b, 0xce); buf_be(b, v, 4); }
    else { buf_byte(b, 0xcf); buf_be(b, v, 8); }
}
static void mp_nil(buf *b) { buf_byte(b, 0xc0); }
static void mp_bool(buf *b, int v) { buf_byte(b, v ? 0xc3 : 0xc2); }
static void mp_f64(buf *b, double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    buf_byte(b, 0xcb);
    buf_be(b, u, 8);
}
/* A frame: the 4-byte length, then the body built in `body`. */
static void frame_of(buf *out, const buf *body) {
    buf_be(out, body->len, 4);
    buf_put(out, body->p, body->len);
}

/* ------------------------------------------------------------------ msgpack decoding (strict, section 3) */

typedef enum { V_NIL, V_BOOL, V_UINT, V_NINT, V_FLOAT, V_STR, V_BIN, V_ARR, V_MAP } vtype;

typedef struct value {
    vtype t;
    int b;
    uint64_t u;     /* V_UINT */
    int64_t i;      /* V_NINT (negative) */
    double f;       /* V_FLOAT */
    const char *s;  /* V_STR, V_BIN: points into the frame */
    uint32_t len;   /* bytes of a str/bin, entries of an array/map */
    uint32_t chars; /* code points of a str */
    struct value *items; /* array: len values; map: 2*len (key, value) */
} value;

typedef struct {
    const unsigned char *p, *end;
    const char *error; /* the reason for malformed_frame */
} decoder;

static void value_free(value *v) {
    if (v->t == V_ARR || v->t == V_MAP) {
        uint32_t n = v->t == V_MAP ? 2 * v->len : v->len;
        for (uint32_t k = 0; k < n; k++) value_free(&v->items[k]);
        free(v->items);
    }
    v->items = NULL;
}

/* Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF); counts code points. */
static int utf8_check(const unsigned char *s, size_t n, uint32_t *chars) {
    size_t k = 0;
    uint32_t count = 0;
    while (k < n) {
        unsigned c = s[k];
        uint32_t cp;
        int more;
        if (c < 0x80) { k++; count++; continue; }
        else if (c >= 0xc2 && c <= 0xdf) { cp = c & 0x1f; more = 1; }
        else if (c >= 0xe0 && c <= 0xef) { cp = c & 0x0f; more = 2; }
        else if (c >= 0xf0 && c <= 0xf4) { cp = c & 0x07; more = 3; }
        else return 0;
        if (k + (size_t)more >= n) return 0;
        for (int j = 1; j <= more; j++) {
            unsigned d = s[k + (size_t)j];
            if ((d & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (d & 0x3f);
        }
        if ((more == 2 && cp < 0x800) || (more == 3 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
        if (cp >= 0xd800 && cp <= 0xdfff) return 0;
        k += (size_t)more + 1;
        count++;
    }
    *chars = count;
    return 1;
}

static int need(decoder *d, size_t n) {
    if ((size_t)(d->end - d->p) < n) { d->error = "the body ends inside its msgpack object"; return 0; }
    return 1;
}
static uint64_t take_be(decoder *d, int bytes) {
    uint64_t v = 0;
    for (int k = 0; k < bytes; k++) v = (v << 8) | *d->p++;
    return v;
}

static int decode_value(decoder *d, value *v, int depth);

static int key_cmp(const void *a, const void *b) {
    const value *x = *(value *const *)a, *y = *(value *const *)b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return memcmp(x->s, y->s, x->len);
}

static int decode_container(decoder *d, value *v, uint64_t n, int is_map, int depth) {
    if (depth > MAX_DEPTH) { d->error = "containers nest more than 16 deep"; return 0; }
    /* Every entry takes at least one byte: a count the body cannot hold is refused before
       anything is allocated for it. */
    uint64_t entries = is_map ? 2 * n : n;
    if (entries > (uint64_t)(d->end - d->p)) { d->error = "the body ends inside its msgpack object"; return 0; }
    v->t = is_map ? V_MAP : V_ARR;
    v->len = (uint32_t)n;
    v->items = calloc(entries ? entries : 1, sizeof(value));
    if (!v->items) die("out of memory");
    for (uint64_t k = 0; k < entries; k++) {
        /* On failure every entry not yet decoded is still zero (V_NIL): all are freed. */
        if (!decode_value(d, &v->items[k], depth + 1)) { value_free(v); v->t = V_NIL; return 0; }
        if (is_map && k % 2 == 0 && v->items[k].t != V_STR) {
            d->error = "a map key is not a str";
            value_free(v); v->t = V_NIL;
            return 0;
        }
    }
    if (is_map && n > 1) {
        value **keys = malloc(n * sizeof(value *));
        if (!keys) die("out of memory");
        for (uint64_t k = 0; k < n; k++) keys[k] = &v->items[2 * k];
        qsort(keys, n, sizeof(value *), key_cmp);
        for (uint64_t k = 1; k < n; k++)
            if (key_cmp(&keys[k - 1], &keys[k]) == 0) {
                free(keys);
                d->error = "a map holds the same key twice";
                value_free(v); v->t = V_NIL;
                return 0;
            }
        free(keys);
    }
    return 1;
}

static int decode_str(decoder *d, value *v, uint64_t n, int is_bin) {
    if (!need(d, n)) return 0;
    v->t = is_bin ? V_BIN : V_STR;
    v->s = (const char *)d->p;
    v->len = (uint32_t)n;
    if (!is_bin && !utf8_check(d->p, n, &v->chars)) { d->error = "a str is not valid UTF-8"; return 0; }
    d->p += n;
    return 1;
}

static int decode_value(decoder *d, value *v, int depth) {
    memset(v, 0, sizeof *v);
    if (!need(d, 1)) return 0;
    unsigned c = *d->p++;
    if (c <= 0x7f) { v->t = V_UINT; v->u = c; return 1; }
    if (c >= 0xe0) { v->t = V_NINT; v->i = (int8_t)c; return 1; }
    if (c >= 0x80 && c <= 0x8f) return decode_container(d, v, c & 0x0f, 1, depth);
    if (c >= 0x90 && c <= 0x9f) return decode_container(d, v, c & 0x0f, 0, depth);
    if (c >= 0xa0 && c <= 0xbf) return decode_str(d, v, c & 0x1f, 0);
    switch (c) {
    case 0xc0: v->t = V_NIL; return 1;
    case 0xc2: case 0xc3: v->t = V_BOOL; v->b = c == 0xc3; return 1;
    case 0xc4: case 0xc5: case 0xc6: {
        int bytes = c == 0xc4 ? 1 : c == 0xc5 ? 2 : 4;
        if (!need(d, (size_t)bytes)) return 0;
        return decode_str(d, v, take_be(d, bytes), 1);
    }
    case 0xca: {
        if (!need(d, 4)) return 0;
        uint32_t u = (uint32_t)take_be(d, 4);
        float f;
        memcpy(&f, &u, 4);
        v->t = V_FLOAT; v->f = f;
        return 1;
    }
    case 0xcb: {
        if (!need(d, 8)) return 0;
        uint64_t u = take_be(d, 8);
        memcpy(&v->f, &u, 8);
        v->t = V_FLOAT;
        return 1;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        int bytes = 1 << (c - 0xcc);
        if (!need(d, (size_t)bytes)) return 0;
        v->t = V_UINT; v->u = take_be(d, bytes);
        return 1;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int bytes = 1 << (c - 0xd0);
        if (!need(d, (size_t)bytes)) return 0;
        uint64_t u = take_be(d, bytes);
        int64_t s;
        if (bytes == 1) s = (int8_t)u; else if (bytes == 2) s = (int16_t)u;
        else if (bytes == 4) s = (int32_t)u; else s = (int64_t)u;
        if (s >= 0) { v->t = V_UINT; v->u = (uint64_t)s; } else { v->t = V_NINT; v->i = s; }
        return 1;
    }
    case 0xd9: case 0xda: case 0xdb: {
        int bytes = c == 0xd9 ? 1 : c == 0xda ? 2 : 4;
        if (!need(d, (size_t)bytes)) return 0;
        return decode_str(d, v, take_be(d, bytes), 0);
    }
    case 0xdc: case 0xdd: {
        int bytes = c == 0xdc ? 2 : 4;
        if (!need(d, (size_t)bytes)) return 0;
        return decode_container(d, v, take_be(d, bytes), 0, depth);
    }
    case 0xde: case 0xdf: {
        int bytes = c == 0xde ? 2 : 4;
        if (!need(d, (size_t)bytes)) return 0;
        return decode_container(d, v, take_be(d, bytes), 1, depth);
    }
    case 0xc1: d->error = "byte 0xc1 is never used in msgpack"; return 0;
    default: d->error = "an extension type"; return 0; /* c7-c9, d4-d8 */
    }
}

/* Decode one frame body: 1 and the top-level map in *v, or 0 with the reason in *why. */
static int decode_body(const unsigned char *body, size_t n, value *v, const char **why) {
    decoder d = {body, body + n, NULL};
    if (!decode_value(&d, v, 1)) { *why = d.error ? d.error : "not msgpack"; return 0; }
    if (d.p != d.end) { value_free(v); *why = "bytes left over after the msgpack object"; return 0; }
    if (v->t != V_MAP) { value_free(v); *why = "the top-level object is not a map"; return 0; }
    return 1;
}

static const value *get(const value *map, const char *key) {
    size_t n = strlen(key);
    for (uint32_t k = 0; k < map->len; k++) {
        const value *name = &map->items[2 * k];
        if (name->len == n && memcmp(name->s, key, n) == 0) return &map->items[2 * k + 1];
    }
    return NULL;
}
static int is_str(const value *v, const char *s) {
    return v && v->t == V_STR && v->len == strlen(s) && memcmp(v->s, s, v->len) == 0;
}
static int is_uint(const value *v) { return v && v->t == V_UINT; }
static int is_text(const value *v) { return v && v->t == V_STR && v->chars <= MAX_TEXT; }

/* ------------------------------------------------------------------ the kernels (section 11) */

static void seed_sequence_state(uint64_t seed, uint64_t stream, int n_words, uint32_t *out) {
    uint32_t entropy[6];
    int n = 0;
    entropy[n++] = (uint32_t)seed;
    if (seed >> 32) entropy[n++] = (uint32_t)(seed >> 32);
    while (n < 4) entropy[n++] = 0;
    entropy[n++] = (uint32_t)stream;
    if (stream >> 32) entropy[n++] = (uint32_t)(stream >> 32);
    uint32_t hash_const = 0x43b0d7e5u, pool[4];
#define HASHMIX(value_in, result)                       \
    do {                                                \
        uint32_t hv = (value_in) ^ hash_const;          \
        hash_const *= 0x931e8875u;                      \
        hv *= hash_const;                               \
        (result) = hv ^ (hv >> 16);                     \
    } while (0)
#define MIX(x, y) (((0xca01f9ddu * (x) - 0x4973f715u * (y))) ^ ((0xca01f9ddu * (x) - 0x4973f715u * (y)) >> 16))
    for (int i = 0; i < 4; i++) HASHMIX(entropy[i], pool[i]);
    for (int src = 0; src < 4; src++)
        for (int dst = 0; dst < 4; dst++)
            if (dst != src) {
                uint32_t h;
                HASHMIX(pool[src], h);
                pool[dst] = MIX(pool[dst], h);
            }
    for (int k = 4; k < n; k++)
        for (int dst = 0; dst < 4; dst++) {
            uint32_t h;
            HASHMIX(entropy[k], h);
            pool[dst] = MIX(pool[dst], h);
        }
    hash_const = 0x8b51f9ddu;
    for (int i = 0; i < n_words; i++) {
        uint32_t v = pool[i % 4] ^ hash_const;
        hash_const *= 0x58f38dedu;
        v *= hash_const;
        out[i] = v ^ (v >> 16);
    }
#undef HASHMIX
#undef MIX
}

typedef struct { uint64_t a, b, c, w; } sfc64;

static uint64_t sfc64_next(sfc64 *g) {
    uint64_t out = g->a + g->b + g->w;
    g->w++;
    g->a = g->b ^ (g->b >> 11);
    g->b = g->c + (g->c << 3);
    g->c = ((g->c << 24) | (g->c >> 40)) + out;
    return out;
}
static void sfc64_seed(sfc64 *g, uint64_t seed, uint64_t stream) {
    uint32_t w[6];
    seed_sequence_state(seed, stream, 6, w);
    g->a = w[0] | (uint64_t)w[1] << 32;
    g->b = w[2] | (uint64_t)w[3] << 32;
    g->c = w[4] | (uint64_t)w[5] << 32;
    g->w = 1;
    for (int k = 0; k < 12; k++) sfc64_next(g);
}

typedef struct { uint32_t mt[624]; int mti; } mt19937;

static void mt_seed(mt19937 *m, const uint32_t *key, int n) {
    uint32_t *mt = m->mt;
    mt[0] = 19650218u;
    for (int i = 1; i < 624; i++) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + (uint32_t)i;
    int i = 1, j = 0;
    for (int k = n > 624 ? n : 624; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint32_t)j;
        i++; j++;
        if (i >= 624) { mt[0] = mt[623]; i = 1; }
        if (j >= n) j = 0;
    }
    for (int k = 623; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= 624) { mt[0] = mt[623]; i = 1; }
    }
    mt[0] = 0x80000000u;
    m->mti = 624;
}
static uint32_t mt_next(mt19937 *m) {
    uint32_t *mt = m->mt;
    if (m->mti >= 624) {
        for (int k = 0; k < 624; k++) {
            uint32_t y = (mt[k] & 0x80000000u) | (mt[(k + 1) % 624] & 0x7fffffffu);
            mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1) ? 0x9908b0dfu : 0);
        }
        m->mti = 0;
    }
    uint32_t y = mt[m->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}
static double mt_random(mt19937 *m) {
    uint32_t a = mt_next(m) >> 5, b = mt_next(m) >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}
static void python_seed(mt19937 *m, uint64_t seed, uint64_t stream) {
    uint32_t w[4];
    seed_sequence_state(seed, stream, 4, w);
    int n = 4;
    while (n > 1 && w[n - 1] == 0) n--; /* high zero words dropped, at least one */
    mt_seed(m, w, n);
}

typedef enum { K_NUMPY, K_PYTHON } kernel_id;

/* One stream's generator, counted a slice at a time. */
typedef struct {
    kernel_id kernel;
    sfc64 sfc;
    mt19937 *mt;
} stream_state;

static void stream_start(stream_state *s, kernel_id k, uint64_t seed, uint64_t stream) {
    s->kernel = k;
    if (k == K_NUMPY) sfc64_seed(&s->sfc, seed, stream);
    else {
        if (!s->mt) s->mt = malloc(sizeof(mt19937));
        if (!s->mt) die("out of memory");
        python_seed(s->mt, seed, stream);
    }
}
static uint64_t stream_count(stream_state *s, uint64_t points) {
    uint64_t inside = 0;
    if (s->kernel == K_NUMPY) {
        for (uint64_t k = 0; k < points; k++) {
            uint64_t word = sfc64_next(&s->sfc);
            float x = (float)((uint32_t)word >> 8) * 0x1p-24f;
            float y = (float)((uint32_t)(word >> 32) >> 8) * 0x1p-24f;
            float xx = x * x, yy = y * y;
            float sum = xx + yy;
            inside += sum < 1.0f;
        }
    } else {
        for (uint64_t k = 0; k < points; k++) {
            double x = mt_random(s->mt);
            double y = mt_random(s->mt);
            double xx = x * x, yy = y * y;
            inside += xx + yy < 1.0;
        }
    }
    return inside;
}
static uint64_t count_whole(kernel_id k, uint64_t seed, uint64_t stream, uint64_t points) {
    stream_state s = {0};
    stream_start(&s, k, seed, stream);
    uint64_t inside = stream_count(&s, points);
    free(s.mt);
    return inside;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ the worker */

typedef struct job {
    uint64_t id, seed, stream, points, streams, group;
    int is_range;
    kernel_id kernel;
    /* progress */
    int started;
    uint64_t at_stream, at_point, inside, group_inside, n_groups, done_groups;
    uint64_t *insides;
    stream_state st;
    double t0;
    int cancelled;
    struct job *next;
} job;

static struct {
    int out_fd;
    int versions_max; /* 1 or 2 */
    int version;      /* chosen; 0 before hello */
    uint64_t max_inflight, jobs;
    job *queue;       /* arrival order; the head runs */
    uint64_t outstanding;
    uint64_t samples, ranges; /* served: reported to $MCPI_PEER_STATS at the end */
    int offers[2];            /* offers[K_NUMPY], offers[K_PYTHON] */
    buf in, out;
} W;

static void flush_out(void) {
    size_t off = 0;
    while (off < W.out.len) {
        ssize_t n = write(W.out_fd, W.out.p + off, W.out.len - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EPIPE) exit(0); /* the coordinator is gone (section 9) */
            die("write: %s", strerror(errno));
        }
        off += (size_t)n;
    }
    W.out.len = 0;
}

static void send_body(buf *body) {
    frame_of(&W.out, body);
    free(body->p);
    body->p = NULL;
    body->len = body->cap = 0;
}

static void send_error(int has_id, uint64_t id, const char *code, const char *fmt, ...) {
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    buf b = {0};
    mp_map(&b, 4);
    mp_str(&b, "type"); mp_str(&b, "error");
    mp_str(&b, "id");
    if (has_id) mp_uint(&b, id); else mp_nil(&b);
    mp_str(&b, "code"); mp_str(&b, code);
    mp_str(&b, "message"); mp_str(&b, message);
    send_body(&b);
}

static void fatal(const char *code, const char *fmt, ...) {
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    send_error(0, 0, code, "%s", message);
    flush_out();
    fprintf(stderr, "mcpi_peer: fatal protocol error: %s: %s\n", code, message);
    exit(3);
}

static void job_free(job *j) {
    free(j->insides);
    free(j->st.mt);
    free(j);
}

static void finish_job(job *j, int cancelled) {
    if (cancelled) send_error(1, j->id, "cancelled", "cancelled before it finished");
    else {
        double elapsed = now_s() - j->t0;
        if (!(elapsed >= 0)) elapsed = 0;
        buf b = {0};
        mp_map(&b, j->is_range ? 6 : 5);
        mp_str(&b, "type"); mp_str(&b, "result");
        mp_str(&b, "id"); mp_uint(&b, j->id);
        mp_str(&b, "inside"); mp_uint(&b, j->inside);
        mp_str(&b, "points"); mp_uint(&b, j->points * j->streams);
        mp_str(&b, "elapsed_s"); mp_f64(&b, elapsed);
        if (j->is_range) {
            mp_str(&b, "insides");
            mp_array(&b, (uint32_t)j->n_groups);
            for (uint64_t g = 0; g < j->n_groups; g++) mp_uint(&b, j->insides[g]);
        }
        send_body(&b);
    }
    W.outstanding--;
}

static void remove_job(job *j) {
    job **p = &W.queue;
    while (*p != j) p = &(*p)->next;
    *p = j->next;
    job_free(j);
}

/* Count up to `budget` points (a stream's set-up costing 16 384) of the running job;
   1 when it is finished. */
static int step_job(job *j, uint64_t budget) {
    if (!j->started) {
        j->started = 1;
        j->t0 = now_s();
        j->at_stream = 0;
        j->at_point = 0;
        j->n_groups = (j->streams + j->group - 1) / j->group;
        j->insides = calloc(j->n_groups, sizeof(uint64_t));
        if (!j->insides) die("out of memory");
        stream_start(&j->st, j->kernel, j->seed, j->stream);
    }
    while (budget > 0 && j->at_stream < j->streams) {
        uint64_t left = j->points - j->at_point;
        uint64_t take = left < budget ? left : budget;
        uint64_t got = stream_count(&j->st, take);
        j->inside += got;
        j->insides[j->at_stream / j->group] += got;
        j->at_point += take;
        budget -= take;
        if (j->at_point == j->points) {
            j->at_stream++;
            j->at_point = 0;
            budget = budget > 16384 ? budget - 16384 : 0;
            if (j->at_stream < j->streams) stream_start(&j->st, j->kernel, j->seed, j->stream + j->at_stream);
        }
    }
    return j->at_stream == j->streams;
}

static job *find_job(uint64_t id) {
    for (job *j = W.queue; j; j = j->next)
        if (j->id == id) return j;
    return NULL;
}

/* Stop everything in order (section 9) and exit 0. */
static void close_in_order(void) {
    while (W.queue) {
        job *j = W.queue;
        finish_job(j, 1);
        remove_job(j);
    }
    flush_out();
    const char *stats = getenv("MCPI_PEER_STATS");
    FILE *f = stats && *stats ? fopen(stats, "a") : NULL;
    if (f) {
        fprintf(f, "{\"pid\": %d, \"version\": %d, \"samples\": %" PRIu64 ", \"ranges\": %" PRIu64 "}\n",
                (int)getpid(), W.version, W.samples, W.ranges);
        fclose(f);
    }
    exit(0);
}

static int known_type(const value *type, int *is_request) {
    static const char *requests[] = {"sample", "ping"};
    static const char *notes[] = {"hello", "cancel", "shutdown"};
    for (int k = 0; k < 2; k++) if (is_str(type, requests[k])) { *is_request = 1; return 1; }
    for (int k = 0; k < 3; k++) if (is_str(type, notes[k])) { *is_request = 0; return 1; }
    return 0;
}

/* A per-request invalid_request, or the fatal one when the message has no usable id. */
#define INVALID(usable, id, ...)                                                  \
    do {                                                                          \
        if (usable) send_error(1, (id), "invalid_request", __VA_ARGS__);         \
        else fatal("invalid_request", __VA_ARGS__);                               \
        return;                                                                   \
    } while (0)

static void handle(const value *m) {
    const value *type = get(m, "type");
    const value *idv = get(m, "id");
    int is_request = 0;
    int known = type && type->t == V_STR && known_type(type, &is_request);
    /* Usable id (section 6): a uint64 id of a request, of an unknown type, or of a
       message whose type is missing or not a str. */
    int usable = is_uint(idv) && (!type || type->t != V_STR || !known || is_request);
    uint64_t id = usable ? idv->u : 0;
    if (!type || type->t != V_STR) INVALID(usable, id, "type is missing or not a str");
    if (!known) {
        if (usable) send_error(1, id, "unknown_type", "unknown message type");
        else fatal("unknown_type", "unknown message type, and no usable id");
        return;
    }
    if (is_str(type, "hello")) {
        const value *versions = get(m, "versions"), *client = get(m, "client"), *hint = get(m, "expected_points");
        if (!versions || versions->t != V_ARR || versions->len == 0 || versions->len > MAX_ARRAY)
            fatal("invalid_request", "versions must be a non-empty array of at most 64 positive integers");
        for (uint32_t k = 0; k < versions->len; k++)
            if (!is_uint(&versions->items[k]) || versions->items[k].u == 0)
                fatal("invalid_request", "versions must hold positive integers");
        if (!is_text(client)) fatal("invalid_request", "client must be a str of at most 4096 characters");
        if (hint && !is_uint(hint)) fatal("invalid_request", "expected_points must be a uint64");
        if (W.version) fatal("invalid_request", "a second hello");
        int best = 0;
        for (uint32_t k = 0; k < versions->len; k++)
            if (versions->items[k].u <= (uint64_t)W.versions_max && (int)versions->items[k].u > best)
                best = (int)versions->items[k].u;
        if (!best) fatal("unsupported_version", "no common version; this worker speaks 1 to %d", W.versions_max);
        W.version = best;
        char host[256] = "unknown";
        gethostname(host, sizeof host - 1);
        buf b = {0};
        mp_map(&b, 10);
        mp_str(&b, "type"); mp_str(&b, "welcome");
        mp_str(&b, "version"); mp_uint(&b, (uint64_t)best);
        mp_str(&b, "worker"); mp_str(&b, "mcpi-peer-c/1.0");
        mp_str(&b, "pid"); mp_uint(&b, (uint64_t)getpid());
        mp_str(&b, "host"); mp_strn(&b, host, strnlen(host, 255));
        mp_str(&b, "kernels"); mp_array(&b, (uint32_t)(W.offers[K_NUMPY] + W.offers[K_PYTHON]));
        if (W.offers[K_NUMPY]) mp_str(&b, "numpy");
        if (W.offers[K_PYTHON]) mp_str(&b, "python");
        mp_str(&b, "max_inflight"); mp_uint(&b, W.max_inflight);
        mp_str(&b, "max_frame"); mp_uint(&b, MAX_FRAME);
        mp_str(&b, "max_points"); mp_uint(&b, MAX_POINTS);
        mp_str(&b, "jobs"); mp_uint(&b, W.jobs);
        send_body(&b);
        return;
    }
    if (is_str(type, "shutdown")) close_in_order();
    if (is_str(type, "cancel")) {
        if (!is_uint(idv)) fatal("invalid_request", "cancel: id must be a uint64");
        job *j = find_job(idv->u);
        if (j && !j->cancelled) {
            if (j == W.queue && j->started) j->cancelled = 1; /* stopped at the next slice */
            else { finish_job(j, 1); remove_job(j); }
        }
        return;
    }
    /* sample or ping */
    if (!is_uint(idv)) fatal("invalid_request", "id must be a uint64");
    if (is_str(type, "ping")) {
        if (!W.version) { send_error(1, id, "handshake_required", "send hello first"); return; }
        if (find_job(id)) { send_error(1, id, "duplicate_id", "id %" PRIu64 " is outstanding", id); return; }
        buf b = {0};
        mp_map(&b, 2);
        mp_str(&b, "type"); mp_str(&b, "pong");
        mp_str(&b, "id"); mp_uint(&b, id);
        send_body(&b);
        return;
    }
    const value *seed = get(m, "seed"), *stream = get(m, "stream"), *points = get(m, "points");
    const value *kernel = get(m, "kernel"), *streams = get(m, "streams"), *group = get(m, "group");
    if (!is_uint(seed)) INVALID(1, id, "seed must be a uint64");
    if (!is_uint(stream)) INVALID(1, id, "stream must be a uint64");
    if (!is_uint(points) || points->u > MAX_POINTS) INVALID(1, id, "points must be an integer from 0 to 2**40");
    if (!is_text(kernel)) INVALID(1, id, "kernel must be a str of at most 4096 characters");
    if (streams && (!is_uint(streams) || streams->u == 0)) INVALID(1, id, "streams must be a positive integer");
    if (group && (!is_uint(group) || group->u == 0)) INVALID(1, id, "group must be a positive integer");
    if (!W.version) { send_error(1, id, "handshake_required", "send hello first"); return; }
    if (find_job(id)) { send_error(1, id, "duplicate_id", "id %" PRIu64 " is outstanding", id); return; }
    kernel_id k;
    if (is_str(kernel, "numpy") && W.offers[K_NUMPY]) k = K_NUMPY;
    else if (is_str(kernel, "python") && W.offers[K_PYTHON]) k = K_PYTHON;
    else { send_error(1, id, "unknown_kernel", "unknown kernel; see the welcome's kernels"); return; }
    uint64_t n = streams ? streams->u : 1;
    int is_range = n != 1 || group != NULL;
    if (is_range && W.version < 2) INVALID(1, id, "a range (streams, group) needs protocol version 2");
    if (n - 1 > UINT64_MAX - stream->u) INVALID(1, id, "the range goes past stream 2**64-1");
    if (n > MAX_STREAMS) INVALID(1, id, "more than 1048576 streams");
    if (points->u && n > MAX_POINTS / points->u) INVALID(1, id, "streams x points above max_points");
    uint64_t g = group ? (group->u < n ? group->u : n) : n;
    if ((n + g - 1) / g > MAX_GROUPS) INVALID(1, id, "more than 4096 groups");
    if (W.outstanding >= W.max_inflight) { send_error(1, id, "busy", "max_inflight samples outstanding"); return; }
    job *j = calloc(1, sizeof *j);
    if (!j) die("out of memory");
    j->id = id; j->seed = seed->u; j->stream = stream->u; j->points = points->u;
    j->streams = n; j->group = g; j->is_range = is_range; j->kernel = k;
    job **tail = &W.queue;
    while (*tail) tail = &(*tail)->next;
    *tail = j;
    W.outstanding++;
    W.samples++;
    W.ranges += (uint64_t)is_range;
}

static void worker_input(const unsigned char *data, size_t n) {
    buf_put(&W.in, data, n);
    for (;;) {
        if (W.in.len < 4) return;
        uint32_t length = (uint32_t)W.in.p[0] << 24 | (uint32_t)W.in.p[1] << 16 | (uint32_t)W.in.p[2] << 8 | W.in.p[3];
        if (length == 0) fatal("malformed_frame", "a frame of length 0");
        if (length > MAX_FRAME)
            fatal("frame_too_large", "frame of %" PRIu32 " bytes exceeds the %u-byte limit", length, MAX_FRAME);
        if (W.in.len < 4 + (size_t)length) return;
        value m;
        const char *why;
        if (!decode_body(W.in.p + 4, length, &m, &why)) fatal("malformed_frame", "%s", why);
        handle(&m);
        value_free(&m);
        buf_drop(&W.in, 4 + (size_t)length);
    }
}

static int run_worker(int argc, char **argv) {
    W.versions_max = 2;
    W.max_inflight = 64;
    W.jobs = 1;
    W.offers[K_NUMPY] = W.offers[K_PYTHON] = 1;
    for (int k = 0; k < argc; k++) {
        if (!strcmp(argv[k], "--versions") && k + 1 < argc) W.versions_max = strcmp(argv[++k], "1") ? 2 : 1;
        else if (!strcmp(argv[k], "--max-inflight") && k + 1 < argc) W.max_inflight = strtoull(argv[++k], NULL, 10);
        else if (!strcmp(argv[k], "--kernels") && k + 1 < argc) {
            const char *list = argv[++k];
            W.offers[K_NUMPY] = strstr(list, "numpy") != NULL;
            W.offers[K_PYTHON] = strstr(list, "python") != NULL;
        }
        else { fprintf(stderr, "mcpi_peer worker: unknown argument %s\n", argv[k]); return 2; }
    }
    signal(SIGPIPE, SIG_IGN);
    /* Section 10.1: frames go to a private copy of fd 1; fd 1 becomes stderr. */
    W.out_fd = fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (W.out_fd < 0 || dup2(2, 1) < 0) die("cannot set up stdout");
    fprintf(stderr, "{\"event\": \"worker_started\", \"level\": \"info\", \"pid\": %d}\n", (int)getpid());
    unsigned char chunk[65536];
    for (;;) {
        /* Read what is waiting (without blocking while there is work), then count a slice. */
        struct pollfd p = {0, POLLIN, 0};
        int busy = W.queue != NULL;
        int ready = poll(&p, 1, busy ? 0 : -1);
        if (ready < 0 && errno != EINTR) die("poll: %s", strerror(errno));
        if (ready > 0) {
            ssize_t n = read(0, chunk, sizeof chunk);
            if (n < 0 && errno != EINTR && errno != EAGAIN) die("read: %s", strerror(errno));
            if (n == 0) {
                if (W.in.len) fatal("truncated_frame", "end of file inside a frame");
                close_in_order();
            }
            if (n > 0) worker_input(chunk, (size_t)n);
        }
        flush_out();
        if (W.queue) {
            job *j = W.queue;
            int done = j->cancelled || step_job(j, 65536);
            if (done) {
                finish_job(j, j->cancelled && !(j->at_stream == j->streams));
                remove_job(j);
                flush_out();
            }
        }
    }
}

/* ------------------------------------------------------------------ the client */

typedef struct {
    pid_t pid;
    int to, from;       /* the worker's stdin (ours to write), its stdout */
    buf in;
    int eof;
} conn;

static const char **worker_argv;
static int failures;
static char failure[1024];

static int fail_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(failure, sizeof failure, fmt, ap);
    va_end(ap);
    return 0;
}
#define CHECK(cond, ...) do { if (!(cond)) return fail_(__VA_ARGS__); } while (0)

static conn start_worker(const char *extra) {
    int in[2], out[2];
    if (pipe(in) || pipe(out)) die("pipe");
    conn c = {0};
    c.pid = fork();
    if (c.pid < 0) die("fork");
    if (c.pid == 0) {
        dup2(in[0], 0); dup2(out[1], 1);
        close(in[0]); close(in[1]); close(out[0]); close(out[1]);
        int n = 0;
        while (worker_argv[n]) n++;
        const char **argv = calloc((size_t)n + 3, sizeof *argv);
        for (int k = 0; k < n; k++) argv[k] = worker_argv[k];
        if (extra) { argv[n++] = strtok(strdup(extra), " "); argv[n++] = strtok(NULL, " "); }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(in[0]); close(out[1]);
    c.to = in[1];
    c.from = out[0];
    fcntl(c.to, F_SETFD, FD_CLOEXEC);
    fcntl(c.from, F_SETFD, FD_CLOEXEC);
    return c;
}

static void send_raw(conn *c, const void *data, size_t n) {
    const unsigned char *p = data;
    while (n) {
        ssize_t k = write(c->to, p, n);
        if (k < 0) { if (errno == EINTR) continue; return; /* the worker left: its exit tells */ }
        p += k; n -= (size_t)k;
    }
}
static void send_msg(conn *c, buf *body) {
    buf f = {0};
    frame_of(&f, body);
    send_raw(c, f.p, f.len);
    free(f.p); free(body->p);
    memset(body, 0, sizeof *body);
}

/* The next frame from the worker within `timeout_s`: 1 and its body (decoded into *m,
   raw bytes into *raw if given); 0 at end of file; -1 on a timeout or a broken frame. */
static int recv_msg(conn *c, value *m, buf *raw, double timeout_s) {
    double deadline = now_s() + timeout_s;
    for (;;) {
        if (c->in.len >= 4) {
            uint32_t n = (uint32_t)c->in.p[0] << 24 | (uint32_t)c->in.p[1] << 16 | (uint32_t)c->in.p[2] << 8 | c->in.p[3];
            if (n == 0 || n > MAX_FRAME) { fail_("the worker wrote a frame of length %u", n); return -1; }
            if (c->in.len >= 4 + (size_t)n) {
                const char *why;
                if (raw) { raw->len = 0; buf_put(raw, c->in.p, 4 + (size_t)n); }
                if (!decode_body(c->in.p + 4, n, m, &why)) { fail_("the worker wrote a malformed frame: %s", why); return -1; }
                buf_drop(&c->in, 4 + (size_t)n);
                return 1;
            }
        }
        if (c->eof) {
            if (c->in.len) { fail_("the worker's stdout ended inside a frame"); return -1; }
            return 0;
        }
        double left = deadline - now_s();
        if (left <= 0) { fail_("no frame from the worker within %.0f s", timeout_s); return -1; }
        struct pollfd p = {c->from, POLLIN, 0};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno != EINTR) die("poll");
        if (r > 0) {
            unsigned char chunk[65536];
            ssize_t k = read(c->from, chunk, sizeof chunk);
            if (k < 0 && errno != EINTR) die("read");
            if (k == 0) c->eof = 1;
            if (k > 0) buf_put(&c->in, chunk, (size_t)k);
        }
    }
}

/* Wait for the worker's exit within `timeout_s`; its status, or -1 (then it is killed). */
static int reap(conn *c, double timeout_s) {
    double deadline = now_s() + timeout_s;
    int status;
    for (;;) {
        pid_t r = waitpid(c->pid, &status, WNOHANG);
        if (r == c->pid) break;
        if (now_s() > deadline) { kill(c->pid, SIGKILL); waitpid(c->pid, &status, 0); status = -1; break; }
        usleep(2000);
    }
    close(c->to); close(c->from);
    free(c->in.p);
    if (status == -1) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void hello(buf *b, int max_version) {
    mp_map(b, 3);
    mp_str(b, "type"); mp_str(b, "hello");
    mp_str(b, "versions"); mp_array(b, (uint32_t)max_version);
    for (int v = 1; v <= max_version; v++) mp_uint(b, (uint64_t)v);
    mp_str(b, "client"); mp_str(b, "mcpi-peer-c/1.0");
}
static void sample(buf *b, uint64_t id, uint64_t seed, uint64_t stream, uint64_t points, const char *kernel,
                   uint64_t streams, uint64_t group) {
    mp_map(b, 6 + (streams != 1 || group) + (group != 0));
    mp_str(b, "type"); mp_str(b, "sample");
    mp_str(b, "id"); mp_uint(b, id);
    mp_str(b, "seed"); mp_uint(b, seed);
    mp_str(b, "stream"); mp_uint(b, stream);
    mp_str(b, "points"); mp_uint(b, points);
    mp_str(b, "kernel"); mp_str(b, kernel);
    if (streams != 1 || group) { mp_str(b, "streams"); mp_uint(b, streams); }
    if (group) { mp_str(b, "group"); mp_uint(b, group); }
}
static void ping(buf *b, uint64_t id) {
    mp_map(b, 2);
    mp_str(b, "type"); mp_str(b, "ping");
    mp_str(b, "id"); mp_uint(b, id);
}
static void cancel(buf *b, uint64_t id) {
    mp_map(b, 2);
    mp_str(b, "type"); mp_str(b, "cancel");
    mp_str(b, "id"); mp_uint(b, id);
}
static void shutdown_msg(buf *b) {
    mp_map(b, 1);
    mp_str(b, "type"); mp_str(b, "shutdown");
}

/* A started, greeted worker: its welcome checked as section 5 says a coordinator must. */
static int welcome_version, welcome_inflight;
static int greet(conn *c, int max_version) {
    buf b = {0};
    hello(&b, max_version);
    send_msg(c, &b);
    value m;
    if (recv_msg(c, &m, NULL, 120) != 1) return fail_("no welcome: %s", failure);
    const value *type = get(&m, "type"), *version = get(&m, "version"), *kernels = get(&m, "kernels");
    const value *inflight = get(&m, "max_inflight"), *max_frame = get(&m, "max_frame"), *max_points = get(&m, "max_points");
    const value *jobs = get(&m, "jobs"), *impls = get(&m, "implementations");
    int ok = is_str(type, "welcome") && is_uint(version) && version->u >= 1 && (int)version->u <= max_version
        && is_text(get(&m, "worker")) && is_uint(get(&m, "pid")) && is_text(get(&m, "host"))
        && kernels && kernels->t == V_ARR && kernels->len >= 1 && kernels->len <= MAX_ARRAY
        && is_uint(inflight) && inflight->u >= 1 && is_uint(max_frame) && max_frame->u >= 1
        && is_uint(max_points) && max_points->u >= 1 && max_points->u <= MAX_POINTS
        && (!jobs || (is_uint(jobs) && jobs->u >= 1 && jobs->u <= inflight->u && jobs->u <= 1024))
        && (!impls || (impls->t == V_ARR && (impls->len == 0 || impls->len == kernels->len)));
    int has_numpy = 0;
    for (uint32_t k = 0; ok && k < kernels->len; k++) {
        ok = is_text(&kernels->items[k]);
        has_numpy |= is_str(&kernels->items[k], "numpy");
    }
    if (ok) { welcome_version = (int)version->u; welcome_inflight = (int)inflight->u; }
    value_free(&m);
    CHECK(ok, "the welcome breaks section 4.2");
    CHECK(has_numpy, "the welcome offers no numpy kernel");
    CHECK(welcome_version == max_version, "version %d chosen from 1..%d", welcome_version, max_version);
    return 1;
}

/* The next frame must be an error with this id (or nil id when fatal) and code. */
static int expect_error(conn *c, int has_id, uint64_t id, const char *code) {
    value m;
    int r = recv_msg(c, &m, NULL, 120);
    CHECK(r == 1, "expected error %s, got %s", code, r == 0 ? "end of file" : failure);
    const value *type = get(&m, "type"), *idv = get(&m, "id"), *codev = get(&m, "code"), *message = get(&m, "message");
    int ok = is_str(type, "error") && (has_id ? is_uint(idv) && idv->u == id : idv && idv->t == V_NIL)
        && is_str(codev, code) && is_text(message) && !memchr(message->s, '\n', message->len);
    char got[80] = "?";
    if (codev && codev->t == V_STR) snprintf(got, sizeof got, "%.*s", (int)(codev->len < 60 ? codev->len : 60), codev->s);
    else if (type && type->t == V_STR) snprintf(got, sizeof got, "type %.*s", (int)(type->len < 60 ? type->len : 60), type->s);
    value_free(&m);
    CHECK(ok, "expected error %s (id %s%" PRIu64 "), got %s", code, has_id ? "" : "nil, not ", id, got);
    return 1;
}

/* A fatal error, then nothing more, then exit 3. */
static int expect_fatal(conn *c, const char *code) {
    if (!expect_error(c, 0, 0, code)) return 0;
    value m;
    int r = recv_msg(c, &m, NULL, 60);
    if (r == 1) value_free(&m);
    CHECK(r == 0, "a frame after the fatal error %s", code);
    int status = reap(c, 60);
    c->pid = 0;
    CHECK(status == 3, "exit status %d after a fatal error, not 3", status);
    return 1;
}

static int expect_pong(conn *c, uint64_t id) {
    value m;
    int r = recv_msg(c, &m, NULL, 120);
    CHECK(r == 1, "expected pong %" PRIu64 ": %s", id, r == 0 ? "end of file" : failure);
    int ok = is_str(get(&m, "type"), "pong") && is_uint(get(&m, "id")) && get(&m, "id")->u == id && m.len == 2;
    value_free(&m);
    CHECK(ok, "expected pong %" PRIu64, id);
    return 1;
}

/* A result for this request, checked whole against this peer's own kernel. */
static int expect_result(conn *c, uint64_t id, uint64_t seed, uint64_t stream, uint64_t points, kernel_id k,
                         uint64_t streams, uint64_t group) {
    value m;
    int r = recv_msg(c, &m, NULL, 300);
    CHECK(r == 1, "expected result %" PRIu64 ": %s", id, r == 0 ? "end of file" : failure);
    int is_range = streams != 1 || group != 0;
    uint64_t g = group ? (group < streams ? group : streams) : streams;
    uint64_t n_groups = (streams + g - 1) / g, total = 0, want[MAX_GROUPS] = {0};
    for (uint64_t s = 0; s < streams; s++) {
        uint64_t inside = count_whole(k, seed, stream + s, points);
        total += inside;
        want[s / g] += inside;
    }
    const value *type = get(&m, "type"), *idv = get(&m, "id"), *inside = get(&m, "inside"), *pts = get(&m, "points");
    const value *elapsed = get(&m, "elapsed_s"), *insides = get(&m, "insides");
    int ok = is_str(type, "result") && is_uint(idv) && idv->u == id && is_uint(inside) && inside->u == total
        && is_uint(pts) && pts->u == streams * points && elapsed
        && ((elapsed->t == V_FLOAT && elapsed->f >= 0 && elapsed->f <= 1e300) || elapsed->t == V_UINT);
    if (ok && is_range) {
        ok = insides && insides->t == V_ARR && insides->len == n_groups;
        for (uint64_t q = 0; ok && q < n_groups; q++) ok = is_uint(&insides->items[q]) && insides->items[q].u == want[q];
    } else if (ok) ok = insides == NULL;
    char got[120] = "";
    if (is_str(type, "error") && get(&m, "code") && get(&m, "code")->t == V_STR)
        snprintf(got, sizeof got, ": error %.*s", (int)(get(&m, "code")->len % 60), get(&m, "code")->s);
    value_free(&m);
    CHECK(ok, "result %" PRIu64 " is not %" PRIu64 " inside of %" PRIu64 "%s", id, total, streams * points, got);
    return 1;
}

static int expect_exit(conn *c, int code) {
    value m;
    int r;
    while ((r = recv_msg(c, &m, NULL, 120)) == 1) value_free(&m);
    CHECK(r == 0, "no end of file: %s", failure);
    int status = reap(c, 60);
    c->pid = 0;
    CHECK(status == code, "exit status %d, not %d", status, code);
    return 1;
}

/* --- scenarios: each starts its own worker and returns 1 on success */

static int s_golden_ping_sample(int v) {
    conn c = start_worker(NULL);
    if (!greet(&c, v)) return 0;
    static const unsigned char golden_ping[] = {0, 0, 0, 0x0f, 0x82, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'p', 'i', 'n', 'g', 0xa2, 'i', 'd', 7};
    send_raw(&c, golden_ping, sizeof golden_ping);
    buf raw = {0};
    value m;
    CHECK(recv_msg(&c, &m, &raw, 120) == 1, "no pong: %s", failure);
    value_free(&m);
    static const unsigned char golden_pong[] = {0, 0, 0, 0x0f, 0x82, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'p', 'o', 'n', 'g', 0xa2, 'i', 'd', 7};
    CHECK(raw.len == sizeof golden_pong && !memcmp(raw.p, golden_pong, raw.len), "the pong is not the golden bytes");
    free(raw.p);
    buf b = {0};
    sample(&b, 1, 12345, 0, 1000000, "numpy", 1, 0);
    send_msg(&c, &b);
    if (!expect_result(&c, 1, 12345, 0, 1000000, K_NUMPY, 1, 0)) return 0;
    sample(&b, 2, UINT64_MAX, UINT64_MAX, 10000, "python", 1, 0);
    send_msg(&c, &b);
    if (!expect_result(&c, 2, UINT64_MAX, UINT64_MAX, 10000, K_PYTHON, 1, 0)) return 0;
    sample(&b, 3, 42, 3, 65537, "numpy", 1, 0);
    send_msg(&c, &b);
    if (!expect_result(&c, 3, 42, 3, 65537, K_NUMPY, 1, 0)) return 0;
    sample(&b, 4, 7, 9, 0, "numpy", 1, 0); /* zero points: a valid sample, 0 inside */
    send_msg(&c, &b);
    if (!expect_result(&c, 4, 7, 9, 0, K_NUMPY, 1, 0)) return 0;
    /* Pipelined: answers in any order, matched by id. */
    for (uint64_t id = 10; id < 14; id++) { sample(&b, id, 5, id, 20000, "numpy", 1, 0); send_msg(&c, &b); }
    int seen = 0;
    for (int k = 0; k < 4; k++) {
        CHECK(recv_msg(&c, &m, NULL, 120) == 1, "pipelined: %s", failure);
        const value *idv = get(&m, "id"), *inside = get(&m, "inside");
        int ok = is_str(get(&m, "type"), "result") && is_uint(idv) && idv->u >= 10 && idv->u < 14
            && !(seen & (1 << (idv->u - 10))) && is_uint(inside) && inside->u == count_whole(K_NUMPY, 5, idv->u, 20000);
        if (ok) seen |= 1 << (idv->u - 10);
        value_free(&m);
        CHECK(ok, "pipelined result wrong or repeated");
    }
    shutdown_msg(&b);
    send_msg(&c, &b);
    return expect_exit(&c, 0);
}

static int s_per_request_errors(int v) {
    conn c = start_worker(NULL);
    buf b = {0};
    /* Before hello: a request is answered handshake_required, a cancel ignored. */
    ping(&b, 1);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 1, "handshake_required")) return 0;
    cancel(&b, 99);
    send_msg(&c, &b);
    if (!greet(&c, v)) return 0;
    sample(&b, 2, 12345, 0, 10, "cuda", 1, 0);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 2, "unknown_kernel")) return 0;
    /* booleans are not integers */
    mp_map(&b, 6); mp_str(&b, "type"); mp_str(&b, "sample"); mp_str(&b, "id"); mp_uint(&b, 3);
    mp_str(&b, "seed"); mp_bool(&b, 1); mp_str(&b, "stream"); mp_uint(&b, 0);
    mp_str(&b, "points"); mp_uint(&b, 10); mp_str(&b, "kernel"); mp_str(&b, "numpy");
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 3, "invalid_request")) return 0;
    /* points above 2**40 */
    sample(&b, 4, 1, 0, MAX_POINTS + 1, "numpy", 1, 0);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 4, "invalid_request")) return 0;
    /* a field missing */
    mp_map(&b, 5); mp_str(&b, "type"); mp_str(&b, "sample"); mp_str(&b, "id"); mp_uint(&b, 5);
    mp_str(&b, "seed"); mp_uint(&b, 1); mp_str(&b, "stream"); mp_uint(&b, 0); mp_str(&b, "points"); mp_uint(&b, 10);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 5, "invalid_request")) return 0;
    /* a negative seed (int8 -1) */
    mp_map(&b, 6); mp_str(&b, "type"); mp_str(&b, "sample"); mp_str(&b, "id"); mp_uint(&b, 6);
    mp_str(&b, "seed"); buf_byte(&b, 0xff); mp_str(&b, "stream"); mp_uint(&b, 0);
    mp_str(&b, "points"); mp_uint(&b, 10); mp_str(&b, "kernel"); mp_str(&b, "numpy");
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 6, "invalid_request")) return 0;
    /* a non-shortest integer encoding is accepted: id 7 as uint64, seed 12345 as int64 */
    mp_map(&b, 6); mp_str(&b, "type"); mp_str(&b, "sample"); mp_str(&b, "id"); buf_byte(&b, 0xcf); buf_be(&b, 7, 8);
    mp_str(&b, "seed"); buf_byte(&b, 0xd3); buf_be(&b, 12345, 8); mp_str(&b, "stream"); mp_uint(&b, 1);
    mp_str(&b, "points"); mp_uint(&b, 1000); mp_str(&b, "kernel"); mp_str(&b, "numpy");
    send_msg(&c, &b);
    if (!expect_result(&c, 7, 12345, 1, 1000, K_NUMPY, 1, 0)) return 0;
    /* an unknown type with an id: per-request unknown_type, the connection goes on */
    mp_map(&b, 3); mp_str(&b, "type"); mp_str(&b, "frobnicate"); mp_str(&b, "id"); mp_uint(&b, 8);
    mp_str(&b, "extra"); mp_array(&b, 1); mp_map(&b, 1); mp_str(&b, "k"); mp_nil(&b);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 8, "unknown_type")) return 0;
    /* a type this side never accepts (a result sent to a worker) is an unknown type */
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "result"); mp_str(&b, "id"); mp_uint(&b, 9);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 9, "unknown_type")) return 0;
    /* type not a str, with an id: per-request invalid_request */
    mp_map(&b, 2); mp_str(&b, "type"); mp_uint(&b, 1); mp_str(&b, "id"); mp_uint(&b, 10);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 10, "invalid_request")) return 0;
    /* unknown keys are ignored */
    mp_map(&b, 3); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); mp_uint(&b, 11);
    mp_str(&b, "future"); mp_str(&b, "ignored");
    send_msg(&c, &b);
    if (!expect_pong(&c, 11)) return 0;
    /* a range on a version-1 connection is refused; on version 2 served */
    sample(&b, 12, 12345, 0, 1000, "numpy", 2, 0);
    send_msg(&c, &b);
    if (v == 1) { if (!expect_error(&c, 1, 12, "invalid_request")) return 0; }
    else if (!expect_result(&c, 12, 12345, 0, 1000, K_NUMPY, 2, 0)) return 0;
    /* streams: 1 without group is a plain sample on either version */
    mp_map(&b, 7); mp_str(&b, "type"); mp_str(&b, "sample"); mp_str(&b, "id"); mp_uint(&b, 13);
    mp_str(&b, "seed"); mp_uint(&b, 1); mp_str(&b, "stream"); mp_uint(&b, 0);
    mp_str(&b, "points"); mp_uint(&b, 100); mp_str(&b, "kernel"); mp_str(&b, "numpy");
    mp_str(&b, "streams"); mp_uint(&b, 1);
    send_msg(&c, &b);
    if (!expect_result(&c, 13, 1, 0, 100, K_NUMPY, 1, 0)) return 0;
    /* streams of the wrong type: invalid_request on either version */
    mp_map(&b, 7); mp_str(&b, "type"); mp_str(&b, "sample"); mp_str(&b, "id"); mp_uint(&b, 14);
    mp_str(&b, "seed"); mp_uint(&b, 1); mp_str(&b, "stream"); mp_uint(&b, 0);
    mp_str(&b, "points"); mp_uint(&b, 100); mp_str(&b, "kernel"); mp_str(&b, "numpy");
    mp_str(&b, "streams"); mp_str(&b, "2");
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 14, "invalid_request")) return 0;
    /* a text field of 4097 characters (each 2 bytes) is out of range, 4096 is not */
    char *long_kernel = malloc(2 * 4097);
    for (int k = 0; k < 4097; k++) { long_kernel[2 * k] = (char)0xc3; long_kernel[2 * k + 1] = (char)0xa9; }
    sample(&b, 15, 1, 0, 1, "", 1, 0);
    b.len -= 1; mp_strn(&b, long_kernel, 2 * 4097);
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 15, "invalid_request")) return 0;
    sample(&b, 16, 1, 0, 1, "", 1, 0);
    b.len -= 1; mp_strn(&b, long_kernel, 2 * 4096);
    send_msg(&c, &b);
    free(long_kernel);
    if (!expect_error(&c, 1, 16, "unknown_kernel")) return 0;
    shutdown_msg(&b);
    send_msg(&c, &b);
    return expect_exit(&c, 0);
}

static int s_ranges(void) {
    conn c = start_worker(NULL);
    if (!greet(&c, 2)) return 0;
    buf b = {0};
    sample(&b, 3, 12345, 0, 1000000, "numpy", 4, 2); /* the golden range_sample */
    send_msg(&c, &b);
    if (!expect_result(&c, 3, 12345, 0, 1000000, K_NUMPY, 4, 2)) return 0;
    sample(&b, 4, 9, 5, 3000, "python", 7, 3); /* a shorter last group */
    send_msg(&c, &b);
    if (!expect_result(&c, 4, 9, 5, 3000, K_PYTHON, 7, 3)) return 0;
    sample(&b, 5, 9, 5, 100, "numpy", 1, 1); /* streams 1, group 1: a range of one stream */
    send_msg(&c, &b);
    if (!expect_result(&c, 5, 9, 5, 100, K_NUMPY, 1, 1)) return 0;
    sample(&b, 6, 9, UINT64_MAX - 2, 10, "numpy", 3, 1); /* up to the last stream */
    send_msg(&c, &b);
    if (!expect_result(&c, 6, 9, UINT64_MAX - 2, 10, K_NUMPY, 3, 1)) return 0;
    sample(&b, 7, 9, 5, 0, "numpy", 100, 30); /* streams of no points */
    send_msg(&c, &b);
    if (!expect_result(&c, 7, 9, 5, 0, K_NUMPY, 100, 30)) return 0;
    sample(&b, 8, 9, UINT64_MAX - 1, 10, "numpy", 3, 1); /* past stream 2**64-1 */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 8, "invalid_request")) return 0;
    sample(&b, 9, 9, 0, 0, "numpy", MAX_STREAMS + 1, 0); /* more than 2**20 streams */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 9, "invalid_request")) return 0;
    sample(&b, 10, 9, 0, 1, "numpy", 4097, 1); /* more than 4096 groups */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 10, "invalid_request")) return 0;
    sample(&b, 11, 9, 0, MAX_POINTS, "numpy", 2, 0); /* streams x points above max_points */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 11, "invalid_request")) return 0;
    mp_map(&b, 8); mp_str(&b, "type"); mp_str(&b, "sample"); mp_str(&b, "id"); mp_uint(&b, 12);
    mp_str(&b, "seed"); mp_uint(&b, 1); mp_str(&b, "stream"); mp_uint(&b, 0);
    mp_str(&b, "points"); mp_uint(&b, 100); mp_str(&b, "kernel"); mp_str(&b, "numpy");
    mp_str(&b, "streams"); mp_uint(&b, 2); mp_str(&b, "group"); mp_uint(&b, 0); /* group not positive */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 12, "invalid_request")) return 0;
    shutdown_msg(&b);
    send_msg(&c, &b);
    return expect_exit(&c, 0);
}

/* Pings answered while a long sample runs; a duplicate id; busy; cancel of running and
   queued samples; shutdown answering what is outstanding. */
static int s_cancel_busy_shutdown(int v) {
    conn c = start_worker("--max-inflight 2");
    if (!greet(&c, v)) return 0;
    CHECK(welcome_inflight == 2, "max_inflight %d, not the 2 asked for", welcome_inflight);
    buf b = {0};
    sample(&b, 1, 1, 0, MAX_POINTS, "numpy", 1, 0); /* hours of work */
    send_msg(&c, &b);
    sample(&b, 2, 1, 1, MAX_POINTS, "numpy", 1, 0); /* queued behind it (jobs 1) or running */
    send_msg(&c, &b);
    sample(&b, 3, 1, 2, 10, "numpy", 1, 0); /* a third: busy */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 3, "busy")) return 0;
    ping(&b, 1); /* the id of an outstanding sample */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 1, "duplicate_id")) return 0;
    for (uint64_t id = 4; id < 7; id++) {
        ping(&b, id);
        send_msg(&c, &b);
        if (!expect_pong(&c, id)) return 0;
    }
    cancel(&b, 1);
    send_msg(&c, &b);
    cancel(&b, 1); /* idempotent */
    send_msg(&c, &b);
    if (!expect_error(&c, 1, 1, "cancelled")) return 0;
    sample(&b, 7, 1, 2, MAX_POINTS, "numpy", 1, 0); /* a slot is free again */
    send_msg(&c, &b);
    ping(&b, 8);
    send_msg(&c, &b);
    if (!expect_pong(&c, 8)) return 0;
    shutdown_msg(&b);
    send_msg(&c, &b);
    int seen = 0;
    for (int k = 0; k < 2; k++) {
        value m;
        CHECK(recv_msg(&c, &m, NULL, 120) == 1, "after shutdown: %s", failure);
        const value *idv = get(&m, "id");
        int ok = is_str(get(&m, "type"), "error") && is_str(get(&m, "code"), "cancelled") && is_uint(idv)
            && (idv->u == 2 || idv->u == 7);
        if (ok) seen |= (int)idv->u;
        value_free(&m);
        CHECK(ok, "shutdown did not answer the outstanding samples cancelled");
    }
    CHECK(seen == (2 | 7), "shutdown answered one sample twice");
    return expect_exit(&c, 0);
}

static int s_eof_ends_in_order(int v) {
    conn c = start_worker(NULL);
    if (!greet(&c, v)) return 0;
    buf b = {0};
    sample(&b, 1, 1, 0, MAX_POINTS, "numpy", 1, 0);
    send_msg(&c, &b);
    close(c.to);
    c.to = open("/dev/null", O_WRONLY);
    if (!expect_error(&c, 1, 1, "cancelled")) return 0;
    return expect_exit(&c, 0);
}

/* One fatal case: the bytes sent (after a handshake when `greeted`), the fatal code. */
static int fatal_case(int v, int greeted, const unsigned char *bytes, size_t n, const char *code, int close_after) {
    conn c = start_worker(NULL);
    if (greeted && !greet(&c, v)) return 0;
    send_raw(&c, bytes, n);
    if (close_after) { close(c.to); c.to = open("/dev/null", O_WRONLY); }
    return expect_fatal(&c, code);
}

static int body_case(int v, int greeted, buf *body, const char *code) {
    buf f = {0};
    frame_of(&f, body);
    free(body->p);
    memset(body, 0, sizeof *body);
    int ok = fatal_case(v, greeted, f.p, f.len, code, 0);
    free(f.p);
    return ok;
}

static int s_fatal(int v) {
    static const unsigned char text[] = "hello world\n";
    static const unsigned char golden_fatal[] = {
        0x00, 0x00, 0x00, 0x67, 0x84, 0xa4, 0x74, 0x79, 0x70, 0x65, 0xa5, 0x65, 0x72, 0x72, 0x6f, 0x72,
        0xa2, 0x69, 0x64, 0xc0, 0xa4, 0x63, 0x6f, 0x64, 0x65, 0xaf, 0x66, 0x72, 0x61, 0x6d, 0x65, 0x5f,
        0x74, 0x6f, 0x6f, 0x5f, 0x6c, 0x61, 0x72, 0x67, 0x65, 0xa7, 0x6d, 0x65, 0x73, 0x73, 0x61, 0x67,
        0x65, 0xd9, 0x38, 0x66, 0x72, 0x61, 0x6d, 0x65, 0x20, 0x6f, 0x66, 0x20, 0x31, 0x37, 0x35, 0x31,
        0x34, 0x37, 0x37, 0x33, 0x35, 0x36, 0x20, 0x62, 0x79, 0x74, 0x65, 0x73, 0x20, 0x65, 0x78, 0x63,
        0x65, 0x65, 0x64, 0x73, 0x20, 0x74, 0x68, 0x65, 0x20, 0x31, 0x30, 0x34, 0x38, 0x35, 0x37, 0x36,
        0x2d, 0x62, 0x79, 0x74, 0x65, 0x20, 0x6c, 0x69, 0x6d, 0x69, 0x74};
    {
        conn c = start_worker(NULL);
        send_raw(&c, text, 12);
        buf raw = {0};
        value m;
        CHECK(recv_msg(&c, &m, &raw, 120) == 1, "hello world: %s", failure);
        value_free(&m);
        CHECK(raw.len == sizeof golden_fatal && !memcmp(raw.p, golden_fatal, raw.len),
              "'hello world\\n' is not answered with the golden fatal_error bytes");
        free(raw.p);
        if (!expect_exit(&c, 3)) return 0;
    }
    buf b = {0};
    static const unsigned char zero[] = {0, 0, 0, 0};
    if (!fatal_case(v, 1, zero, 4, "malformed_frame", 0)) return fail_("zero length: %s", failure);
    static const unsigned char big[] = {0, 0x10, 0, 1}; /* 1 048 577 */
    if (!fatal_case(v, 1, big, 4, "frame_too_large", 0)) return fail_("1 MiB + 1: %s", failure);
    static const unsigned char part[] = {0, 0};
    if (!fatal_case(v, 1, part, 2, "truncated_frame", 1)) return fail_("EOF in the header: %s", failure);
    static const unsigned char inside[] = {0, 0, 0, 9, 0x82, 0xa4, 't'};
    if (!fatal_case(v, 1, inside, sizeof inside, "truncated_frame", 1)) return fail_("EOF in a body: %s", failure);
    mp_array(&b, 1); mp_uint(&b, 1);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("an array at the top: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "ping"); mp_uint(&b, 5); mp_uint(&b, 1);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("an integer key: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "ping"); buf_byte(&b, 0xc4); buf_byte(&b, 2); buf_put(&b, "id", 2); mp_uint(&b, 1);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("a bin key: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); mp_uint(&b, 1); mp_uint(&b, 0);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("a byte left over: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_strn(&b, "p\xffng", 4); mp_str(&b, "id"); mp_uint(&b, 1);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("bad UTF-8: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_strn(&b, "\xed\xa0\x80", 3); mp_str(&b, "id"); mp_uint(&b, 1);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("a UTF-8 surrogate: %s", failure);
    mp_map(&b, 3); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); mp_uint(&b, 1);
    mp_str(&b, "t"); buf_byte(&b, 0xd6); buf_byte(&b, 0xff); buf_be(&b, 0, 4); /* a timestamp */
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("an extension type: %s", failure);
    mp_map(&b, 3); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); mp_uint(&b, 1); mp_str(&b, "id"); mp_uint(&b, 2);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("a key twice: %s", failure);
    mp_map(&b, 3); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); mp_uint(&b, 1);
    mp_str(&b, "deep"); for (int k = 0; k < 16; k++) mp_array(&b, 1); mp_nil(&b); /* 17 levels */
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("17 levels deep: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); buf_byte(&b, 0xdd); buf_be(&b, 0xffffffffu, 4);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("an array of 2**32-1 entries in a short body: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); buf_byte(&b, 0xc1);
    if (!body_case(v, 1, &b, "malformed_frame")) return fail_("byte 0xc1: %s", failure);
    /* no usable id: fatal invalid_request / unknown_type */
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "ping"); mp_str(&b, "id"); mp_str(&b, "7");
    if (!body_case(v, 1, &b, "invalid_request")) return fail_("a ping with a str id: %s", failure);
    mp_map(&b, 1); mp_str(&b, "type"); mp_str(&b, "frobnicate");
    if (!body_case(v, 1, &b, "unknown_type")) return fail_("an unknown type without id: %s", failure);
    mp_map(&b, 0);
    if (!body_case(v, 1, &b, "invalid_request")) return fail_("an empty map: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "cancel"); mp_str(&b, "id"); buf_byte(&b, 0xff); /* -1 */
    if (!body_case(v, 1, &b, "invalid_request")) return fail_("a cancel with id -1: %s", failure);
    hello(&b, v);
    if (!body_case(v, 1, &b, "invalid_request")) return fail_("a second hello: %s", failure);
    /* bad hellos */
    mp_map(&b, 3); mp_str(&b, "type"); mp_str(&b, "hello"); mp_str(&b, "versions"); mp_array(&b, 1); mp_uint(&b, 7);
    mp_str(&b, "client"); mp_str(&b, "x");
    if (!body_case(v, 0, &b, "unsupported_version")) return fail_("versions [7]: %s", failure);
    mp_map(&b, 3); mp_str(&b, "type"); mp_str(&b, "hello"); mp_str(&b, "versions"); mp_array(&b, 0);
    mp_str(&b, "client"); mp_str(&b, "x");
    if (!body_case(v, 0, &b, "invalid_request")) return fail_("versions []: %s", failure);
    mp_map(&b, 4); mp_str(&b, "type"); mp_str(&b, "hello"); mp_str(&b, "versions"); mp_array(&b, 1); mp_uint(&b, 1);
    mp_str(&b, "client"); mp_str(&b, "x"); mp_str(&b, "expected_points"); mp_f64(&b, 1e6);
    if (!body_case(v, 0, &b, "invalid_request")) return fail_("expected_points 1e6 as a float: %s", failure);
    mp_map(&b, 2); mp_str(&b, "type"); mp_str(&b, "hello"); mp_str(&b, "versions"); mp_array(&b, 1); mp_uint(&b, 1);
    if (!body_case(v, 0, &b, "invalid_request")) return fail_("a hello without client: %s", failure);
    /* bytes of a frame that fit the length but hold no object: a body that ends inside it */
    static const unsigned char cut[] = {0, 0, 0, 3, 0x82, 0xa4, 't'};
    if (!fatal_case(v, 1, cut, sizeof cut, "malformed_frame", 0)) return fail_("a body ending inside its object: %s", failure);
    /* orderly ends before hello */
    {
        conn c = start_worker(NULL);
        shutdown_msg(&b);
        send_msg(&c, &b);
        if (!expect_exit(&c, 0)) return fail_("shutdown before hello: %s", failure);
        conn d = start_worker(NULL);
        close(d.to);
        d.to = open("/dev/null", O_WRONLY);
        if (!expect_exit(&d, 0)) return fail_("end of file before hello: %s", failure);
    }
    return 1;
}

static void scenario(const char *name, int ok) {
    if (ok) printf("ok   %s\n", name);
    else { printf("FAIL %s: %s\n", name, failure); failures++; }
    fflush(stdout);
}

static int run_client(int argc, char **argv) {
    int versions = 2, k = 0;
    for (; k < argc && strcmp(argv[k], "--"); k++) {
        if (!strcmp(argv[k], "--versions") && k + 1 < argc) versions = strcmp(argv[++k], "1") ? 2 : 1;
        else { fprintf(stderr, "mcpi_peer client: unknown argument %s\n", argv[k]); return 2; }
    }
    if (k + 1 >= argc) { fprintf(stderr, "usage: mcpi_peer client [--versions 1|1,2] -- WORKER ARGV...\n"); return 2; }
    worker_argv = (const char **)&argv[k + 1];
    signal(SIGPIPE, SIG_IGN);
    char name[64];
#define RUN(label, call) do { snprintf(name, sizeof name, "v%d %s", versions, label); scenario(name, call); } while (0)
    RUN("golden ping, samples of both kernels, pipelining", s_golden_ping_sample(versions));
    RUN("per-request errors", s_per_request_errors(versions));
    if (versions == 2) RUN("ranges", s_ranges());
    RUN("busy, duplicate id, pings while computing, cancel, shutdown", s_cancel_busy_shutdown(versions));
    RUN("end of file ends in order", s_eof_ends_in_order(versions));
    RUN("fatal frames", s_fatal(versions));
    return failures ? 1 : 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "worker")) return run_worker(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "client")) return run_client(argc - 2, argv + 2);
    if (argc == 6 && !strcmp(argv[1], "count")) {
        kernel_id k = !strcmp(argv[2], "python") ? K_PYTHON : K_NUMPY;
        printf("%" PRIu64 "\n", count_whole(k, strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10),
                                            strtoull(argv[5], NULL, 10)));
        return 0;
    }
    fprintf(stderr, "usage: mcpi_peer worker [--versions 1|1,2] [--max-inflight N] [--kernels numpy,python]\n"
                    "       mcpi_peer client [--versions 1|1,2] -- WORKER ARGV...\n"
                    "       mcpi_peer count numpy|python SEED STREAM POINTS\n");
    return 2;
}
