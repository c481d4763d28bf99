/* The dump's record encoder, in C: the usual records of a chunk in one call.
 *
 * Why C: a dump record costs about 15,000 interpreter instructions in the best Python we found
 * (docs/dumps.md), and four records per proxied call put dumps over their 10% budget. This
 * module does the same work without the interpreter: the record's fixed parts, the numbers,
 * the frame as a JSON string (UTF-8 checked, escaped exactly as orjson escapes it), and the
 * latency bookkeeping in the hop's open-request maps.
 *
 * It only does the usual: wherever a record is anything else (a frame the gateway wrote, a
 * frame that is not UTF-8, a time outside the given second, a malformed tuple) it stops, and
 * returns how far it got; encode.py encodes from there on in Python. Decisions that need
 * Python (masking, an unknown method's JSON, an unusual id, a policy) are made by encode.py,
 * before the call (`overrides`: the masked frames' JSON texts) or through its callables.
 * suspects() is the masking pre-check's word test (mask.py), one frame at a time; with
 * `word_test` encode() runs the same test itself, in its one pass over each frame, and stops at
 * a suspect (encode.py masks that frame and calls again with its text in `overrides`). The
 * test's names and schemes come from telemetry/secret_rules.py (set_secret_rules, below).
 * TapCore is the hooks of tap.py's Tap.
 *
 * Why one file of this size: it is one extension module, and its parts share static state and
 * inline helpers that must stay in one translation unit to stay inline (the byte classes and
 * digit pairs, the word test's tables, which escape_json runs in its pass, the Buf writer). Split
 * across files they would need a header and exported symbols, and the build (pyproject's one
 * ext-module, .ci/sanitize's two builds) a list of sources, for no reader's gain: the sections
 * below (output buffer, numbers, UTF-8 and escaping, word test, encode, hooks) read in order.
 *
 * encode(batch, start, sec_text, second_at, overrides, kinds, methods, method_json, to_json,
 *        tail_of, word_test) -> (bytes, opened, stop, suspect)
 *   batch      list of hook tuples (mono, hop, raw, kind, method, id, policy)
 *   sec_text   b"YYYY-MM-DDTHH:MM:SS" of the second that began at monotonic time second_at
 *   overrides  None, or a list (as long as batch) of None or a frame's JSON text (masked)
 *   kinds      (REQUEST, NOTIFICATION, RESPONSE, ERROR): the heads' order in a hop
 *   methods    dict method -> its JSON; method_json(method), to_json(id), tail_of(policy, True)
 *   opened     requests added to the open-request maps, less those answered
 *   word_test  whether to run the word test on the frames without an override
 *   stop       the first record not encoded (len(batch) when all were)
 *   suspect    1 when it stopped there because the word test flagged that record's frame
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE     /* memmem */
#include <Python.h>
#include <structmember.h>
#include <time.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The output, written straight into a bytes object (resized as it grows, and to its length at
 * the end): no copy of the records once they are made. */
