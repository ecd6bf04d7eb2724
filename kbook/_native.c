/* kbook._native: the native core of replay's hot path (kbook.lines.LineFeed.run).
 *
 * It applies plain book updates (Kraken v1 arrays, or v2 objects for a LineFeed of a V2BookFeed)
 * straight from raw segment line bytes to the very same Python objects the pure-Python path uses (kbook.book.Book: its sides' ``keys`` lists, ``levels`` dicts
 * and ``top`` checksum-piece lists), so every other reader of a book (sampler, checkpoints, the
 * general path) sees one state whichever path applied a frame. It is not a second book.
 *
 * Exactness comes from refusing rather than guessing: a line is applied only when it is a strict,
 * simple instance of the expected shape (ASCII strings without escapes, prices of digits with at
 * most one dot and no more decimals than the book's scale, volumes of digits and dots, a checksum
 * of digits, no duplicate keys, ...; for v2, each price and quantity is the lexeme of a
 * non-negative JSON number, taken as written, since Kraken's checksum is over that text). Anything
 * else is handed back untouched to the caller, whose Python path (BookFeed.on_message,
 * V2BookFeed.on_message) is the reference. So a line is either applied here with the exact effect
 * kbook.lines documents, or has had no effect at all.
 *
 * Book and stats attributes that only this loop changes during a run (dirty flags, the cached
 * CRC of the asks, the text of the bids, counters) are read once per run and written back before
 * it returns; the containers are changed in place, as kbook.book does. Each side's keys are also
 * copied into an int64 array for the run, kept in step with the list on every insert and delete:
 * bisection and the test "is this price in the book" read the array, not the int objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECKSUM_LEVELS 10
#define MAX_LEVELS 1024
#define MAX_NESTING 64
#define MAX_KEY_DIGITS 18
#define MAX_INT_DIGITS 19 /* receive times in ns have 19 */

/* -- CRC-32 (IEEE, as zlib.crc32): folding where the processor can, else slicing by 16 --------- */

/* A checksum runs over some 360 bytes of level text (the top 10 asks and bids). Slicing by 16
 * takes about 0.7x the time of slicing by 8 there; folding with PCLMULQDQ (crc_fold, x86-64) a
 * quarter of slicing's instructions, the table taking only the last 15 bytes or fewer. */
static uint32_t crc_table[16][256];

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC_FOLDING 1

