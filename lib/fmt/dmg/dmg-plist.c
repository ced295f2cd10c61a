/*
 * dmg-plist.c - chunk tables from a dmg's XML property list.
 *
 * As QEMU 7.2, no XML parser: every <data>...</data> element of the text
 * (up to its first NUL byte) is base64-decoded and, when it is a mish
 * block, its chunks are added.  An element without its end tag fails the
 * open.  Base64 is decoded as GLib's g_base64_decode does it (QEMU's
 * decoder): characters outside the alphabet are skipped, '=' ends a group
 * early, an incomplete last group is dropped.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/dmg/dmg.h"

static int b64_rank(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    if (c == '=')
        return 0;
    return -1;
}

/* Decode len characters at in into out (room for len / 4 * 3 bytes). */
static size_t b64_decode(const char *in, size_t len, uint8_t *out)
{
    unsigned char last0 = 0, last1 = 0;
    uint32_t v = 0;
    size_t n = 0;
    int group = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        int r = b64_rank(c);
        if (r < 0)
            continue;
        last1 = last0;
        last0 = c;
        v = (v << 6) | (uint32_t)r;
        if (++group == 4) {
            out[n++] = (uint8_t)(v >> 16);
            if (last1 != '=')
                out[n++] = (uint8_t)(v >> 8);
            if (last0 != '=')
                out[n++] = (uint8_t)v;
            group = 0;
        }
    }
    return n;
}

/* Every <data> element of text[0, len), in order. */
static int scan_elements(struct qimg_image *node, const char *text, size_t len,
                         struct qimg_error *err)
{
    static const char open_tag[] = "<data>", close_tag[] = "</data>";
    const char *pos = text, *end = text + len;
    uint8_t *mish = NULL;
    int ret = 0;

    for (;;) {
        const char *begin = memmem(pos, (size_t)(end - pos), open_tag,
                                   sizeof(open_tag) - 1);
        const char *stop;
        size_t n;

        if (!begin)
            break;
        begin += sizeof(open_tag) - 1;
        stop = memmem(begin, (size_t)(end - begin), close_tag,
                      sizeof(close_tag) - 1);
        if (!stop) {
            ret = dmg_open_error(node, -EINVAL, err);
            break;
        }
        /* Decoded bytes: at most 3 per 4 characters (plus one so that an
         * empty element allocates something). */
        free(mish);
        mish = malloc((size_t)(stop - begin) / 4 * 3 + 1);
        if (!mish) {
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
            break;
        }
        n = b64_decode(begin, (size_t)(stop - begin), mish);
        ret = dmg_add_mish(node, mish, n, err);
        if (ret < 0)
            break;
        pos = stop + 1;
    }
    free(mish);
    return ret;
}

int dmg_read_plist(struct qimg_image *node, uint64_t off, uint64_t len,
                   struct qimg_error *err)
{
    char *text;
    const char *nul;
    int ret;

    if (!len || len > DMG_MAX_PLIST)
        return dmg_open_error(node, -EINVAL, err);
    text = malloc((size_t)len + 1);
    if (!text)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->file->ops->pread(node->file, off, (size_t)len, text, err);
    if (ret < 0) {
        free(text);
        return dmg_open_error(node, -EINVAL, err);
    }
    text[len] = '\0';
    /* QEMU searches the text as a C string: it ends at the first NUL. */
    nul = memchr(text, '\0', (size_t)len + 1);
    ret = scan_elements(node, text, (size_t)(nul - text), err);
    free(text);
    return ret;
}