typedef struct {
    PyObject *bytes;
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int
reserve(Buf *b, Py_ssize_t need)
{
    if (need <= b->cap - b->len)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    if (b->bytes == NULL) {
        if ((b->bytes = PyBytes_FromStringAndSize(NULL, cap)) == NULL)
            return -1;
    }
    else if (_PyBytes_Resize(&b->bytes, cap) < 0) {   /* frees the object when it fails */
        b->bytes = NULL;
        return -1;
    }
    b->p = PyBytes_AS_STRING(b->bytes);
    b->cap = cap;
    return 0;
}

/* The bytes written (a new reference), or NULL; the buffer is left empty either way. */
static PyObject *
finish(Buf *b)
{
    PyObject *out = b->bytes;
    b->bytes = NULL;
    if (out == NULL)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (_PyBytes_Resize(&out, b->len) < 0)
        return NULL;
    return out;
}

/* The callers reserve room first; these only copy. */
static inline void
put(Buf *b, const char *s, Py_ssize_t n)
{
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define PUT_LITERAL(b, lit) put((b), (lit), (Py_ssize_t)sizeof(lit) - 1)

static inline void
put_bytes(Buf *b, PyObject *bytes)
{
    put(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

static char digit_pairs[200];      /* "00" "01" .. "99" (init_tables) */

static void
put_u64(Buf *b, unsigned long long n, int width)
{
    char tmp[24];
    int i = 24;
    while (n >= 100) {               /* two digits at a time */
        unsigned r = (unsigned)(n % 100);
        n /= 100;
        i -= 2;
        memcpy(tmp + i, digit_pairs + 2 * r, 2);
    }
    if (n >= 10) {
        i -= 2;
        memcpy(tmp + i, digit_pairs + 2 * n, 2);
    }
    else {
        tmp[--i] = (char)('0' + n);
    }
    while (24 - i < width)
        tmp[--i] = '0';
    put(b, tmp + i, 24 - i);
}

static void
put_i64(Buf *b, long long n)
{
    if (n < 0) {
        PUT_LITERAL(b, "-");
        put_u64(b, 0ULL - (unsigned long long)n, 0);
    }
    else {
        put_u64(b, (unsigned long long)n, 0);
    }
}

/* x as Python's "%.<digits>f" writes it (correctly rounded). The integer way is taken when it
 * cannot differ: x * 10^digits is off the exact product by at most half an ulp, so unless the
 * fraction lies within an ulp of one half, both round the same way; otherwise Python's own
 * formatting decides. At most 40 characters. */
static int
put_fixed(Buf *b, double x, int digits)
{
    static const double scales[] = {1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6};
    static const unsigned long long iscales[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    double v = x * scales[digits];
    if (v >= 0.0 && v < 4503599627370496.0) {          /* 2^52: the ulp is below one half */
        double whole = floor(v);
        double rest = v - whole;                         /* exact */
        if (fabs(rest - 0.5) > v * DBL_EPSILON) {      /* v's ulp is at most v * 2^-52 */
            unsigned long long n = (unsigned long long)whole + (rest > 0.5);
            put_u64(b, n / iscales[digits], 0);
            PUT_LITERAL(b, ".");
            put_u64(b, n % iscales[digits], digits);
            return 0;
        }
    }
    char *s = PyOS_double_to_string(x, 'f', digits, 0, NULL);
    if (s == NULL)
        return -1;
    size_t n = strlen(s);
    if (n > 40) {                                        /* a huge or odd number: not from a clock */
        PyMem_Free(s);
        PyErr_SetString(PyExc_ValueError, "time out of range");
        return -1;
    }
    put(b, s, (Py_ssize_t)n);
    PyMem_Free(s);
    return 0;
}

/* 0: copied as it is; 1: an ASCII byte JSON escapes; 2: the lead of a multi-byte character;
 * 3: the schemes' first letter in either case, copied as it is (where a credential scheme word
 * may start: the word test; set_byte_classes). */
static unsigned char byte_class[256];
static const char hex_digits[] = "0123456789abcdef";

static void
init_tables(void)
{
    for (int d = 0; d < 100; d++) {
        digit_pairs[2 * d] = (char)('0' + d / 10);
        digit_pairs[2 * d + 1] = (char)('0' + d % 10);
    }
    for (int c = 0; c < 256; c++)
        byte_class[c] = c < 0x20 || c == '"' || c == '\\' ? 1 : c >= 0x80 ? 2 : 0;
}

/* Class 3 for `letter` (lower case) and its upper case, and for no other byte. */
static void
set_byte_classes(unsigned char letter)
{
    for (int c = 0; c < 256; c++)
        if (byte_class[c] == 3)
            byte_class[c] = 0;
    byte_class[letter] = byte_class[letter - 32] = 3;
}

/* The length of the UTF-8 character at s (at most n bytes left), or 0 when it is not one
 * (overlong forms, surrogates and code points past U+10FFFF are not: Python's strict decoder). */
static inline int
utf8_length(const unsigned char *s, Py_ssize_t n)
{
    unsigned char c = s[0];
#define CONT(i) (n > (i) && (s[i] & 0xC0) == 0x80)
    if (c >= 0xC2 && c <= 0xDF)
        return CONT(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (!CONT(1) || !CONT(2))
            return 0;
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F))
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (!CONT(1) || !CONT(2) || !CONT(3))
            return 0;
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
            return 0;
        return 4;
    }
    return 0;
#undef CONT
}

/* Whether the n bytes at s are all ASCII (eight at a time). */
static int
all_ascii(const unsigned char *s, Py_ssize_t n)
{
    uint64_t high = 0;
    Py_ssize_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        high |= w;
    }
    for (; i < n; i++)
        high |= s[i];
    return (high & 0x8080808080808080ULL) == 0;
}

/* ---- the masking pre-check's word test (mask.py: json_triggers, json_find) ------------------
 *
 * A frame (a JSON text) is a suspect when it holds a backslash, the end of a key that SECRET_KEY
 * matches (a spelling of a secret key name right before a closing quote, with the opening quote
 * or a separator before it), or a credential scheme word ("bearer", "basic") where a string could
 * hold whitespace after it (a space or control byte in the frame, or any non-ASCII byte); a
 * non-ASCII frame also when it holds a letter that IGNORECASE folds to an ASCII one. The same
 * rules as mask.py's, per frame, found by memchr: a look back from each quote, a look ahead from
 * each scheme's first letter. escape_json() runs the same rules in its escaping pass (encode()'s
 * `word_test`).
 *
 * The names, schemes and folds are not written here: they are telemetry/secret_rules.py's, the
 * table the log masker and mask.py read too, handed over once at import by mask.py
 * (set_secret_rules) and turned into lookup tables. Why at start-up rather than generated at
 * build time: the build is setuptools' own, from pyproject.toml's ext-module (pip, and
 * .ci/sanitize's two builds, declare no generator step), and a generated header would be a
 * second copy to keep in step. The tables keep the per-byte work what the hand-written tests
 * had: a quote costs one bit lookup by the two bytes before it (end_pairs), the rare quote that
 * passes walks a suffix trie of the spellings back from it (out of line), and the SIMD pass
 * compares one letter, the schemes' shared first one, as it compared 'b'. Measured against the
 * hand-written test (2026-12-07, echo-like frames with a progressToken): +2% time per record
 * in the C encoder alone, most of it the trie walk for near misses. */

#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

static inline unsigned char
lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* The secret rules (set_secret_rules). Keys: a suffix trie of the spellings, read backward from a
 * closing quote (node 0 is the root; child and sibling 0 mean none), and for each pair of bytes
 * that ends a spelling (either case), the bit before << 8 | last of end_pairs (8 KiB: one load
 * by the two bytes as they are). */
#define MAX_KEY_NODES 4096
#define MAX_SPELLING 64
#define MAX_SCHEMES 8
#define MAX_SCHEME 32
#define MAX_FOLDS 8
#define MAX_FOLD 8
typedef struct {
    unsigned char c, terminal;        /* the letter; whether a spelling starts at it */
    int16_t child, sibling;
} KeyNode;
typedef struct {
    KeyNode nodes[MAX_KEY_NODES];
    int node_count;
    uint8_t end_pairs[8192];
    unsigned char key_starts[256];    /* the opening quote and the separators */
    char schemes[MAX_SCHEMES][MAX_SCHEME];
    Py_ssize_t scheme_len[MAX_SCHEMES];
    int scheme_count;
    unsigned char scheme_letter;      /* the schemes' first letter, lower case */
    char folds[MAX_FOLDS][MAX_FOLD];
    Py_ssize_t fold_len[MAX_FOLDS];
    int fold_count;
} Rules;
static Rules rules;
static int rules_set;                 /* set_secret_rules has been called */

static int
check_rules(void)
{
    if (!rules_set)
        PyErr_SetString(PyExc_RuntimeError, "the word test runs after set_secret_rules() (dump/mask.py calls it)");
    return rules_set;
}

/* Whether the quote at s[q] closes a key SECRET_KEY matches: a spelling ends at q, and before it
 * is the key's opening quote or a separator. Rare (after may_end_secret_key), so kept out of line:
 * inlined into escape_json's loop, it made that loop larger and a record about 1% slower. */
static NOINLINE int
secret_key_ends(const unsigned char *s, Py_ssize_t q)
{
    int node = 0;
    for (Py_ssize_t i = q - 1; i >= 0; i--) {
        unsigned char c = lower(s[i]);
        int k = rules.nodes[node].child;
        while (k && rules.nodes[k].c != c)
            k = rules.nodes[k].sibling;
        if (!k)
            return 0;
        node = k;
        if (rules.nodes[node].terminal && i > 0 && rules.key_starts[s[i - 1]])
            return 1;
    }
    return 0;
}

/* Whether the quote at s[q] may close such a key, by the two bytes before it: most quotes end no
 * spelling, and this is all they cost. */
static inline int
may_end_secret_key(const unsigned char *s, Py_ssize_t q)
{
    if (q < 2)
        return 0;
    unsigned pair = (unsigned)s[q - 2] << 8 | s[q - 1];
    return (rules.end_pairs[pair >> 3] >> (pair & 7)) & 1;
}

/* Whether a scheme word starts at s[at] (a byte equal to the schemes' first letter, either case). */
static NOINLINE int
scheme_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t at)
{
    for (int k = 0; k < rules.scheme_count; k++) {
        Py_ssize_t len = rules.scheme_len[k];
        if (n - at < len)
            continue;
        Py_ssize_t j = 1;             /* the first letter is known to match */
        while (j < len && lower(s[at + j]) == (unsigned char)rules.schemes[k][j])
            j++;
        if (j == len)
            return 1;
    }
    return 0;
}

/* Whether a scheme word starts at some `first` byte of s. */
static int
scheme_from(const unsigned char *s, Py_ssize_t n, unsigned char first)
{
    const unsigned char *p = s, *end = s + n;
    while ((p = memchr(p, first, end - p)) != NULL) {
        if (scheme_at(s, n, p - s))
            return 1;
        p++;
    }
    return 0;
}

/* Whether s holds a non-ASCII letter that IGNORECASE folds to an ASCII one of the words
 * (secret_rules.CASE_FOLDS, UTF-8). */
static int
has_fold(const unsigned char *s, Py_ssize_t n)
{
    for (int k = 0; k < rules.fold_count; k++)
        if (memmem(s, n, rules.folds[k], rules.fold_len[k]) != NULL)
            return 1;
    return 0;
}

static int
space_or_control(const unsigned char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] - 1u < (unsigned)' ')     /* 0x01 to 0x20: not NUL, mask.py's batch separator */
            return 1;
    return 0;
}