/* Whether this processor has PCLMULQDQ (and SSE4.1): set by crc_init. */
static int crc_clmul;
#endif

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 16; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
#ifdef CRC_FOLDING
    __builtin_cpu_init();
    crc_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
}

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#ifdef CRC_FOLDING
/* The CRC register (not inverted) after ``n`` bytes at ``p``, ``n`` at least 64 and a multiple
 * of 16, folding 64 then 16 bytes a step with carry-less multiplication and reducing to 32 bits
 * by Barrett's method (Gopal, Ozturk et al., "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction", Intel, 2009; the constants are theirs for the reflected polynomial
 * 0xEDB88320). A checksum's 200-odd bytes take a fraction of the table's time this way. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_fold(uint32_t crc,
                                                                   const unsigned char *p,
                                                                   Py_ssize_t n) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    const __m128i mask = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x1 = _mm_loadu_si128((const __m128i *)p);
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(p + 48)), x5;
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    p += 64;
    n -= 64;
    while (n >= 64) {
        __m128i x6, x7, x8;
        x5 = _mm_clmulepi64_si128(x1, k1k2, 0x00);
        x6 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        x7 = _mm_clmulepi64_si128(x3, k1k2, 0x00);
        x8 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k1k2, 0x11), x5);
        x2 = _mm_xor_si128(_mm_clmulepi64_si128(x2, k1k2, 0x11), x6);
        x3 = _mm_xor_si128(_mm_clmulepi64_si128(x3, k1k2, 0x11), x7);
        x4 = _mm_xor_si128(_mm_clmulepi64_si128(x4, k1k2, 0x11), x8);
        x1 = _mm_xor_si128(x1, _mm_loadu_si128((const __m128i *)p));
        x2 = _mm_xor_si128(x2, _mm_loadu_si128((const __m128i *)(p + 16)));
        x3 = _mm_xor_si128(x3, _mm_loadu_si128((const __m128i *)(p + 32)));
        x4 = _mm_xor_si128(x4, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        n -= 64;
    }
    /* Four lanes into one, then the rest 16 bytes a step. */
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), x2), x5);
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), x3), x5);
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), x4), x5);
    while (n >= 16) {
        x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11),
                           _mm_loadu_si128((const __m128i *)p));
        x1 = _mm_xor_si128(x1, x5);
        p += 16;
        n -= 16;
    }
    /* 128 bits to 64, then Barrett's reduction to 32. */
    x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, mask);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k5k0, 0x00), x2);
    x2 = _mm_and_si128(x1, mask);
    x2 = _mm_clmulepi64_si128(x2, poly, 0x10);
    x2 = _mm_and_si128(x2, mask);
    x2 = _mm_clmulepi64_si128(x2, poly, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

static uint32_t crc_update(uint32_t crc, const unsigned char *p, Py_ssize_t n) {
    const uint32_t(*t)[256] = crc_table;
    crc = ~crc;
#ifdef CRC_FOLDING
    if (crc_clmul && n >= 64) {
        Py_ssize_t folded = n & ~(Py_ssize_t)15;
        crc = crc_fold(crc, p, folded);
        p += folded;
        n -= folded;
    }
#endif
    while (n >= 16) {
        uint32_t a = crc ^ le32(p), b = le32(p + 4), c = le32(p + 8), d = le32(p + 12);
        crc = t[15][a & 0xFF] ^ t[14][(a >> 8) & 0xFF] ^ t[13][(a >> 16) & 0xFF] ^ t[12][a >> 24] ^
              t[11][b & 0xFF] ^ t[10][(b >> 8) & 0xFF] ^ t[9][(b >> 16) & 0xFF] ^ t[8][b >> 24] ^
              t[7][c & 0xFF] ^ t[6][(c >> 8) & 0xFF] ^ t[5][(c >> 16) & 0xFF] ^ t[4][c >> 24] ^
              t[3][d & 0xFF] ^ t[2][(d >> 8) & 0xFF] ^ t[1][(d >> 16) & 0xFF] ^ t[0][d >> 24];
        p += 16;
        n -= 16;
    }
    if (n >= 8) {
        uint32_t a = crc ^ le32(p), b = le32(p + 4);
        crc = t[7][a & 0xFF] ^ t[6][(a >> 8) & 0xFF] ^ t[5][(a >> 16) & 0xFF] ^ t[4][a >> 24] ^
              t[3][b & 0xFF] ^ t[2][(b >> 8) & 0xFF] ^ t[1][(b >> 16) & 0xFF] ^ t[0][b >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0)
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* -- parsing one line (a strict subset of JSON; failure means "hand it back") ------------------ */

typedef struct {
    const char *p;
    Py_ssize_t n;
} Span;

typedef struct {
    Span price, volume;
    int zero; /* the volume has no non-zero digit: a delete */
} Level;

typedef struct {
    int used, start, count; /* a side's levels in the parsed line */
} Group;

typedef struct {
    Group a, b;
    int has_c, has_snapshot_key;
    uint64_t c;
} Dict;

typedef struct {
    int64_t recv_ns;
    int64_t exch_ns; /* Kraken's time of the message (kbook.book.exchange_time); -1: none */
    int want_exch;   /* compute exch_ns (else its text is only checked): see store_route */
    int ndicts;
    Dict dicts[2];
    Span channel, pair;
    int nlevels;
    Level levels[MAX_LEVELS];
} Line;

typedef struct {
    const char *p, *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    if (c->p < c->end && (unsigned char)*c->p > ' ') /* the usual case: no white space */
        return;
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static inline int expect(Cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string of printable ASCII without escapes; its content in *out. */
static inline int plain_string(Cursor *c, Span *out) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"')
        return 0;
    const char *s = ++c->p;
    /* Eight bytes a step while none of them can end or spoil the string (a quote, a backslash,
     * a control character, a byte past ASCII); each test below may also fire for a byte past
     * one that really is such, never miss one, and the loop after it decides byte by byte. */
    while (c->end - c->p >= 8) {
        uint64_t w, quote, slash, stop;
        memcpy(&w, c->p, 8);
        quote = w ^ 0x2222222222222222u;
        slash = w ^ 0x5C5C5C5C5C5C5C5Cu;
        stop = (((quote - 0x0101010101010101u) & ~quote) |
                ((slash - 0x0101010101010101u) & ~slash) | (w - 0x2020202020202020u) | w) &
               0x8080808080808080u;
        if (stop) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* A test fires wrongly only for a byte past one that really is such (a borrow runs
             * towards the later bytes): the first byte flagged is the one that ends the string,
             * or spoils it. */
            c->p += __builtin_ctzll(stop) >> 3;
            if (*c->p != '"')
                return 0;
            out->p = s;
            out->n = c->p - s;
            c->p++;
            return 1;
#else
            break;
#endif
        }
        c->p += 8;
    }
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            out->p = s;
            out->n = c->p - s;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20 || ch >= 0x80)
            return 0;
        c->p++;
    }
    return 0;
}

static inline int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static int is_hex(char ch) {
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* A JSON number by the grammar; *integral says it had no fraction and no exponent. Numbers a
 * double or a 64-bit int may not hold as written (many digits, a long exponent) are refused, so
 * that nothing accepted here is a number the reference parser rejects. */
static int number(Cursor *c, int *integral) {
    const char *p = c->p, *end = c->end, *s;
    *integral = 1;
    if (p < end && *p == '-')
        p++;
    if (p >= end || !is_digit(*p))
        return 0;
    s = p;
    if (*p == '0')
        p++;
    else
        while (p < end && is_digit(*p))
            p++;
    if (p - s > MAX_INT_DIGITS)
        return 0;
    if (p < end && *p == '.') {
        *integral = 0;
        s = ++p;
        while (p < end && is_digit(*p))
            p++;
        if (p == s || p - s > MAX_KEY_DIGITS)
            return 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *integral = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        s = p;
        while (p < end && is_digit(*p))
            p++;
        if (p == s || p - s > 2)
            return 0;
    }
    c->p = p;
    return 1;
}

/* Any JSON value, checked by the grammar (ASCII only), and skipped. */
static int skip_value(Cursor *c, int nesting) {
    int integral;
    skip_ws(c);
    if (c->p >= c->end || nesting > MAX_NESTING)
        return 0;
    char ch = *c->p;
    if (ch == '"') {
        c->p++;
        while (c->p < c->end) {
            unsigned char k = (unsigned char)*c->p;
            if (k == '"') {
                c->p++;
                return 1;
            }
            if (k < 0x20 || k >= 0x80)
                return 0;
            if (k == '\\') {
                c->p++;
                if (c->p >= c->end)
                    return 0;
                k = (unsigned char)*c->p;
                if (k == 'u') {
                    if (c->end - c->p < 5 || !is_hex(c->p[1]) || !is_hex(c->p[2]) ||
                        !is_hex(c->p[3]) || !is_hex(c->p[4]))
                        return 0;
                    /* A \u escape may name half of a surrogate pair: leave that to the
                     * reference parser. */
                    if (c->p[1] == 'd' || c->p[1] == 'D')
                        return 0;
                    c->p += 4;
                } else if (!strchr("\"\\/bfnrt", k) || k == 0) {
                    return 0;
                }
            }
            c->p++;
        }
        return 0;
    }
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        if (expect(c, close))
            return 1;
        for (;;) {
            if (ch == '{') {
                skip_ws(c);
                if (c->p >= c->end || *c->p != '"' || !skip_value(c, nesting + 1))
                    return 0;
                if (!expect(c, ':'))
                    return 0;
            }
            if (!skip_value(c, nesting + 1))
                return 0;
            if (expect(c, ','))
                continue;
            return expect(c, close);
        }
    }
    if (ch == '-' || is_digit(ch))
        return number(c, &integral);
    if (c->end - c->p >= 4 && (!memcmp(c->p, "true", 4) || !memcmp(c->p, "null", 4))) {
        c->p += 4;
        return 1;
    }
    if (c->end - c->p >= 5 && !memcmp(c->p, "false", 5)) {
        c->p += 5;
        return 1;
    }
    return 0;
}

/* An integer as ``number`` takes it with no fraction and no exponent, its value read in the
 * same pass. */
static int int64_value(Cursor *c, int64_t *out) {
    skip_ws(c);
    const char *p = c->p, *end = c->end, *s;
    int negative = p < end && *p == '-';
    if (negative)
        p++;
    if (p >= end || !is_digit(*p))
        return 0;
    s = p;
    uint64_t v = 0;
    if (*p == '0')
        p++;
    else
        for (; p < end && is_digit(*p) && p - s < MAX_INT_DIGITS; p++)
            v = v * 10 + (uint64_t)(*p - '0'); /* at most 19 digits: no wrap in 64 bits */
    if (p < end && (is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E'))
        return 0; /* more digits than an int64 holds, or not an integer */
    if (v > (uint64_t)INT64_MAX)
        return 0;
    c->p = p;
    *out = negative ? -(int64_t)v : (int64_t)v;
    return 1;
}

static inline int span_is(Span s, const char *text, Py_ssize_t n) {
    return s.n == n && !memcmp(s.p, text, n);
}

/* ``[[price, volume, ...], ...]``: both first items strings; volume digits and dots only. */
/* A v1 level's time, seconds since the epoch as text (kbook.units.seconds_text_ns): 1 to 11
 * digits, then optionally a point and 1 to 9 digits; -1 when it is not one, or is past what an
 * int64 of ns holds. */
static int64_t seconds_ns(Span s) {
    Py_ssize_t i = 0;
    uint64_t whole = 0, fraction = 0;
    while (i < s.n && is_digit(s.p[i]))
        whole = whole * 10 + (uint64_t)(s.p[i++] - '0');
    if (i == 0 || i > 11)
        return -1;
    int digits = 0;
    if (i < s.n) {
        if (s.p[i++] != '.')
            return -1;
        while (i < s.n && is_digit(s.p[i]) && digits < 10) {
            fraction = fraction * 10 + (uint64_t)(s.p[i++] - '0');
            digits++;
        }
        if (digits == 0 || digits > 9 || i != s.n)
            return -1;
    }
    for (; digits < 9; digits++)
        fraction *= 10;
    if (whole > (uint64_t)INT64_MAX / 1000000000u)
        return -1;
    uint64_t ns = whole * 1000000000u + fraction;
    return ns > (uint64_t)INT64_MAX ? -1 : (int64_t)ns;
}

static int levels_value(Cursor *c, Line *line, Group *group) {
    if (!expect(c, '['))
        return 0;
    group->used = 1;
    group->start = line->nlevels;
    group->count = 0;
    if (expect(c, ']'))
        return 1;
    for (;;) {
        if (line->nlevels >= MAX_LEVELS || !expect(c, '['))
            return 0;
        Level *level = &line->levels[line->nlevels++];
        group->count++;
        if (!plain_string(c, &level->price) || !expect(c, ',') ||
            !plain_string(c, &level->volume))
            return 0;
        if (expect(c, ',')) { /* the level's time: a string, or a value that is none */
            skip_ws(c);
            Span stamp;
            if (c->p < c->end && *c->p == '"') {
                if (!plain_string(c, &stamp))
                    return 0;
                if (line->want_exch) {
                    int64_t ns = seconds_ns(stamp);
                    if (ns > line->exch_ns)
                        line->exch_ns = ns;
                }
            } else if (!skip_value(c, 1)) {
                return 0;
            }
        }
        while (expect(c, ','))
            if (!skip_value(c, 1))
                return 0;
        if (!expect(c, ']'))
            return 0;
        int zero = 1;
        for (Py_ssize_t i = 0; i < level->volume.n; i++) {
            char ch = level->volume.p[i];
            if (ch >= '1' && ch <= '9')
                zero = 0;
            else if (ch != '0' && ch != '.')
                return 0;
        }
        level->zero = zero;
        if (expect(c, ','))
            continue;
        return expect(c, ']');
    }
}

/* A book data object: ``a`` and ``b`` levels, ``c`` a string of digits; ``as``/``bs`` noted. */
static int dict_value(Cursor *c, Line *line, Dict *dict) {
    memset(dict, 0, sizeof(*dict));
    if (!expect(c, '{'))
        return 0;
    if (expect(c, '}'))
        return 1;
    int seen_as = 0, seen_bs = 0;
    for (;;) {
        Span key;
        if (!plain_string(c, &key) || !expect(c, ':'))
            return 0;
        if (span_is(key, "a", 1)) {
            if (dict->a.used || !levels_value(c, line, &dict->a))
                return 0;
        } else if (span_is(key, "b", 1)) {
            if (dict->b.used || !levels_value(c, line, &dict->b))
                return 0;
        } else if (span_is(key, "c", 1)) {
            Span text;
            if (dict->has_c || !plain_string(c, &text))
                return 0;
            dict->has_c = 1;
            if (text.n < 1 || text.n > 19)
                return 0;
            uint64_t v = 0;
            for (Py_ssize_t i = 0; i < text.n; i++) {
                if (!is_digit(text.p[i]))
                    return 0;
                v = v * 10 + (uint64_t)(text.p[i] - '0');
            }
            dict->c = v;
        } else {
            if (span_is(key, "as", 2)) {
                if (seen_as++)
                    return 0;
                dict->has_snapshot_key = 1;
            } else if (span_is(key, "bs", 2)) {
                if (seen_bs++)
                    return 0;
                dict->has_snapshot_key = 1;
            }
            if (!skip_value(c, 1))
                return 0;
        }
        if (expect(c, ','))
            continue;
        return expect(c, '}');
    }
}

/* ``[id, {...}, ({...},) "book-N", "PAIR"]`` */
static int msg_value(Cursor *c, Line *line) {
    if (!expect(c, '[') || !skip_value(c, 1))
        return 0;
    line->ndicts = 0;
    int strings = 0;
    Span texts[2];
    while (expect(c, ',')) {
        skip_ws(c);
        if (c->p >= c->end)
            return 0;
        if (*c->p == '{') {
            if (strings || line->ndicts == 2 || !dict_value(c, line, &line->dicts[line->ndicts]))
                return 0;
            line->ndicts++;
        } else {
            if (line->ndicts == 0 || strings == 2 || !plain_string(c, &texts[strings]))
                return 0;
            strings++;
        }
    }
    if (strings != 2 || !expect(c, ']'))
        return 0;
    line->channel = texts[0];
    line->pair = texts[1];
    return 1;
}

/* -- Kraken v2 lines ---------------------------------------------------------------------------- */

/* A non-negative JSON number's lexeme, exactly as written (v2 prints prices and quantities as
 * numbers, and the checksum is taken over their text). A ``-`` is refused: ``-0`` would be read
 * back as the text ``0``, and a negative price or quantity is nothing Kraken sends. */
static int lexeme(Cursor *c, Span *out, int *integral) {
    skip_ws(c);
    const char *s = c->p;
    if (s >= c->end || *s == '-' || !number(c, integral))
        return 0;
    out->p = s;
    out->n = c->p - s;
    return 1;
}

/* A quantity lexeme is zero when its digits before any exponent are all zero (``0.00000000``,
 * ``0E-8``), as kbook.book.is_zero decides. */
static inline int qty_is_zero(Span qty) {
    for (Py_ssize_t i = 0; i < qty.n; i++) {
        char ch = qty.p[i];
        if (ch == 'e' || ch == 'E')
            break;
        if (ch >= '1' && ch <= '9')
            return 0;
    }
    return 1;
}

/* ``{"price": number, "qty": number, ...}`` */
static int level_v2(Cursor *c, Level *level) {
    int seen_price = 0, seen_qty = 0, integral;
    if (!expect(c, '{'))
        return 0;
    for (;;) {
        Span key;
        if (!plain_string(c, &key) || !expect(c, ':'))
            return 0;
        if (span_is(key, "price", 5)) {
            if (seen_price++ || !lexeme(c, &level->price, &integral))
                return 0;
        } else if (span_is(key, "qty", 3)) {
            if (seen_qty++ || !lexeme(c, &level->volume, &integral))
                return 0;
        } else if (!skip_value(c, 1)) {
            return 0;
        }
        if (expect(c, ','))
            continue;
        if (!expect(c, '}') || !seen_price || !seen_qty)
            return 0;
        break;
    }
    level->zero = qty_is_zero(level->volume);
    return 1;
}

/* ``[{"price": ..., "qty": ...}, ...]`` */
static int levels_v2(Cursor *c, Line *line, Group *group) {
    if (!expect(c, '['))
        return 0;
    group->used = 1;
    group->start = line->nlevels;
    group->count = 0;
    if (expect(c, ']'))
        return 1;
    for (;;) {
        if (line->nlevels >= MAX_LEVELS || !level_v2(c, &line->levels[line->nlevels]))
            return 0;
        line->nlevels++;
        group->count++;
        if (expect(c, ','))
            continue;
        return expect(c, ']');
    }
}

/* A data entry: ``symbol``, ``asks`` and ``bids`` levels, an integer ``checksum``. */
/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* A v2 update's time, ``YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`` (kbook.units.rfc3339_ns): -1 when it
 * is not one (a date that does not exist included), or is before 1970 or past int64 ns. */
static int64_t rfc3339_ns(Span s) {
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    int64_t f[6] = {0};
    int field = 0;
    if (s.n < 20)
        return -1;
    for (int i = 0; i < 19; i++) {
        char ch = s.p[i];
        if (shape[i] == 'd') {
            if (!is_digit(ch))
                return -1;
            f[field] = f[field] * 10 + (ch - '0');
        } else if (ch != shape[i]) {
            return -1;
        } else {
            field++;
        }
    }
    Py_ssize_t i = 19;
    int64_t fraction = 0;
    int digits = 0;
    if (s.p[i] == '.') {
        for (i++; i < s.n && is_digit(s.p[i]) && digits < 10; i++, digits++)
            fraction = fraction * 10 + (s.p[i] - '0');
        if (digits == 0 || digits > 9)
            return -1;
    }
    if (i != s.n - 1 || s.p[i] != 'Z')
        return -1;
    for (; digits < 9; digits++)
        fraction *= 10;
    static const int month_days[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int64_t y = f[0], mo = f[1], d = f[2];
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > month_days[mo - 1] ||
        (mo == 2 && d == 29 && !leap) || f[3] > 23 || f[4] > 59 || f[5] > 59)
        return -1;
    if (y < 1970 || y > 2262)
        return -1;
    int64_t seconds = days_from_civil(y, mo, d) * 86400 + f[3] * 3600 + f[4] * 60 + f[5];
    if (seconds > INT64_MAX / 1000000000)
        return -1;
    uint64_t ns = (uint64_t)seconds * 1000000000u + (uint64_t)fraction;
    return ns > (uint64_t)INT64_MAX ? -1 : (int64_t)ns;
}

static int entry_v2(Cursor *c, Line *line, Dict *dict) {
    int seen_symbol = 0, seen_time = 0, integral;
    memset(dict, 0, sizeof(*dict));
    if (!expect(c, '{'))
        return 0;
    for (;;) {
        Span key;
        if (!plain_string(c, &key) || !expect(c, ':'))
            return 0;
        if (span_is(key, "symbol", 6)) {
            if (seen_symbol++ || !plain_string(c, &line->pair))
                return 0;
        } else if (span_is(key, "asks", 4)) {
            if (dict->a.used || !levels_v2(c, line, &dict->a))
                return 0;
        } else if (span_is(key, "bids", 4)) {
            if (dict->b.used || !levels_v2(c, line, &dict->b))
                return 0;
        } else if (span_is(key, "checksum", 8)) {
            Span text;
            if (dict->has_c || !lexeme(c, &text, &integral) || !integral)
                return 0;
            dict->has_c = 1;
            uint64_t v = 0;
            for (Py_ssize_t i = 0; i < text.n; i++) /* at most 19 digits: no wrap */
                v = v * 10 + (uint64_t)(text.p[i] - '0');
            dict->c = v;
        } else if (span_is(key, "timestamp", 9)) {
            Span stamp;
            if (seen_time++ || !plain_string(c, &stamp))
                return 0; /* not text: the general path says it is none */
            if (line->want_exch)
                line->exch_ns = rfc3339_ns(stamp);
        } else if (!skip_value(c, 1)) {
            return 0;
        }
        if (expect(c, ','))
            continue;
        return expect(c, '}') && seen_symbol && dict->has_c;
    }
}

/* ``{"channel": "book", "type": "update", "data": [entry], ...}`` */
static int msg_v2(Cursor *c, Line *line) {
    int seen_channel = 0, seen_type = 0, seen_data = 0;
    if (!expect(c, '{'))
        return 0;
    line->ndicts = 1;
    for (;;) {
        Span key, text;
        if (!plain_string(c, &key) || !expect(c, ':'))
            return 0;
        if (span_is(key, "channel", 7)) {
            if (seen_channel++ || !plain_string(c, &text) || !span_is(text, "book", 4))
                return 0;
        } else if (span_is(key, "type", 4)) {
            if (seen_type++ || !plain_string(c, &text) || !span_is(text, "update", 6))
                return 0;
        } else if (span_is(key, "data", 4)) {
            if (seen_data++ || !expect(c, '[') || !entry_v2(c, line, &line->dicts[0]) ||
                !expect(c, ']'))
                return 0;
        } else if (!skip_value(c, 1)) {
            return 0;
        }
        if (expect(c, ','))
            continue;
        return expect(c, '}') && seen_channel && seen_type && seen_data;
    }
}

/* -- the recorder's own v1 lines, read in one pass ----------------------------------------------
 *
 * The recorder writes every line alike: ``{"recv_ns":N,"seq":N,"msg":[N,{...},"book-N","PAIR"]}``,
 * no white space, keys in that order. fast_v1_line reads exactly that layout with fixed byte
 * strings where the general parser below takes a key, a colon and white space at a time, and
 * gives up (0) at the first byte of any other; parse_line then reads the line the general way.
 * It accepts only text the general parser accepts, and fills the Line as that does. */

/* The ``n`` bytes of ``text`` at the cursor, skipped. */
static inline int literal(Cursor *c, const char *text, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, text, n))
        return 0;
    c->p += n;
    return 1;
}

/* The value of eight ASCII digits read as a little-endian word (the first digit the most
 * significant), by three multiplications that each combine neighbouring groups. */
static inline uint64_t eight_digits(uint64_t w) {
    w = ((w & 0x0F0F0F0F0F0F0F0Fu) * 2561) >> 8;
    w = ((w & 0x00FF00FF00FF00FFu) * 6553601) >> 16;
    return ((w & 0x0000FFFF0000FFFFu) * 42949672960001u) >> 32;
}

/* 1 to 19 digits, without a leading zero unless the only one, and no digit after them. A receive
 * time has 19: eight at a time while the bytes are all digits. */
static inline int plain_digits(Cursor *c, uint64_t *out) {
    const char *p = c->p, *s = p;
    uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (c->end - p >= 8 && p - s <= MAX_INT_DIGITS - 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        /* each byte 0x30-0x39: its high half 3, and still 3 with 6 added (a carry out of a
         * byte needs one of 0xFA or more, whose high half is not 3) */
        if ((w & 0xF0F0F0F0F0F0F0F0u) != 0x3030303030303030u ||
            ((w + 0x0606060606060606u) & 0xF0F0F0F0F0F0F0F0u) != 0x3030303030303030u)
            break;
        v = v * 100000000u + eight_digits(w);
        p += 8;
    }
#endif
    for (; p < c->end && is_digit(*p) && p - s < MAX_INT_DIGITS; p++)
        v = v * 10 + (uint64_t)(*p - '0'); /* at most 19 digits: no wrap in 64 bits */
    if (p == s || (*s == '0' && p - s > 1) || (p < c->end && is_digit(*p)))
        return 0;
    c->p = p;
    *out = v;
    return 1;
}

static inline int next_is(const Cursor *c, char ch) { return c->p < c->end && *c->p == ch; }

/* plain_string's string with its opening quote at the cursor (no white space before it), in a
 * loop the compiler keeps in registers: the fast path reads some ten strings a line. */
static inline int fast_string(Cursor *c, Span *out) {
    const char *p = c->p, *end = c->end;
    if (p >= end || *p != '"')
        return 0;
    const char *s = ++p;
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (end - p >= 8) {
        uint64_t w, quote, slash, stop;
        memcpy(&w, p, 8);
        quote = w ^ 0x2222222222222222u;
        slash = w ^ 0x5C5C5C5C5C5C5C5Cu;
        stop = (((quote - 0x0101010101010101u) & ~quote) |
                ((slash - 0x0101010101010101u) & ~slash) | (w - 0x2020202020202020u) | w) &
               0x8080808080808080u;
        if (stop) { /* the first byte flagged ends the string, or spoils it (plain_string) */
            p += __builtin_ctzll(stop) >> 3;
            if (*p != '"')
                return 0;
            out->p = s;
            out->n = p - s;
            c->p = p + 1;
            return 1;
        }
        p += 8;
    }
#endif
    c->p = s - 1;
    return plain_string(c, out); /* the last bytes of the line */
}

/* levels_value's ``[[price, volume, time, ...], ...]``, every item a plain string. */
static int fast_levels(Cursor *c, Line *line, Group *group) {
    if (!literal(c, "[", 1))
        return 0;
    group->used = 1;
    group->start = line->nlevels;
    group->count = 0;
    if (literal(c, "]", 1))
        return 1;
    for (;;) {
        if (line->nlevels >= MAX_LEVELS || !literal(c, "[", 1))
            return 0;
        Level *level = &line->levels[line->nlevels++];
        group->count++;
        if (!fast_string(c, &level->price) || !literal(c, ",", 1) ||
            !fast_string(c, &level->volume))
            return 0;
        if (literal(c, ",", 1)) { /* the level's time */
            Span stamp;
            if (!fast_string(c, &stamp))
                return 0;
            if (line->want_exch) {
                int64_t ns = seconds_ns(stamp);
                if (ns > line->exch_ns)
                    line->exch_ns = ns;
            }
        }
        while (literal(c, ",", 1)) { /* anything after it ("r"), as skip_value would */
            Span more;
            if (!fast_string(c, &more))
                return 0;
        }
        if (!literal(c, "]", 1))
            return 0;
        int zero = 1;
        for (Py_ssize_t i = 0; i < level->volume.n; i++) {
            char ch = level->volume.p[i];
            if (ch >= '1' && ch <= '9')
                zero = 0;
            else if (ch != '0' && ch != '.')
                return 0;
        }
        level->zero = zero;
        if (literal(c, ",", 1))
            continue;
        return literal(c, "]", 1);
    }
}

/* dict_value's book data object, its keys ``a``, ``b`` and ``c`` only. */
static int fast_dict(Cursor *c, Line *line, Dict *dict) {
    memset(dict, 0, sizeof(*dict));
    if (!literal(c, "{", 1))
        return 0;
    if (literal(c, "}", 1))
        return 1;
    for (;;) {
        if (c->end - c->p < 4 || c->p[0] != '"' || c->p[2] != '"' || c->p[3] != ':')
            return 0;
        char key = c->p[1];
        c->p += 4;
        if (key == 'a') {
            if (dict->a.used || !fast_levels(c, line, &dict->a))
                return 0;
        } else if (key == 'b') {
            if (dict->b.used || !fast_levels(c, line, &dict->b))
                return 0;
        } else if (key == 'c') {
            Span text;
            if (dict->has_c || !fast_string(c, &text) || text.n < 1 || text.n > 19)
                return 0;
            dict->has_c = 1;
            uint64_t v = 0;
            for (Py_ssize_t i = 0; i < text.n; i++) {
                if (!is_digit(text.p[i]))
                    return 0;
                v = v * 10 + (uint64_t)(text.p[i] - '0');
            }
            dict->c = v;
        } else {
            return 0;
        }
        if (literal(c, ",", 1))
            continue;
        return literal(c, "}", 1);
    }
}

static int fast_v1_line(const char *text, Py_ssize_t n, Line *line) {
    Cursor c = {text, text + n};
    uint64_t recv_ns, number;
    line->nlevels = 0;
    line->exch_ns = -1;
    line->ndicts = 0;
    if (!literal(&c, "{\"recv_ns\":", 11) || !plain_digits(&c, &recv_ns) ||
        recv_ns > (uint64_t)INT64_MAX || !literal(&c, ",\"seq\":", 7) ||
        !plain_digits(&c, &number) || !literal(&c, ",\"msg\":[", 8) ||
        !plain_digits(&c, &number))
        return 0;
    line->recv_ns = (int64_t)recv_ns;
    if (!literal(&c, ",", 1))
        return 0;
    while (next_is(&c, '{')) { /* each object, and the comma after it */
        if (line->ndicts == 2 || !fast_dict(&c, line, &line->dicts[line->ndicts]) ||
            !literal(&c, ",", 1))
            return 0;
        line->ndicts++;
    }
    if (line->ndicts == 0 || !fast_string(&c, &line->channel) || !literal(&c, ",", 1) ||
        !fast_string(&c, &line->pair) || !literal(&c, "]}", 2))
        return 0;
    return c.p == c.end;
}

/* -- the recorder's own v2 lines, read in one pass ----------------------------------------------
 *
 * A v2 book update as Kraken sends it and the recorder keeps it:
 * ``{"recv_ns":N,"seq":N,"msg":{"channel":"book","type":"update","data":[{"symbol":"PAIR",
 * "bids":[{"price":P,"qty":Q},...],"asks":[...],"checksum":N,"timestamp":"T"}]}}``, no white
 * space, keys in that order (the timestamp may be missing). fast_v2_line reads that layout as
 * fast_v1_line reads v1's, with the same helpers, and gives up (0) at the first byte of any
 * other; each number's lexeme is taken by ``lexeme``, as msg_v2 takes it. */

/* levels_v2's ``[{"price":P,"qty":Q},...]``, no other key in a level. */
static int fast_levels_v2(Cursor *c, Line *line, Group *group) {
    int integral;
    if (!literal(c, "[", 1))
        return 0;
    group->used = 1;
    group->start = line->nlevels;
    group->count = 0;
    if (literal(c, "]", 1))
        return 1;
    for (;;) {
        if (line->nlevels >= MAX_LEVELS)
            return 0;
        Level *level = &line->levels[line->nlevels];
        if (!literal(c, "{\"price\":", 9) || !lexeme(c, &level->price, &integral) ||
            !literal(c, ",\"qty\":", 7) || !lexeme(c, &level->volume, &integral) ||
            !literal(c, "}", 1))
            return 0;
        level->zero = qty_is_zero(level->volume);
        line->nlevels++;
        group->count++;
        if (literal(c, ",", 1))
            continue;
        return literal(c, "]", 1);
    }
}

static int fast_v2_line(const char *text, Py_ssize_t n, Line *line) {
    Cursor c = {text, text + n};
    uint64_t recv_ns, number;
    Dict *dict = &line->dicts[0];
    line->nlevels = 0;
    line->exch_ns = -1;
    line->ndicts = 1;
    memset(dict, 0, sizeof(*dict));
    if (!literal(&c, "{\"recv_ns\":", 11) || !plain_digits(&c, &recv_ns) ||
        recv_ns > (uint64_t)INT64_MAX || !literal(&c, ",\"seq\":", 7) ||
        !plain_digits(&c, &number) ||
        !literal(&c, ",\"msg\":{\"channel\":\"book\",\"type\":\"update\",\"data\":[{\"symbol\":",
                 59) ||
        !fast_string(&c, &line->pair) || !literal(&c, ",\"bids\":", 8) ||
        !fast_levels_v2(&c, line, &dict->b) || !literal(&c, ",\"asks\":", 8) ||
        !fast_levels_v2(&c, line, &dict->a) || !literal(&c, ",\"checksum\":", 12) ||
        !plain_digits(&c, &dict->c))
        return 0;
    line->recv_ns = (int64_t)recv_ns;
    dict->has_c = 1;
    if (literal(&c, ",\"timestamp\":", 13)) {
        Span stamp;
        if (!fast_string(&c, &stamp))
            return 0;
        if (line->want_exch)
            line->exch_ns = rfc3339_ns(stamp);
    }
    return literal(&c, "}]}}", 4) && c.p == c.end;
}

/* ``{"recv_ns": int, "msg": ..., ...}`` and nothing after it; ``msg`` a v1 array or, with
 * ``v2``, a v2 object. */
static int parse_line(const char *text, Py_ssize_t n, Line *line, int v2) {
    Cursor c = {text, text + n};
    int seen_recv = 0, seen_msg = 0;
    if (v2 ? fast_v2_line(text, n, line) : fast_v1_line(text, n, line))
        return 1;
    line->nlevels = 0;
    line->exch_ns = -1;
    if (!expect(&c, '{'))
        return 0;
    for (;;) {
        Span key;
        if (!plain_string(&c, &key) || !expect(&c, ':'))
            return 0;
        if (span_is(key, "recv_ns", 7)) {
            if (seen_recv++ || !int64_value(&c, &line->recv_ns))
                return 0;
        } else if (span_is(key, "msg", 3)) {
            if (seen_msg++ || !(v2 ? msg_v2(&c, line) : msg_value(&c, line)))
                return 0;
        } else if (span_is(key, "meta", 4) || span_is(key, "raw", 3)) {
            return 0;
        } else if (!skip_value(&c, 1)) {
            return 0;
        }
        if (expect(&c, ','))
            continue;
        if (!expect(&c, '}'))
            return 0;
        break;
    }
    skip_ws(&c);
    return c.p == c.end && seen_recv && seen_msg;
}

/* -- the state of one followed book during a run ----------------------------------------------- */

/* The Python attributes the core reads and writes: its whole interface to kbook, declared once
 * here and in kbook.lines.NATIVE_INTERFACE (owner class -> names), which must agree (kbook.lines
 * checks at import, and tests/test_native.py checks that every class has its attributes). */
static PyObject *s_routes, *s_feed, *s_clock, *s_channel, *s_book, *s_limit, *s_stats, *s_key,
    *s_valid, *s_depth, *s_scale, *s_asks, *s_bids, *s_keys, *s_levels, *s_top, *s_dirty,
    *s_ask_crc, *s_bid_text, *s_checksum, *s_frames, *s_updates, *s_checksums_ok,
    *s_checksums_failed, *s_last_ns, *s_last_key, *s_become_invalid, *s_v2, *s_books,
    *s_exch_ns;

typedef struct {
    const char *owner, *name;
    PyObject **interned;
} Attribute;

static const Attribute INTERFACE[] = {
    {"LineFeed", "routes", &s_routes},
    {"LineFeed", "feed", &s_feed},
    {"LineFeed", "clock", &s_clock},
    {"LineFeed", "v2", &s_v2},
    {"Route", "key", &s_key},
    {"Route", "channel", &s_channel},
    {"Route", "book", &s_book},
    {"Route", "limit", &s_limit},
    {"Route", "stats", &s_stats},
    {"BookFeed", "last_key", &s_last_key},
    {"BookFeed", "books", &s_books},
    {"Book", "valid", &s_valid},
    {"Book", "depth", &s_depth},
    {"Book", "scale", &s_scale},
    {"Book", "asks", &s_asks},
    {"Book", "bids", &s_bids},
    {"Book", "_ask_crc", &s_ask_crc},
    {"Book", "_bid_text", &s_bid_text},
    {"Book", "_checksum", &s_checksum},
    {"Book", "exch_ns", &s_exch_ns},
    {"_Side", "keys", &s_keys},
    {"_Side", "levels", &s_levels},
    {"_Side", "top", &s_top},
    {"_Side", "dirty", &s_dirty},
    {"PairStats", "frames", &s_frames},
    {"PairStats", "updates", &s_updates},
    {"PairStats", "checksums_ok", &s_checksums_ok},
    {"PairStats", "checksums_failed", &s_checksums_failed},
    {"PairStats", "last_ns", &s_last_ns},
    {"PairStats", "become_invalid", &s_become_invalid},
};

#define INTERFACE_SIZE ((Py_ssize_t)(sizeof(INTERFACE) / sizeof(INTERFACE[0])))

/* interface() -> {owner: (name, ...)}, in the order of INTERFACE. */
static PyObject *native_interface(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *lists = PyDict_New(), *result = PyDict_New();
    if (lists == NULL || result == NULL)
        goto failed;
    for (Py_ssize_t i = 0; i < INTERFACE_SIZE; i++) {
        PyObject *names = PyDict_GetItemString(lists, INTERFACE[i].owner); /* borrowed */
        if (names == NULL) {
            if ((names = PyList_New(0)) == NULL)
                goto failed;
            int added = PyDict_SetItemString(lists, INTERFACE[i].owner, names);
            Py_DECREF(names); /* the dict holds it */
            if (added < 0)
                goto failed;
        }
        if (PyList_Append(names, *INTERFACE[i].interned) < 0)
            goto failed;
    }
    PyObject *owner, *names;
    Py_ssize_t pos = 0;
    while (PyDict_Next(lists, &pos, &owner, &names)) {
        PyObject *frozen = PyList_AsTuple(names);
        int added = frozen != NULL && PyDict_SetItem(result, owner, frozen) == 0;
        Py_XDECREF(frozen);
        if (!added)
            goto failed;
    }
    Py_DECREF(lists);
    return result;
failed:
    Py_XDECREF(lists);
    Py_XDECREF(result);
    return NULL;
}

typedef struct {
    unsigned char *p; /* never NULL once reserved, even for 0 bytes */
    Py_ssize_t len, cap;
} Text;

typedef struct {
    PyObject *keys, *levels, *top; /* borrowed from the side object, which the book holds */
    PyObject *side;
    int dirty, dirty_changed;
    int64_t sign;
    /* ``keys`` as int64 (saturated, which keeps the order of any int), kept in step with the
     * list for the run: bisection reads these instead of converting an int object per probe. */
    int64_t *mirror;
    Py_ssize_t mirror_cap;
    /* ``top`` as C text for the run, kept in step with the keys on every change: the pieces of
     * keys[:10] in ``slots[:ntop]`` (one more slot is spare, so an insert never allocates one);
     * written back to the list once, when the run stores the route (``top_changed``). */
    Text slots[CHECKSUM_LEVELS + 1];
    Py_ssize_t ntop;
    int top_changed;
} Side;

typedef struct {
    PyObject *book, *stats, *key; /* borrowed (the route, in the routes dict, holds them) */
    Span pair, channel;
    int64_t limit;
    int valid, valid_changed;
    int64_t depth, scale;
    Side sides[2]; /* asks, bids */
    uint32_t ask_crc, checksum;
    Text ask_text, bid_text; /* the joined pieces of each side's top (the bids' is Book._bid_text) */
    int crc_changed;
    int64_t frames, ok, failed, last_ns;
    /* The latest applied line (a new reference): Book.exch_ns is taken from it when the run
     * stores the route, so that the time of each level is parsed once a run, not once a line. */
    PyObject *exch_line;
    int loaded; /* sides and caches read from the book */
    int shared; /* v2: another valid book of the symbol is there (its lines are handed back) */
} Route;

/* A Python int as int64, saturating (the clock starts far below any receive time). */
static int saturated(PyObject *value, int64_t *out) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = overflow > 0 ? INT64_MAX : overflow < 0 ? INT64_MIN : (int64_t)v;
    return 1;
}

