/*
 * checksum.c - a digest of an image's guest-visible content that does not
 * depend on its format or on how sparse it is: the blkhash construction
 * as nbdcopy --blkhash (libnbd) defines and publishes it.
 *
 * The content (virtual size S) is cut into blocks of B bytes (64 KiB by
 * default, a power of two); the last block may be shorter.  Each block
 * gets a digest H(block) with the chosen hash H; a full block of zeroes
 * has the digest of B zero bytes, computed once (the zero shortcut: holes
 * and zero extents are never read, data blocks that are all zero are not
 * hashed).  The result is
 *
 *     H( H(block 0) || H(block 1) || ... || H(block n-1) || le64(S) )
 *
 * Block digests are computed in parallel, a window of blocks at a time;
 * the root digest takes them in order.
 */
#include <errno.h>
#include <gcrypt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "qimg.h"

/* Largest block size accepted: a worker holds at least one block. */
#define CHECKSUM_MAX_BLOCK (64u << 20)
/* Bytes a worker reads per request (at least one block). */
#define CHECKSUM_CHUNK (1u << 20)
/* Chunks per window: enough to keep every worker busy between the
 * (serial) steps that feed the root digest. */
#define CHECKSUM_WINDOW_CHUNKS 64u
/* Bound on the blocks of a window, so tiny block sizes keep the digest
 * buffer small (64 Ki blocks x 64-byte digests = 4 MiB). */
#define CHECKSUM_MAX_WINDOW_BLOCKS (1u << 16)
/* Worker threads at most, whatever the number of cores. */
#define CHECKSUM_MAX_THREADS 64u
/* Zero-block digests fed to the root digest per call. */
#define ZERO_RUN_BATCH 1024u

struct algorithm {
    const char *name;
    int id;
};

/* OpenSSL's (and so blksum's and nbdcopy's) names for the digests. */
static const struct algorithm algorithms[] = {
    {"blake2b512", GCRY_MD_BLAKE2B_512}, {"blake2s256", GCRY_MD_BLAKE2S_256},
    {"md5", GCRY_MD_MD5},                {"sha1", GCRY_MD_SHA1},
    {"sha224", GCRY_MD_SHA224},          {"sha256", GCRY_MD_SHA256},
    {"sha3-224", GCRY_MD_SHA3_224},      {"sha3-256", GCRY_MD_SHA3_256},
    {"sha3-384", GCRY_MD_SHA3_384},      {"sha3-512", GCRY_MD_SHA3_512},
    {"sha384", GCRY_MD_SHA384},          {"sha512", GCRY_MD_SHA512},
    {"sha512-224", GCRY_MD_SHA512_224},  {"sha512-256", GCRY_MD_SHA512_256},
    {"sm3", GCRY_MD_SM3},
};

const char *qimg_checksum_algorithm_at(size_t i)
{
    return i < QIMG_ARRAY_SIZE(algorithms) ? algorithms[i].name : NULL;
}

static pthread_once_t gcrypt_once = PTHREAD_ONCE_INIT;

static void gcrypt_init(void)
{
    /* Hashes need no secure memory; initialising twice (lib/crypto does
     * it too) is harmless. */
    if (!gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P)) {
        gcry_check_version(NULL);
        gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
        gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    }
}

static int find_algorithm(const char *name)
{
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(algorithms); i++)
        if (!strcmp(algorithms[i].name, name))
            return algorithms[i].id;
    return -1;
}

int qimg_checksum_parse(const char *spec, struct qimg_checksum_params *p,
                        struct qimg_error *err)
{
    const char *slash = strchr(spec, '/');
    size_t n = slash ? (size_t)(slash - spec) : strlen(spec);
    char name[32];
    uint64_t bs = QIMG_CHECKSUM_DEFAULT_BLOCK;

    if (n == 0 || n >= sizeof(name))
        return qimg_error_set(err, -EINVAL, "Unknown algorithm '%s'", spec);
    memcpy(name, spec, n);
    name[n] = 0;
    if (find_algorithm(name) < 0)
        return qimg_error_set(err, -EINVAL, "Unknown algorithm '%s'", name);
    if (slash) {
        bool hex;
        if (qimg_parse_size(slash + 1, &bs, &hex) < 0 || !qimg_is_pow2(bs) ||
            bs > CHECKSUM_MAX_BLOCK)
            return qimg_error_set(err, -EINVAL,
                                  "Invalid block size '%s': it must be a power "
                                  "of two up to %u MiB", slash + 1,
                                  CHECKSUM_MAX_BLOCK >> 20);
    }
    for (size_t i = 0; i < QIMG_ARRAY_SIZE(algorithms); i++)
        if (!strcmp(algorithms[i].name, name))
            p->algorithm = algorithms[i].name;
    p->block_size = bs;
    return 0;
}

