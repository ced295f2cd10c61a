/*
 * vhdx-log.c - the metadata log (MS-VHDX 2.3): a circular buffer of 4 KiB
 * sectors holding entries (header, descriptors, data sectors) that must
 * be replayed before the file is used.
 *
 * Open searches the log for the active sequence and replays it as QEMU
 * 7.2 does (same validity rules, same error codes), streaming sector by
 * sector: memory stays at a few sectors whatever the entries claim, the
 * search reads each sector a bounded number of times (QEMU loops for ever
 * on an entry exactly as long as the log), and replay writes stay below
 * VHDX_LOG_MAX_FILE_OFFSET.  BAT updates are written as QEMU writes them:
 * one entry (with a fresh log GUID in the headers), flushed, replayed at
 * once, then the log GUID cleared, so that a crash at any point leaves an
 * image QEMU replays or ignores.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "fmt/vhdx/vhdx.h"

/*
 * The search reads at most this many times the log's sectors (a valid
 * log is read about once); QEMU's search is quadratic on logs of entries
 * chaining around the buffer.
 */
#define VHDX_LOG_MAX_SCAN_PASSES 8

struct log_hdr {
    uint32_t signature, checksum, entry_length, tail;
    uint64_t sequence;
    uint32_t desc_count;
    uint8_t log_guid[16];
    uint64_t flushed_file_offset, last_file_offset;
};

struct log_desc {
    uint32_t signature;
    uint32_t trailing;          /* data: bytes 4092..4095 of the sector */
    uint64_t zero_length;       /* zero: bytes; data: bytes 0..7 (raw) */
    uint8_t leading[8];
    uint64_t file_offset;
    uint64_t sequence;
};

/* A read/write cursor over the log (QEMU's VHDXLogEntries positions);
 * write == length means "no end" (the search treats the log as full). */
struct cursor {
    uint32_t read, write;
};

struct scan {
    uint64_t sectors_read;
    uint64_t budget;
};

static void decode_hdr(struct log_hdr *h, const uint8_t *p)
{
    h->signature = qimg_ld_le32(p);
    h->checksum = qimg_ld_le32(p + 4);
    h->entry_length = qimg_ld_le32(p + 8);
    h->tail = qimg_ld_le32(p + 12);
    h->sequence = qimg_ld_le64(p + 16);
    h->desc_count = qimg_ld_le32(p + 24);
    memcpy(h->log_guid, p + 32, 16);
    h->flushed_file_offset = qimg_ld_le64(p + 48);
    h->last_file_offset = qimg_ld_le64(p + 56);
}

static void decode_desc(struct log_desc *d, const uint8_t *p)
{
    d->signature = qimg_ld_le32(p);
    d->trailing = qimg_ld_le32(p + 4);
    d->zero_length = qimg_ld_le64(p + 8);
    memcpy(d->leading, p + 8, 8);
    d->file_offset = qimg_ld_le64(p + 16);
    d->sequence = qimg_ld_le64(p + 24);
}

static uint32_t inc_idx(const struct vhdx_log *log, uint32_t idx)
{
    idx += VHDX_LOG_SECTOR;
    return idx >= log->length ? 0 : idx;
}

/* Sectors needed for the header and desc_count descriptors (never 0). */
static uint32_t desc_sectors(uint32_t desc_count)
{
    return (uint32_t)qimg_div_round_up((uint64_t)desc_count + 2, 128);
}

static int read_log(struct qimg_image *node, uint32_t pos, void *buf,
                    size_t len, struct scan *sc, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint64_t at;

    if (sc && ++sc->sectors_read > sc->budget)
        return qimg_error_set(err, -ELOOP, "VHDX log search gave up after "
                              "reading %llu sectors",
                              (unsigned long long)sc->budget);
    if (qimg_add_overflow(s->log.offset, pos, &at))
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    return node->file->ops->pread(node->file, at, len, buf, err);
}