static int int_attr(PyObject *obj, PyObject *name, int64_t *out) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return 0;
    int ok = PyLong_Check(value) && saturated(value, out);
    if (!ok && !PyErr_Occurred())
        PyErr_Format(PyExc_TypeError, "native core: %R is not an int", name);
    Py_DECREF(value);
    return ok;
}

static int utf8_span(PyObject *text, Span *out) {
    if (PyUnicode_Check(text) && PyUnicode_IS_COMPACT_ASCII(text)) { /* the usual case, inline */
        out->p = (const char *)PyUnicode_1BYTE_DATA(text);
        out->n = PyUnicode_GET_LENGTH(text);
        return 1;
    }
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "native core: a route's pair and channel must be str");
        return 0;
    }
    out->p = PyUnicode_AsUTF8AndSize(text, &out->n);
    return out->p != NULL;
}

static int reserve(Text *t, Py_ssize_t n) {
    if (n <= t->cap && t->p != NULL)
        return 1;
    Py_ssize_t cap = n < 256 ? 256 : n * 2;
    unsigned char *buffer = PyMem_Realloc(t->p, cap);
    if (buffer == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    t->p = buffer;
    t->cap = cap;
    return 1;
}

/* Room for ``n`` keys in the side's mirror. */
static int reserve_mirror(Side *side, Py_ssize_t n) {
    if (n <= side->mirror_cap && side->mirror != NULL)
        return 1;
    Py_ssize_t cap = n < 64 ? 128 : n * 2;
    int64_t *mirror = PyMem_Realloc(side->mirror, (size_t)cap * sizeof(int64_t));
    if (mirror == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    side->mirror = mirror;
    side->mirror_cap = cap;
    return 1;
}

static int load_mirror(Side *side) {
    Py_ssize_t n = PyList_GET_SIZE(side->keys);
    if (!reserve_mirror(side, n))
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(side->keys, i);
        if (!PyLong_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "native core: a book key is not an int");
            return 0;
        }
        if (!saturated(item, &side->mirror[i]))
            return 0;
    }
    return 1;
}