/* ---- the shared state of one checksum ------------------------------------ */

struct job {
    const struct qimg_checksum_params *p;
    struct qimg_image *img;
    int algo;
    unsigned dlen;              /* digest length */
    uint64_t size, bs, nblocks; /* virtual size, block size, block count */
    uint64_t chunk_blocks, window_blocks;
    unsigned char zero_md[QIMG_CHECKSUM_MAX_DIGEST];  /* digest of one full zero block */
    unsigned char *digests;     /* window_blocks digests */

    pthread_mutex_t lock;
    pthread_cond_t start, done;
    uint64_t generation;        /* bumped for each window */
    uint64_t win_first, win_count;
    atomic_uint_fast64_t next_chunk;
    unsigned busy;              /* workers still inside the window */
    bool stop;
    int error;                  /* first failure, under lock */
    atomic_bool failed;         /* set with error: workers stop early */
    struct qimg_error err;
};

static void job_fail(struct job *j, const struct qimg_error *e)
{
    pthread_mutex_lock(&j->lock);
    if (!j->error) {
        j->error = e->code ? e->code : -EIO;
        j->err = *e;
        atomic_store(&j->failed, true);
    }
    pthread_mutex_unlock(&j->lock);
}

/* Bytes of block b (the last one may be short). */
static uint64_t block_len(const struct job *j, uint64_t b)
{
    return QIMG_MIN(j->bs, j->size - b * j->bs);
}

static bool extent_reads_zero(const struct qimg_extent *x)
{
    return (x->flags & QIMG_BS_ZERO) ||
           !(x->flags & (QIMG_BS_DATA | QIMG_BS_ALLOCATED));
}

/*
 * Digests of blocks [first, first+count) into their window slots: block
 * status decides; zero extents covering whole blocks take the zero digest
 * unread, anything else is read block-aligned and hashed (full blocks that
 * read as zero take the zero digest too).
 */
static int hash_blocks(struct job *j, uint64_t first, uint64_t count,
                       unsigned char *buf, struct qimg_error *err)
{
    uint64_t b = first, end = first + count;

    while (b < end) {
        uint64_t pos = b * j->bs, left = QIMG_MIN(end * j->bs, j->size) - pos;
        struct qimg_extent x;
        uint64_t n;
        int ret = qimg_block_status_chain(j->img, NULL, pos, left, &x, err);

        if (ret < 0)
            return ret;
        n = x.length ? QIMG_MIN(x.length, left) : left;
        if (extent_reads_zero(&x) && n >= j->bs) {
            for (uint64_t k = n / j->bs; k--; b++)
                memcpy(j->digests + (b - j->win_first) * j->dlen, j->zero_md,
                       j->dlen);
            continue;
        }
        /* Data (or a zero piece shorter than a block): whole blocks, read
         * in one request (buf holds a chunk). */
        n = QIMG_MIN(qimg_div_round_up(n, j->bs), end - b);
        ret = qimg_pread(j->img, pos, (size_t)QIMG_MIN(n * j->bs,
                                                       j->size - pos),
                         buf, err);
        if (ret < 0)
            return ret;
        for (uint64_t k = 0; k < n; k++, b++) {
            uint64_t len = block_len(j, b);
            const unsigned char *data = buf + k * j->bs;
            unsigned char *md = j->digests + (b - j->win_first) * j->dlen;

            if (len == j->bs && qimg_buffer_is_zero(data, (size_t)len))
                memcpy(md, j->zero_md, j->dlen);
            else
                gcry_md_hash_buffer(j->algo, md, data, (size_t)len);
        }
    }
    return 0;
}

