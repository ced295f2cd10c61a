/*
 * fuzz-image.c - an image file from the input, held in memory, opened
 * read-only and inspected the way info, map, compare, check, measure and
 * snapshot -l do (fuzz-common.h: fuzz_inspect).
 *
 * Built twice: fuzz-qcow2 (FUZZ_FORMAT "qcow2": the driver is forced, so
 * every input reaches the qcow2 header parser) and fuzz-probe (no format:
 * probing picks the driver, as a plain `qemu-img info` does).
 */
#include "fuzz-common.h"

#ifndef FUZZ_FORMAT
#define FUZZ_FORMAT NULL
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_params p = {.filename = FUZZ_IMAGE,
                                 .format = FUZZ_FORMAT,
                                 .flags = QIMG_OPEN_NO_LOCK};
    struct qimg_image *img = NULL;
    struct qimg_error err;

    fuzz_init_storage();
    if (qimg_mem_register(FUZZ_IMAGE, data, size) < 0)
        return 0;
    if (qimg_open(&img, &p, &err) == 0) {
        fuzz_inspect(img);
        qimg_close(img);
    }
    qimg_mem_unregister(FUZZ_IMAGE);
    return 0;
}