static int load_side(PyObject *book, PyObject *name, Side *side, int64_t sign) {
    PyObject *obj = PyObject_GetAttr(book, name);
    if (obj == NULL)
        return 0;
    side->side = obj;
    Py_DECREF(obj); /* the book keeps it alive for the run */
    side->sign = sign;
    PyObject *keys = PyObject_GetAttr(obj, s_keys), *levels = PyObject_GetAttr(obj, s_levels),
             *top = PyObject_GetAttr(obj, s_top), *dirty = PyObject_GetAttr(obj, s_dirty);
    int ok = keys && levels && top && dirty && PyList_CheckExact(keys) &&
             PyDict_CheckExact(levels) && PyList_CheckExact(top);
    side->keys = keys;
    side->levels = levels;
    side->top = top;
    side->dirty = dirty ? PyObject_IsTrue(dirty) : -1;
    side->dirty_changed = 0;
    if (ok && !load_mirror(side))
        ok = 0;
    if (ok && PyList_GET_SIZE(top) > CHECKSUM_LEVELS) {
        PyErr_SetString(PyExc_RuntimeError, "native core: a side holds more than 10 pieces");
        ok = 0;
    }
    side->ntop = 0;
    side->top_changed = 0;
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(top); i++) {
        Span piece;
        Text *slot = &side->slots[i];
        ok = utf8_span(PyList_GET_ITEM(top, i), &piece) && reserve(slot, piece.n);
        if (ok) {
            memcpy(slot->p, piece.p, piece.n);
            slot->len = piece.n;
            side->ntop++;
        }
    }
    Py_XDECREF(keys);
    Py_XDECREF(levels);
    Py_XDECREF(top);
    Py_XDECREF(dirty);
    if (ok && side->dirty < 0)
        ok = 0;
    if (!ok && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "native core: a book side is not a kbook.book side");
    return ok;
}