/* Take chunks of the current window until none is left. */
static void work_window(struct job *j, unsigned char *buf)
{
    uint64_t chunks = qimg_div_round_up(j->win_count, j->chunk_blocks);
    struct qimg_error err = {0};

    for (;;) {
        uint64_t c = atomic_fetch_add(&j->next_chunk, 1);
        uint64_t first, count;

        if (c >= chunks || atomic_load(&j->failed))
            return;
        first = j->win_first + c * j->chunk_blocks;
        count = QIMG_MIN(j->chunk_blocks, j->win_first + j->win_count - first);
        if (hash_blocks(j, first, count, buf, &err) < 0) {
            job_fail(j, &err);
            return;
        }
    }
}

static void *worker_main(void *opaque)
{
    struct job *j = opaque;
    unsigned char *buf = malloc(j->chunk_blocks * j->bs);
    uint64_t seen = 0;

    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (!j->stop && j->generation == seen)
            pthread_cond_wait(&j->start, &j->lock);
        if (j->stop)
            break;
        seen = j->generation;
        pthread_mutex_unlock(&j->lock);
        if (buf) {
            work_window(j, buf);
        } else {
            struct qimg_error e;
            qimg_error_set(&e, -ENOMEM, "Out of memory");
            job_fail(j, &e);
        }
        pthread_mutex_lock(&j->lock);
        if (--j->busy == 0)
            pthread_cond_signal(&j->done);
    }
    pthread_mutex_unlock(&j->lock);
    free(buf);
    return NULL;
}

/* Hash one window with every worker and the calling thread. */
static int run_window(struct job *j, unsigned nworkers, unsigned char *buf,
                      uint64_t first, uint64_t count)
{
    pthread_mutex_lock(&j->lock);
    j->win_first = first;
    j->win_count = count;
    atomic_store(&j->next_chunk, 0);
    j->busy = nworkers;
    j->generation++;
    pthread_cond_broadcast(&j->start);
    pthread_mutex_unlock(&j->lock);

    work_window(j, buf);

    pthread_mutex_lock(&j->lock);
    while (j->busy)
        pthread_cond_wait(&j->done, &j->lock);
    pthread_mutex_unlock(&j->lock);
    return j->error;
}

/* Feed n zero-block digests to the root digest, a batch per call. */
static void feed_zero_blocks(struct job *j, gcry_md_hd_t root,
                             const unsigned char *batch, uint64_t n)
{
    while (n) {
        uint64_t k = QIMG_MIN(n, (uint64_t)ZERO_RUN_BATCH);
        gcry_md_write(root, batch, (size_t)(k * j->dlen));
        n -= k;
    }
}

/*
 * Whole zero blocks from block b on (as the chain's block status tells),
 * without reading anything; 0 when block b holds data.
 */
static int64_t zero_run(struct job *j, uint64_t b, struct qimg_error *err)
{
    uint64_t pos = b * j->bs;

    while (pos < j->size) {
        struct qimg_extent x;
        int ret = qimg_block_status_chain(j->img, NULL, pos, j->size - pos, &x,
                                          err);
        if (ret < 0)
            return ret;
        if (!extent_reads_zero(&x) || !x.length)
            break;
        pos += x.length;
        if (pos >= j->size)
            break;
    }
    /* Whole blocks only (rounded down): a short last block is hashed as
     * data, as its digest is that of fewer bytes. */
    return (int64_t)((QIMG_MIN(pos, j->size) - b * j->bs) / j->bs);
}

static unsigned worker_count(const struct qimg_checksum_params *p)
{
    long n = p->threads ? (long)p->threads : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return (unsigned)QIMG_MIN((unsigned long)n, CHECKSUM_MAX_THREADS);
}

static int job_setup(struct job *j, const struct qimg_checksum_params *p,
                     struct qimg_error *err)
{
    unsigned char *zero;

