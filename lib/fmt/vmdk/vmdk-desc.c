/*
 * vmdk-desc.c - the text descriptor of a VMDK image: the lookups QEMU 7.2
 * does on it (a key found anywhere in the text, as strstr finds it), the
 * extent lines, and the CID rewrite on first write.
 *
 * QEMU reads extent lines with sscanf; vmdk_scan_extent_line() follows
 * the same format exactly (whitespace skipping crosses line ends, so a
 * blank line before an extent line yields that extent twice, as in QEMU)
 * but in bounded time: QEMU's sscanf measures the rest of the descriptor
 * at every line, which is quadratic on a descriptor of many short lines.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vmdk/vmdk.h"

/* createType="..." and the like: the value after `name="`, QEMU's way
 * (the two characters after the name are skipped whatever they are). */
int vmdk_desc_value(const char *desc, const char *name, char *buf,
                    size_t size)
{
    const char *end = desc + strlen(desc);
    const char *p = strstr(desc, name), *q;

    if (!p)
        return -1;
    p += strlen(name) + 2;
    if (p >= end)
        return -1;
    q = memchr(p, '"', (size_t)(end - p));
    if (!q || size < (size_t)(q - p) + 1)
        return -1;
    memcpy(buf, p, (size_t)(q - p));
    buf[q - p] = '\0';
    return 0;
}

/* CID or parentCID: hex digits after the first occurrence of the name
 * and one more character (QEMU's sscanf "%x": leading blanks and a 0x
 * prefix allowed, at most 32 bits kept). */
int vmdk_desc_cid(const char *desc, bool parent, uint32_t *cid)
{
    const char *key = parent ? "parentCID" : "CID";
    const char *p = strstr(desc, key);
    unsigned int v;

    if (!p)
        return -EINVAL;
    p += strlen(key);
    if (!*p)
        return -EINVAL;
    p++;
    if (sscanf(p, "%x", &v) != 1)
        return -EINVAL;
    *cid = v;
    return 0;
}

/*
 * parentFileNameHint="name": QEMU skips the key and two characters, then
 * takes everything up to the next '"'.  buf holds buflen bytes (the
 * string and the zeroes after it, as QEMU's buffer does).  Returns 1 and
 * the name, 0 when there is no hint, -EINVAL when it is unterminated or
 * too long.
 */
int vmdk_desc_parent(const char *buf, size_t buflen, char *name, size_t size)
{
    static const char key[] = "parentFileNameHint";
    const char *p = strstr(buf, key), *q;

    if (!p)
        return 0;
    p += sizeof(key) + 1;
    if (p >= buf + buflen)
        return -EINVAL;
    q = memchr(p, '"', strnlen(p, (size_t)(buf + buflen - p)));
    if (!q)
        return -EINVAL;
    if ((size_t)(q - p) > VMDK_MAX_BACKING_NAME || (size_t)(q - p) >= size)
        return -EINVAL;
    memcpy(name, p, (size_t)(q - p));
    name[q - p] = '\0';
    return 1;
}

/*
 * The CID update of a first write, as QEMU does it on a buffer of size
 * bytes: the text from "parentCID" on is kept, the number after the
 * first "CID" is replaced and the kept text appended.  -EINVAL without a
 * parentCID.
 */
int vmdk_desc_set_cid(char *desc, size_t size, uint32_t cid)
{
    char *tail, *p;
    size_t len;

    desc[size - 1] = '\0';
    p = strstr(desc, "parentCID");
    if (!p)
        return -EINVAL;
    tail = strdup(p);
    if (!tail)
        return -ENOMEM;
    p = strstr(desc, "CID");
    if (p) {
        p += 4;
        if ((size_t)(p - desc) < size) {
            snprintf(p, size - (size_t)(p - desc), "%" PRIx32 "\n", cid);
            len = strlen(desc);
            snprintf(desc + len, size - len, "%s", tail);
        }
    }
    free(tail);
    return 0;
}

/* ---- extent lines ----------------------------------------------------- */

static const char *skip_space(const char *p)
{
    while (*p && isspace((unsigned char)*p))
        p++;
    return p;
}