/* One of Kraken's book depths (kbook.api.DEPTHS), the only ones a Book has. */
static int kraken_depth(int64_t depth) {
    return depth == 10 || depth == 25 || depth == 100 || depth == 500 || depth == 1000;
}

/* The book's sides and cached checksum parts, the first time a line of the route is applied. */
static int load_book(Route *r) {
    PyObject *book = r->book;
    PyObject *crc = NULL, *text = NULL, *sum = NULL;
    int ok = int_attr(book, s_depth, &r->depth) && int_attr(book, s_scale, &r->scale) &&
             load_side(book, s_asks, &r->sides[0], 1) && load_side(book, s_bids, &r->sides[1], -1);
    if (ok && !kraken_depth(r->depth)) { /* Book refuses any other; truncate_book relies on it */
        PyErr_Format(PyExc_ValueError, "native core: a book of depth %lld", (long long)r->depth);
        ok = 0;
    }
    if (ok) {
        crc = PyObject_GetAttr(book, s_ask_crc);
        text = PyObject_GetAttr(book, s_bid_text);
        sum = PyObject_GetAttr(book, s_checksum);
        ok = crc && text && sum && PyLong_Check(crc) && PyBytes_Check(text) && PyLong_Check(sum);
        if (ok) {
            r->ask_crc = (uint32_t)PyLong_AsUnsignedLongMask(crc);
            r->checksum = (uint32_t)PyLong_AsUnsignedLongMask(sum);
            ok = !PyErr_Occurred() && reserve(&r->bid_text, PyBytes_GET_SIZE(text));
            if (ok) {
                memcpy(r->bid_text.p, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text));
                r->bid_text.len = PyBytes_GET_SIZE(text);
            }
        } else if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "native core: the book's checksum cache is odd");
        }
    }
    Py_XDECREF(crc);
    Py_XDECREF(text);
    Py_XDECREF(sum);
    r->loaded = ok;
    return ok;
}

static int load_route(PyObject *route, Route *r) {
    memset(r, 0, sizeof(*r));
    PyObject *key = PyObject_GetAttr(route, s_key);
    PyObject *channel = PyObject_GetAttr(route, s_channel);
    PyObject *book = PyObject_GetAttr(route, s_book);
    PyObject *stats = PyObject_GetAttr(route, s_stats);
    int ok = key && channel && book && stats && utf8_span(channel, &r->channel) &&
             int_attr(route, s_limit, &r->limit);
    /* The route holds key, channel, book and stats for the whole run. */
    r->key = key;
    r->book = book == Py_None ? NULL : book;
    r->stats = stats;
    if (ok && r->book != NULL) {
        PyObject *valid = PyObject_GetAttr(book, s_valid);
        r->valid = valid ? PyObject_IsTrue(valid) : -1;
        Py_XDECREF(valid);
        ok = r->valid >= 0;
    }
    Py_XDECREF(key);
    Py_XDECREF(channel);
    Py_XDECREF(book);
    Py_XDECREF(stats);
    if (ok && !PyErr_Occurred())
        return 1;
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "native core: a route is not a kbook.lines.Route");
    return 0;
}

static int add_to_attr(PyObject *obj, PyObject *name, int64_t delta) {
    if (delta == 0)
        return 1;
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return 0;
    PyObject *d = PyLong_FromLongLong(delta);
    PyObject *sum = d ? PyNumber_Add(value, d) : NULL;
    int ok = sum != NULL && PyObject_SetAttr(obj, name, sum) == 0;
    Py_DECREF(value);
    Py_XDECREF(d);
    Py_XDECREF(sum);
    return ok;
}

static int set_int_attr(PyObject *obj, PyObject *name, int64_t v) {
    PyObject *value = PyLong_FromLongLong(v);
    int ok = value != NULL && PyObject_SetAttr(obj, name, value) == 0;
    Py_XDECREF(value);
    return ok;
}

static int parse_line(const char *text, Py_ssize_t n, Line *line, int v2);
static PyObject *text_str(const unsigned char *p, Py_ssize_t n);

/* Write what the run kept in C back to the book and the stats (``line``: scratch space). */
static int store_route(Route *r, Line *line, int v2) {
    int ok = 1;
    if (r->frames) {
        ok = ok && add_to_attr(r->stats, s_frames, r->frames) &&
             add_to_attr(r->stats, s_updates, r->frames) &&
             add_to_attr(r->stats, s_checksums_ok, r->ok) &&
             add_to_attr(r->stats, s_checksums_failed, r->failed) &&
             set_int_attr(r->stats, s_last_ns, r->last_ns);
        r->frames = r->ok = r->failed = 0;
    }
    if (!r->loaded)
        return ok;
    for (int i = 0; i < 2; i++) {
        Side *side = &r->sides[i];
        if (side->top_changed) {
            PyObject *pieces = PyList_New(side->ntop);
            for (Py_ssize_t j = 0; pieces != NULL && j < side->ntop; j++) {
                PyObject *piece = text_str(side->slots[j].p, side->slots[j].len);
                if (piece == NULL)
                    Py_CLEAR(pieces);
                else
                    PyList_SET_ITEM(pieces, j, piece);
            }
            ok = ok && pieces != NULL &&
                 PyList_SetSlice(side->top, 0, PyList_GET_SIZE(side->top), pieces) == 0;
            Py_XDECREF(pieces);
            side->top_changed = 0;
        }
        if (side->dirty_changed) {
            ok = ok && PyObject_SetAttr(side->side, s_dirty, side->dirty ? Py_True : Py_False) == 0;
            side->dirty_changed = 0;
        }
    }
    if (r->crc_changed) {
        PyObject *text = PyBytes_FromStringAndSize((const char *)r->bid_text.p, r->bid_text.len);
        ok = ok && text && set_int_attr(r->book, s_ask_crc, r->ask_crc) &&
             PyObject_SetAttr(r->book, s_bid_text, text) == 0 &&
             set_int_attr(r->book, s_checksum, r->checksum);
        Py_XDECREF(text);
        r->crc_changed = 0;
    }
    if (r->valid_changed) {
        ok = ok && PyObject_SetAttr(r->book, s_valid, r->valid ? Py_True : Py_False) == 0;
        r->valid_changed = 0;
    }
    if (r->exch_line != NULL && line != NULL) {
        /* The line parsed as it was when applied (bytes do not change), its time computed. */
        line->want_exch = 1;
        if (!parse_line(PyBytes_AS_STRING(r->exch_line), PyBytes_GET_SIZE(r->exch_line), line,
                        v2)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "native core: an applied line reads otherwise");
            ok = 0;
        } else if (line->exch_ns < 0) {
            ok = ok && PyObject_SetAttr(r->book, s_exch_ns, Py_None) == 0;
        } else {
            ok = ok && set_int_attr(r->book, s_exch_ns, line->exch_ns);
        }
        line->want_exch = 0;
        Py_CLEAR(r->exch_line);
    }
    return ok;
}

/* -- applying one line ------------------------------------------------------------------------- */

/* The exact integer key of a price at the book's scale (Book._key), or 0 when it cannot be had
 * here (more decimals than the scale, too many digits, not plain digits): then the line is
 * handed back. */
