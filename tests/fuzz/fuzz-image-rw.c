/*
 * fuzz-image-rw.c - an image of one format (FUZZ_FORMAT) from the input,
 * held in memory, opened read-only and inspected (fuzz_inspect), then
 * opened read-write: a few allocating, in-place, unaligned, zero and
 * (where the format has them) compressed writes land on whatever its
 * tables say, a repairing check runs, and the image is closed and
 * inspected again.  Built for the writable table formats: qed, qcow,
 * parallels.  FUZZ_OPEN_OPT ("key=value", optional) is passed to the
 * driver: parallels grows its file by 128 MiB per allocation unless told
 * otherwise.
 */
#include "fuzz-common.h"

static struct qimg_image *fuzz_open(unsigned flags)
{
    struct qimg_opts *o = qimg_opts_new();
    struct qimg_open_params p = {.format = FUZZ_FORMAT, .options = o,
                                 .flags = QIMG_OPEN_NO_LOCK | flags};
    struct qimg_image *img = NULL;
    struct qimg_error err;

    if (!o)
        return NULL;
    qimg_opts_set(o, "driver", FUZZ_FORMAT);
    qimg_opts_set(o, "file.filename", FUZZ_IMAGE);
#ifdef FUZZ_OPEN_OPT
    qimg_opts_parse(o, FUZZ_OPEN_OPT, NULL, &err);
#endif
    if (qimg_open(&img, &p, &err) < 0)
        img = NULL;
    qimg_opts_free(o);
    return img;
}

static void fuzz_writes(struct qimg_image *img)
{
    static uint8_t pat[70000];
    uint64_t size = qimg_image_size(img);
    uint32_t cs = qimg_image_cluster_size(img);
    struct qimg_error err;
    struct qimg_check res;

    if (!pat[0])
        memset(pat, 0x5a, sizeof(pat));
    /* Writes allocate in the memory file: keep them small. */
    if (size >= sizeof(pat)) {
        qimg_pwrite(img, 0, 4096, pat, &err);
        qimg_pwrite(img, 1000, 3000, pat, &err);
        qimg_pwrite(img, size - sizeof(pat), sizeof(pat), pat, &err);
        qimg_pwrite_zeroes(img, size / 2 - (size / 2) % 65536,
                           size >= 4 * 65536 ? 65536 : 0, 0, &err);
        qimg_pwrite_zeroes(img, 512, 1536, 0, &err);
    }
    if (cs && cs <= sizeof(pat) && size >= 2ull * cs) {
        qimg_pwrite_compressed(img, cs, cs, pat, &err);
        qimg_pwrite(img, cs + 10, 10, pat, &err);   /* into it */
    }
    qimg_flush(img, &err);
    memset(&res, 0, sizeof(res));
    qimg_check(img, QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS, &res, &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_image *img;

    fuzz_init_storage();
    /* Hostile tables point writes far past the end of the file: in a
     * real file a sparse region, in memory a huge zero fill. */
    qimg_mem_set_max_size(64u << 20);
    if (qimg_mem_register(FUZZ_IMAGE, data, size) < 0)
        return 0;
    if ((img = fuzz_open(0))) {
        fuzz_inspect(img);
        qimg_close(img);
    }
    if ((img = fuzz_open(QIMG_OPEN_RDWR))) {
        fuzz_writes(img);
        qimg_close(img);
        if ((img = fuzz_open(0))) {
            fuzz_inspect(img);
            qimg_close(img);
        }
    }
    qimg_mem_unregister(FUZZ_IMAGE);
    return 0;
}