static int
suspect(const unsigned char *s, Py_ssize_t n)
{
    if (memchr(s, '\\', n) != NULL)
        return 1;
    const unsigned char *q = s, *end = s + n;
    while ((q = memchr(q, '"', end - q)) != NULL) {
        if (may_end_secret_key(s, q - s) && secret_key_ends(s, q - s))
            return 1;
        q++;
    }
    int ascii = all_ascii(s, n);
    /* A scheme word needs whitespace after it, in a string: in an ASCII text without escapes
     * that is a space (raw control characters are not JSON, but count them anyway). */
    unsigned char first = rules.scheme_letter;
    if ((scheme_from(s, n, first) || scheme_from(s, n, (unsigned char)(first - 32))) &&
        (!ascii || space_or_control(s, n)))
        return 1;
    return !ascii && has_fold(s, n);
}

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define WORDS 1
/* The high bit of each of the 8 bytes in w that JSON escapes (below 0x20, '"', '\\') or that is
 * not ASCII, by the usual word-at-a-time test for a byte below n, (w - n * 0x01..) & ~w. Bytes
 * after the first such byte may be flagged wrongly (borrows), never bytes before it. */
static inline uint64_t
special_bytes(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ULL;
    uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
    return (((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) | w) &
           (ones * 0x80);
}

/* The schemes' first letter, either case, among the 8 bytes of w (flagged like special_bytes:
 * exact up to the first); `letters` is that letter in every byte. */
static inline uint64_t
scheme_letter_bytes(uint64_t w, uint64_t letters)
{
    const uint64_t ones = 0x0101010101010101ULL;
    uint64_t x = (w | ones * 0x20) ^ letters;            /* zero where the byte is the letter */
    return (x - ones) & ~x & (ones * 0x80);
}
#endif

enum { ESCAPED = 0, NOT_UTF8 = 1, SUSPECT = 2 };

/* The byte at s[*pi], one escape_json stops at: copied or escaped (a whole character when it
 * starts a multi-byte one) at *po, with the word test's part for it. Advances both. */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static ALWAYS_INLINE int
escape_byte(const unsigned char *s, Py_ssize_t n, Py_ssize_t *pi, char **po, int test, int *scheme, int *ascii)
{
    Py_ssize_t i = *pi;
    char *o = *po;
    unsigned char c = s[i];
    switch (byte_class[c]) {
    case 0:
        *o++ = (char)c;
        i++;
        break;
    case 3:                    /* the schemes' first letter: does one of them start here? */
        if (test && !*scheme && scheme_at(s, n, i))
            *scheme = 1;
        *o++ = (char)c;
        i++;
        break;
    case 1:
        if (test && (c == '\\' || (c == '"' && may_end_secret_key(s, i) && secret_key_ends(s, i))))
            return SUSPECT;
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex_digits[c >> 4];
            *o++ = hex_digits[c & 15];
        }
        i++;
        break;
    default: {
        int len = utf8_length(s + i, n - i);
        if (len == 0)
            return NOT_UTF8;
        *ascii = 0;
        memcpy(o, s + i, len);
        o += len;
        i += len;
    }
    }
    *pi = i;
    *po = o;
    return ESCAPED;
}

#ifdef __SSE2__
/* The bytes of a 16-byte block escape_json must look at, as a bit mask: below 0x20 or not ASCII
 * (one signed comparison), '"', '\\', and with the word test the schemes' first letter (`letter`,
 * in every byte: read once per frame, as the compiler cannot keep a global in a register across
 * the output's stores). */
static inline unsigned
specials16(__m128i v, int test, __m128i letter)
{
    __m128i m = _mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
                             _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
    if (test)
        m = _mm_or_si128(m, _mm_cmpeq_epi8(_mm_or_si128(v, _mm_set1_epi8(0x20)), letter));
    return (unsigned)_mm_movemask_epi8(m);
}
#endif

