/*
 * fuzz-json.c - json:{...} pseudo-filenames: the JSON flattener and then
 * qimg_open with it.  Only memory images exist (fuzz.img is a small valid
 * qcow2 made at start-up, raw.img a raw file), so opens fail fast or
 * succeed on those.
 */
#include "fuzz-common.h"
#include "core/jsonopts.h"

static void init(void)
{
    static int done;
    struct qimg_opts *o;
    struct qimg_error err;

    if (done)
        return;
    done = 1;
    fuzz_init_storage();
    qimg_mem_register("raw.img", "raw", 3);
    o = qimg_opts_new();
    qimg_opts_set(o, "size", "1048576");
    qimg_opts_set(o, "cluster_size", "4096");
    if (qimg_create("qcow2", FUZZ_IMAGE, o, &err) < 0) {
        fprintf(stderr, "creating the qcow2 image: %s\n", err.msg);
        abort();
    }
    qimg_opts_free(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_opts *opts;
    struct qimg_image *img = NULL;
    struct qimg_error err;
    char *name = malloc(size + 6);

    init();
    if (!name)
        return 0;
    memcpy(name, "json:", 5);
    memcpy(name + 5, data, size);
    name[size + 5] = 0;
    opts = qimg_opts_new();
    if (opts && qimg_json_to_opts(name + 5, opts, &err) == 0) {
        for (size_t i = 0; i < qimg_opts_count(opts); i++)
            FUZZ_ASSERT(qimg_opts_key(opts, i) && qimg_opts_value(opts, i),
                        "entry %zu", i);
    }
    qimg_opts_free(opts);
    struct qimg_open_params p = {.filename = name, .flags = QIMG_OPEN_NO_LOCK};
    if (qimg_open(&img, &p, &err) == 0) {
        uint64_t budget = 1 << 20;
        fuzz_walk(img, &budget);
        qimg_close(img);
    }
    free(name);
    return 0;
}
