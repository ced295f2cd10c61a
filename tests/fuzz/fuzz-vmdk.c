/*
 * fuzz-vmdk.c - vmdk images from the input, in memory: inspected read-only
 * as the commands do (fuzz_inspect), then opened writable for a few
 * writes (allocation, zeroed grains, compressed grains, CID update, the
 * end of a stream) and inspected again.
 *
 * Built twice:
 *   fuzz-vmdk       the input is the image (a sparse file with its
 *                   embedded descriptor, or a descriptor naming the
 *                   registered side files);
 *   fuzz-vmdk-desc  (FUZZ_VMDK_DESC) the input is a descriptor and an
 *                   extent file: two bytes of descriptor length, the
 *                   descriptor (fuzz.img), the rest (extent.vmdk), so
 *                   that the descriptor parser and the sparse extents
 *                   it names are fuzzed together.
 */
#include "fuzz-common.h"

#define FUZZ_EXTENT "extent.vmdk"

static void write_phase(void)
{
    struct qimg_open_params p = {.filename = FUZZ_IMAGE, .format = "vmdk",
                                 .flags = QIMG_OPEN_NO_LOCK | QIMG_OPEN_RDWR};
    static uint8_t buf[65536];
    struct qimg_image *img = NULL;
    struct qimg_error err;
    uint64_t size;

    if (qimg_open(&img, &p, &err) < 0)
        return;
    size = qimg_image_size(img);
    memset(buf, 0x5a, sizeof(buf));
    if (size >= sizeof(buf)) {
        qimg_pwrite(img, 0, sizeof(buf), buf, &err);
        qimg_pwrite(img, size / 2 - size / 2 % 512, 4096 + 7, buf, &err);
        qimg_pwrite_zeroes(img, size - sizeof(buf), sizeof(buf), 0, &err);
        qimg_pwrite_compressed(img, size - size % sizeof(buf) - sizeof(buf),
                               sizeof(buf), buf, &err);
        qimg_pwrite_compressed(img, 0, 0, NULL, &err);
    } else if (size) {
        qimg_pwrite(img, 0, (size_t)size, buf, &err);
    }
    qimg_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_params p = {.filename = FUZZ_IMAGE, .format = "vmdk",
                                 .flags = QIMG_OPEN_NO_LOCK};
    struct qimg_image *img = NULL;
    struct qimg_error err;

    fuzz_init_storage();
#ifdef FUZZ_VMDK_DESC
    size_t dlen;
    if (size < 2)
        return 0;
    dlen = (size_t)data[0] | (size_t)data[1] << 8;
    if (dlen > size - 2)
        dlen = size - 2;
    if (qimg_mem_register(FUZZ_IMAGE, data + 2, dlen) < 0 ||
        qimg_mem_register(FUZZ_EXTENT, data + 2 + dlen, size - 2 - dlen) < 0)
        return 0;
#else
    if (qimg_mem_register(FUZZ_IMAGE, data, size) < 0)
        return 0;
#endif
    if (qimg_open(&img, &p, &err) == 0) {
        fuzz_inspect(img);
        qimg_close(img);
        write_phase();
        if (qimg_open(&img, &p, &err) == 0) {
            fuzz_inspect(img);
            qimg_close(img);
        }
    }
    qimg_mem_unregister(FUZZ_IMAGE);
#ifdef FUZZ_VMDK_DESC
    qimg_mem_unregister(FUZZ_EXTENT);
#endif
    return 0;
}