/* The header at the read position, without moving (QEMU's peek). */
static int peek_hdr(struct qimg_image *node, const struct cursor *c,
                    struct log_hdr *h, struct scan *sc,
                    struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint8_t buf[VHDX_LOG_HDR_SIZE];
    uint32_t read = c->read;
    int ret;

    if (read % VHDX_LOG_SECTOR)
        return -EFAULT;
    if (read + VHDX_LOG_HDR_SIZE > s->log.length)
        read = 0;
    if (read == c->write)
        return -EINVAL;
    ret = read_log(node, read, buf, sizeof(buf), sc, err);
    if (ret == 0)
        decode_hdr(h, buf);
    return ret;
}

/* Read one sector at the cursor and advance; *got false at its end. */
static int read_sector(struct qimg_image *node, struct cursor *c, void *buf,
                       bool *got, struct scan *sc, struct qimg_error *err)
{
    int ret;

    *got = false;
    if (c->read == c->write)
        return 0;
    ret = read_log(node, c->read, buf, VHDX_LOG_SECTOR, sc, err);
    if (ret < 0)
        return ret;
    c->read = inc_idx(&((struct vhdx_state *)node->state)->log, c->read);
    *got = true;
    return 0;
}

static bool hdr_valid(const struct vhdx_state *s, const struct log_hdr *h)
{
    return h->signature == VHDX_LOG_SIG &&
           s->log.length >= h->entry_length &&
           h->entry_length % VHDX_LOG_SECTOR == 0 && h->sequence != 0 &&
           !memcmp(h->log_guid, s->hdr[s->curr].log_guid, 16) &&
           (uint64_t)h->desc_count * VHDX_LOG_DESC_SIZE <= h->entry_length;
}

static bool desc_valid(const struct log_desc *d, const struct log_hdr *h)
{
    if (d->sequence != h->sequence || d->file_offset % VHDX_LOG_SECTOR)
        return false;
    if (d->signature == VHDX_LOG_ZERO_SIG)
        return d->zero_length % VHDX_LOG_SECTOR == 0;
    return d->signature == VHDX_LOG_DESC_SIG;
}

/*
 * Read the descriptor sectors of the entry at the cursor (advancing past
 * them) and check every descriptor.  *crc, when not NULL, gets the CRC
 * register over those sectors (the checksum field counted as zero).
 * first_desc, when not NULL, is where the descriptor sectors started.
 */
static int read_descs(struct qimg_image *node, struct cursor *c,
                      struct log_hdr *h, uint32_t *crc, uint32_t *first_desc,
                      uint8_t *sec, struct scan *sc, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    uint32_t nsec, reg = 0xffffffffu;
    uint64_t i = 0;
    bool got;
    int ret = peek_hdr(node, c, h, sc, err);

    if (ret < 0)
        return ret;
    if (!hdr_valid(s, h))
        return -EINVAL;
    nsec = desc_sectors(h->desc_count);
    if (first_desc)
        *first_desc = c->read;
    for (uint32_t k = 0; k < nsec; k++) {
        ret = read_sector(node, c, sec, &got, sc, err);
        if (ret < 0)
            return ret;
        if (!got)
            return -EINVAL;
        if (k == 0)
            memset(sec + 4, 0, 4);
        reg = vhdx_crc32c(reg, sec, VHDX_LOG_SECTOR);
        /* The descriptors of this sector (the header takes two slots). */
        for (uint32_t slot = k ? 0 : 2; slot < 128 && i < h->desc_count;
             slot++, i++) {
            struct log_desc d;
            decode_desc(&d, sec + slot * VHDX_LOG_DESC_SIZE);
            if (!desc_valid(&d, h))
                return -EINVAL;
        }
    }
    if (crc)
        *crc = reg;
    return 0;
}

/*
 * QEMU's vhdx_validate_log_entry: is the entry at the cursor valid and
 * (when seq) the successor of seq?  Invalid headers move the cursor one
 * sector on; a checked entry moves it past what was read.  Errors other
 * than "invalid" end the search.
 */
