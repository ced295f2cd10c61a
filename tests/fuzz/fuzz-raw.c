/*
 * fuzz-raw.c - the raw driver's offset= and size= window.  Input: one line
 * of options ("offset=512,size=1k") parsed as --image-opts would be, then
 * the file's bytes.  Invalid options must fail cleanly; a valid window must
 * read exactly the file's bytes at offset (zeroes past its end).
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t optlen = nl ? (size_t)(nl - data) : size;
    const uint8_t *file = nl ? nl + 1 : data + size;
    size_t flen = size - (size_t)(file - data);
    struct qimg_opts *opts;
    struct qimg_open_params p = {.flags = QIMG_OPEN_NO_LOCK};
    struct qimg_image *img = NULL;
    struct qimg_error err;
    char *line;

    fuzz_init_storage();
    line = malloc(optlen + 1);
    opts = qimg_opts_new();
    if (!line || !opts)
        goto out;
    memcpy(line, data, optlen);
    line[optlen] = 0;
    if (qimg_opts_parse(opts, line, NULL, &err) < 0)
        goto out;
    qimg_opts_set(opts, "driver", "raw");
    qimg_opts_set(opts, "file.filename", FUZZ_IMAGE);
    if (qimg_mem_register(FUZZ_IMAGE, file, flen) < 0)
        goto out;
    p.options = opts;
    if (qimg_open(&img, &p, &err) == 0) {
        uint64_t budget = FUZZ_READ_BUDGET, vsize = qimg_image_size(img);
        uint64_t off = 0;
        const char *o = qimg_opts_get(opts, "offset");
        uint8_t buf[4096];

        /* The window starts at offset= (validated by open). */
        if (o && qimg_parse_size(o, &off, NULL) < 0)
            off = 0;
        if (vsize && off < flen) {
            size_t n = (size_t)(vsize < sizeof(buf) ? vsize : sizeof(buf));
            if (n > flen - off)
                n = (size_t)(flen - off);
            if (qimg_pread(img, 0, n, buf, &err) == 0)
                FUZZ_ASSERT(!memcmp(buf, file + off, n),
                            "raw window at %llu reads other bytes",
                            (unsigned long long)off);
        }
        fuzz_walk(img, &budget);
        qimg_close(img);
    }
    qimg_mem_unregister(FUZZ_IMAGE);
out:
    qimg_opts_free(opts);
    free(line);
    return 0;
}