    pthread_once(&gcrypt_once, gcrypt_init);
    j->p = p;
    j->img = p->img;
    j->algo = find_algorithm(p->algorithm ? p->algorithm : "sha256");
    if (j->algo < 0)
        return qimg_error_set(err, -EINVAL, "Unknown algorithm '%s'",
                              p->algorithm);
    j->dlen = gcry_md_get_algo_dlen(j->algo);
    if (!j->dlen || j->dlen > sizeof(j->zero_md))
        return qimg_error_set(err, -ENOTSUP, "Algorithm '%s' is not available",
                              p->algorithm);
    j->bs = p->block_size ? p->block_size : QIMG_CHECKSUM_DEFAULT_BLOCK;
    if (!qimg_is_pow2(j->bs) || j->bs > CHECKSUM_MAX_BLOCK)
        return qimg_error_set(err, -EINVAL, "Invalid block size %llu",
                              (unsigned long long)j->bs);
    j->size = qimg_image_size(p->img);
    j->nblocks = qimg_div_round_up(j->size, j->bs);
    j->chunk_blocks = QIMG_MAX(1, CHECKSUM_CHUNK / j->bs);
    if (j->chunk_blocks * CHECKSUM_WINDOW_CHUNKS > CHECKSUM_MAX_WINDOW_BLOCKS)
        j->chunk_blocks = CHECKSUM_MAX_WINDOW_BLOCKS / CHECKSUM_WINDOW_CHUNKS;
    j->window_blocks = j->chunk_blocks * CHECKSUM_WINDOW_CHUNKS;
    j->digests = malloc(j->window_blocks * j->dlen);
    zero = calloc(1, j->bs);
    if (!j->digests || !zero) {
        free(zero);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    gcry_md_hash_buffer(j->algo, j->zero_md, zero, j->bs);
    free(zero);
    return 0;
}

static void report(const struct qimg_checksum_params *p, const struct job *j,
                   uint64_t block)
{
    if (p->progress)
        p->progress(p->opaque, j->size ? 100.0 * (double)QIMG_MIN(
                                             block * j->bs, j->size) /
                                             (double)j->size
                                       : 100.0);
}

/* The main loop: zero runs straight into the root, data windows through
 * the workers. */
static int hash_image(struct job *j, unsigned nworkers, gcry_md_hd_t root,
                      unsigned char *buf, const unsigned char *batch,
                      struct qimg_error *err)
{
    uint64_t b = 0;

    report(j->p, j, 0);
    while (b < j->nblocks) {
        int64_t run = zero_run(j, b, err);
        uint64_t count;

        if (run < 0)
            return (int)run;
        if (run > 0) {
            feed_zero_blocks(j, root, batch, (uint64_t)run);
            b += (uint64_t)run;
            report(j->p, j, b);
            continue;
        }
        count = QIMG_MIN(j->window_blocks, j->nblocks - b);
        if (run_window(j, nworkers, buf, b, count) < 0) {
            *err = j->err;
            return j->error;
        }
        gcry_md_write(root, j->digests, (size_t)(count * j->dlen));
        b += count;
        report(j->p, j, b);
    }
    return 0;
}

int qimg_checksum(const struct qimg_checksum_params *p, unsigned char *digest,
                  size_t *digest_len, struct qimg_error *err)
{
    struct job j = {0};
    unsigned nworkers, started = 0;
    pthread_t th[CHECKSUM_MAX_THREADS];
    unsigned char *buf = NULL, *batch = NULL;
    gcry_md_hd_t root = NULL;
    uint64_t le_size;
    int ret = job_setup(&j, p, err);

    if (ret < 0)
        goto out;
    /* The calling thread works too. */
    nworkers = worker_count(p) - 1;
    pthread_mutex_init(&j.lock, NULL);
    pthread_cond_init(&j.start, NULL);
    pthread_cond_init(&j.done, NULL);
    buf = malloc(j.chunk_blocks * j.bs);
    batch = malloc((size_t)ZERO_RUN_BATCH * j.dlen);
    if (!buf || !batch || gcry_md_open(&root, j.algo, 0)) {
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        goto stop;
    }
    for (unsigned i = 0; i < ZERO_RUN_BATCH; i++)
        memcpy(batch + (size_t)i * j.dlen, j.zero_md, j.dlen);
    for (; started < nworkers; started++)
        if (pthread_create(&th[started], NULL, worker_main, &j))
            break;
    ret = hash_image(&j, started, root, buf, batch, err);
    if (ret >= 0) {
        le_size = htole64(j.size);
        gcry_md_write(root, &le_size, sizeof(le_size));
        memcpy(digest, gcry_md_read(root, j.algo), j.dlen);
        *digest_len = j.dlen;
    }
stop:
    pthread_mutex_lock(&j.lock);
    j.stop = true;
    pthread_cond_broadcast(&j.start);
    pthread_mutex_unlock(&j.lock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&j.lock);
    pthread_cond_destroy(&j.start);
    pthread_cond_destroy(&j.done);
out:
    gcry_md_close(root);
    free(buf);
    free(batch);
    free(j.digests);
    return ret;
}