static int validate_entry(struct qimg_image *node, struct cursor *c,
                          uint64_t seq, bool *valid, struct log_hdr *entry,
                          uint8_t *sec, struct scan *sc,
                          struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    struct log_hdr h;
    uint32_t reg, nsec, total;
    bool got;
    int ret;

    *valid = false;
    ret = peek_hdr(node, c, &h, sc, err);
    if (ret < 0 || !hdr_valid(s, &h) || (seq && h.sequence != seq + 1)) {
        c->read = inc_idx(&s->log, c->read);
        return ret < 0 ? ret : 0;
    }
    nsec = desc_sectors(h.desc_count);
    total = h.entry_length / VHDX_LOG_SECTOR;
    ret = read_descs(node, c, &h, &reg, NULL, sec, sc, err);
    if (ret < 0)
        return ret;
    for (uint32_t k = nsec; k < total; k++) {
        ret = read_sector(node, c, sec, &got, sc, err);
        if (ret < 0)
            return ret;
        if (!got)
            return 0;
        reg = vhdx_crc32c(reg, sec, VHDX_LOG_SECTOR);
    }
    if (~reg == h.checksum) {
        *valid = true;
        *entry = h;
    }
    return 0;
}

struct sequence {
    bool valid;
    uint32_t count;
    struct cursor log;
    struct log_hdr hdr;     /* of its first entry */
};

/* QEMU's vhdx_log_search: the valid sequence with the highest first
 * sequence number, if any. */
static int log_search(struct qimg_image *node, struct sequence *out,
                      uint8_t *sec, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    struct cursor c = {.read = 0, .write = (uint32_t)s->log.length};
    struct sequence cand = {0};
    struct scan sc = {0, VHDX_LOG_MAX_SCAN_PASSES *
                             (s->log.length / VHDX_LOG_SECTOR) + 16};
    struct log_hdr h;
    bool valid;
    int ret;

    /* write = length is never reached: the log reads as full. */
    if (s->log.length >= UINT32_MAX)
        c.write = UINT32_MAX;
    for (;;) {
        struct sequence cur = {0};
        uint64_t seq = 0;
        uint32_t tail = c.read;

        ret = validate_entry(node, &c, 0, &valid, &h, sec, &sc, err);
        if (ret < 0)
            return ret;
        if (valid) {
            cur.valid = true;
            cur.log.read = tail;
            cur.log.write = c.read;
            cur.count = 1;
            cur.hdr = h;
            for (;;) {
                ret = validate_entry(node, &c, seq, &valid, &h, sec, &sc, err);
                if (ret < 0)
                    return ret;
                if (!valid)
                    break;
                cur.log.write = c.read;
                cur.count++;
                seq = h.sequence;
            }
        }
        if (cur.valid &&
            (!cand.valid || cur.hdr.sequence > cand.hdr.sequence))
            cand = cur;
        /* Wrapped; or back exactly where it started (QEMU: for ever). */
        if (c.read <= tail)
            break;
    }
    *out = cand;
    if (cand.valid)
        s->log.sequence = cand.hdr.sequence + 1;
    return 0;
}

