/*
 * SHA-256 of many buffers at once, several messages side by side in the lanes of vector registers.
 *
 * Why: lockstep stores backups in restic's repository format, where every blob is named by the
 * SHA-256 of its bytes. On CPUs without the SHA-NI instructions, OpenSSL (hashlib) hashes one
 * message at 300-400 MB/s, and that is about a quarter of a backup's CPU. Chunks are independent,
 * so this module hashes 8 of them at once in the eight 32-bit lanes of 256-bit registers (16 in
 * 512-bit ones), the way Intel's isa-l_crypto mb_sha256 does.
 *
 * Lane refill: the messages of a batch have different lengths. Each lane works on one message;
 * when that message (with its padding blocks) is done, the lane is loaded with the next message
 * not yet started, so all lanes stay busy until the batch runs out. Messages are started longest
 * first, so that the lanes run out at about the same time. Once nothing is left to start, a step
 * costs the same however few lanes are busy, so the last messages move to a narrower path: from 16
 * lanes to 8 when 8 are left, and from AVX2 to the scalar code for the very last one (where a
 * scalar step is faster than an AVX2 step carrying a single message).
 *
 * Paths, chosen at run time (__builtin_cpu_supports) so the module builds without -mavx2:
 *     "scalar"    1 lane, portable C
 *     "avx2"      8 lanes in 256-bit registers, rotates made of two shifts and an or
 *     "avx512vl"  8 lanes in 256-bit registers with AVX-512's rotate and three-input logic
 *                 instructions (vprord, vpternlogd): about 1.8x "avx2"; the default where present
 *     "avx512"    16 lanes in 512-bit registers, finishing on "avx512vl" (or "avx2"); only
 *                 faster than "avx512vl" from about 32 messages a call, so never the default
 * They share the round code below, written once over a family of operations (OPERATIONS##_ADD...).
 *
 * Python API (see _sha256_lanes.pyi):
 *     digests(buffers, *, path=None) -> list[bytes]   the GIL is released while hashing
 *     PATH, LANES                   the default path and its lane count (1, 8)
 *     AVAILABLE_PATHS               every path this CPU can run, in the order above
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86_VECTOR_PATHS 1
#include <immintrin.h>
#else
#define HAVE_X86_VECTOR_PATHS 0
#endif

#define BLOCK_SIZE 64
#define DIGEST_SIZE 32
#define MAXIMUM_LANES 16

static const uint32_t initial_state[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

static const uint32_t round_constants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* Fed to idle lanes; their results are thrown away. */
static const unsigned char zero_block[BLOCK_SIZE];

/* ------------------------------------------------------------------------------------------ */
/* Messages and lanes                                                                         */

struct message {
    const unsigned char *data;
    size_t length;
    unsigned char *digest; /* DIGEST_SIZE bytes, where the result goes */
};

/* One message on its way through a lane: full blocks are read from the caller's buffer, the
 * last one or two blocks (the rest of the message, 0x80, zeros, bit length) from `padding`. */
struct lane {
    const struct message *message; /* NULL while the lane is idle */
    const unsigned char *next_full_block;
    size_t full_blocks_left;
    unsigned int padding_blocks;      /* 1 or 2 */
    unsigned int padding_blocks_done; /* how many of them have been handed out */
    unsigned char padding[2 * BLOCK_SIZE];
};

static void
lane_start(struct lane *lane, const struct message *message)
{
    size_t full_blocks = message->length / BLOCK_SIZE;
    size_t rest = message->length % BLOCK_SIZE;
    uint64_t bit_length = (uint64_t)message->length * 8;
    unsigned char *length_field;
    int index;

    lane->message = message;
    lane->next_full_block = message->data;
    lane->full_blocks_left = full_blocks;
    lane->padding_blocks_done = 0;
    /* 0x80 and the 8-byte length need 9 bytes after the rest; past 55 bytes they spill over. */
    lane->padding_blocks = rest < BLOCK_SIZE - 8 ? 1 : 2;
    memset(lane->padding, 0, sizeof(lane->padding));
    if (rest > 0) {
        memcpy(lane->padding, message->data + full_blocks * BLOCK_SIZE, rest);
    }
    lane->padding[rest] = 0x80;
    length_field = lane->padding + lane->padding_blocks * BLOCK_SIZE - 8;
    for (index = 0; index < 8; index++) {
        length_field[index] = (unsigned char)(bit_length >> (56 - 8 * index));
    }
}

static const unsigned char *
lane_next_block(struct lane *lane)
{
    const unsigned char *block;

    if (lane->full_blocks_left > 0) {
        block = lane->next_full_block;
        lane->next_full_block += BLOCK_SIZE;
        lane->full_blocks_left--;
        return block;
    }
    block = lane->padding + lane->padding_blocks_done * BLOCK_SIZE;
    lane->padding_blocks_done++;
    return block;
}