static int price_key(Span price, int64_t scale, int64_t sign, int64_t *out) {
    int64_t value = 0;
    Py_ssize_t digits = 0, decimals = -1;
    for (Py_ssize_t i = 0; i < price.n; i++) {
        char ch = price.p[i];
        if (ch == '.') {
            if (decimals >= 0 || i == 0 || i == price.n - 1)
                return 0;
            decimals = 0;
            continue;
        }
        if (!is_digit(ch))
            return 0;
        if (decimals >= 0)
            decimals++;
        if (value == 0 && ch == '0')
            continue;
        if (++digits > MAX_KEY_DIGITS)
            return 0;
        value = value * 10 + (ch - '0');
    }
    if (price.n == 0)
        return 0;
    if (decimals < 0)
        decimals = 0;
    if (decimals > scale)
        return 0;
    for (int64_t pad = scale - decimals; pad > 0; pad--) {
        if (value != 0 && ++digits > MAX_KEY_DIGITS)
            return 0;
        value *= 10;
    }
    *out = value * sign;
    return 1;
}

/* ``text.replace(".", "").lstrip("0")`` of ASCII or UTF-8 bytes, appended at *at. */
static Py_ssize_t piece_into(char *at, const char *p, Py_ssize_t n) {
    Py_ssize_t i = 0, w = 0;
    while (i < n && (p[i] == '0' || p[i] == '.')) /* the zeros that lead once dots are gone */
        i++;
    for (; i < n; i++)
        if (p[i] != '.')
            at[w++] = p[i];
    return w;
}

/* A str of ASCII or UTF-8 bytes (a piece of a line is ASCII; one of a level the Python path
 * stored may hold other digits, which int() takes, and is decoded back as it was). */
static PyObject *text_str(const unsigned char *p, Py_ssize_t n) {
    unsigned char high = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        high |= p[i];
    if (high >= 0x80)
        return PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    PyObject *text = PyUnicode_New(n, 127);
    if (text != NULL)
        memcpy(PyUnicode_1BYTE_DATA(text), p, n);
    return text;
}

/* The checksum piece of a level, f(price) + f(volume), into a slot of Side.slots. */
static int fill_slot(Text *slot, Span price, Span volume) {
    if (!reserve(slot, price.n + volume.n))
        return 0;
    Py_ssize_t n = piece_into((char *)slot->p, price.p, price.n);
    slot->len = n + piece_into((char *)slot->p + n, volume.p, volume.n);
    return 1;
}

/* The slot of a piece inserted at ``index`` of the side's top (the 11th, if any, drops out). */
static Text *insert_slot(Side *side, Py_ssize_t index) {
    Text spare = side->slots[side->ntop];
    memmove(&side->slots[index + 1], &side->slots[index],
            (size_t)(side->ntop - index) * sizeof(Text));
    side->slots[index] = spare;
    if (side->ntop < CHECKSUM_LEVELS)
        side->ntop++;
    side->top_changed = 1;
    return &side->slots[index];
}

/* The top without its piece ``index`` (its buffer becomes a spare). */
static void delete_slot(Side *side, Py_ssize_t index) {
    Text gone = side->slots[index];
    memmove(&side->slots[index], &side->slots[index + 1],
            (size_t)(side->ntop - 1 - index) * sizeof(Text));
    side->slots[--side->ntop] = gone;
    side->top_changed = 1;
}

/* The piece of a stored level (a ``(price, volume)`` tuple of str) into ``slot``. */
static int stored_piece(PyObject *level, Text *slot) {
    if (!PyTuple_Check(level) || PyTuple_GET_SIZE(level) < 2) {
        PyErr_SetString(PyExc_TypeError, "native core: a stored level is not (price, volume)");
        return 0;
    }
    Span price, volume;
    return utf8_span(PyTuple_GET_ITEM(level, 0), &price) &&
           utf8_span(PyTuple_GET_ITEM(level, 1), &volume) && fill_slot(slot, price, volume);
}

/* bisect_left over a side's keys, by its mirror (which must be in step with the list). */
static int bisect(const Side *side, int64_t key, Py_ssize_t *out) {
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(side->keys);
    const int64_t *keys = side->mirror;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    *out = lo;
    return 1;
}

/* The mirror after ``keys`` lost its item ``index``, or gained ``key`` there. */
static void mirror_delete(Side *side, Py_ssize_t index) {
    Py_ssize_t n = PyList_GET_SIZE(side->keys); /* after the deletion */
    memmove(side->mirror + index, side->mirror + index + 1, (size_t)(n - index) * sizeof(int64_t));
}

static int mirror_insert(Side *side, Py_ssize_t index, int64_t key) {
    Py_ssize_t n = PyList_GET_SIZE(side->keys); /* after the insertion */
    if (!reserve_mirror(side, n))
        return 0;
    memmove(side->mirror + index + 1, side->mirror + index,
            (size_t)(n - 1 - index) * sizeof(int64_t));
    side->mirror[index] = key;
    return 1;
}

static PyObject *ascii_str(Span s) {
    PyObject *text = PyUnicode_New(s.n, 127);
    if (text != NULL)
        memcpy(PyUnicode_1BYTE_DATA(text), s.p, s.n);
    return text;
}

static int out_of_step(void) {
    PyErr_SetString(PyExc_RuntimeError, "native core: a side's checksum pieces are out of step");
    return 0;
}

/* Book.apply_side for one level whose key is known; see kbook/book.py. */
static int apply_level(Side *side, const Level *level, int64_t key) {
    PyObject *keys = side->keys, *levels = side->levels;
    Py_ssize_t index;
    if (!bisect(side, key, &index))
        return 0;
    /* The key is in the side exactly when the mirror has it there (keys and levels hold the same
     * keys, as Book keeps them); a known key is looked up by the list's own int object. */
    int present = index < PyList_GET_SIZE(keys) && side->mirror[index] == key;
    if (level->zero && !present)
        return 1;
    PyObject *k = present ? PyList_GET_ITEM(keys, index) : PyLong_FromLongLong(key);
    if (k == NULL)
        return 0;
    if (present)
        Py_INCREF(k);
    PyObject *old = NULL; /* borrowed */
    int ok = 0;
    if (present && (old = PyDict_GetItemWithError(levels, k)) == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "native core: a key without a level");
        goto done;
    }
    if (level->zero) {
        if (PyList_SetSlice(keys, index, index + 1, NULL) < 0)
            goto done;
        mirror_delete(side, index);
        if (PyDict_DelItem(levels, k) < 0)
            goto done;
        if (index < CHECKSUM_LEVELS) {
            if (index >= side->ntop) {
                out_of_step();
                goto done;
            }
            delete_slot(side, index);
            if (PyList_GET_SIZE(keys) >= CHECKSUM_LEVELS) {
                PyObject *entering = PyDict_GetItemWithError(
                    levels, PyList_GET_ITEM(keys, CHECKSUM_LEVELS - 1));
                if (entering == NULL) {
                    if (!PyErr_Occurred())
                        PyErr_SetString(PyExc_KeyError, "native core: a key without a level");
                    goto done;
                }
                if (!stored_piece(entering, insert_slot(side, side->ntop)))
                    goto done;
            }
            side->dirty = 1;
            side->dirty_changed = 1;
        }
        ok = 1;
        goto done;
    }
    PyObject *price = NULL;
    if (old != NULL && PyTuple_Check(old) && PyTuple_GET_SIZE(old) >= 2) {
        /* Same key, same text: keep the stored price object (equal in every way but identity). */
        Span stored;
        PyObject *text = PyTuple_GET_ITEM(old, 0);
        if (PyUnicode_Check(text) && PyUnicode_IS_COMPACT_ASCII(text)) {
            stored.p = (const char *)PyUnicode_1BYTE_DATA(text);
            stored.n = PyUnicode_GET_LENGTH(text);
            if (stored.n == level->price.n && !memcmp(stored.p, level->price.p, stored.n)) {
                price = text;
                Py_INCREF(price);
            }
        }
    }
    if (price == NULL && (price = ascii_str(level->price)) == NULL)
        goto done;
    PyObject *volume = ascii_str(level->volume);
    if (volume == NULL) {
        Py_DECREF(price);
        goto done;
    }
    PyObject *pair = NULL; /* a new level for the dict, or NULL: the old one changed in place */
    if (old != NULL && PyTuple_CheckExact(old) && PyTuple_GET_SIZE(old) == 2 &&
        Py_REFCNT(old) == 1) {
        /* Only the side's dict holds the level: it takes the new text in place (as CPython's
         * own iterators reuse a result tuple no one else holds), which no reader can tell from
         * a new tuple; a level someone holds (a row being built) is replaced instead. */
        PyObject *was_price = PyTuple_GET_ITEM(old, 0), *was_volume = PyTuple_GET_ITEM(old, 1);
        PyTuple_SET_ITEM(old, 0, price);
        PyTuple_SET_ITEM(old, 1, volume);
        Py_DECREF(was_price);
        Py_DECREF(was_volume);
    } else {
        if ((pair = PyTuple_New(2)) == NULL) {
            Py_DECREF(price);
            Py_DECREF(volume);
            goto done;
        }
        PyTuple_SET_ITEM(pair, 0, price);
        PyTuple_SET_ITEM(pair, 1, volume);
        /* Two str can make no reference cycle: the collector need never visit the level
         * (CPython untracks such tuples itself, but only once a collection has visited them). */
        PyObject_GC_UnTrack(pair);
    }
    if (index < CHECKSUM_LEVELS) {
        Text *slot;
        if (old != NULL) {
            if (index >= side->ntop) {
                Py_XDECREF(pair);
                out_of_step();
                goto done;
            }
            slot = &side->slots[index];
            side->top_changed = 1;
        } else if (PyList_Insert(keys, index, k) < 0 || !mirror_insert(side, index, key)) {
            Py_XDECREF(pair);
            goto done;
        } else {
            slot = insert_slot(side, index);
        }
        if (!fill_slot(slot, level->price, level->volume)) {
            Py_XDECREF(pair);
            goto done;
        }
        side->dirty = 1;
        side->dirty_changed = 1;
    } else if (old == NULL &&
               (PyList_Insert(keys, index, k) < 0 || !mirror_insert(side, index, key))) {
        Py_XDECREF(pair);
        goto done;
    }
    ok = pair == NULL || PyDict_SetItem(levels, k, pair) == 0;
    Py_XDECREF(pair);
done:
    Py_DECREF(k);
    return ok;
}

/* Book.truncate */
static int truncate_book(Route *r) {
    for (int i = 0; i < 2; i++) {
        Side *side = &r->sides[i];
        Py_ssize_t n = PyList_GET_SIZE(side->keys);
        if (n <= r->depth)
            continue;
        for (Py_ssize_t j = r->depth; j < n; j++)
            if (PyDict_DelItem(side->levels, PyList_GET_ITEM(side->keys, j)) < 0)
                return 0;
        /* below the checksum's levels (load_book: depth >= 10): top unchanged */
        if (PyList_SetSlice(side->keys, r->depth, n, NULL) < 0)
            return 0;
    }
    return 1;
}