/* Write (or zero) what one descriptor says. */
static int flush_desc(struct qimg_image *node, const struct log_desc *d,
                      const uint8_t *data, struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    uint8_t *buf;
    uint64_t len = d->signature == VHDX_LOG_ZERO_SIG ? d->zero_length
                                                      : VHDX_LOG_SECTOR;
    int ret;

    if (!qimg_range_ok(d->file_offset, len, VHDX_LOG_MAX_FILE_OFFSET))
        return qimg_error_set(err, -EFBIG, "VHDX log entry writes past "
                              "%llu bytes", (unsigned long long)
                              VHDX_LOG_MAX_FILE_OFFSET);
    if (d->signature == VHDX_LOG_ZERO_SIG) {
        if (!len)
            return 0;
        /* QEMU writes zero sectors one by one; the file reads the same
         * and takes the same space with an allocated zero range. */
        ret = st->ops->pwrite_zeroes ? st->ops->pwrite_zeroes(st,
                                           d->file_offset, len, 0, err)
                                     : -ENOTSUP;
        if (ret != -ENOTSUP)
            return ret < 0 ? ret : st->ops->flush(st, err);
        buf = calloc(1, VHDX_MiB);
        if (!buf)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        for (uint64_t done = 0; done < len && ret >= 0;) {
            size_t n = (size_t)QIMG_MIN(len - done, (uint64_t)VHDX_MiB);
            ret = st->ops->pwrite(st, d->file_offset + done, n, buf, err);
            done += n;
        }
        free(buf);
        return ret < 0 ? ret : st->ops->flush(st, err);
    }
    if (((uint64_t)qimg_ld_le32(data + 4) << 32 |
         qimg_ld_le32(data + 4092)) != d->sequence)
        return -EINVAL;
    buf = malloc(VHDX_LOG_SECTOR);
    if (!buf)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    memcpy(buf, d->leading, 8);
    memcpy(buf + 8, data + 8, 4084);
    qimg_st_le32(buf + 4092, d->trailing);
    ret = st->ops->pwrite(st, d->file_offset, VHDX_LOG_SECTOR, buf, err);
    if (ret == 0)
        ret = st->ops->flush(st, err);
    free(buf);
    return ret;
}

/* Replay one entry at the cursor (QEMU's loop body in vhdx_log_flush). */
static int replay_entry(struct qimg_image *node, struct cursor *c,
                        uint8_t *sec, uint8_t *data, struct qimg_error *err)
{
    struct qimg_storage *st = node->file;
    struct log_hdr h;
    uint32_t first;
    int64_t flen;
    bool got;
    int ret = peek_hdr(node, c, &h, NULL, err);

    if (ret < 0)
        return ret;
    flen = st->ops->get_size(st);
    if (flen < 0)
        return (int)flen;
    /* A file shorter than the log says it was: truncated, refused. */
    if (h.flushed_file_offset > (uint64_t)flen)
        return -EINVAL;
    ret = read_descs(node, c, &h, NULL, &first, sec, NULL, err);
    if (ret < 0)
        return ret;
    for (uint64_t i = 0; i < h.desc_count; i++) {
        uint64_t byte = (i + 2) * VHDX_LOG_DESC_SIZE;
        uint64_t at = first + (byte / VHDX_LOG_SECTOR) * VHDX_LOG_SECTOR;
        struct log_desc d;
        struct vhdx_state *s = node->state;

        /* Descriptors were checked; read the one needed again. */
        ret = read_log(node, (uint32_t)(at % s->log.length), sec,
                       VHDX_LOG_SECTOR, NULL, err);
        if (ret < 0)
            return ret;
        decode_desc(&d, sec + byte % VHDX_LOG_SECTOR);
        if (d.signature == VHDX_LOG_DESC_SIG) {
            ret = read_sector(node, c, data, &got, NULL, err);
            if (ret < 0)
                return ret;
            if (!got)
                return -EINVAL;
        }
        ret = flush_desc(node, &d, data, err);
        if (ret < 0)
            return ret;
    }
    if ((uint64_t)flen < h.last_file_offset &&
        h.last_file_offset % VHDX_MiB) {
        /* Only an unaligned last offset grows the file (as in QEMU). */
        uint64_t size;
        if (!qimg_align_up(h.last_file_offset, VHDX_MiB, &size) ||
            size > VHDX_LOG_MAX_FILE_OFFSET)
            return -EINVAL;
        ret = st->ops->truncate(st, size, QIMG_PREALLOC_OFF, err);
    }
    return ret;
}

/* QEMU's vhdx_log_flush: replay count entries from the cursor, then mark
 * the log empty. */
static int log_flush(struct qimg_image *node, struct cursor *c,
                     uint32_t count, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    static const uint8_t zero_guid[16];
    uint8_t *sec = malloc(2 * VHDX_LOG_SECTOR);
    struct qimg_error ignored;
    int ret;

    if (!sec)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = vhdx_user_visible_write(node, err);
    while (ret == 0 && count--)
        ret = replay_entry(node, c, sec, sec + VHDX_LOG_SECTOR, err);
    if (ret == 0)
        ret = node->file->ops->flush(node->file, err);
    if (ret == 0) {
        s->log.read = s->log.write = 0;
        /* An empty log has a zero GUID; QEMU ignores failures here. */
        vhdx_update_headers(node, false, zero_guid, &ignored);
    }
    free(sec);
    return ret;
}