static int
lane_finished(const struct lane *lane)
{
    return lane->full_blocks_left == 0 && lane->padding_blocks_done == lane->padding_blocks;
}

static void
store_digest(unsigned char *digest, const uint32_t state[8])
{
    int word;

    for (word = 0; word < 8; word++) {
        digest[4 * word] = (unsigned char)(state[word] >> 24);
        digest[4 * word + 1] = (unsigned char)(state[word] >> 16);
        digest[4 * word + 2] = (unsigned char)(state[word] >> 8);
        digest[4 * word + 3] = (unsigned char)state[word];
    }
}

/* ------------------------------------------------------------------------------------------ */
/* SHA-256 rounds, for any width                                                              */

/* One round; instead of moving a..h along, the callers rotate the argument order.
 * OPERATIONS is a prefix: OPERATIONS##_VECTOR is the type (uint32_t for the scalar code), and
 * OPERATIONS##_ADD, _SET1, _BIG_SIGMA0/1, _SIGMA0/1, _CHOOSE, _MAJORITY work on it, lane by lane. */
#define SHA256_ROUND(OPERATIONS, a, b, c, d, e, f, g, h, round, word)                                          \
    do {                                                                                                       \
        OPERATIONS##_VECTOR temporary1 = OPERATIONS##_ADD(                                                     \
            OPERATIONS##_ADD((h), OPERATIONS##_BIG_SIGMA1(e)),                                                 \
            OPERATIONS##_ADD(OPERATIONS##_CHOOSE((e), (f), (g)),                                               \
                             OPERATIONS##_ADD(OPERATIONS##_SET1(round_constants[round]), (word))));            \
        OPERATIONS##_VECTOR temporary2 = OPERATIONS##_ADD(OPERATIONS##_BIG_SIGMA0(a),                          \
                                                          OPERATIONS##_MAJORITY((a), (b), (c)));               \
        (d) = OPERATIONS##_ADD((d), temporary1);                                                               \
        (h) = OPERATIONS##_ADD(temporary1, temporary2);                                                        \
    } while (0)

/* The message schedule is a ring of 16 (`schedule`): in rounds base..base+15, schedule[j] holds
 * word base + j, computed from the 16 words before it, which are in the ring. */
