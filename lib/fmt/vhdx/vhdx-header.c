/*
 * vhdx-header.c - CRC-32C, GUIDs, the two VHDX headers and the region
 * table (MS-VHDX 2.2.2-2.2.3), with QEMU 7.2's choice of the current
 * header and its register of byte ranges that must not overlap.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/util.h"
#include "fmt/vhdx/vhdx.h"

const uint8_t vhdx_bat_guid[16] = {
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
    0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
};
const uint8_t vhdx_metadata_guid[16] = {
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
    0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
};

/* ---- CRC-32C (Castagnoli, reflected 0x82f63b78) ------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82f63b78u & -(c & 1));
        crc_table[i] = c;
    }
}

/* Raw register update: callers start from 0xffffffff and invert at the
 * end (vhdx_checksum does both). */
uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    pthread_once(&crc_once, crc_init);
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t crc_off)
{
    static const uint8_t zero[4];
    uint32_t crc = vhdx_crc32c(0xffffffffu, buf, crc_off);

    crc = vhdx_crc32c(crc, zero, 4);
    crc = vhdx_crc32c(crc, buf + crc_off + 4, len - crc_off - 4);
    return ~crc;
}

/* ---- GUIDs ---------------------------------------------------------------- */

/* A random (version 4) GUID, stored as QEMU stores its UUIDs. */
void vhdx_guid_generate(uint8_t guid[16])
{
    size_t got = 0;

    while (got < 16) {
        ssize_t n = getrandom(guid + got, 16 - got, 0);
        if (n <= 0) {
            /* No entropy source: a GUID only has to differ from others. */
            for (; got < 16; got++)
                guid[got] = (uint8_t)(random() >> 7);
            break;
        }
        got += (size_t)n;
    }
    guid[6] = (guid[6] & 0x0f) | 0x40;
    guid[8] = (guid[8] & 0x3f) | 0x80;
}

bool vhdx_guid_is_zero(const uint8_t guid[16])
{
    static const uint8_t zero[16];
    return !memcmp(guid, zero, 16);
}

/* ---- headers -------------------------------------------------------------- */

void vhdx_header_decode(struct vhdx_header *h, const uint8_t *p)
{
    h->signature = qimg_ld_le32(p);
    h->checksum = qimg_ld_le32(p + 4);
    h->sequence = qimg_ld_le64(p + 8);
    memcpy(h->file_write_guid, p + 16, 16);
    memcpy(h->data_write_guid, p + 32, 16);
    memcpy(h->log_guid, p + 48, 16);
    h->log_version = qimg_ld_le16(p + 64);
    h->version = qimg_ld_le16(p + 66);
    h->log_length = qimg_ld_le32(p + 68);
    h->log_offset = qimg_ld_le64(p + 72);
}

void vhdx_header_encode(const struct vhdx_header *h, uint8_t *p)
{
    qimg_st_le32(p, h->signature);
    qimg_st_le32(p + 4, h->checksum);
    qimg_st_le64(p + 8, h->sequence);
    memcpy(p + 16, h->file_write_guid, 16);
    memcpy(p + 32, h->data_write_guid, 16);
    memcpy(p + 48, h->log_guid, 16);
    qimg_st_le16(p + 64, h->log_version);
    qimg_st_le16(p + 66, h->version);
    qimg_st_le32(p + 68, h->log_length);
    qimg_st_le64(p + 72, h->log_offset);
}

int vhdx_header_write(struct qimg_storage *st, const struct vhdx_header *h,
                      uint64_t off, bool keep_rest, struct qimg_error *err)
{
    uint8_t buf[VHDX_HEADER_CRC_SIZE];
    int ret = 0;

    memset(buf, 0, sizeof(buf));
    if (keep_rest)
        ret = st->ops->pread(st, off, sizeof(buf), buf, err);
    if (ret < 0)
        return ret;
    vhdx_header_encode(h, buf);
    qimg_st_le32(buf + 4, vhdx_checksum(buf, sizeof(buf), 4));
    /* Only the fields are written (and made stable), as QEMU does. */
    ret = st->ops->pwrite(st, off, VHDX_HEADER_SIZE, buf, err);
    if (ret == 0)
        ret = st->ops->flush(st, err);
    return ret;
}

/* Read the header at off; *valid when its checksum, signature and
 * version are right. */
static int read_header(struct qimg_storage *st, uint64_t off,
                       struct vhdx_header *h, bool *valid,
                       struct qimg_error *err)
{
    uint8_t buf[VHDX_HEADER_CRC_SIZE];
    int ret = st->ops->pread(st, off, sizeof(buf), buf, err);

    *valid = false;
    if (ret < 0)
        return ret;
    vhdx_header_decode(h, buf);
    *valid = vhdx_checksum(buf, sizeof(buf), 4) == h->checksum &&
             h->signature == VHDX_HEADER_SIG && h->version == 1;
    return 0;
}