int vhdx_parse_log(struct qimg_image *node, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    const struct vhdx_header *h = &s->hdr[s->curr];
    struct sequence seq;
    uint8_t *sec;
    int ret;

    s->log_replayed = false;
    s->log.offset = h->log_offset;
    s->log.length = h->log_length;
    if (s->log.offset < VHDX_LOG_MIN_SIZE || s->log.offset % VHDX_LOG_MIN_SIZE)
        return -EINVAL;
    if (h->log_version != 0)
        return -EINVAL;
    if (vhdx_guid_is_zero(h->log_guid) || !h->log_length)
        return 0;       /* no log to replay */
    if (h->log_length % VHDX_LOG_MIN_SIZE)
        return -EINVAL;
    sec = malloc(VHDX_LOG_SECTOR);
    if (!sec)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    ret = log_search(node, &seq, sec, err);
    free(sec);
    if (ret < 0 || !seq.valid)
        return ret;
    if (node->read_only)
        return qimg_error_set(err, -EPERM, "VHDX image file '%s' opened "
                              "read-only, but contains a log that needs to "
                              "be replayed\nTo replay the log, run:\n"
                              "qemu-img check -r all '%s'", node->filename,
                              node->filename);
    ret = log_flush(node, &seq.log, seq.count, err);
    if (ret == 0)
        s->log_replayed = true;
    return ret;
}

/* ---- writing ------------------------------------------------------------ */

/* One 4 KiB sector into descriptor d and data sector out (QEMU's
 * vhdx_log_raw_to_le_sector). */
static void put_sector(uint8_t *desc, uint8_t *out, const uint8_t *sector,
                       uint64_t seq, uint64_t file_offset)
{
    qimg_st_le32(desc, VHDX_LOG_DESC_SIG);
    memcpy(desc + 4, sector + 4092, 4);
    memcpy(desc + 8, sector, 8);
    qimg_st_le64(desc + 16, file_offset);
    qimg_st_le64(desc + 24, seq);
    qimg_st_le32(out, VHDX_LOG_DATA_SIG);
    qimg_st_le32(out + 4, (uint32_t)(seq >> 32));
    memcpy(out + 8, sector + 8, 4084);
    qimg_st_le32(out + 4092, (uint32_t)seq);
}

