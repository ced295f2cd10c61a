/*
 * secmem.c - secure allocations (see secmem.h).
 *
 * Small blocks come from 1 MiB arenas cut into power-of-two size classes
 * (libgcrypt allocates and frees HMAC state on every PBKDF2 iteration, so
 * this must cost no system call); a block's class sits in a 16-byte
 * header before it.  Blocks above the largest class get a mapping of
 * their own.  Every arena and mapping is recorded, so that
 * qimg_secmem_owns() answers for any pointer without touching memory
 * around it (libgcrypt's free hook passes both kinds).  Freed blocks are
 * wiped at once; arenas are never returned (key material is small).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/secmem.h"

/* One secure allocation larger than this is a bug, not a key. */
#define QIMG_SECMEM_MAX_ALLOC (64u << 20)
#define ARENA_SIZE (1u << 20)
#define HDR 16u                     /* keeps blocks 16-byte aligned */
#define MIN_SHIFT 5                 /* 32-byte blocks (header included) */
#define MAX_SHIFT 16                /* 64 KiB blocks */
#define N_CLASSES (MAX_SHIFT - MIN_SHIFT + 1)
#define BIG_CLASS 0xffffu
#define MAX_ARENAS 256              /* 256 MiB of small secrets at most */

struct region {
    uint8_t *base;
    size_t len;
    size_t user_len;                /* big mappings: bytes asked for */
};

static pthread_mutex_t secmem_lock = PTHREAD_MUTEX_INITIALIZER;
static struct region arenas[MAX_ARENAS];
static size_t n_arenas;
static uint8_t *arena_next, *arena_end;   /* uncut part of the last arena */
static void *free_lists[N_CLASSES];       /* singly linked through blocks */
static struct region *bigs;
static size_t n_bigs, cap_bigs;

void qimg_wipe(void *p, size_t len)
{
    if (p && len)
        explicit_bzero(p, len);
}

static void *map_secure(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* Best effort: no core dumps, not inherited by fork, no swap. */
    madvise(p, len, MADV_DONTDUMP);
    madvise(p, len, MADV_DONTFORK);
    (void)mlock(p, len);
    return p;
}

static void unmap_secure(void *p, size_t len)
{
    explicit_bzero(p, len);
    munlock(p, len);
    munmap(p, len);
}

static void set_class(uint8_t *block, uint32_t cls, size_t len)
{
    memcpy(block, &cls, sizeof(cls));
    memcpy(block + 8, &len, sizeof(len));
}

/* A block of class cls (lock held), or NULL. */
static uint8_t *take_small(unsigned cls)
{
    size_t bsize = (size_t)1 << (cls + MIN_SHIFT);
    uint8_t *b = free_lists[cls];

    if (b) {
        memcpy(&free_lists[cls], b + HDR, sizeof(void *));
        return b;
    }
    if (!arena_next || (size_t)(arena_end - arena_next) < bsize) {
        uint8_t *a;
        if (n_arenas == MAX_ARENAS || !(a = map_secure(ARENA_SIZE)))
            return NULL;
        arenas[n_arenas++] = (struct region){a, ARENA_SIZE, 0};
        arena_next = a;
        arena_end = a + ARENA_SIZE;
    }
    b = arena_next;
    arena_next += bsize;
    return b;
}

static struct region *find_big(const void *p)
{
    for (size_t i = 0; i < n_bigs; i++)
        if (bigs[i].base + HDR == (const uint8_t *)p)
            return &bigs[i];
    return NULL;
}

static bool in_arena(const void *p)
{
    for (size_t i = 0; i < n_arenas; i++)
        if ((const uint8_t *)p >= arenas[i].base + HDR &&
            (const uint8_t *)p < arenas[i].base + arenas[i].len)
            return true;
    return false;
}

void *qimg_secmem_alloc(size_t len)
{
    uint8_t *b = NULL;
    unsigned cls = 0;

    if (len > QIMG_SECMEM_MAX_ALLOC)
        return NULL;
    while (cls < N_CLASSES && ((size_t)1 << (cls + MIN_SHIFT)) < len + HDR)
        cls++;
    pthread_mutex_lock(&secmem_lock);
    if (cls < N_CLASSES) {
        b = take_small(cls);
        if (b) {
            set_class(b, cls, len);
            memset(b + HDR, 0, ((size_t)1 << (cls + MIN_SHIFT)) - HDR);
        }
    } else {
        size_t maplen = (len + HDR + 4095) & ~(size_t)4095;
        if (n_bigs == cap_bigs) {
            size_t ncap = cap_bigs ? cap_bigs * 2 : 8;
            struct region *nb = realloc(bigs, ncap * sizeof(*nb));
            if (!nb)
                goto out;
            bigs = nb;
            cap_bigs = ncap;
        }
        b = map_secure(maplen);   /* zeroed by the kernel */
        if (b) {
            set_class(b, BIG_CLASS, len);
            bigs[n_bigs++] = (struct region){b, maplen, len};
        }
    }
out:
    pthread_mutex_unlock(&secmem_lock);
    return b ? b + HDR : NULL;
}

void qimg_secmem_free(void *p)
{
    uint8_t *b;
    uint32_t cls;
    struct region *big, r;

    if (!p)
        return;
    b = (uint8_t *)p - HDR;
    pthread_mutex_lock(&secmem_lock);
    if ((big = find_big(p))) {
        r = *big;
        *big = bigs[--n_bigs];
        pthread_mutex_unlock(&secmem_lock);
        unmap_secure(r.base, r.len);
        return;
    }
    if (!in_arena(p)) {
        pthread_mutex_unlock(&secmem_lock);
        abort();   /* not ours: a programming error */
    }
    memcpy(&cls, b, sizeof(cls));
    explicit_bzero(b, (size_t)1 << (cls + MIN_SHIFT));
    memcpy(b + HDR, &free_lists[cls], sizeof(void *));
    free_lists[cls] = b;
    pthread_mutex_unlock(&secmem_lock);
}

bool qimg_secmem_owns(const void *p)
{
    bool owns;

    if (!p)
        return false;
    pthread_mutex_lock(&secmem_lock);
    owns = in_arena(p) || find_big(p);
    pthread_mutex_unlock(&secmem_lock);
    return owns;
}

size_t qimg_secmem_size(const void *p)
{
    size_t len = 0;

    if (!qimg_secmem_owns(p))
        return 0;
    memcpy(&len, (const uint8_t *)p - HDR + 8, sizeof(len));
    return len;
}