/* UTF-8 bytes s[0:n] as a JSON string at o, escaped as orjson escapes a str (the short escapes
 * \b \t \n \f \r, \u00XX in lower case for the other control characters, nothing else); needs
 * 6n+2 bytes of room, or the exact length (json_string_length). *end is set past the string.
 *
 * Plain bytes go 16 at a time (SSE2; 8 at a time elsewhere): a block is stored as it is, then
 * each byte to look at in it (from the block's bit mask) is handled in place, and the rest of
 * the block stored again after it. JSON frames have a quote every few bytes: reloading the block
 * after each was most of a record's cost. Every store stays inside the room: at least as many
 * output bytes remain as input bytes.
 *
 * With `test`, the masking pre-check's word test (suspect(), above) runs in the same pass: it
 * looks at the bytes the escaping stops at anyway (quotes, backslashes, non-ASCII) and at the
 * schemes' first letter.
 * Returns ESCAPED, NOT_UTF8 or SUSPECT; after the last two the output is to be dropped. */
static int
escape_json(char *o, const unsigned char *s, Py_ssize_t n, int test, char **end)
{
    Py_ssize_t i = 0;
    int scheme = 0, ascii = 1, r;
#if defined(__SSE2__)
    const __m128i letter = _mm_set1_epi8((char)rules.scheme_letter);
#elif defined(WORDS)
    const uint64_t letters = 0x0101010101010101ULL * rules.scheme_letter;
#endif
    *o++ = '"';
    while (i < n) {
#if defined(__SSE2__)
        if (n - i >= 16) {
            Py_ssize_t base = i;
            __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
            _mm_storeu_si128((__m128i *)o, v);
            unsigned m = specials16(v, test, letter);
            if (!m) {
                o += 16;
                i += 16;
                continue;
            }
            for (;;) {
                Py_ssize_t at = base + __builtin_ctz(m);
                o += at - i;           /* the plain bytes before it are stored already */
                i = at;
                if ((r = escape_byte(s, n, &i, &o, test, &scheme, &ascii)) != ESCAPED)
                    return r;
                if (i - base >= 16 || n - i < 16)   /* past the block, or too near the end: go on */
                    break;
                _mm_storeu_si128((__m128i *)o, _mm_loadu_si128((const __m128i *)(s + i)));
                m &= ~0u << (i - base);             /* the bytes handled (a character's too) */
                if (!m) {              /* the rest of the block is plain, and stored */
                    o += base + 16 - i;
                    i = base + 16;
                    break;
                }
            }
            continue;
        }
#elif defined(WORDS)
        if (n - i >= 8) {          /* 8 bytes at a time up to the first one to look at */
            uint64_t w, special;
            memcpy(&w, s + i, 8);
            special = special_bytes(w) | (test ? scheme_letter_bytes(w, letters) : 0);
            memcpy(o, &w, 8);
            if (!special) {
                o += 8;
                i += 8;
                continue;
            }
            int plain = __builtin_ctzll(special) >> 3;
            o += plain;
            i += plain;
        }
#endif
        if ((r = escape_byte(s, n, &i, &o, test, &scheme, &ascii)) != ESCAPED)
            return r;
    }
    *o++ = '"';
    *end = o;
    if (test && ((scheme && (!ascii || space_or_control(s, n))) || (!ascii && has_fold(s, n))))
        return SUSPECT;
    return ESCAPED;
}

/* The exact length of escape_json's output for n UTF-8 bytes: reserved for large frames,
 * whose worst case (6 bytes per byte) would be a needless burst of memory (16 MiB frames are
 * allowed). */
static Py_ssize_t
json_string_length(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t len = n + 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (byte_class[c] == 1)
            len += c == '"' || c == '\\' || c == '\b' || c == '\t' || c == '\n' || c == '\f' || c == '\r' ? 1 : 5;
    }
    return len;
}

/* A Python callable's answer, which must be bytes (a new reference, or NULL with an error). */
static PyObject *
call_for_bytes(PyObject *func, PyObject *arg, PyObject *arg2)
{
    PyObject *out = arg2 ? PyObject_CallFunctionObjArgs(func, arg, arg2, NULL)
                         : PyObject_CallOneArg(func, arg);
    if (out != NULL && !PyBytes_Check(out)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "a dump encoder callable must return bytes");
        return NULL;
    }
    return out;
}

enum { HOP_ASKED = 5, HOP_ANSWERED = 6, HOP_SIZE = 7 };
#define LARGE_FRAME (64 << 10)   /* frames past this get an exact reservation */