/* "%Ns" after skipping blanks; false when nothing was read. */
static bool scan_word(const char **pp, char *out, size_t max)
{
    const char *p = skip_space(*pp);
    size_t n = 0;

    while (*p && !isspace((unsigned char)*p) && n < max)
        out[n++] = *p++;
    out[n] = '\0';
    *pp = p;
    return n > 0;
}

/* "%" SCNd64 as glibc reads it: blanks, a sign, digits; out-of-range
 * values saturate (strtoll's result). */
static bool scan_int(const char **pp, int64_t *out)
{
    const char *p = skip_space(*pp);
    bool neg = false, over = false;
    uint64_t v = 0, lim;

    if (*p == '+' || *p == '-')
        neg = *p++ == '-';
    if (!isdigit((unsigned char)*p))
        return false;
    lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (over || v > (lim - d) / 10)
            over = true;
        else
            v = v * 10 + d;
    }
    if (over)
        v = lim;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    *pp = p;
    return true;
}

/*
 * QEMU's sscanf(p, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64)
 * into l; l->matches is the number of conversions done.
 */
void vmdk_scan_extent_line(const char *p, struct vmdk_extent_line *l)
{
    size_t n = 0;

    memset(l, 0, sizeof(*l));
    l->flat_offset = -1;
    if (!scan_word(&p, l->access, 10))
        goto out;
    l->matches = 1;
    if (!scan_int(&p, &l->sectors))
        goto out;
    l->matches = 2;
    if (!scan_word(&p, l->type, 10))
        goto out;
    l->matches = 3;
    p = skip_space(p);
    if (*p != '"')
        goto out;
    p++;
    while (p[n] && p[n] != '\n' && p[n] != '\r' && p[n] != '"' &&
           n < sizeof(l->fname) - 1)
        n++;
    if (!n)
        goto out;
    memcpy(l->fname, p, n);
    l->fname[n] = '\0';
    p += n;
    l->matches = 4;
    if (*p != '"')
        goto out;
    p++;
    if (scan_int(&p, &l->flat_offset))
        l->matches = 5;
out:
    l->end = p;
}

static const char *next_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl ? nl + 1 : s + strlen(s);
}

static bool type_known(const char *t)
{
    return !strcmp(t, "FLAT") || !strcmp(t, "SPARSE") || !strcmp(t, "VMFS") ||
           !strcmp(t, "VMFSSPARSE") || !strcmp(t, "SESPARSE");
}

static int invalid_line(const char *p, struct qimg_error *err)
{
    const char *np = next_line(p);
    if (np > p && np[-1] == '\n')
        np--;
    return qimg_error_set(err, -EINVAL, "Invalid extent line: %.*s",
                          (int)(np - p), p);
}

/*
 * Extent files already open, by the name their lines give (all names are
 * relative to the image's own directory, so equal names are one file):
 * lines naming a file again share its storage, instead of one open file
 * and one set of locks per line (which the kernel checks against each
 * other: quadratic for thousands of lines).
 */
#define NAME_SLOTS (2 * VMDK_MAX_EXTENTS)

struct name_slot {
    char *name;
    struct qimg_storage *st;
};

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static struct name_slot *name_find(struct name_slot *tab, const char *name)
{
    uint32_t i = name_hash(name) % NAME_SLOTS;
    while (tab[i].name && strcmp(tab[i].name, name))
        i = (i + 1) % NAME_SLOTS;
    return &tab[i];
}

static void names_free(struct name_slot *tab)
{
    for (size_t i = 0; tab && i < NAME_SLOTS; i++)
        free(tab[i].name);
    free(tab);
}

/* Open the extent one line names and append it (a sparse file holding a
 * descriptor appends the extents that one names instead). */
static int open_extent(struct qimg_image *node, const struct vmdk_extent_line *l,
                       struct name_slot *names, struct qimg_error *err)
{
    struct vmdk_state *s = node->state;
    struct qimg_storage *st = NULL;
    struct vmdk_extent proto;
    bool flat = !strcmp(l->type, "FLAT") || !strcmp(l->type, "VMFS");
    size_t before = s->n_ext;
    bool used = false;
    int ret;