/* The pieces of a side's top joined into *t: the text its part of the checksum is taken over. */
static int join_top(const Side *side, Text *t) {
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < side->ntop; i++)
        n += side->slots[i].len;
    if (!reserve(t, n))
        return 0;
    t->len = 0;
    for (Py_ssize_t i = 0; i < side->ntop; i++) {
        memcpy(t->p + t->len, side->slots[i].p, side->slots[i].len);
        t->len += side->slots[i].len;
    }
    return 1;
}

/* Book.checksum: the asks' CRC and the bids' text are cached apart. The asks' pieces are joined
 * first and the CRC taken over the whole text at once, many times faster than piece by piece
 * (a piece is a dozen bytes, mostly the slow byte-at-a-time tail of crc_update). */
static int book_checksum(Route *r, uint32_t *out) {
    Side *asks = &r->sides[0], *bids = &r->sides[1];
    if (asks->dirty || bids->dirty) {
        if (asks->dirty) {
            if (!join_top(asks, &r->ask_text))
                return 0;
            r->ask_crc = crc_update(0, r->ask_text.p, r->ask_text.len);
            asks->dirty = 0;
            asks->dirty_changed = 1;
        }
        if (bids->dirty) {
            if (!join_top(bids, &r->bid_text))
                return 0;
            bids->dirty = 0;
            bids->dirty_changed = 1;
        }
        r->checksum = crc_update(r->ask_crc, r->bid_text.p, r->bid_text.len);
        r->crc_changed = 1;
    }
    *out = r->checksum;
    return 1;
}

/* -- run ---------------------------------------------------------------------------------------- */

typedef struct {
    Route *routes;
    Py_ssize_t count;
} Routes;

/* Routes are ordered by their pair's length, then bytes (load_routes sorts them), so that a
 * line's route is found by bisection: a recorder follows hundreds of pairs. */
static int span_order(Span a, Span b) {
    if (a.n != b.n)
        return a.n < b.n ? -1 : 1;
    return memcmp(a.p, b.p, a.n);
}

static int route_order(const void *a, const void *b) {
    return span_order(((const Route *)a)->pair, ((const Route *)b)->pair);
}

static Route *find_route(Routes *routes, Span pair) {
    Py_ssize_t low = 0, high = routes->count;
    while (low < high) {
        Py_ssize_t mid = low + (high - low) / 2;
        int order = span_order(routes->routes[mid].pair, pair);
        if (order == 0)
            return &routes->routes[mid];
        if (order < 0)
            low = mid + 1;
        else
            high = mid;
    }
    return NULL;
}

static int load_routes(PyObject *dict, Routes *routes) {
    routes->count = 0;
    routes->routes = PyMem_Calloc(PyDict_GET_SIZE(dict) + 1, sizeof(Route));
    if (routes->routes == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    PyObject *name, *route;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &name, &route)) {
        Route *r = &routes->routes[routes->count];
        if (!load_route(route, r))
            return 0;
        Span wire;
        /* run() looks routes up by the frame's pair, as the dict is keyed. */
        if (!utf8_span(name, &wire))
            return 0;
        r->pair = wire;
        routes->count++;
    }
    qsort(routes->routes, routes->count, sizeof(Route), route_order);
    return 1;
}

/* kbook.lines.LineFeed.shared_symbols: mark the routes whose symbol has another valid book. */
static int mark_shared(PyObject *feed, Routes *routes) {
    PyObject *books = PyObject_GetAttr(feed, s_books);
    if (books == NULL)
        return 0;
    if (!PyDict_CheckExact(books)) {
        Py_DECREF(books);
        PyErr_SetString(PyExc_TypeError, "native core: the feed's books must be a dict");
        return 0;
    }
    PyObject *key, *book;
    Py_ssize_t pos = 0;
    int ok = 1;
    while (ok && PyDict_Next(books, &pos, &key, &book)) {
        Span pair;
        if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(key, 0)))
            continue;
        if (!utf8_span(PyTuple_GET_ITEM(key, 0), &pair)) {
            ok = 0;
            break;
        }
        Route *r = find_route(routes, pair);
        if (r == NULL || r->shared || book == r->book)
            continue;
        PyObject *valid = PyObject_GetAttr(book, s_valid);
        int truth = valid ? PyObject_IsTrue(valid) : -1;
        Py_XDECREF(valid);
        if (truth < 0)
            ok = 0;
        else if (truth)
            r->shared = 1;
    }
    Py_DECREF(books);
    return ok;
}

static void free_routes(Routes *routes) {
    for (Py_ssize_t i = 0; i < routes->count; i++) {
        Py_CLEAR(routes->routes[i].exch_line);
        PyMem_Free(routes->routes[i].bid_text.p);
        PyMem_Free(routes->routes[i].ask_text.p);
        for (int j = 0; j < 2; j++) {
            Side *side = &routes->routes[i].sides[j];
            PyMem_Free(side->mirror);
            for (int k = 0; k <= CHECKSUM_LEVELS; k++)
                PyMem_Free(side->slots[k].p);
        }
    }
    PyMem_Free(routes->routes);
}

/* The line's level groups in Kraken's order (each object's asks, then its bids) and the side of
 * each (0 asks, 1 bids); returns how many. */
static int line_groups(Line *line, Group **groups, int *sides) {
    int n = 0;
    for (int d = 0; d < line->ndicts; d++) {
        if (line->dicts[d].a.used) {
            groups[n] = &line->dicts[d].a;
            sides[n++] = 0;
        }
        if (line->dicts[d].b.used) {
            groups[n] = &line->dicts[d].b;
            sides[n++] = 1;
        }
    }
    return n;
}

/* The keys of every level of the line, or 0 when one cannot be had here (hand it back). */
static int line_keys(Route *r, Line *line, int64_t *keys) {
    Group *groups[4];
    int sides[4];
    int n = line_groups(line, groups, sides);
    for (int g = 0; g < n; g++)
        for (int i = groups[g]->start; i < groups[g]->start + groups[g]->count; i++)
            if (!price_key(line->levels[i].price, r->scale, r->sides[sides[g]].sign, &keys[i]))
                return 0;
    return 1;
}

static int apply_line(Route *r, Line *line, const int64_t *keys, uint64_t expected, int *ok) {
    Group *groups[4];
    int sides[4];
    int n = line_groups(line, groups, sides), deep = 0;
    for (int g = 0; g < n; g++) {
        Side *side = &r->sides[sides[g]];
        for (int i = groups[g]->start; i < groups[g]->start + groups[g]->count; i++)
            if (!apply_level(side, &line->levels[i], keys[i]))
                return 0;
        if (PyList_GET_SIZE(side->keys) > r->depth)
            deep = 1;
    }
    if (deep && !truncate_book(r))
        return 0;
    uint32_t sum;
    if (!book_checksum(r, &sum))
        return 0;
    *ok = (uint64_t)sum == expected;
    return 1;
}

typedef struct {
    Line line;
    int64_t keys[MAX_LEVELS];
} Scratch;

static PyObject *native_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "run(line_feed, lines, start)");
        return NULL;
    }
    PyObject *self = args[0], *lines = args[1];
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    if (!PyList_CheckExact(lines)) {
        PyErr_SetString(PyExc_TypeError, "native core: lines must be a list of bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(lines);
    if (start < 0) {
        PyErr_Format(PyExc_ValueError, "start must not be negative, got %zd", start);
        return NULL;
    }
    if (start >= count)
        return PyLong_FromSsize_t(count);

    PyObject *routes_dict = PyObject_GetAttr(self, s_routes);
    PyObject *feed = PyObject_GetAttr(self, s_feed);
    int64_t clock;
    Routes routes = {NULL, 0};
    Scratch *scratch = NULL;
    Py_ssize_t index = start;
    int failed = 1;
    Route *last = NULL;
    int clock_changed = 0, v2 = 0;
    if (routes_dict == NULL || feed == NULL || !int_attr(self, s_clock, &clock))
        goto finish;
    PyObject *v2_flag = PyObject_GetAttr(self, s_v2);
    v2 = v2_flag ? PyObject_IsTrue(v2_flag) : -1;
    Py_XDECREF(v2_flag);
    if (v2 < 0)
        goto finish;
    if (clock == INT64_MAX) { /* a clock past any int64 receive time: the general path only */
        failed = 0;
        goto finish;
    }
    if (!PyDict_CheckExact(routes_dict)) {
        PyErr_SetString(PyExc_TypeError, "native core: routes must be a dict");
        goto finish;
    }
    if (!load_routes(routes_dict, &routes) || (v2 && !mark_shared(feed, &routes)))
        goto finish;
    scratch = PyMem_Malloc(sizeof(Scratch));
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto finish;
    }
    Line *line = &scratch->line;
    line->want_exch = 0;
    for (; index < count; index++) {
        PyObject *item = PyList_GET_ITEM(lines, index);
        if (!PyBytes_CheckExact(item) ||
            !parse_line(PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item), line, v2))
            break;
        Route *r = find_route(&routes, line->pair);
        if (r == NULL)
            break;
        Dict *payload = &line->dicts[0], *carrier = &line->dicts[line->ndicts - 1];
        int64_t now = line->recv_ns > clock ? line->recv_ns : clock;
        if (now > r->limit || r->book == NULL || !r->valid || !carrier->has_c)
            break;
        if (v2 ? r->shared
               : r->channel.n != line->channel.n ||
                     memcmp(r->channel.p, line->channel.p, line->channel.n) ||
                     payload->has_snapshot_key)
            break;
        if (!r->loaded && !load_book(r))
            goto finish;
        if (!line_keys(r, line, scratch->keys))
            break;
        int ok;
        if (!apply_line(r, line, scratch->keys, carrier->c, &ok))
            goto finish;
        if (now != clock)
            clock_changed = 1;
        clock = now;
        r->frames++;
        r->last_ns = now;
        Py_INCREF(item);
        Py_XSETREF(r->exch_line, item);
        last = r;
        if (ok) {
            r->ok++;
        } else {
            r->failed++;
            r->valid = 0;
            r->valid_changed = 1;
            /* PairStats.become_invalid, now (it only sets invalid_since). */
            PyObject *at = PyLong_FromLongLong(now);
            PyObject *done = at ? PyObject_CallMethodOneArg(r->stats, s_become_invalid, at) : NULL;
            Py_XDECREF(at);
            if (done == NULL)
                goto finish;
            Py_DECREF(done);
        }
    }
    failed = 0;
finish:
    if (routes.routes != NULL) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        for (Py_ssize_t i = 0; i < routes.count; i++)
            if (!store_route(&routes.routes[i], scratch ? &scratch->line : NULL, v2))
                failed = 1;
        if (last != NULL && PyObject_SetAttr(feed, s_last_key, last->key) < 0)
            failed = 1;
        if (clock_changed && !set_int_attr(self, s_clock, clock))
            failed = 1;
        if (type != NULL)
            PyErr_Restore(type, value, traceback);
        free_routes(&routes);
    }
    PyMem_Free(scratch);
    Py_XDECREF(routes_dict);
    Py_XDECREF(feed);
    if (failed) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "native core: run failed");
        return NULL;
    }
    return PyLong_FromSsize_t(index);
}