static PyObject *
encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "encode() takes 11 arguments");
        return NULL;
    }
    PyObject *batch = args[0], *sec_text = args[2], *overrides = args[4], *kinds = args[5];
    PyObject *methods = args[6], *method_json = args[7], *to_json = args[8], *tail_of = args[9];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    double second_at = PyFloat_AsDouble(args[3]);
    int word_test = PyObject_IsTrue(args[10]);
    if (word_test < 0 || PyErr_Occurred() || (word_test && !check_rules()))
        return NULL;
    if (!PyList_CheckExact(batch) || !PyBytes_Check(sec_text) || !PyDict_CheckExact(methods) ||
        !PyTuple_CheckExact(kinds) || PyTuple_GET_SIZE(kinds) != 4 ||
        (overrides != Py_None && !PyList_CheckExact(overrides))) {
        PyErr_SetString(PyExc_TypeError, "encode(): unexpected argument types");
        return NULL;
    }
    PyObject *request = PyTuple_GET_ITEM(kinds, 0), *notification = PyTuple_GET_ITEM(kinds, 1);
    PyObject *response = PyTuple_GET_ITEM(kinds, 2), *error = PyTuple_GET_ITEM(kinds, 3);
    if (start < 0)
        start = 0;
    Buf out = {NULL, NULL, 0, 0};
    Py_ssize_t opened = 0, i;
    /* Room for the whole chunk at once, as JSON frames usually need it (escaped quotes), up to
     * 4 MiB: growing the output may copy it. Each record reserves exactly what it needs too. */
    Py_ssize_t room = 0;
    for (i = start; i < PyList_GET_SIZE(batch) && room < (4 << 20); i++) {
        PyObject *item = PyList_GET_ITEM(batch, i);
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 7 && PyBytes_CheckExact(PyTuple_GET_ITEM(item, 2)))
            room += Py_MIN(PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 2)), LARGE_FRAME) * 3 / 2 + 400;
    }
    if (reserve(&out, Py_MIN(room, 4 << 20)) < 0)
        return NULL;
    int stopped_at_suspect = 0;
    PyObject *record = NULL, *method = NULL, *id = NULL, *tail = NULL;
    for (i = start; i < PyList_GET_SIZE(batch); i++) {
        record = PyList_GET_ITEM(batch, i);
        Py_INCREF(record);                 /* the callables below run Python code */
        if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 7)
            break;
        PyObject *mono_obj = PyTuple_GET_ITEM(record, 0), *hop = PyTuple_GET_ITEM(record, 1);
        PyObject *raw = PyTuple_GET_ITEM(record, 2), *kind = PyTuple_GET_ITEM(record, 3);
        PyObject *method_obj = PyTuple_GET_ITEM(record, 4), *id_obj = PyTuple_GET_ITEM(record, 5);
        PyObject *policy = PyTuple_GET_ITEM(record, 6);
        if (!PyFloat_CheckExact(mono_obj) || !PyBytes_CheckExact(raw) || !PyList_CheckExact(hop) ||
            PyList_GET_SIZE(hop) < HOP_SIZE)
            break;
        int head_index = kind == request ? 0 : kind == notification ? 1 : kind == response ? 2
                       : kind == error ? 3 : -1;
        if (head_index < 0)                /* a frame the gateway wrote (kind None): Python's */
            break;
        double mono = PyFloat_AS_DOUBLE(mono_obj);
        double frac = (mono - second_at) * 1e6;
        if (!(frac >= 0.0 && frac < 1e6))  /* another second: the caller starts a new call */
            break;
        if (!(id_obj == Py_None || PyLong_CheckExact(id_obj) || PyUnicode_CheckExact(id_obj)))
            break;                         /* not a JSON-RPC id; nor safe as a dict key here */
        /* The frame: a masked text from the caller, or the bytes (which must be UTF-8 and, with
         * the word test, not a suspect: escape_json tells, below). */
        PyObject *override = overrides == Py_None || i >= PyList_GET_SIZE(overrides)
                           ? Py_None : PyList_GET_ITEM(overrides, i);
        const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(raw);
        Py_ssize_t size = PyBytes_GET_SIZE(raw);
        if (override != Py_None && !PyBytes_Check(override))
            break;
        if (override == Py_None && size > (PY_SSIZE_T_MAX / 2 - 4096) / 6) {
            PyErr_NoMemory();
            goto fail;
        }

        /* The parts Python decides (rare for all but the method, which is usually known). */
        method = PyDict_GetItemWithError(methods, method_obj);   /* borrowed */
        if (method != NULL)
            Py_INCREF(method);
        else if (PyErr_Occurred() || (method = call_for_bytes(method_json, method_obj, NULL)) == NULL)
            goto fail;
        long long id_value = 0;
        int id_is_int = 0;
        if (PyLong_CheckExact(id_obj)) {
            int overflow;
            id_value = PyLong_AsLongLongAndOverflow(id_obj, &overflow);
            if (id_value == -1 && PyErr_Occurred())
                goto fail;
            id_is_int = !overflow;
        }
        if (!id_is_int && id_obj != Py_None && (id = call_for_bytes(to_json, id_obj, NULL)) == NULL)
            goto fail;
        if (policy != Py_None && (tail = call_for_bytes(tail_of, policy, Py_True)) == NULL)
            goto fail;

        /* From here on nothing calls back into Python: the hop's items are used as they are. */
        PyObject *head = PyList_GET_ITEM(hop, head_index);
        PyObject *asked = PyList_GET_ITEM(hop, HOP_ASKED), *answered = PyList_GET_ITEM(hop, HOP_ANSWERED);
        if (!PyBytes_Check(head) || !PyDict_CheckExact(asked) || !PyDict_CheckExact(answered)) {
            Py_CLEAR(method);
            Py_CLEAR(id);
            Py_CLEAR(tail);
            break;
        }
        Py_ssize_t need = 200 + PyBytes_GET_SIZE(sec_text) + PyBytes_GET_SIZE(head) +
                          PyBytes_GET_SIZE(method) + (id ? PyBytes_GET_SIZE(id) : 0) +
                          (tail ? PyBytes_GET_SIZE(tail) : 0) +
                          (override != Py_None ? PyBytes_GET_SIZE(override)
                           : size > LARGE_FRAME ? json_string_length(text, size) : 6 * size + 2);
        if (reserve(&out, need) < 0)
            goto fail;
        /* The request this answers, looked up only: the open-request maps change once the
         * record is complete (a frame escape_json refuses leaves nothing behind). */
        double latency = 0.0;
        int has_latency = 0, answers = 0;  /* int and str keys: hashing runs no Python code */
        if (id_obj != Py_None && (kind == response || kind == error)) {
            PyObject *since = PyDict_GetItemWithError(answered, id_obj);   /* borrowed */
            if (since == NULL && PyErr_Occurred())
                goto fail;
            if (since != NULL) {
                answers = 1;
                if (PyFloat_Check(since)) {
                    latency = (mono - PyFloat_AS_DOUBLE(since)) * 1000.0;
                    has_latency = 1;
                }
            }
        }

        Py_ssize_t record_start = out.len;
        PUT_LITERAL(&out, "{\"ts\":\"");
        put_bytes(&out, sec_text);
        PUT_LITERAL(&out, ".");
        put_u64(&out, (unsigned long long)frac, 6);
        PUT_LITERAL(&out, "Z\",\"mono\":");
        if (put_fixed(&out, mono, 6) < 0)
            goto fail;
        put_bytes(&out, head);
        PUT_LITERAL(&out, ",\"method\":");
        put_bytes(&out, method);
        PUT_LITERAL(&out, ",\"id\":");
        if (id_is_int)
            put_i64(&out, id_value);
        else if (id != NULL)
            put_bytes(&out, id);
        else
            PUT_LITERAL(&out, "null");
        PUT_LITERAL(&out, ",\"bytes\":");
        put_i64(&out, size);
        if (has_latency) {
            PUT_LITERAL(&out, ",\"latency_ms\":");
            if (put_fixed(&out, latency, 3) < 0)
                goto fail;
        }
        PUT_LITERAL(&out, ",\"policy\":");
        if (tail != NULL)
            put_bytes(&out, tail);
        else
            PUT_LITERAL(&out, "null,\"frame\":");
        if (override != Py_None) {
            put_bytes(&out, override);
        }
        else {                             /* escaped in place: no copy of the frame's text */
            char *end = NULL;
            int verdict = escape_json(out.p + out.len, text, size, word_test, &end);
            if (verdict != ESCAPED) {      /* not UTF-8, or a suspect: the record is dropped */
                out.len = record_start;
                stopped_at_suspect = verdict == SUSPECT;
                Py_CLEAR(method);
                Py_CLEAR(id);
                Py_CLEAR(tail);
                break;
            }
            out.len = end - out.p;
        }
        PUT_LITERAL(&out, "}\n");
        if (id_obj != Py_None && kind == request) {
            if (PyDict_SetItem(asked, id_obj, mono_obj) < 0)
                goto fail;
            opened++;
        }
        else if (answers) {
            if (PyDict_DelItem(answered, id_obj) < 0)
                goto fail;
            opened--;
        }
        Py_CLEAR(method);
        Py_CLEAR(id);
        Py_CLEAR(tail);
        Py_CLEAR(record);
    }
    Py_CLEAR(record);
    PyObject *data = finish(&out);
    if (data == NULL)
        return NULL;
    return Py_BuildValue("(Nnni)", data, opened, i, stopped_at_suspect);