#define SHA256_LOADED_WORD(OPERATIONS, j) schedule[(j)]
#define SHA256_NEXT_WORD(OPERATIONS, j)                                                                        \
    (schedule[(j) & 15] = OPERATIONS##_ADD(                                                                    \
         OPERATIONS##_ADD(OPERATIONS##_SIGMA1(schedule[((j) + 14) & 15]), schedule[((j) + 9) & 15]),           \
         OPERATIONS##_ADD(OPERATIONS##_SIGMA0(schedule[((j) + 1) & 15]), schedule[(j) & 15])))

#define SHA256_EIGHT_ROUNDS(OPERATIONS, base, first, WORD)                                                     \
    do {                                                                                                       \
        SHA256_ROUND(OPERATIONS, a, b, c, d, e, f, g, h, (base) + (first) + 0, WORD(OPERATIONS, (first) + 0)); \
        SHA256_ROUND(OPERATIONS, h, a, b, c, d, e, f, g, (base) + (first) + 1, WORD(OPERATIONS, (first) + 1)); \
        SHA256_ROUND(OPERATIONS, g, h, a, b, c, d, e, f, (base) + (first) + 2, WORD(OPERATIONS, (first) + 2)); \
        SHA256_ROUND(OPERATIONS, f, g, h, a, b, c, d, e, (base) + (first) + 3, WORD(OPERATIONS, (first) + 3)); \
        SHA256_ROUND(OPERATIONS, e, f, g, h, a, b, c, d, (base) + (first) + 4, WORD(OPERATIONS, (first) + 4)); \
        SHA256_ROUND(OPERATIONS, d, e, f, g, h, a, b, c, (base) + (first) + 5, WORD(OPERATIONS, (first) + 5)); \
        SHA256_ROUND(OPERATIONS, c, d, e, f, g, h, a, b, (base) + (first) + 6, WORD(OPERATIONS, (first) + 6)); \
        SHA256_ROUND(OPERATIONS, b, c, d, e, f, g, h, a, (base) + (first) + 7, WORD(OPERATIONS, (first) + 7)); \
    } while (0)

/* All 64 rounds on a..h, with the block's 16 words already in `schedule`; needs `int base`. */
#define SHA256_ALL_ROUNDS(OPERATIONS)                                                                          \
    do {                                                                                                       \
        SHA256_EIGHT_ROUNDS(OPERATIONS, 0, 0, SHA256_LOADED_WORD);                                             \
        SHA256_EIGHT_ROUNDS(OPERATIONS, 0, 8, SHA256_LOADED_WORD);                                             \
        for (base = 16; base < 64; base += 16) {                                                               \
            SHA256_EIGHT_ROUNDS(OPERATIONS, base, 0, SHA256_NEXT_WORD);                                        \
            SHA256_EIGHT_ROUNDS(OPERATIONS, base, 8, SHA256_NEXT_WORD);                                        \
        }                                                                                                      \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Scalar: 1 lane                                                                             */

static inline uint32_t
rotate_right(uint32_t value, unsigned int count)
{
    return (value >> count) | (value << (32 - count));
}

static inline uint32_t
load_big_endian(const unsigned char *bytes)
{
    return ((uint32_t)bytes[0] << 24) | ((uint32_t)bytes[1] << 16) | ((uint32_t)bytes[2] << 8) | bytes[3];
}

#define SCALAR_VECTOR uint32_t
#define SCALAR_ADD(x, y) ((x) + (y))
#define SCALAR_SET1(constant) (constant)
#define SCALAR_BIG_SIGMA0(x) (rotate_right((x), 2) ^ rotate_right((x), 13) ^ rotate_right((x), 22))
#define SCALAR_BIG_SIGMA1(x) (rotate_right((x), 6) ^ rotate_right((x), 11) ^ rotate_right((x), 25))
#define SCALAR_SIGMA0(x) (rotate_right((x), 7) ^ rotate_right((x), 18) ^ ((x) >> 3))
#define SCALAR_SIGMA1(x) (rotate_right((x), 17) ^ rotate_right((x), 19) ^ ((x) >> 10))
#define SCALAR_CHOOSE(e, f, g) ((g) ^ ((e) & ((f) ^ (g))))
#define SCALAR_MAJORITY(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))

static void
compress_scalar(uint32_t state[8], const unsigned char *block)
{
    uint32_t schedule[16];
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    int base;

    for (base = 0; base < 16; base++) {
        schedule[base] = load_big_endian(block + 4 * base);
    }
    SHA256_ALL_ROUNDS(SCALAR);
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

/* Runs the lane's message to its end from `state` (the initial state, or where a vector path
 * left it) and writes the digest. */
static void
finish_lane_scalar(struct lane *lane, uint32_t state[8])
{
    while (!lane_finished(lane)) {
        compress_scalar(state, lane_next_block(lane));
    }
    store_digest(lane->message->digest, state);
    lane->message = NULL;
}

static void
hash_messages_scalar(struct message *messages, size_t count)
{
    struct lane lane;
    uint32_t state[8];
    size_t index;

    for (index = 0; index < count; index++) {
        memcpy(state, initial_state, sizeof(state));
        lane_start(&lane, &messages[index]);
        finish_lane_scalar(&lane, state);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Lane scheduling, shared by the vector paths                                                */

/* Compresses one block per lane. `state` is word-major: state[word * lanes + lane]. */
typedef void (*compress_lanes_function)(uint32_t *state, const unsigned char *const *blocks);

struct vector_path {
    const char *name;
    unsigned int lanes;
    compress_lanes_function compress;
    /* When no message is left to start and at most `narrow_at` lanes are busy, they move to
     * `narrower` (NULL: the scalar code). A step costs the same however many lanes are busy, so
     * this pays once a narrower path's step carries them faster. */
    unsigned int narrow_at;
    const struct vector_path *narrower;
};

static int
compare_longest_first(const void *left, const void *right)
{
    size_t left_length = (*(const struct message *const *)left)->length;
    size_t right_length = (*(const struct message *const *)right)->length;

    return left_length < right_length ? 1 : left_length > right_length ? -1 : 0;
}

static void
set_lane_state(uint32_t *state, unsigned int lanes, unsigned int lane, const uint32_t words[8])
{
    unsigned int word;

    for (word = 0; word < 8; word++) {
        state[word * lanes + lane] = words[word];
    }
}

static void
get_lane_state(const uint32_t *state, unsigned int lanes, unsigned int lane, uint32_t words[8])
{
    unsigned int word;

    for (word = 0; word < 8; word++) {
        words[word] = state[word * lanes + lane];
    }
}

/* Moves the busy lanes to the front, into a state laid out for `new_lanes` lanes, and marks
 * the lanes after them idle. */
static void
pack_busy_lanes(struct lane *lanes, uint32_t *state, unsigned int old_lanes, unsigned int new_lanes)
{
    uint32_t old_state[8 * MAXIMUM_LANES];
    uint32_t words[8];
    unsigned int lane, packed = 0;

    memcpy(old_state, state, sizeof(old_state));
    for (lane = 0; lane < old_lanes; lane++) {
        if (lanes[lane].message == NULL) {
            continue;
        }
        get_lane_state(old_state, old_lanes, lane, words);
        set_lane_state(state, new_lanes, packed, words);
        if (packed != lane) {
            lanes[packed] = lanes[lane]; /* lane_next_block finds the padding from the copy */
        }
        packed++;
    }
    for (lane = packed; lane < new_lanes; lane++) {
        lanes[lane].message = NULL;
        set_lane_state(state, new_lanes, lane, initial_state);
    }
}

/* `order` is scratch space for `count` pointers. */
static void
hash_messages_in_lanes(const struct vector_path *path, struct message *messages, size_t count,
                       const struct message **order)
{
    struct lane lanes[MAXIMUM_LANES];
    const unsigned char *blocks[MAXIMUM_LANES];
    uint32_t state[8 * MAXIMUM_LANES];
    uint32_t words[8];
    unsigned int lane_count = path->lanes;
    unsigned int busy = 0;
    unsigned int lane;
    size_t next = 0;
    size_t index;

    for (index = 0; index < count; index++) {
        order[index] = &messages[index];
    }
    qsort(order, count, sizeof(order[0]), compare_longest_first);

    for (lane = 0; lane < lane_count; lane++) {
        set_lane_state(state, lane_count, lane, initial_state);
        if (next < count) {
            lane_start(&lanes[lane], order[next++]);
            busy++;
        } else {
            lanes[lane].message = NULL;
        }
    }

    for (;;) {
        while (next == count && path != NULL && busy <= path->narrow_at) {
            path = path->narrower;
            if (path != NULL) {
                pack_busy_lanes(lanes, state, lane_count, path->lanes);
                lane_count = path->lanes;
            }
        }
        if (busy == 0 || path == NULL) {
            break;
        }
        for (lane = 0; lane < lane_count; lane++) {
            blocks[lane] = lanes[lane].message != NULL ? lane_next_block(&lanes[lane]) : zero_block;
        }
        path->compress(state, blocks);
        for (lane = 0; lane < lane_count; lane++) {
            if (lanes[lane].message == NULL || !lane_finished(&lanes[lane])) {
                continue;
            }
            get_lane_state(state, lane_count, lane, words);
            store_digest(lanes[lane].message->digest, words);
            set_lane_state(state, lane_count, lane, initial_state);
            if (next < count) {
                lane_start(&lanes[lane], order[next++]);
            } else {
                lanes[lane].message = NULL;
                busy--;
            }
        }
    }

    for (lane = 0; lane < lane_count; lane++) {
        if (lanes[lane].message != NULL) {
            get_lane_state(state, lane_count, lane, words);
            finish_lane_scalar(&lanes[lane], words);
        }
    }
}

#if HAVE_X86_VECTOR_PATHS

/* ------------------------------------------------------------------------------------------ */
/* 256-bit paths: 8 lanes                                                                     */

/* Loads 32 bytes (8 big-endian words) at `offset` from each of 8 blocks, and transposes them:
 * words[j] holds word j of every block, block i in 32-bit element i. */
__attribute__((target("avx2"))) static inline void
load_transposed_8x8(__m256i words[8], const unsigned char *const *blocks, size_t offset)
{
    const __m256i byte_swap = _mm256_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3,  /* high half */
                                              12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3); /* low half */
    __m256i rows[8], pairs[8], quads[8];
    int lane;

    for (lane = 0; lane < 8; lane++) {
        rows[lane] = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(blocks[lane] + offset)), byte_swap);
    }
    /* pairs[0] = r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5], and so on */
    pairs[0] = _mm256_unpacklo_epi32(rows[0], rows[1]);
    pairs[1] = _mm256_unpackhi_epi32(rows[0], rows[1]);
    pairs[2] = _mm256_unpacklo_epi32(rows[2], rows[3]);
    pairs[3] = _mm256_unpackhi_epi32(rows[2], rows[3]);
    pairs[4] = _mm256_unpacklo_epi32(rows[4], rows[5]);
    pairs[5] = _mm256_unpackhi_epi32(rows[4], rows[5]);
    pairs[6] = _mm256_unpacklo_epi32(rows[6], rows[7]);
    pairs[7] = _mm256_unpackhi_epi32(rows[6], rows[7]);
    /* quads[0] = r0[0] r1[0] r2[0] r3[0] | r0[4] r1[4] r2[4] r3[4], and so on */
    quads[0] = _mm256_unpacklo_epi64(pairs[0], pairs[2]);
    quads[1] = _mm256_unpackhi_epi64(pairs[0], pairs[2]);
    quads[2] = _mm256_unpacklo_epi64(pairs[1], pairs[3]);
    quads[3] = _mm256_unpackhi_epi64(pairs[1], pairs[3]);
    quads[4] = _mm256_unpacklo_epi64(pairs[4], pairs[6]);
    quads[5] = _mm256_unpackhi_epi64(pairs[4], pairs[6]);
    quads[6] = _mm256_unpacklo_epi64(pairs[5], pairs[7]);
    quads[7] = _mm256_unpackhi_epi64(pairs[5], pairs[7]);
    /* Rows 0-3 are in quads[j], rows 4-7 in quads[j + 4]; low 128 bits hold word j, high word j + 4. */
    words[0] = _mm256_permute2x128_si256(quads[0], quads[4], 0x20);
    words[1] = _mm256_permute2x128_si256(quads[1], quads[5], 0x20);
    words[2] = _mm256_permute2x128_si256(quads[2], quads[6], 0x20);
    words[3] = _mm256_permute2x128_si256(quads[3], quads[7], 0x20);
    words[4] = _mm256_permute2x128_si256(quads[0], quads[4], 0x31);
    words[5] = _mm256_permute2x128_si256(quads[1], quads[5], 0x31);
    words[6] = _mm256_permute2x128_si256(quads[2], quads[6], 0x31);
    words[7] = _mm256_permute2x128_si256(quads[3], quads[7], 0x31);
}

/* The body of an 8-lane compress function, for the AVX2 or AVX512VL operations. */
#define COMPRESS_8_LANES(OPERATIONS)                                                                           \
    do {                                                                                                       \
        __m256i schedule[16];                                                                                  \
        __m256i a, b, c, d, e, f, g, h;                                                                        \
        int base;                                                                                              \
                                                                                                               \
        load_transposed_8x8(schedule, blocks, 0);                                                              \
        load_transposed_8x8(schedule + 8, blocks, 32);                                                         \
        a = _mm256_loadu_si256((const __m256i *)(state + 0 * 8));                                              \
        b = _mm256_loadu_si256((const __m256i *)(state + 1 * 8));                                              \
        c = _mm256_loadu_si256((const __m256i *)(state + 2 * 8));                                              \
        d = _mm256_loadu_si256((const __m256i *)(state + 3 * 8));                                              \
        e = _mm256_loadu_si256((const __m256i *)(state + 4 * 8));                                              \
        f = _mm256_loadu_si256((const __m256i *)(state + 5 * 8));                                              \
        g = _mm256_loadu_si256((const __m256i *)(state + 6 * 8));                                              \
        h = _mm256_loadu_si256((const __m256i *)(state + 7 * 8));                                              \
        SHA256_ALL_ROUNDS(OPERATIONS);                                                                         \
        ADD_TO_STATE_8_LANES(0, a);                                                                            \
        ADD_TO_STATE_8_LANES(1, b);                                                                            \
        ADD_TO_STATE_8_LANES(2, c);                                                                            \
        ADD_TO_STATE_8_LANES(3, d);                                                                            \
        ADD_TO_STATE_8_LANES(4, e);                                                                            \
        ADD_TO_STATE_8_LANES(5, f);                                                                            \
        ADD_TO_STATE_8_LANES(6, g);                                                                            \
        ADD_TO_STATE_8_LANES(7, h);                                                                            \
    } while (0)
#define ADD_TO_STATE_8_LANES(word, variable)                                                                   \
    _mm256_storeu_si256((__m256i *)(state + (word) * 8),                                                      \
                        _mm256_add_epi32((variable), _mm256_loadu_si256((const __m256i *)(state + (word) * 8))))

/* AVX2 has no vector rotate: two shifts and an or. */
#define AVX2_VECTOR __m256i
#define AVX2_ADD(x, y) _mm256_add_epi32((x), (y))
#define AVX2_SET1(constant) _mm256_set1_epi32((int)(constant))
#define AVX2_XOR3(x, y, z) _mm256_xor_si256(_mm256_xor_si256((x), (y)), (z))
#define AVX2_ROTATE_RIGHT(x, count) _mm256_or_si256(_mm256_srli_epi32((x), (count)), _mm256_slli_epi32((x), 32 - (count)))
#define AVX2_BIG_SIGMA0(x) AVX2_XOR3(AVX2_ROTATE_RIGHT(x, 2), AVX2_ROTATE_RIGHT(x, 13), AVX2_ROTATE_RIGHT(x, 22))
#define AVX2_BIG_SIGMA1(x) AVX2_XOR3(AVX2_ROTATE_RIGHT(x, 6), AVX2_ROTATE_RIGHT(x, 11), AVX2_ROTATE_RIGHT(x, 25))
#define AVX2_SIGMA0(x) AVX2_XOR3(AVX2_ROTATE_RIGHT(x, 7), AVX2_ROTATE_RIGHT(x, 18), _mm256_srli_epi32((x), 3))
#define AVX2_SIGMA1(x) AVX2_XOR3(AVX2_ROTATE_RIGHT(x, 17), AVX2_ROTATE_RIGHT(x, 19), _mm256_srli_epi32((x), 10))
#define AVX2_CHOOSE(e, f, g) _mm256_xor_si256((g), _mm256_and_si256((e), _mm256_xor_si256((f), (g))))
#define AVX2_MAJORITY(a, b, c)                                                                                 \
    _mm256_or_si256(_mm256_and_si256((a), (b)), _mm256_and_si256((c), _mm256_or_si256((a), (b))))

__attribute__((target("avx2"))) static void
compress_lanes_avx2(uint32_t *state, const unsigned char *const *blocks)
{
    COMPRESS_8_LANES(AVX2);
}

/* AVX-512VL: the same in 256-bit registers, with one-instruction rotates (vprord) and
 * three-input logic (vpternlogd; truth tables 0x96 = x ^ y ^ z, 0xca = x ? y : z, 0xe8 =
 * majority). Fewer instructions, and 256-bit ones run on more execution ports than 512-bit. */
#define AVX512VL_VECTOR __m256i
#define AVX512VL_ADD(x, y) _mm256_add_epi32((x), (y))
#define AVX512VL_SET1(constant) _mm256_set1_epi32((int)(constant))
#define AVX512VL_XOR3(x, y, z) _mm256_ternarylogic_epi32((x), (y), (z), 0x96)
#define AVX512VL_BIG_SIGMA0(x) AVX512VL_XOR3(_mm256_ror_epi32((x), 2), _mm256_ror_epi32((x), 13), _mm256_ror_epi32((x), 22))
#define AVX512VL_BIG_SIGMA1(x) AVX512VL_XOR3(_mm256_ror_epi32((x), 6), _mm256_ror_epi32((x), 11), _mm256_ror_epi32((x), 25))
#define AVX512VL_SIGMA0(x) AVX512VL_XOR3(_mm256_ror_epi32((x), 7), _mm256_ror_epi32((x), 18), _mm256_srli_epi32((x), 3))
#define AVX512VL_SIGMA1(x) AVX512VL_XOR3(_mm256_ror_epi32((x), 17), _mm256_ror_epi32((x), 19), _mm256_srli_epi32((x), 10))
#define AVX512VL_CHOOSE(e, f, g) _mm256_ternarylogic_epi32((e), (f), (g), 0xca)
#define AVX512VL_MAJORITY(a, b, c) _mm256_ternarylogic_epi32((a), (b), (c), 0xe8)

__attribute__((target("avx2,avx512f,avx512vl"))) static void
compress_lanes_avx512vl(uint32_t *state, const unsigned char *const *blocks)
{
    COMPRESS_8_LANES(AVX512VL);
}

/* ------------------------------------------------------------------------------------------ */
/* 512-bit path: 16 lanes                                                                     */

#define AVX512_VECTOR __m512i
#define AVX512_ADD(x, y) _mm512_add_epi32((x), (y))
#define AVX512_SET1(constant) _mm512_set1_epi32((int)(constant))
#define AVX512_XOR3(x, y, z) _mm512_ternarylogic_epi32((x), (y), (z), 0x96)
#define AVX512_BIG_SIGMA0(x) AVX512_XOR3(_mm512_ror_epi32((x), 2), _mm512_ror_epi32((x), 13), _mm512_ror_epi32((x), 22))
#define AVX512_BIG_SIGMA1(x) AVX512_XOR3(_mm512_ror_epi32((x), 6), _mm512_ror_epi32((x), 11), _mm512_ror_epi32((x), 25))
#define AVX512_SIGMA0(x) AVX512_XOR3(_mm512_ror_epi32((x), 7), _mm512_ror_epi32((x), 18), _mm512_srli_epi32((x), 3))
#define AVX512_SIGMA1(x) AVX512_XOR3(_mm512_ror_epi32((x), 17), _mm512_ror_epi32((x), 19), _mm512_srli_epi32((x), 10))
#define AVX512_CHOOSE(e, f, g) _mm512_ternarylogic_epi32((e), (f), (g), 0xca)
#define AVX512_MAJORITY(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0xe8)
#define ADD_TO_STATE_16_LANES(word, variable)                                                                  \
    _mm512_storeu_si512(state + (word) * 16, _mm512_add_epi32((variable), _mm512_loadu_si512(state + (word) * 16)))

__attribute__((target("avx2,avx512f"))) static void
compress_lanes_avx512(uint32_t *state, const unsigned char *const *blocks)
{
    __m256i low_lanes[16], high_lanes[16];
    __m512i schedule[16];
    __m512i a, b, c, d, e, f, g, h;
    int base;

    /* Blocks 0-7 go to the low 256 bits, blocks 8-15 to the high 256 bits. */
    load_transposed_8x8(low_lanes, blocks, 0);
    load_transposed_8x8(low_lanes + 8, blocks, 32);
    load_transposed_8x8(high_lanes, blocks + 8, 0);
    load_transposed_8x8(high_lanes + 8, blocks + 8, 32);
    for (base = 0; base < 16; base++) {
        schedule[base] = _mm512_inserti64x4(_mm512_castsi256_si512(low_lanes[base]), high_lanes[base], 1);
    }
    a = _mm512_loadu_si512(state + 0 * 16);
    b = _mm512_loadu_si512(state + 1 * 16);
    c = _mm512_loadu_si512(state + 2 * 16);
    d = _mm512_loadu_si512(state + 3 * 16);
    e = _mm512_loadu_si512(state + 4 * 16);
    f = _mm512_loadu_si512(state + 5 * 16);
    g = _mm512_loadu_si512(state + 6 * 16);
    h = _mm512_loadu_si512(state + 7 * 16);
    SHA256_ALL_ROUNDS(AVX512);
    ADD_TO_STATE_16_LANES(0, a);
    ADD_TO_STATE_16_LANES(1, b);
    ADD_TO_STATE_16_LANES(2, c);
    ADD_TO_STATE_16_LANES(3, d);
    ADD_TO_STATE_16_LANES(4, e);
    ADD_TO_STATE_16_LANES(5, f);
    ADD_TO_STATE_16_LANES(6, g);
    ADD_TO_STATE_16_LANES(7, h);
}

/* Measured on a Xeon (Cascade Lake) at 2.5 GHz, MB/s per busy lane: scalar 205, avx2 137,
 * avx512vl 246, avx512 141. So avx2 hands its last message to the scalar code, avx512vl keeps
 * it, and avx512 moves to 8 lanes as soon as 8 fit. */
static const struct vector_path avx2_path = {"avx2", 8, compress_lanes_avx2, 1, NULL};
static const struct vector_path avx512vl_path = {"avx512vl", 8, compress_lanes_avx512vl, 0, NULL};
static const struct vector_path avx512_narrowing_to_avx512vl = {"avx512", 16, compress_lanes_avx512, 8, &avx512vl_path};
static const struct vector_path avx512_narrowing_to_avx2 = {"avx512", 16, compress_lanes_avx512, 8, &avx2_path};

#endif /* HAVE_X86_VECTOR_PATHS */

/* ------------------------------------------------------------------------------------------ */
/* Path selection                                                                             */

#define PATH_COUNT_LIMIT 4

/* In the order of AVAILABLE_PATHS; NULL stands for the scalar code. */
static const struct vector_path *available_paths[PATH_COUNT_LIMIT];
static int available_path_count;
static const struct vector_path *default_path;

/* The default is the 8-lane path with AVX-512VL where there is one, not the 16-lane path. With
 * 16 chunks a call (bench/sha256_lanes.py, Cascade Lake) it is 13 % faster, as 16 lanes cannot
 * be kept busy; "avx512" only wins from about 32 chunks a call (5 %; 12 % at 64). It also keeps
 * the core out of the lower clock speed that 512-bit instructions bring on some Xeons. */
static void
find_available_paths(void)
{
    available_path_count = 0;
    available_paths[available_path_count++] = NULL;
    default_path = NULL;
#if HAVE_X86_VECTOR_PATHS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        int avx512f = __builtin_cpu_supports("avx512f");
        int avx512vl = avx512f && __builtin_cpu_supports("avx512vl");

        available_paths[available_path_count++] = &avx2_path;
        default_path = &avx2_path;
        if (avx512vl) {
            available_paths[available_path_count++] = &avx512vl_path;
            default_path = &avx512vl_path;
        }
        if (avx512f) {
            available_paths[available_path_count++] =
                avx512vl ? &avx512_narrowing_to_avx512vl : &avx512_narrowing_to_avx2;
        }
    }
#endif
}

static const char *
path_name(const struct vector_path *path)
{
    return path != NULL ? path->name : "scalar";
}

/* ------------------------------------------------------------------------------------------ */
/* Python binding                                                                             */

static void
release_buffers(Py_buffer *views, Py_ssize_t count)
{
    Py_ssize_t index;

    for (index = 0; index < count; index++) {
        PyBuffer_Release(&views[index]);
    }
}

/* The path named `name` (None: the default) into *path; -1 with an exception if there is none. */
static int
find_path(PyObject *name, const struct vector_path **path)
{
    int index;

    if (name == Py_None) {
        *path = default_path;
        return 0;
    }
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "path must be a str or None, not %.100s", Py_TYPE(name)->tp_name);
        return -1;
    }
    for (index = 0; index < available_path_count; index++) {
        if (PyUnicode_CompareWithASCIIString(name, path_name(available_paths[index])) == 0) {
            *path = available_paths[index];
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "path %R is not available on this CPU (see AVAILABLE_PATHS)", name);
    return -1;
}