/* -- the survey's scan of decompressed text (replay.survey) --------------------------------------- */

static inline int is_space(unsigned char ch) {
    /* \s of a bytes regular expression */
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* ``"(book-\d+)"\s*,\s*"([^"\n]*)"\s*\]`` matched at ``s``: its end, or NULL. */
static const char *book_end_at(const char *s, const char *end, Span *channel, Span *pair) {
    const char *p = s + 6; /* past "book- */
    const char *digits = p;
    while (p < end && is_digit(*p))
        p++;
    if (p == digits || p >= end || *p != '"')
        return NULL;
    channel->p = s + 1;
    channel->n = p - channel->p;
    p++;
    while (p < end && is_space((unsigned char)*p))
        p++;
    if (p >= end || *p != ',')
        return NULL;
    p++;
    while (p < end && is_space((unsigned char)*p))
        p++;
    if (p >= end || *p != '"')
        return NULL;
    pair->p = ++p;
    while (p < end && *p != '"' && *p != '\n')
        p++;
    if (p >= end || *p != '"')
        return NULL;
    pair->n = p - pair->p;
    p++;
    while (p < end && is_space((unsigned char)*p))
        p++;
    if (p >= end || *p != ']')
        return NULL;
    return p + 1;
}

/* ``"meta"\s*:`` or ``"connectionID"\s*:`` starting at ``s``: its end, or NULL. */
static const char *rare_at(const char *s, const char *end) {
    const char *p;
    if (end - s >= 6 && !memcmp(s, "\"meta\"", 6))
        p = s + 6;
    else if (end - s >= 14 && !memcmp(s, "\"connectionID\"", 14))
        p = s + 14;
    else
        return NULL;
    while (p < end && is_space((unsigned char)*p))
        p++;
    return p < end && *p == ':' ? p + 1 : NULL;
}

static int add_span(PyObject *list, Py_ssize_t start, Py_ssize_t stop) {
    PyObject *item = Py_BuildValue("(nn)", start, stop);
    int ok = item != NULL && PyList_Append(list, item) == 0;
    Py_XDECREF(item);
    return ok;
}

/* Lines holding a meta record or a connectionID, as ``replay.survey._rare_lines`` finds them:
 * every such match holds a "t", a byte book frames lack, so memchr finds the few candidates. */
static int rare_lines(const char *text, const char *end, PyObject *spans) {
    const char *position = text;
    while (position < end) {
        const char *t = memchr(position, 't', end - position);
        if (t == NULL)
            return 1;
        const char *line = t;
        while (line > position && line[-1] != '\n')
            line--;
        const char *line_end = memchr(t, '\n', end - t);
        if (line_end == NULL)
            line_end = end;
        const char *match = NULL;
        for (const char *q = line; q < line_end && match == NULL; q++)
            if (*q == '"' && rare_at(q, end) != NULL)
                match = q;
        if (match == NULL) {
            position = line_end + 1;
            continue;
        }
        const char *after = rare_at(match, end);
        const char *stop = memchr(after, '\n', end - after);
        if (stop == NULL) /* bodies end with a line break; as the Python slice would */
            stop = end - 1;
        if (!add_span(spans, line - text, stop - text))
            return 0;
        position = stop + 1;
    }
    return 1;
}

/* survey_body(body) -> (rare line spans, distinct (channel, pair) book endings in order) */
static PyObject *native_survey_body(PyObject *module, PyObject *body) {
    (void)module;
    if (!PyBytes_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "survey_body takes bytes");
        return NULL;
    }
    const char *text = PyBytes_AS_STRING(body), *end = text + PyBytes_GET_SIZE(body);
    PyObject *spans = PyList_New(0), *books = PyList_New(0), *seen = PySet_New(NULL);
    PyObject *result = NULL;
    if (spans == NULL || books == NULL || seen == NULL || !rare_lines(text, end, spans))
        goto done;
    /* Every match has its only "-" at offset 5: memchr goes from dash to dash (one per book
     * frame), and matches never overlap, as re.finditer finds them. */
    const char *position = text, *floor = text, *last = NULL;
    Span last_channel = {NULL, 0}, last_pair = {NULL, 0};
    while (position < end) {
        const char *dash = memchr(position, '-', end - position);
        if (dash == NULL)
            break;
        const char *s = dash - 5;
        Span channel, pair;
        const char *stop;
        position = dash + 1;
        if (s < floor || memcmp(s, "\"book", 5) ||
            (stop = book_end_at(s, end, &channel, &pair)) == NULL)
            continue;
        position = floor = stop;
        if (last != NULL && channel.n == last_channel.n && pair.n == last_pair.n &&
            !memcmp(channel.p, last_channel.p, channel.n) && !memcmp(pair.p, last_pair.p, pair.n))
            continue; /* the usual case: the same book as the line before */
        last = s;
        last_channel = channel;
        last_pair = pair;
        PyObject *item = Py_BuildValue("(y#y#)", pair.p, pair.n, channel.p, channel.n);
        if (item == NULL)
            goto done;
        int known = PySet_Contains(seen, item);
        int ok = known >= 0 && (known || (PySet_Add(seen, item) == 0 &&
                                          PyList_Append(books, item) == 0));
        Py_DECREF(item);
        if (!ok)
            goto done;
    }
    result = PyTuple_Pack(2, spans, books);
done:
    Py_XDECREF(spans);
    Py_XDECREF(books);
    Py_XDECREF(seen);
    return result;
}

/* -- the survey of a v2 segment's lines (replay.survey._survey_v2) -------------------------------- */

static const char V2_UPDATE[] = "\"msg\":{\"channel\":\"book\",\"type\":\"update\",\"data\":[{\"symbol\":\"";

/* replay.survey._plain_update_symbol: the symbol of a v2 book update line with one entry. The
 * line must hold ``"symbol"`` exactly once, and V2_UPDATE ends with it: so V2_UPDATE is in the
 * line only where it ends at that one ``"symbol"`` (one scan of the line, not two). */
static int plain_update_symbol(const char *p, Py_ssize_t n, Span *out) {
    const char *end = p + n, *q = p, *found = NULL;
    while ((q = memmem(q, (size_t)(end - q), "\"symbol\"", 8)) != NULL) {
        if (found != NULL)
            return 0;
        found = q;
        q += 8;
    }
    const Py_ssize_t before = sizeof(V2_UPDATE) - 1 - 10; /* V2_UPDATE up to its "symbol" */
    if (found == NULL || found - p < before || end - found < 10 ||
        memcmp(found - before, V2_UPDATE, sizeof(V2_UPDATE) - 1) != 0)
        return 0;
    const char *s = found + 10;
    const char *e = memchr(s, '"', (size_t)(end - s));
    if (e == NULL || memchr(s, '\\', (size_t)(e - s)) != NULL)
        return 0;
    out->p = s;
    out->n = e - s;
    return 1;
}

/* The whole line is JSON by skip_value's grammar (a broken line is decoded, and dropped). */
static int json_line(const char *p, Py_ssize_t n) {
    Cursor c = {p, p + n};
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{' || !skip_value(&c, 0))
        return 0;
    skip_ws(&c);
    return c.p == c.end;
}

/* survey_v2_body(body, start) -> items in line order from offset ``start`` of decompressed text
 * (whole lines, each ending in a newline): the ``(start, stop)`` of a line to decode, or the
 * symbol (bytes) of a run of update lines of that symbol (again after every decoded line; a
 * line of the run that is not JSON names the run's symbol, which the survey has already). The
 * lines are never copied into objects of their own, as the v1 survey's ``survey_body``. */
static PyObject *native_survey_v2_body(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "survey_v2_body(body: bytes, start)");
        return NULL;
    }
    const char *body = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    Span last = {NULL, 0};
    for (Py_ssize_t at = start < 0 ? 0 : start, stop; at < size; at = stop + 1) {
        const char *text = body + at;
        const char *newline = memchr(text, '\n', (size_t)(size - at));
        stop = newline == NULL ? size : newline - body;
        Py_ssize_t n = stop - at;
        PyObject *item;
        Span symbol;
        if (n == 0)
            continue;
        if (plain_update_symbol(text, n, &symbol)) {
            /* The run's symbol again says nothing new (the depths change only at decoded
             * lines), so only a line that names a new one must be JSON to count. */
            if (last.p != NULL && last.n == symbol.n && !memcmp(last.p, symbol.p, symbol.n))
                continue;
            if (json_line(text, n)) {
                last = symbol;
                item = PyBytes_FromStringAndSize(symbol.p, symbol.n);
            } else {
                last.p = NULL;
                item = Py_BuildValue("(nn)", at, stop);
            }
        } else {
            last.p = NULL;
            item = Py_BuildValue("(nn)", at, stop);
        }
        int added = item != NULL && PyList_Append(items, item) == 0;
        Py_XDECREF(item);
        if (!added) {
            Py_DECREF(items);
            return NULL;
        }
    }
    return items;
}

/* Whether the one-pass reader of the recorder's layout reads a line (fast_v1_line, or
 * fast_v2_line with ``v2``): tests hold that recorder lines take it. */
static PyObject *native_one_pass(PyObject *self, PyObject *args) {
    (void)self;
    const char *text;
    Py_ssize_t n;
    int v2;
    if (!PyArg_ParseTuple(args, "y#p", &text, &n, &v2))
        return NULL;
    Line *line = PyMem_Malloc(sizeof(Line));
    if (line == NULL)
        return PyErr_NoMemory();
    line->want_exch = 1;
    int read = v2 ? fast_v2_line(text, n, line) : fast_v1_line(text, n, line);
    PyMem_Free(line);
    return PyBool_FromLong(read);
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))native_run, METH_FASTCALL,
     "run(line_feed, lines, start) -> index: kbook.lines.LineFeed.run, natively."},
    {"interface", native_interface, METH_NOARGS,
     "interface() -> {class name: (attribute, ...)}: every attribute the core reads or writes."},
    {"survey_body", native_survey_body, METH_O,
     "survey_body(body) -> (rare line spans, [(pair, channel)]): replay.survey's scan."},
    {"survey_v2_body", (PyCFunction)(void (*)(void))native_survey_v2_body, METH_FASTCALL,
     "survey_v2_body(body, start) -> [(start, stop) | symbol]: replay.survey's v2 scan."},
    {"one_pass", native_one_pass, METH_VARARGS,
     "one_pass(line, v2) -> bool: the line is read by the one-pass reader of the recorder's "
     "layout (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "kbook._native",
    "The native core of replay's hot path; see kbook.lines.", -1, methods, NULL, NULL, NULL, NULL,
};

#define INTERN(var, text)                                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                          \
        return NULL;

PyMODINIT_FUNC PyInit__native(void) {
    crc_init();
    for (Py_ssize_t i = 0; i < INTERFACE_SIZE; i++)
        INTERN(*INTERFACE[i].interned, INTERFACE[i].name);
    return PyModule_Create(&module_def);
}