/* QEMU's vhdx_log_write: one entry for [off, off + len), in the log. */
static int log_write(struct qimg_image *node, const uint8_t *data,
                     uint32_t len, uint64_t off, struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    struct qimg_storage *st = node->file;
    uint32_t sec_off = off % VHDX_LOG_SECTOR, lead = 0, trail, nsec, ndesc;
    uint64_t foff = qimg_align_down(off, VHDX_LOG_SECTOR), total;
    uint8_t guid[16], *buf, *merged;
    int64_t flen;
    int ret = 0;

    if (len > s->hdr[s->curr].log_length)
        return qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
    if (!vhdx_guid_is_zero(s->hdr[s->curr].log_guid))
        /* The previous entry was never replayed: QEMU stops writing. */
        return qimg_error_set(err, -ENOTSUP, "%s", strerror(ENOTSUP));
    vhdx_guid_generate(guid);
    {
        struct qimg_error ignored;  /* QEMU does not look at the result */
        vhdx_update_headers(node, false, guid, &ignored);
    }
    if (!s->log.sequence)
        s->log.sequence = 1;
    if (sec_off) {
        lead = QIMG_MIN(VHDX_LOG_SECTOR - sec_off, len);
    }
    nsec = (len - lead) / VHDX_LOG_SECTOR;
    trail = (len - lead) % VHDX_LOG_SECTOR;
    nsec += (lead != 0) + (trail != 0);
    flen = st->ops->get_size(st);
    if (flen < 0)
        return qimg_error_set(err, (int)flen, "%s", strerror((int)-flen));
    ndesc = desc_sectors(nsec);
    total = (uint64_t)(ndesc + nsec) * VHDX_LOG_SECTOR;
    buf = calloc(1, (size_t)total);
    merged = malloc(VHDX_LOG_SECTOR);
    if (!buf || !merged) {
        free(buf);
        free(merged);
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    qimg_st_le32(buf, VHDX_LOG_SIG);
    qimg_st_le32(buf + 8, (uint32_t)total);
    qimg_st_le32(buf + 12, s->log.tail);
    qimg_st_le64(buf + 16, s->log.sequence);
    qimg_st_le32(buf + 24, nsec);
    memcpy(buf + 32, s->hdr[s->curr].log_guid, 16);
    qimg_st_le64(buf + 48, (uint64_t)flen);
    qimg_st_le64(buf + 56, (uint64_t)flen);
    for (uint32_t i = 0; i < nsec && ret == 0; i++) {
        const uint8_t *sector = data;
        uint32_t used = VHDX_LOG_SECTOR;

        if (i == 0 && lead) {
            /* Partial sectors are merged with what the file holds. */
            ret = st->ops->pread(st, foff, VHDX_LOG_SECTOR, merged, err);
            memcpy(merged + sec_off, data, lead);
            sector = merged;
            used = lead;
        } else if (i == nsec - 1 && trail) {
            ret = st->ops->pread(st, foff + trail, VHDX_LOG_SECTOR - trail,
                                 merged + trail, err);
            memcpy(merged, data, trail);
            sector = merged;
            used = trail;
        }
        put_sector(buf + VHDX_LOG_HDR_SIZE + i * VHDX_LOG_DESC_SIZE,
                   buf + (uint64_t)(ndesc + i) * VHDX_LOG_SECTOR, sector,
                   s->log.sequence, foff);
        data += used;
        foff += VHDX_LOG_SECTOR;
    }
    if (ret == 0) {
        qimg_st_le32(buf + 4, vhdx_checksum(buf, (size_t)total, 4));
        ret = vhdx_user_visible_write(node, err);
    }
    /* Sector by sector into the circular buffer; full when the write
     * position would reach the read position. */
    for (uint64_t k = 0; ret == 0 && k < ndesc + nsec; k++) {
        uint32_t next = inc_idx(&s->log, s->log.write);
        if (next == s->log.read) {
            ret = qimg_error_set(err, -EINVAL, "%s", strerror(EINVAL));
            break;
        }
        ret = st->ops->pwrite(st, s->log.offset + s->log.write,
                              VHDX_LOG_SECTOR, buf + k * VHDX_LOG_SECTOR, err);
        if (ret == 0)
            s->log.write = next;
    }
    if (ret == 0) {
        s->log.sequence++;
        s->log.tail = s->log.write;
    }
    free(buf);
    free(merged);
    return ret;
}

int vhdx_log_write_and_flush(struct qimg_image *node, const void *data,
                             uint32_t len, uint64_t off,
                             struct qimg_error *err)
{
    struct vhdx_state *s = node->state;
    struct qimg_storage *st = node->file;
    struct cursor c;
    int ret;

    /* The data the entry points at is stable before the entry... */
    ret = st->ops->flush(st, err);
    if (ret == 0)
        ret = log_write(node, data, len, off, err);
    /* ...and the entry before it is replayed. */
    if (ret == 0)
        ret = st->ops->flush(st, err);
    if (ret < 0)
        return ret;
    c.read = s->log.read;
    c.write = s->log.write;
    ret = log_flush(node, &c, 1, err);
    if (ret < 0)
        return ret < 0 && !err->msg[0]
                   ? qimg_error_set(err, ret, "%s", strerror(-ret)) : ret;
    /* QEMU keeps the replayed cursor: the next entry follows this one. */
    s->log.read = c.read;
    s->log.write = c.write;
    return 0;
}
