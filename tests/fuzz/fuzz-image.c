/*
 * fuzz-image.c - an image file from the input, held in memory, opened
 * read-only and inspected the way info, map, compare, check, measure and
 * snapshot -l do (fuzz-common.h: fuzz_inspect).
 *
 * Built several times: fuzz-qcow2, fuzz-vpc, fuzz-vdi (FUZZ_FORMAT: the
 * driver is forced, so every input reaches its header parser) and
 * fuzz-probe (no format: probing picks the driver, as a plain `qemu-img
 * info` does), fuzz-luks (headers only, FUZZ_OPEN_FLAGS).  With FUZZ_WRITES the image is then opened read-write and
 * written (allocating writes, partial blocks, the last byte) and read
 * back, with the memory file's growth bounded.
 */
#include "fuzz-common.h"

#ifndef FUZZ_FORMAT
#define FUZZ_FORMAT NULL
#endif
/* Extra open flags: fuzz-luks opens headers only (QIMG_OPEN_NO_IO, as
 * info does), since without a secret nothing past the header is read,
 * and with one every input would cost its PBKDF2 work. */
#ifndef FUZZ_OPEN_FLAGS
#define FUZZ_OPEN_FLAGS 0
#endif

#ifdef FUZZ_WRITES
/* How far writes may grow the image file (allocations at hostile
 * offsets fail past it). */
#define FUZZ_WRITE_FILE_MAX (64u << 20)

/* Writes at the start, in the middle (across a block boundary for most
 * block sizes) and at the end; each read back if it succeeded. */
static void fuzz_write_pass(struct qimg_image *img)
{
    static uint8_t buf[70000], back[70000];
    uint64_t size = qimg_image_size(img);
    uint64_t offs[3] = {0, size / 2 - size / 2 % (1 << 20), size};
    size_t lens[3] = {4096, 70000, 1};
    struct qimg_error err;
    uint64_t budget = FUZZ_READ_BUDGET;

    for (int i = 0; i < 3; i++) {
        uint64_t off = offs[i];
        size_t len = lens[i];
        if (off + len > size)
            off = size > len ? size - len : 0;
        if (len > size)
            len = (size_t)size;
        if (!len)
            continue;
        memset(buf, 0x5a + i, len);
        if (qimg_pwrite(img, off, len, buf, &err) < 0)
            continue;
        if (qimg_pread(img, off, len, back, &err) == 0)
            FUZZ_ASSERT(!memcmp(buf, back, len), "write at %llu not read back",
                        (unsigned long long)off);
    }
    qimg_flush(img, &err);
    fuzz_walk(img, &budget);
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_params p = {.filename = FUZZ_IMAGE,
                                 .format = FUZZ_FORMAT,
                                 .flags = QIMG_OPEN_NO_LOCK |
                                          FUZZ_OPEN_FLAGS};
    struct qimg_image *img = NULL;
    struct qimg_error err;

    fuzz_init_storage();
    if (qimg_mem_register(FUZZ_IMAGE, data, size) < 0)
        return 0;
    if (qimg_open(&img, &p, &err) == 0) {
        fuzz_inspect(img);
        qimg_close(img);
    }
#ifdef FUZZ_WRITES
    qimg_mem_set_max_size(FUZZ_WRITE_FILE_MAX);
    p.flags |= QIMG_OPEN_RDWR;
    img = NULL;
    if (qimg_open(&img, &p, &err) == 0) {
        fuzz_write_pass(img);
        qimg_close(img);
    }
#endif
    qimg_mem_unregister(FUZZ_IMAGE);
    return 0;
}