static PyObject *
sha256_lanes_digests(PyObject *module, PyObject *args, PyObject *keywords)
{
    static char *keyword_names[] = {"buffers", "path", NULL};
    PyObject *buffers;
    PyObject *path_object = Py_None;
    PyObject *sequence = NULL;
    PyObject *result = NULL;
    Py_buffer *views = NULL;
    struct message *messages = NULL;
    const struct message **order = NULL;
    unsigned char *digests = NULL;
    const struct vector_path *path;
    Py_ssize_t count, acquired = 0, index;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, keywords, "O|$O:digests", keyword_names, &buffers, &path_object)) {
        return NULL;
    }
    if (find_path(path_object, &path) < 0) {
        return NULL;
    }
    if (PyObject_CheckBuffer(buffers)) {
        PyErr_SetString(PyExc_TypeError, "digests() takes a sequence of bytes-like objects, not a single one");
        return NULL;
    }
    sequence = PySequence_Fast(buffers, "digests() takes a sequence of bytes-like objects");
    if (sequence == NULL) {
        return NULL;
    }
    count = PySequence_Fast_GET_SIZE(sequence);
    /* + 1: never ask for zero bytes, which may give NULL */
    views = PyMem_Calloc((size_t)count + 1, sizeof(*views));
    messages = PyMem_Calloc((size_t)count + 1, sizeof(*messages));
    order = PyMem_Calloc((size_t)count + 1, sizeof(*order));
    digests = PyMem_Calloc((size_t)count + 1, DIGEST_SIZE);
    if (views == NULL || messages == NULL || order == NULL || digests == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    for (index = 0; index < count; index++) {
        PyObject *item = PySequence_Fast_GET_ITEM(sequence, index);
        if (PyObject_GetBuffer(item, &views[index], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        acquired++;
        if (!PyBuffer_IsContiguous(&views[index], 'C')) {
            PyErr_Format(PyExc_BufferError, "digests(): buffer %zd is not C-contiguous", index);
            goto done;
        }
        messages[index].data = views[index].buf;
        messages[index].length = (size_t)views[index].len;
        messages[index].digest = digests + (size_t)index * DIGEST_SIZE;
    }

    /* Each Py_buffer holds a reference to its object, and a bytearray cannot be resized while
     * exported, so the bytes stay where they are while other threads run. */
    Py_BEGIN_ALLOW_THREADS
    if (path == NULL) {
        hash_messages_scalar(messages, (size_t)count);
    } else {
        hash_messages_in_lanes(path, messages, (size_t)count, order);
    }
    Py_END_ALLOW_THREADS

    result = PyList_New(count);
    if (result == NULL) {
        goto done;
    }
    for (index = 0; index < count; index++) {
        PyObject *digest = PyBytes_FromStringAndSize((const char *)digests + index * DIGEST_SIZE, DIGEST_SIZE);
        if (digest == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, index, digest);
    }

done:
    if (views != NULL) {
        release_buffers(views, acquired);
    }
    PyMem_Free(views);
    PyMem_Free(messages);
    PyMem_Free(order);
    PyMem_Free(digests);
    Py_DECREF(sequence);
    return result;
}

PyDoc_STRVAR(digests_doc,
             "digests(buffers, *, path=None)\n"
             "--\n"
             "\n"
             "The SHA-256 digest of each bytes-like object in `buffers` (a list or tuple), in order:\n"
             "32 bytes each, as hashlib.sha256(buffer).digest(). Buffers must be C-contiguous. The GIL\n"
             "is released while hashing. Hand over many buffers per call (twice LANES or more) so that\n"
             "the lanes stay busy.\n"
             "\n"
             "path=None uses the default path (PATH); a name from AVAILABLE_PATHS forces that one.");

static PyMethodDef sha256_lanes_methods[] = {
    {"digests", (PyCFunction)(void (*)(void))sha256_lanes_digests, METH_VARARGS | METH_KEYWORDS, digests_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sha256_lanes_module = {
    PyModuleDef_HEAD_INIT,
    "lockstep.repository._sha256_lanes",
    "SHA-256 of many buffers at once in the lanes of vector registers (restic blob IDs).",
    -1,
    sha256_lanes_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__sha256_lanes(void)
{
    PyObject *module;
    PyObject *names;
    int index;

    find_available_paths();
    module = PyModule_Create(&sha256_lanes_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddStringConstant(module, "PATH", path_name(default_path)) < 0 ||
        PyModule_AddIntConstant(module, "LANES", default_path != NULL ? (long)default_path->lanes : 1) < 0) {
        goto error;
    }
    names = PyTuple_New(available_path_count);
    if (names == NULL) {
        goto error;
    }
    for (index = 0; index < available_path_count; index++) {
        PyObject *name = PyUnicode_FromString(path_name(available_paths[index]));
        if (name == NULL) {
            Py_DECREF(names);
            goto error;
        }
        PyTuple_SET_ITEM(names, index, name);
    }
    if (PyModule_AddObjectRef(module, "AVAILABLE_PATHS", names) < 0) {
        Py_DECREF(names);
        goto error;
    }
    Py_DECREF(names);
    return module;

error:
    Py_DECREF(module);
    return NULL;
}
