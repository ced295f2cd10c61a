/*
 * fuzz-opts.c - the key=value option parser (-o lists, --image-opts),
 * option validation against qcow2's and raw's creation options (whole and
 * element by element), the help scan, and --object definitions (keyval
 * syntax and type checks; objects accumulate up to their bound).  Input:
 * one selector byte (implied key or not, format), then the string.
 */
#include "fuzz-common.h"

static void use(const struct qimg_opts *opts)
{
    size_t n = qimg_opts_count(opts);

    for (size_t i = 0; i < n; i++) {
        const char *k = qimg_opts_key(opts, i);
        const char *v = qimg_opts_value(opts, i);
        FUZZ_ASSERT(k && v, "entry %zu of %zu is NULL", i, n);
        FUZZ_ASSERT(qimg_opts_get(opts, k) != NULL, "key '%s' not found", k);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const fmts[] = {"qcow2", "raw"};
    const struct qimg_opt_desc *d[64];
    struct qimg_opts *opts, *dup;
    struct qimg_error err;
    char *str;

    if (!size)
        return 0;
    str = malloc(size);
    opts = qimg_opts_new();
    if (!str || !opts)
        goto out;
    memcpy(str, data + 1, size - 1);
    str[size - 1] = 0;
    if (qimg_opts_parse(opts, str, (data[0] & 1) ? "size" : NULL, &err) < 0)
        goto out;
    use(opts);
    dup = qimg_opts_dup(opts);
    if (dup) {
        FUZZ_ASSERT(qimg_opts_count(dup) == qimg_opts_count(opts),
                    "dup changed the count");
        if (qimg_opts_count(dup))
            qimg_opts_del(dup, qimg_opts_key(dup, 0));
        use(dup);
        qimg_opts_free(dup);
    }
    int n = qimg_create_opts(fmts[(data[0] >> 1) & 1], NULL, d, 64, &err);
    if (n > 0) {
        struct qimg_opt_desc flat[64];
        for (int i = 0; i < n; i++)
            flat[i] = *d[i];
        if (qimg_opts_validate(opts, flat, (size_t)n, &err) == 0)
            use(opts);
        struct qimg_opts *checked = qimg_opts_new();
        if (checked && qimg_opts_parse_checked(checked, str, flat, (size_t)n,
                                               &err) == 0)
            use(checked);
        qimg_opts_free(checked);
    }
    (void)qimg_opts_has_help(str);
    char *help = NULL;
    /* no sockets, kernel keys or files named by the input (keys and the
     * type name have no escapes, so these spellings are the only ones) */
    if (!strstr(str, "pr-manager-helper") && !strstr(str, "secret_keyring") &&
        !strstr(str, "file=") && !strstr(str, "dir=") &&
        qimg_object_add(str, &help, &err) == 0 && help)
        FUZZ_ASSERT(strlen(help) > 0, "empty help text");
    free(help);
out:
    qimg_opts_free(opts);
    free(str);
    return 0;
}
