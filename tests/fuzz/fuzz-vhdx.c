/*
 * fuzz-vhdx.c - vhdx images from the input, opened read-only (header,
 * region table, metadata, BAT, log search) and then writable (log
 * replay, allocating writes through the log), inspected as info, map,
 * compare and check do.
 *
 * A vhdx file has its log at 1 MiB or later, past libFuzzer's 1 MiB
 * inputs, so the input is the file with a hole: input bytes [0, 768 KiB)
 * are the file's first 768 KiB (identifier, headers, region tables, and
 * room for a small BAT and metadata region), the rest lands at 1 MiB
 * (log and payload blocks).  The 256 KiB skipped are unused in the
 * header section.  The file is at least 4 MiB long (zeroes after the
 * input), so that a few payload blocks fit inside it.
 */
#include "fuzz-common.h"

#define VHDX_FUZZ_HEAD (768u << 10)
#define VHDX_FUZZ_GAP_END (1u << 20)
#define VHDX_FUZZ_MIN_FILE (4u << 20)

static void fuzz_open(const char *name, unsigned flags)
{
    struct qimg_open_params p = {.filename = name, .format = "vhdx",
                                 .flags = QIMG_OPEN_NO_LOCK | flags};
    struct qimg_image *img = NULL;
    struct qimg_error err;
    static const uint8_t pat[3000] = {0x5a};

    if (qimg_open(&img, &p, &err) < 0)
        return;
    /* Writes allocate whole blocks in the memory file: small ones only. */
    if ((flags & QIMG_OPEN_RDWR) &&
        qimg_image_cluster_size(img) <= (8u << 20)) {
        uint64_t size = qimg_image_size(img);
        qimg_pwrite(img, 0, 512, pat, &err);
        if (size > sizeof(pat))
            qimg_pwrite(img, size - sizeof(pat), sizeof(pat), pat, &err);
        qimg_pwrite_zeroes(img, size / 2, size > 8192 ? 8192 : 0, 0, &err);
    }
    fuzz_inspect(img);
    qimg_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t head = size < VHDX_FUZZ_HEAD ? size : VHDX_FUZZ_HEAD;
    size_t len = size > VHDX_FUZZ_HEAD ? VHDX_FUZZ_GAP_END + size - head
                                       : size;
    uint8_t *file;

    if (len < VHDX_FUZZ_MIN_FILE)
        len = VHDX_FUZZ_MIN_FILE;
    file = calloc(1, len);

    if (!file)
        return 0;
    memcpy(file, data, head);
    if (size > head)
        memcpy(file + VHDX_FUZZ_GAP_END, data + head, size - head);
    fuzz_init_storage();
    if (qimg_mem_register(FUZZ_IMAGE, file, len) == 0) {
        fuzz_open(FUZZ_IMAGE, 0);
        fuzz_open(FUZZ_IMAGE, QIMG_OPEN_RDWR);
        qimg_mem_unregister(FUZZ_IMAGE);
    }
    free(file);
    return 0;
}