fail:
    Py_XDECREF(record);
    Py_XDECREF(method);
    Py_XDECREF(id);
    Py_XDECREF(tail);
    Py_XDECREF(out.bytes);
    return NULL;
}

/* The bytes of item k of a sequence (borrowed), 1 to `max` long, else NULL with ValueError. */
static const char *
rule_bytes(PyObject *seq, Py_ssize_t k, Py_ssize_t max, Py_ssize_t *len, const char *what)
{
    PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
    if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) < 1 || PyBytes_GET_SIZE(item) > max) {
        PyErr_Format(PyExc_ValueError, "set_secret_rules(): each of %s must be bytes, 1 to %zd long", what, max);
        return NULL;
    }
    *len = PyBytes_GET_SIZE(item);
    return PyBytes_AS_STRING(item);
}

/* Add a spelling (lower-cased) to the suffix trie: 0, or -1 when the trie is full. */
static int
add_spelling(Rules *r, const char *word, Py_ssize_t len)
{
    int node = 0;
    for (Py_ssize_t i = len - 1; i >= 0; i--) {
        unsigned char c = lower((unsigned char)word[i]);
        int k = r->nodes[node].child;
        while (k && r->nodes[k].c != c)
            k = r->nodes[k].sibling;
        if (!k) {
            if (r->node_count >= MAX_KEY_NODES)
                return -1;
            k = r->node_count++;
            r->nodes[k] = (KeyNode){c, 0, 0, r->nodes[node].child};
            r->nodes[node].child = (int16_t)k;
        }
        node = k;
    }
    r->nodes[node].terminal = 1;
    unsigned char last = lower((unsigned char)word[len - 1]), before = lower((unsigned char)word[len - 2]);
    for (int k = 0; k < 4; k++) {     /* each letter in either case */
        unsigned a = k & 1 && before >= 'a' && before <= 'z' ? before - 32u : before;
        unsigned b = k & 2 && last >= 'a' && last <= 'z' ? last - 32u : last;
        unsigned pair = a << 8 | b;
        r->end_pairs[pair >> 3] |= (uint8_t)(1 << (pair & 7));
    }
    return 0;
}

/* set_secret_rules(spellings, separators, schemes, folds): the table of telemetry/secret_rules.py
 * (see the word test, above), checked and turned into lookup tables; until it is called the
 * word test refuses to run. Called again, it replaces them. */
static PyObject *
set_secret_rules(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "set_secret_rules() takes spellings, separators, schemes and folds");
        return NULL;
    }
    static Rules r;                   /* static: the trie alone is 24 KiB */
    memset(&r, 0, sizeof r);
    r.node_count = 1;
    PyObject *seqs[4] = {NULL, NULL, NULL, NULL};
    PyObject *result = NULL;
    for (int k = 0; k < 4; k++)
        if (k != 1 && (seqs[k] = PySequence_Fast(args[k], "set_secret_rules() takes sequences of bytes")) == NULL)
            goto done;
    Py_ssize_t len;
    for (Py_ssize_t k = 0; k < PySequence_Fast_GET_SIZE(seqs[0]); k++) {
        const char *word = rule_bytes(seqs[0], k, MAX_SPELLING, &len, "the spellings");
        if (word == NULL)
            goto done;
        if (len < 2 || !all_ascii((const unsigned char *)word, len) || memchr(word, '"', len) || memchr(word, '\\', len)) {
            PyErr_SetString(PyExc_ValueError, "set_secret_rules(): a spelling is 2 or more ASCII bytes, no quote or backslash");
            goto done;
        }
        if (add_spelling(&r, word, len) < 0) {
            PyErr_SetString(PyExc_ValueError, "set_secret_rules(): too many spellings for the tables");
            goto done;
        }
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "set_secret_rules(): separators must be bytes");
        goto done;
    }
    r.key_starts['"'] = 1;
    for (Py_ssize_t k = 0; k < PyBytes_GET_SIZE(args[1]); k++)
        r.key_starts[(unsigned char)PyBytes_AS_STRING(args[1])[k]] = 1;
    r.scheme_count = (int)PySequence_Fast_GET_SIZE(seqs[2]);
    if (r.scheme_count < 1 || r.scheme_count > MAX_SCHEMES) {
        PyErr_Format(PyExc_ValueError, "set_secret_rules(): 1 to %d schemes", MAX_SCHEMES);
        goto done;
    }
    for (int k = 0; k < r.scheme_count; k++) {
        const char *word = rule_bytes(seqs[2], k, MAX_SCHEME - 1, &len, "the schemes");
        if (word == NULL)
            goto done;
        for (Py_ssize_t j = 0; j < len; j++)
            r.schemes[k][j] = (char)lower((unsigned char)word[j]);
        r.scheme_len[k] = len;
        /* one first letter, a letter: the SIMD pass folds case by setting bit 0x20 */
        unsigned char first = (unsigned char)r.schemes[k][0];
        if (first < 'a' || first > 'z' || (k > 0 && first != r.scheme_letter)) {
            PyErr_SetString(PyExc_ValueError, "set_secret_rules(): the schemes must start with one same ASCII letter");
            goto done;
        }
        r.scheme_letter = first;
    }
    r.fold_count = (int)PySequence_Fast_GET_SIZE(seqs[3]);
    if (r.fold_count > MAX_FOLDS) {
        PyErr_Format(PyExc_ValueError, "set_secret_rules(): at most %d folds", MAX_FOLDS);
        goto done;
    }
    for (int k = 0; k < r.fold_count; k++) {
        const char *fold = rule_bytes(seqs[3], k, MAX_FOLD, &len, "the folds");
        if (fold == NULL)
            goto done;
        memcpy(r.folds[k], fold, len);
        r.fold_len[k] = len;
    }
    memcpy(&rules, &r, sizeof r);
    set_byte_classes(rules.scheme_letter);
    rules_set = 1;
    result = Py_NewRef(Py_None);
