/*
 * fuzz-size.c - size parsing ("1.5G", "0x200") and printing ("1.5 MiB").
 * A parsed size printed and parsed back must land near the original (the
 * printed form is rounded to 3 significant digits).
 */
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *str = malloc(size + 1), out[64], tiny[4];
    uint64_t v, w;
    bool hex;

    if (!str)
        return 0;
    memcpy(str, data, size);
    str[size] = 0;
    if (qimg_parse_size(str, &v, &hex) == 0) {
        qimg_size_to_str(v, out, sizeof(out));
        FUZZ_ASSERT(memchr(out, 0, sizeof(out)) != NULL, "unterminated");
        qimg_size_to_str(v, tiny, sizeof(tiny));
        FUZZ_ASSERT(memchr(tiny, 0, sizeof(tiny)) != NULL, "unterminated");
        /* "1.5 MiB" -> "1.5MiB" is not parseable; check the number only. */
        char *sp = strchr(out, ' ');
        if (sp && sp[1] && sp[1] != 'B') {
            char again[64];
            snprintf(again, sizeof(again), "%.*s%c", (int)(sp - out), out,
                     sp[1]);
            if (qimg_parse_size(again, &w, NULL) == 0) {
                uint64_t diff = v > w ? v - w : w - v;
                FUZZ_ASSERT(diff <= v / 100 + 1, "%s -> %llu -> %s -> %llu",
                            str, (unsigned long long)v, out,
                            (unsigned long long)w);
            }
        }
    }
    free(str);
    return 0;
}