int vhdx_parse_headers(struct qimg_image *node, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    bool v1, v2;
    int ret;

    ret = read_header(node->file, VHDX_HEADER1_OFFSET, &s->hdr[0], &v1, err);
    if (ret == 0)
        ret = read_header(node->file, VHDX_HEADER2_OFFSET, &s->hdr[1], &v2,
                          err);
    if (ret < 0)
        return qimg_error_set(err, -EINVAL, "No valid VHDX header found: %s",
                              strerror(-ret));
    if (v1 && v2) {
        /* The higher sequence number wins; equal numbers are accepted
         * only for identical headers (Disk2VHD writes those). */
        if (s->hdr[0].sequence != s->hdr[1].sequence)
            s->curr = s->hdr[1].sequence > s->hdr[0].sequence;
        else if (!memcmp(&s->hdr[0], &s->hdr[1], sizeof(s->hdr[0])))
            s->curr = 0;
        else
            v1 = v2 = false;
    } else {
        s->curr = v2;
    }
    if (!v1 && !v2)
        return qimg_error_set(err, -EINVAL, "No valid VHDX header found");
    vhdx_range_add(s, s->hdr[s->curr].log_offset, s->hdr[s->curr].log_length);
    return 0;
}

static int update_header(struct qimg_image *node, bool new_data_guid,
                         const uint8_t *log_guid, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    int idx = !s->curr;
    struct vhdx_header *h = &s->hdr[idx];
    int ret;

    h->sequence = s->hdr[s->curr].sequence + 1;
    memcpy(h->file_write_guid, s->session_guid, 16);
    if (new_data_guid)
        vhdx_guid_generate(h->data_write_guid);
    if (log_guid)
        memcpy(h->log_guid, log_guid, 16);
    ret = vhdx_header_write(node->file, h, idx ? VHDX_HEADER2_OFFSET
                                               : VHDX_HEADER1_OFFSET,
                            true, err);
    if (ret == 0)
        s->curr = idx;
    return ret;
}

int vhdx_update_headers(struct qimg_image *node, bool new_data_guid,
                        const uint8_t *log_guid, struct qimg_error *err)
{
    int ret = update_header(node, new_data_guid, log_guid, err);
    return ret < 0 ? ret : update_header(node, new_data_guid, log_guid, err);
}

int vhdx_user_visible_write(struct qimg_image *node, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;

    if (!s->first_visible_write)
        return 0;
    s->first_visible_write = false;
    return vhdx_update_headers(node, true, NULL, err);
}

/* ---- the overlap register ------------------------------------------------- */

void vhdx_range_add(struct vhdx_state *s, uint64_t start, uint64_t len)
{
    /* One log range and at most VHDX_MAX_REGION_ENTRIES regions. */
    if (s->n_ranges < QIMG_ARRAY_SIZE(s->ranges)) {
        s->ranges[s->n_ranges].start = start;
        s->ranges[s->n_ranges].end = start + len;   /* wraps as QEMU's */
        s->n_ranges++;
    }
}

int vhdx_range_check(struct vhdx_state *s, uint64_t start, uint64_t len)
{
    uint64_t end = start + len;

    /* Newest first, as QEMU's list, so the same range is named. */
    for (unsigned i = s->n_ranges; i-- > 0;) {
        const struct vhdx_range *r = &s->ranges[i];
        if (!(start >= r->end || end <= r->start)) {
            qimg_message(QIMG_MSG_ERROR, "VHDX region %llu-%llu overlaps with "
                         "region %llu-%.0llu\n", (unsigned long long)start,
                         (unsigned long long)end,
                         (unsigned long long)r->start,
                         (unsigned long long)r->end);
            return -EINVAL;
        }
    }
    return 0;
}

/* ---- the region table ----------------------------------------------------- */

int vhdx_parse_region_table(struct qimg_image *node, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint8_t *buf = malloc(VHDX_HEADER_BLOCK);
    bool bat_found = false, meta_found = false;
    uint32_t count;
    int ret;

    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = node->file->ops->pread(node->file, VHDX_REGION1_OFFSET,
                                 VHDX_HEADER_BLOCK, buf, err);
    if (ret < 0)
        goto out;
    ret = -EINVAL;
    if (vhdx_checksum(buf, VHDX_HEADER_BLOCK, 4) != qimg_ld_le32(buf + 4) ||
        qimg_ld_le32(buf) != VHDX_REGION_SIG)
        goto out;
    count = qimg_ld_le32(buf + 8);
    if (count > VHDX_MAX_REGION_ENTRIES)
        goto out;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *p = buf + 16 + i * VHDX_REGION_ENTRY_SIZE;
        struct vhdx_region_entry e;

        memcpy(e.guid, p, 16);
        e.file_offset = qimg_ld_le64(p + 16);
        e.length = qimg_ld_le32(p + 24);
        e.data_bits = qimg_ld_le32(p + 28);
        if (vhdx_range_check(s, e.file_offset, e.length) < 0)
            goto out;
        vhdx_range_add(s, e.file_offset, e.length);
        if (!memcmp(e.guid, vhdx_bat_guid, 16)) {
            if (bat_found)
                goto out;
            bat_found = true;
            s->bat_rt = e;
        } else if (!memcmp(e.guid, vhdx_metadata_guid, 16)) {
            if (meta_found)
                goto out;
            meta_found = true;
            s->meta_rt = e;
        } else if (e.data_bits & VHDX_REGION_REQUIRED) {
            /* A required region we do not know: the spec says refuse. */
            ret = -ENOTSUP;
            goto out;
        }
    }
    ret = bat_found && meta_found ? 0 : -EINVAL;
out:
    free(buf);
    return ret;
}