    if (s->n_ext >= VMDK_MAX_EXTENTS)
        return qimg_error_set(err, -EFBIG, "Too many extents in the VMDK "
                              "descriptor (more than %u)", VMDK_MAX_EXTENTS);
    struct name_slot *slot = name_find(names, l->fname);
    bool shared = slot->st != NULL;
    if (shared) {
        st = slot->st;
    } else {
        /* A relative name needs the descriptor's directory, which some
         * storages cannot give (quorum): QEMU's message then. */
        if (l->fname[0] != '/' && !qimg_path_has_protocol(l->fname)) {
            char *dir;
            ret = qimg_storage_dirname(node->file, &dir, err);
            if (ret < 0) {
                qimg_error_prefix(err, "Cannot use relative paths with VMDK "
                                  "descriptor file '%s': ",
                                  node->file->name ? node->file->name
                                                   : node->filename);
                return -EINVAL;
            }
            free(dir);
        }
        ret = qimg_open_child_storage(node, l->fname,
                                      QIMG_CHILD_RELATIVE | QIMG_CHILD_EXTENT,
                                      node->flags, &st, err);
        if (ret < 0)
            return -EINVAL;
    }
    if (flat) {
        memset(&proto, 0, sizeof(proto));
        proto.file = st;
        proto.owns_file = !shared;
        proto.kind = VMDK_KIND_FLAT;
        proto.sectors = (uint64_t)l->sectors;
        /* QEMU shifts the sector offset without a check. */
        proto.flat_offset = (uint64_t)l->flat_offset << 9;
        ret = vmdk_add_extent(node, &proto, NULL, err);
    } else if (!strcmp(l->type, "SESPARSE")) {
        ret = vmdk_open_sesparse(node, st, err);
    } else {
        char *buf = NULL;
        ret = vmdk_read_desc(st, 0, &buf, err);
        if (ret < 0)
            ret = -EINVAL;
        else
            ret = vmdk_open_sparse(node, st, buf, err);
        free(buf);
    }
    for (size_t i = before; i < s->n_ext; i++) {
        used |= s->ext[i].file == st;
        if (shared && s->ext[i].file == st)
            s->ext[i].owns_file = false;
    }
    if (!used && !shared)
        qimg_storage_close(st);
    if (ret < 0)
        return ret;
    if (used && !shared) {
        slot->name = strdup(l->fname);
        slot->st = slot->name ? st : NULL;
    }
    /* QEMU names the last extent added after the line's type */
    if (s->n_ext > before)
        snprintf(s->ext[s->n_ext - 1].type, sizeof(s->ext[0].type), "%s",
                 l->type);
    return 0;
}

int vmdk_parse_extents(struct qimg_image *node, const char *desc,
                       struct qimg_error *err)
{
    struct vmdk_extent_line l = {0};
    const char *last_p = NULL, *last_w = NULL;
    struct name_slot *names = calloc(NAME_SLOTS, sizeof(*names));
    int ret = 0;

    if (!names)
        return qimg_error_set(err, -ENOMEM, "Out of memory");

    for (const char *p = desc; *p && !ret; p = next_line(p)) {
        /* The scan starts at the first non-blank character: lines that
         * lead to the same one give the same result (blank lines). */
        const char *w = (last_p && p <= last_w) ? last_w : skip_space(p);

        if (w != last_w)
            vmdk_scan_extent_line(w, &l);
        last_p = p;
        last_w = w;
        if (l.matches < 4 || strcmp(l.access, "RW"))
            continue;
        if (!strcmp(l.type, "FLAT")) {
            if (l.matches != 5 || l.flat_offset < 0)
                ret = invalid_line(p, err);
        } else if (!strcmp(l.type, "VMFS")) {
            if (l.matches != 4)
                ret = invalid_line(p, err);
            l.flat_offset = 0;
        } else if (l.matches != 4) {
            ret = invalid_line(p, err);
        }
        if (ret || l.sectors <= 0 || !type_known(l.type))
            continue;
        ret = open_extent(node, &l, names, err);
    }
    names_free(names);
    return ret;
}