done:
    for (int k = 0; k < 4; k++)
        Py_XDECREF(seqs[k]);
    return result;
}

static PyObject *
suspects(PyObject *module, PyObject *raws)
{
    (void)module;
    if (!check_rules())
        return NULL;
    PyObject *seq = PySequence_Fast(raws, "suspects() takes a sequence of bytes");
    if (seq == NULL)
        return NULL;
    PyObject *found = PyList_New(0);
    if (found == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *raw = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(raw)) {
            PyErr_SetString(PyExc_TypeError, "suspects() takes a sequence of bytes");
            goto fail;
        }
        if (suspect((const unsigned char *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(found, index) < 0) {
                Py_XDECREF(index);
                goto fail;
            }
            Py_DECREF(index);
        }
    }
    Py_DECREF(seq);
    return found;
fail:
    Py_DECREF(seq);
    Py_DECREF(found);
    return NULL;
}

/* ---- the hooks (tap.py's Tap.frame and Tap.put) ------------------------------------------------
 *
 * A hook runs on the proxy's hot path for every frame at every hop. In Python it cost about as
 * much as encoding the record later (a bound-method call and some forty bytecodes); here it is one
 * C call: the monotonic clock, the hop, one tuple appended to the dumper's queue. The same rules
 * as tap.py's _PyTapCore: when the queue is full the frame is only counted (`dumper.dropped`);
 * the frame that makes the queue non-empty calls `dumper.wake_up()`. */

typedef struct {
    PyObject_HEAD
    PyObject *queue;     /* the dumper's list of hook tuples (emptied in place by the writer) */
    PyObject *hops;      /* direction -> hop (a dict; its subclass's __missing__ makes new ones) */
    PyObject *dumper;
    Py_ssize_t limit;    /* frames the queue may hold */
} TapCore;

static PyObject *str_raw, *str_kind, *str_method, *str_id, *str_note, *str_wake_up, *str_dropped, *int_one;

static int
tapcore_traverse(TapCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->queue);
    Py_VISIT(self->hops);
    Py_VISIT(self->dumper);
    return 0;
}

static int
tapcore_clear(TapCore *self)
{
    Py_CLEAR(self->queue);
    Py_CLEAR(self->hops);
    Py_CLEAR(self->dumper);
    return 0;
}

static void
tapcore_dealloc(TapCore *self)
{
    PyObject_GC_UnTrack(self);
    tapcore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* time.monotonic(), as CPython computes it (nanoseconds, then seconds as a double). */
static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return ns % 1000000000LL == 0 ? (double)(ns / 1000000000LL) : (double)ns / 1e9;
}

/* Queue one hook tuple (mono, hop, raw, kind, method, id, policy); arguments borrowed. */
static PyObject *
tap_hook(TapCore *self, PyObject *direction, PyObject *raw, PyObject *kind, PyObject *method, PyObject *id,
         PyObject *policy)
{
    if (self->queue == NULL || !PyList_CheckExact(self->queue) || self->hops == NULL || self->dumper == NULL) {
        PyErr_SetString(PyExc_TypeError, "a dump tap without its queue, hops or dumper");
        return NULL;
    }
    if (PyList_GET_SIZE(self->queue) >= self->limit) {      /* full: count it, never wait */
        PyObject *dropped = PyObject_GetAttr(self->dumper, str_dropped);
        if (dropped == NULL)
            return NULL;
        PyObject *more = PyNumber_Add(dropped, int_one);
        Py_DECREF(dropped);
        if (more == NULL)
            return NULL;
        int failed = PyObject_SetAttr(self->dumper, str_dropped, more);
        Py_DECREF(more);
        if (failed < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *mono = PyFloat_FromDouble(monotonic());
    if (mono == NULL)
        return NULL;
    PyObject *hop = NULL;
    if (PyDict_Check(self->hops)) {
        hop = PyDict_GetItemWithError(self->hops, direction);   /* borrowed */
        Py_XINCREF(hop);
    }
    if (hop == NULL && (PyErr_Occurred() || (hop = PyObject_GetItem(self->hops, direction)) == NULL)) {
        Py_DECREF(mono);
        return NULL;
    }
    PyObject *record = PyTuple_New(7);
    if (record == NULL) {
        Py_DECREF(mono);
        Py_DECREF(hop);
        return NULL;
    }
    PyTuple_SET_ITEM(record, 0, mono);
    PyTuple_SET_ITEM(record, 1, hop);
    PyObject *rest[5] = {raw, kind, method, id, policy};
    for (int k = 0; k < 5; k++) {
        Py_INCREF(rest[k]);
        PyTuple_SET_ITEM(record, 2 + k, rest[k]);
    }
    int failed = PyList_Append(self->queue, record);
    Py_DECREF(record);
    if (failed < 0)
        return NULL;
    if (PyList_GET_SIZE(self->queue) == 1) {                 /* the writer may be idle */
        PyObject *done = PyObject_CallMethodNoArgs(self->dumper, str_wake_up);
        if (done == NULL)
            return NULL;
        Py_DECREF(done);
    }
    Py_RETURN_NONE;
}

/* The slots of wire.frame.Frame (a slotted dataclass) read at their offsets: five attribute
 * lookups were most of a hook's cost. Learnt from the first frame whose type has member
 * descriptors for all five; frames of any other type take PyObject_GetAttr. */
enum { F_RAW, F_KIND, F_METHOD, F_ID, F_NOTE, F_COUNT };
static PyTypeObject *slots_type;
static Py_ssize_t slot_offset[F_COUNT];

static int
learn_slots(PyTypeObject *type)
{
    PyObject *names[F_COUNT] = {str_raw, str_kind, str_method, str_id, str_note};
    Py_ssize_t offsets[F_COUNT];
    for (int k = 0; k < F_COUNT; k++) {
        PyObject *descr = _PyType_Lookup(type, names[k]);   /* borrowed */
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
            return 0;
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY))
            return 0;
        offsets[k] = member->offset;
    }
    memcpy(slot_offset, offsets, sizeof offsets);
    Py_INCREF(type);
    slots_type = type;
    return 1;
}

/* frame.<slot k>, a new reference (or NULL with AttributeError, as getattr would). */
static inline PyObject *
frame_slot(PyObject *frame, int k, PyObject *name)
{
    if (Py_TYPE(frame) == slots_type) {
        PyObject *value = *(PyObject **)((char *)frame + slot_offset[k]);
        if (value != NULL) {
            Py_INCREF(value);
            return value;
        }
    }
    return PyObject_GetAttr(frame, name);
}

/* frame(direction, frame, policy=None): a decoded frame (its raw, kind, method and id; the policy,
 * else the frame's note). */
static PyObject *
tap_frame(TapCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "frame() takes direction, frame and an optional policy");
        return NULL;
    }
    PyObject *frame = args[1], *policy = nargs > 2 ? args[2] : Py_None;
    PyObject *raw = NULL, *kind = NULL, *method = NULL, *id = NULL, *note = NULL, *done = NULL;
    if (slots_type == NULL)
        learn_slots(Py_TYPE(frame));
    if ((raw = frame_slot(frame, F_RAW, str_raw)) == NULL || (kind = frame_slot(frame, F_KIND, str_kind)) == NULL ||
        (method = frame_slot(frame, F_METHOD, str_method)) == NULL || (id = frame_slot(frame, F_ID, str_id)) == NULL)
        goto done;
    int given = policy == Py_None ? 0 : PyObject_IsTrue(policy);   /* `policy or frame.note` */
    if (given < 0)
        goto done;
    if (!given && (note = frame_slot(frame, F_NOTE, str_note)) == NULL)
        goto done;
    done = tap_hook(self, args[0], raw, kind, method, id, given ? policy : note);
done:
    Py_XDECREF(raw);
    Py_XDECREF(kind);
    Py_XDECREF(method);
    Py_XDECREF(id);
    Py_XDECREF(note);
    return done;
}

/* put(direction, raw, kind=None, method=None, msg_id=None, policy=None): the parts given. */
static PyObject *
tap_put(TapCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "put() takes direction, raw, and optional kind, method, msg_id, policy");
        return NULL;
    }
    PyObject *part[4];
    for (int k = 0; k < 4; k++)
        part[k] = nargs > 2 + k ? args[2 + k] : Py_None;
    return tap_hook(self, args[0], args[1], part[0], part[1], part[2], part[3]);
}

static PyMethodDef tapcore_methods[] = {
    {"frame", (PyCFunction)(void (*)(void))tap_frame, METH_FASTCALL,
     "frame(direction, frame, policy=None): queue a decoded frame seen at this tap (see tap.Tap)."},
    {"put", (PyCFunction)(void (*)(void))tap_put, METH_FASTCALL,
     "put(direction, raw, kind=None, method=None, msg_id=None, policy=None): queue a frame's parts "
     "(kind None: the writer decodes raw)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tapcore_members[] = {
    {"queue", T_OBJECT_EX, offsetof(TapCore, queue), 0, "the dumper's queue"},
    {"hops", T_OBJECT_EX, offsetof(TapCore, hops), 0, "direction -> hop"},
    {"dumper", T_OBJECT_EX, offsetof(TapCore, dumper), 0, "the dumper"},
    {"limit", T_PYSSIZET, offsetof(TapCore, limit), 0, "frames the queue may hold"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TapCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wire_gateway.dump._records.TapCore",
    .tp_basicsize = sizeof(TapCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hooks of a dump tap in C: frame() and put() (tap.py's Tap is built on it).",
    .tp_traverse = (traverseproc)tapcore_traverse,
    .tp_clear = (inquiry)tapcore_clear,
    .tp_dealloc = (destructor)tapcore_dealloc,
    .tp_methods = tapcore_methods,
    .tp_members = tapcore_members,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef records_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(batch, start, sec_text, second_at, overrides, kinds, methods, method_json, to_json, "
     "tail_of) -> (bytes, opened, stop): the usual records of a dump chunk (see encode.py)."},
    {"set_secret_rules", (PyCFunction)(void (*)(void))set_secret_rules, METH_FASTCALL,
     "set_secret_rules(spellings, separators, schemes, folds): the word test's table (mask.py hands over "
     "telemetry/secret_rules.py's)."},
    {"suspects", suspects, METH_O,
     "suspects(raws) -> [index]: the JSON frames the masking pre-check's words flag (see mask.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef records_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_records",
    .m_doc = "The dump's record encoder in C (optional: encode.py has the same in Python).",
    .m_size = -1,
    .m_methods = records_methods,
};

PyMODINIT_FUNC
PyInit__records(void)
{
    init_tables();
    if ((str_raw = PyUnicode_InternFromString("raw")) == NULL ||
        (str_kind = PyUnicode_InternFromString("kind")) == NULL ||
        (str_method = PyUnicode_InternFromString("method")) == NULL ||
        (str_id = PyUnicode_InternFromString("id")) == NULL ||
        (str_note = PyUnicode_InternFromString("note")) == NULL ||
        (str_wake_up = PyUnicode_InternFromString("wake_up")) == NULL ||
        (str_dropped = PyUnicode_InternFromString("dropped")) == NULL || (int_one = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (PyType_Ready(&TapCoreType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&records_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&TapCoreType);
    if (PyModule_AddObject(module, "TapCore", (PyObject *)&TapCoreType) < 0) {
        Py_DECREF(&TapCoreType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
