/*
 * iscsi.c - the "iscsi" storage over libiscsi, with QEMU 7.2's names
 * (iscsi://[user[%password]@]host[:port]/target/lun, parsed by libiscsi's
 * own URL parser as in QEMU), options (transport, portal, target, lun,
 * user, password, password-secret, initiator-name, header-digest,
 * timeout), checks and messages.
 *
 * One libiscsi context serves every request, with any number of commands
 * in flight from the copy workers (see "commands"): each is queued with
 * libiscsi's *_task call and waited for here (see struct iscsi_wait for
 * why not with libiscsi's *_sync calls).  Writes not aligned to the
 * LUN's block size read-modify-write their edge blocks, exclusive of
 * other writes.  Zeroes go out as WRITE SAME, and on a thin-provisioned
 * LUN (tgt's thin_provisioning=1) block status comes from GET LBA STATUS
 * and discard goes out as UNMAP, as in 7.2.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "core/util.h"
#include "proto/net.h"

/* Largest transfer sent in one command: 32 MiB (a SCSI transfer length
 * is counted in blocks; targets commonly cap it far lower, tgt at 4 MiB
 * by default, so requests are split). */
#define ISCSI_MAX_XFER (4u << 20)
/* Bytes one WRITE SAME covers, at most (the target's own maximum when
 * lower): it sends one block and the target writes them all, which must
 * fit in the command's timeout. */
#define ISCSI_MAX_WRITE_SAME (64u << 20)
/* Retries of READ CAPACITY after a unit attention (QEMU's
 * ISCSI_CMD_RETRIES). */
#define ISCSI_CMD_RETRIES 5
/* The initiator name QEMU uses without a VM name or UUID. */
#define ISCSI_DEFAULT_INITIATOR "iqn.2008-11.org.linux-kvm"

struct iscsi_state {
    struct iscsi_context *ctx;
    int lun;
    int type;                  /* peripheral device type */
    uint32_t block_size;
    uint64_t num_blocks;
    bool write_protected;
    /* A command failed without a task (the connection is gone and, with
     * a stated timeout, not retried): later reads and writes fail at once
     * instead of driving libiscsi's context again after it gave up. */
    atomic_bool dead;
    atomic_bool no_write_same;     /* WRITE SAME refused: write zeroes */
    /* Logical block provisioning (READ CAPACITY(16) and the VPD pages):
     * lbpme enables GET LBA STATUS, lbpu UNMAP. */
    bool lbpme, lbprz, lbpu, lbpws;
    uint32_t max_ws;           /* blocks per WRITE SAME, 0: no limit */
    uint32_t max_unmap;        /* blocks per UNMAP descriptor, 0: no limit */
    uint32_t unmap_gran;       /* blocks, at least 1 */
    /* The context and everything below: see "commands" below. */
    pthread_mutex_t lock;
    pthread_cond_t progress;       /* the driver serviced the context */
    bool driving;                  /* a waiter polls the socket */
    int wake_fd;                   /* an eventfd: new commands, wake it */
    struct iscsi_wait *queuing;    /* the command being queued */
    struct iscsi_wait *abandoned;  /* waits given up, freed after ctx */
    /* Why the connection died (poll or iscsi_service failed), in
     * libiscsi's _sync words; empty when libiscsi's own error says it. */
    char failure[256];
    /* Writes take it shared, a write that read-modify-writes a partial
     * block exclusive: a whole-block write in between would be undone. */
    pthread_rwlock_t rmw;
};

/* ---- commands ------------------------------------------------------------ */

/*
 * Any number of threads have commands in flight on the one context (QEMU
 * 7.2 keeps its requests in flight the same way, from coroutines): each
 * queues its command under s->lock, then waits for it.  One waiter at a
 * time is the driver: it polls the socket without the lock and services
 * the context with it, which runs the callbacks of whatever completed;
 * the others sleep on s->progress.  A command queued while the driver
 * sleeps in poll writes wake_fd, so that the driver asks for POLLOUT.
 */

/*
 * The wait for one command.  libiscsi can run a command's callback long
 * after the wait gave up: when the connection died and could not be
 * re-established, its commands stay queued, and iscsi_destroy_context
 * completes them as cancelled.  libiscsi's *_sync calls keep this state on
 * the caller's stack, so that late callback wrote into a stack that was
 * gone (a copy worker's, since exited: the crash on a target killed
 * mid-copy).  Ours live on the heap; a wait that gave up is kept on
 * s->abandoned until the context is destroyed, and its late callback
 * frees the task nobody waits for.
 */
struct iscsi_wait {
    bool finished, abandoned;
    int status;
    struct scsi_task *task;
    struct scsi_iovec iov;      /* a read's buffer, libiscsi keeps a pointer */
    struct iscsi_wait *next;
};

static void task_done(struct iscsi_context *ctx, int status, void *data,
                      void *priv)
{
    struct iscsi_wait *w = priv;
    struct scsi_task *t = data;

    (void)ctx;
    if (t)
        t->status = status;
    if (w->abandoned) {
        if (t)
            scsi_free_scsi_task(t);
        return;
    }
    w->status = status;
    w->task = t;
    w->finished = true;
}

/* Login and logout: no task. */
static void session_done(struct iscsi_context *ctx, int status, void *data,
                         void *priv)
{
    struct iscsi_wait *w = priv;

    (void)ctx;
    (void)data;
    w->status = status;
    w->finished = true;
}

/* Why the calling thread's last command failed (filled by cmd_end and
 * session_end under the lock: the context's error string is shared). */
static __thread char cmd_why[256];

static const char *last_error(void)
{
    return cmd_why;
}

static void note_why(struct iscsi_state *s)
{
    snprintf(cmd_why, sizeof(cmd_why), "%s",
             s->failure[0] ? s->failure : iscsi_get_error(s->ctx));
}

/* Lock the context and start a wait (s->queuing): NULL when the
 * connection is dead or out of memory, the command then not queued.
 * cmd_end or session_end unlocks. */
static struct iscsi_wait *cmd_begin(struct iscsi_state *s)
{
    pthread_mutex_lock(&s->lock);
    s->queuing = s->dead ? NULL : calloc(1, sizeof(*s->queuing));
    return s->queuing;
}

static void connection_failed(struct iscsi_state *s, const char *what)
{
    if (!s->dead)
        snprintf(s->failure, sizeof(s->failure), "%s", what);
    s->dead = true;
}

/*
 * With s->lock held: wait until w's command completes, as the driver or
 * behind it.  False when the connection died first (s->dead, w
 * abandoned: libiscsi keeps a pointer to it).  Polls wake each second to
 * let libiscsi check its timeouts, as QEMU's timer does.  Once the
 * connection is dead nobody services the context again, so an abandoned
 * read's buffer is never written after its caller returned.
 */
static bool wait_done(struct iscsi_state *s, struct iscsi_wait *w)
{
    char why[sizeof(s->failure)];

    if (s->driving) {
        uint64_t one = 1;
        ssize_t r = write(s->wake_fd, &one, sizeof(one));
        (void)r;
    }
    while (!w->finished && !s->dead) {
        if (s->driving) {
            pthread_cond_wait(&s->progress, &s->lock);
            continue;
        }
        struct pollfd p[2] = {
            {iscsi_get_fd(s->ctx), (short)iscsi_which_events(s->ctx), 0},
            {s->wake_fd, POLLIN, 0},
        };
        s->driving = true;
        pthread_mutex_unlock(&s->lock);
        int n = poll(p, 2, 1000), e = errno;
        pthread_mutex_lock(&s->lock);
        s->driving = false;
        if (p[1].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(s->wake_fd, &v, sizeof(v));
            (void)r;
        }
        if (s->dead) {
        } else if (n < 0 && e != EINTR) {
            connection_failed(s, "Poll failed");
        } else if (iscsi_service(s->ctx, n > 0 ? p[0].revents : 0) < 0) {
            snprintf(why, sizeof(why), "iscsi_service failed with : %s",
                     iscsi_get_error(s->ctx));
            connection_failed(s, why);
        }
        pthread_cond_broadcast(&s->progress);
    }
    if (w->finished)
        return true;
    w->abandoned = true;
    w->next = s->abandoned;
    s->abandoned = w;
    return false;
}

/* The end of the SCSI command begun by cmd_begin, queued as `queued`
 * (NULL: not queued): its task, NULL when it was not sent or the
 * connection died.  Unlocks the context. */
static struct scsi_task *cmd_end(struct iscsi_state *s, const char *what,
                                 struct scsi_task *queued)
{
    struct iscsi_wait *w = s->queuing;
    struct scsi_task *t = NULL;

    s->queuing = NULL;
    if (!queued) {
        snprintf(cmd_why, sizeof(cmd_why), "Failed to send %s command",
                 what);
        free(w);
    } else if (wait_done(s, w)) {   /* else w is abandoned, not freed */
        t = w->task;
        free(w);
    }
    /* A command that outlived the stated timeout: the target no longer
     * answers, and each later command would wait as long. */
    if (t && t->status == SCSI_STATUS_TIMEOUT) {
        s->dead = true;
        pthread_cond_broadcast(&s->progress);
    }
    if (queued)
        note_why(s);
    pthread_mutex_unlock(&s->lock);
    return t;
}

/* Run libiscsi's fn(ctx, args..., callback, wait) and wait for it: the
 * task, or NULL (last_error says why).  cmd_begin comes first: the
 * condition of ?: is evaluated before either branch. */
#define ISCSI_CMD(s, what, fn, ...)                                        \
    cmd_end((s), (what), cmd_begin(s) ? fn((s)->ctx, __VA_ARGS__,          \
                                           task_done, (s)->queuing)        \
                                      : NULL)

/* A session command (login, logout) begun by cmd_begin, queued when
 * `queued` is 0: 0 or -1, as libiscsi's _sync.  Unlocks the context. */
static int session_end(struct iscsi_state *s, int queued)
{
    struct iscsi_wait *w = s->queuing;
    int ret = -1;

    s->queuing = NULL;
    if (!w || queued != 0) {
        free(w);
    } else if (wait_done(s, w)) {   /* else w is abandoned, not freed */
        ret = w->status;
        free(w);
    }
    note_why(s);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static const char *const iscsi_runtime_opts[] = {
    "transport", "portal", "target", "user", "password", "password-secret",
    "lun", "initiator-name", "header-digest", "timeout", NULL,
};
static const char *const iscsi_strong_opts[] = {
    "transport", "portal", "target", "user", "password", "password-secret",
    "lun", "initiator-name", "header-digest", NULL,
};

/* ---- names --------------------------------------------------------------- */

static int set_default(struct qimg_opts *o, const char *k, const char *v,
                       struct qimg_error *err)
{
    if (qimg_opts_get(o, k))
        return 0;
    return qimg_opts_set(o, k, v) < 0
               ? qimg_error_set(err, -ENOMEM, "Out of memory") : 0;
}

/* QEMU's iscsi_parse_filename: libiscsi parses the URL. */
static int iscsi_parse_filename(const char *filename, struct qimg_opts *o,
                                struct qimg_error *err)
{
    struct iscsi_url *url = iscsi_parse_full_url(NULL, filename);
    char lun[16];
    int ret;

    if (!url)
        return qimg_error_set(err, -EINVAL, "Failed to parse URL : %s",
                              filename);
    if (url->transport != TCP_TRANSPORT && url->transport != ISER_TRANSPORT) {
        ret = qimg_error_set(err, -EINVAL, "Unknown transport type (%d)",
                             (int)url->transport);
        iscsi_destroy_url(url);
        return ret;
    }
    snprintf(lun, sizeof(lun), "%d", url->lun);
    ret = set_default(o, "transport",
                      url->transport == TCP_TRANSPORT ? "tcp" : "iser", err);
    if (ret == 0)
        ret = set_default(o, "portal", url->portal, err);
    if (ret == 0)
        ret = set_default(o, "target", url->target, err);
    if (ret == 0)
        ret = set_default(o, "lun", lun, err);
    if (ret == 0 && url->user[0]) {
        ret = set_default(o, "user", url->user, err);
        if (ret == 0)
            ret = set_default(o, "password", url->passwd, err);
    }
    iscsi_destroy_url(url);
    return ret;
}

/* ---- connecting -------------------------------------------------------------- */

/* CHAP from user, password or password-secret (QEMU's apply_chap). */
static int apply_chap(struct iscsi_context *ctx, const struct qimg_opts *o,
                      struct qimg_error *err)
{
    const char *user = qimg_opts_get(o, "user");
    const char *secret = qimg_opts_get(o, "password-secret");
    const char *password = qimg_opts_get(o, "password");
    char *text = NULL;
    int ret = 0;

    if (!user)
        return 0;
    if (secret && password)
        return qimg_error_set(err, -EINVAL, "'password' and "
                              "'password-secret' properties are mutually "
                              "exclusive");
    if (secret) {
        if ((ret = net_secret_text(secret, &text, err)) < 0)
            return ret;
        password = text;
    }
    if (!password)
        ret = qimg_error_set(err, -EINVAL, "CHAP username specified but no "
                             "password was given");
    else if (iscsi_set_initiator_username_pwd(ctx, user, password))
        ret = qimg_error_set(err, -EINVAL, "Failed to set initiator username "
                             "and password");
    free(text);
    return ret;
}

static int apply_digest(struct iscsi_context *ctx, const char *d,
                        struct qimg_error *err)
{
    enum iscsi_header_digest h;

    if (!d || !strcmp(d, "none-crc32c"))
        h = ISCSI_HEADER_DIGEST_NONE_CRC32C;
    else if (!strcmp(d, "crc32c"))
        h = ISCSI_HEADER_DIGEST_CRC32C;
    else if (!strcmp(d, "none"))
        h = ISCSI_HEADER_DIGEST_NONE;
    else if (!strcmp(d, "crc32c-none"))
        h = ISCSI_HEADER_DIGEST_CRC32C_NONE;
    else
        return qimg_error_set(err, -EINVAL, "Invalid header-digest setting "
                              ": %s", d);
    iscsi_set_header_digest(ctx, h);
    return 0;
}

static int inquiry_failed(struct iscsi_state *s, struct scsi_task *t,
                          struct qimg_error *err)
{
    if (t)
        scsi_free_scsi_task(t);
    return qimg_error_set(err, -EINVAL, "iSCSI: Inquiry command failed : %s",
                          last_error());
}

/* The standard inquiry: the device type. */
static int inquire(struct iscsi_state *s, struct qimg_error *err)
{
    struct scsi_task *t = ISCSI_CMD(s, "Inquiry", iscsi_inquiry_task, s->lun,
                                    0, 0, 64);
    struct scsi_inquiry_standard *inq;

    if (!t || t->status != SCSI_STATUS_GOOD)
        return inquiry_failed(s, t, err);
    inq = scsi_datain_unmarshall(t);
    if (!inq) {
        scsi_free_scsi_task(t);
        return qimg_error_set(err, -EINVAL, "iSCSI: failed to unmarshall "
                              "inquiry datain blob");
    }
    s->type = inq->device_type;
    scsi_free_scsi_task(t);
    return 0;
}

/* MODE SENSE(6) for the write-protect bit; failures leave the LUN
 * writable, with QEMU's messages. */
static void mode_sense(struct iscsi_state *s)
{
    struct scsi_task *t = ISCSI_CMD(
        s, "ModeSense6", iscsi_modesense6_task, s->lun, 1,
        SCSI_MODESENSE_PC_CURRENT, SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255);
    struct scsi_mode_sense *ms;

    if (!t) {
        qimg_message(QIMG_MSG_ERROR, "iSCSI: Failed to send MODE_SENSE(6) "
                     "command: %s\n", last_error());
        return;
    }
    if (t->status != SCSI_STATUS_GOOD) {
        qimg_message(QIMG_MSG_ERROR, "iSCSI: Failed MODE_SENSE(6), LUN "
                     "assumed writable\n");
    } else if (!(ms = scsi_datain_unmarshall(t))) {
        qimg_message(QIMG_MSG_ERROR, "iSCSI: Failed to unmarshall "
                     "MODE_SENSE(6) data: %s\n", last_error());
    } else {
        s->write_protected = ms->device_specific_parameter & 0x80;
    }
    scsi_free_scsi_task(t);
}

static bool unit_attention(const struct scsi_task *t)
{
    return t && t->status == SCSI_STATUS_CHECK_CONDITION &&
           t->sense.key == SCSI_SENSE_UNIT_ATTENTION;
}

/* READ CAPACITY(16), else (10), as QEMU's iscsi_readcapacity_sync. */
static int read_capacity(struct iscsi_state *s, struct qimg_error *err)
{
    struct scsi_task *t = NULL;
    int retries = ISCSI_CMD_RETRIES;

    do {
        if (t)
            scsi_free_scsi_task(t);
        t = NULL;
        if (s->type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS) {
            t = ISCSI_CMD(s, "ReadCapacity16", iscsi_readcapacity16_task,
                          s->lun);
            if (t && t->status == SCSI_STATUS_GOOD) {
                struct scsi_readcapacity16 *rc = scsi_datain_unmarshall(t);
                if (!rc) {
                    scsi_free_scsi_task(t);
                    return qimg_error_set(err, -EINVAL, "iSCSI: Failed to "
                                          "unmarshall readcapacity16 data.");
                }
                s->block_size = rc->block_length;
                s->num_blocks = rc->returned_lba + 1;
                s->lbpme = rc->lbpme;
                s->lbprz = rc->lbprz;
                break;
            }
            if (unit_attention(t))
                continue;
            if (t)
                scsi_free_scsi_task(t);
        } else if (s->type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_MMC) {
            return 0;
        }
        t = ISCSI_CMD(s, "ReadCapacity10", iscsi_readcapacity10_task, s->lun,
                      0, 0);
        if (t && t->status == SCSI_STATUS_GOOD) {
            struct scsi_readcapacity10 *rc = scsi_datain_unmarshall(t);
            if (!rc) {
                scsi_free_scsi_task(t);
                return qimg_error_set(err, -EINVAL, "iSCSI: Failed to "
                                      "unmarshall readcapacity10 data.");
            }
            s->block_size = rc->block_size;
            s->num_blocks = rc->lba ? (uint64_t)rc->lba + 1 : 0;
        }
        break;
    } while (unit_attention(t) && retries-- > 0);

    if (!t || t->status != SCSI_STATUS_GOOD) {
        if (t)
            scsi_free_scsi_task(t);
        return qimg_error_set(err, -EINVAL, "iSCSI: failed to send "
                              "readcapacity10/16 command");
    }
    scsi_free_scsi_task(t);
    if (!s->block_size || s->block_size % 512)
        return qimg_error_set(err, -EINVAL, "iSCSI: the target returned an "
                              "invalid block size of %d.", (int)s->block_size);
    return 0;
}

static void state_free(struct iscsi_state *s)
{
    if (!s)
        return;
    if (s->ctx) {
        /* A dead connection is not logged out: that would only wait. */
        if (!s->dead && iscsi_is_logged_in(s->ctx)) {
            struct iscsi_wait *w = cmd_begin(s);
            session_end(s, w ? iscsi_logout_async(s->ctx, session_done, w)
                             : -1);
        }
        iscsi_destroy_context(s->ctx);
    }
    while (s->abandoned) {
        struct iscsi_wait *next = s->abandoned->next;
        free(s->abandoned);
        s->abandoned = next;
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->progress);
    pthread_rwlock_destroy(&s->rmw);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    free(s);
}

static int connect_lun(struct iscsi_state *s, const struct qimg_opts *o,
                       struct qimg_error *err)
{
    const char *transport = qimg_opts_get(o, "transport");
    const char *portal = qimg_opts_get(o, "portal");
    const char *target = qimg_opts_get(o, "target");
    const char *initiator = qimg_opts_get(o, "initiator-name");
    unsigned long long lun, timeout;
    int ret;

    if ((ret = net_opt_number(o, "lun", 0, &lun, err)) < 0 ||
        (ret = net_opt_number(o, "timeout", 0, &timeout, err)) < 0)
        return ret;
    if (!transport || !portal || !target)
        return qimg_error_set(err, -EINVAL, "Need all of transport, portal "
                              "and target options");
    if (strcmp(transport, "tcp") && strcmp(transport, "iser"))
        return qimg_error_set(err, -EINVAL, "Unknown transport: %s",
                              transport);
    s->lun = (int)lun;
    s->ctx = iscsi_create_context(initiator ? initiator
                                            : ISCSI_DEFAULT_INITIATOR);
    if (!s->ctx)
        return qimg_error_set(err, -ENOMEM, "iSCSI: Failed to create iSCSI "
                              "context.");
    if (iscsi_init_transport(s->ctx, strcmp(transport, "tcp")
                                         ? ISER_TRANSPORT : TCP_TRANSPORT))
        return qimg_error_set(err, -EINVAL, "Error initializing transport.");
    if (iscsi_set_targetname(s->ctx, target))
        return qimg_error_set(err, -EINVAL, "iSCSI: Failed to set target "
                              "name.");
    if ((ret = apply_chap(s->ctx, o, err)) < 0)
        return ret;
    if (iscsi_set_session_type(s->ctx, ISCSI_SESSION_NORMAL))
        return qimg_error_set(err, -EINVAL, "iSCSI: Failed to set session "
                              "type to normal.");
    if ((ret = apply_digest(s->ctx, qimg_opts_get(o, "header-digest"),
                            err)) < 0)
        return ret;
    iscsi_set_timeout(s->ctx, (int)timeout);
    /* A stated timeout also bounds a target that went away: libiscsi
     * would otherwise reconnect forever (QEMU 7.2 hangs there). */
    if (timeout)
        iscsi_set_reconnect_max_retries(s->ctx, 0);
    struct iscsi_wait *w = cmd_begin(s);
    if (session_end(s, w ? iscsi_full_connect_async(s->ctx, portal, s->lun,
                                                    session_done, w)
                         : -1))
        return qimg_error_set(err, -EINVAL, "iSCSI: Failed to connect to LUN "
                              ": %s", last_error());
    if ((ret = inquire(s, err)) < 0)
        return ret;
    mode_sense(s);
    return read_capacity(s, err);
}

/* An EVPD inquiry of page, unmarshalled (NULL when the target has none). */
static void *vpd_page(struct iscsi_state *s, int page, struct scsi_task **t)
{
    void *data = NULL;

    *t = ISCSI_CMD(s, "Inquiry", iscsi_inquiry_task, s->lun, 1, page, 255);
    if (*t && (*t)->status == SCSI_STATUS_GOOD)
        data = scsi_datain_unmarshall(*t);
    if (!data && *t) {
        scsi_free_scsi_task(*t);
        *t = NULL;
    }
    return data;
}

/*
 * On a thin-provisioned LUN (LBPME), what the Logical Block Provisioning
 * and Block Limits pages say about UNMAP, as QEMU reads them at open.  A
 * target that lacks a page leaves UNMAP off, nothing fails.
 */
static void read_provisioning(struct iscsi_state *s)
{
    struct scsi_inquiry_logical_block_provisioning *lbp;
    struct scsi_inquiry_block_limits *bl;
    struct scsi_task *t;

    s->unmap_gran = 1;
    if (!s->lbpme)
        return;
    if ((lbp = vpd_page(s, SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING,
                        &t))) {
        s->lbpu = lbp->lbpu;
        s->lbpws = lbp->lbpws;
        scsi_free_scsi_task(t);
    }
    if ((bl = vpd_page(s, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, &t))) {
        s->max_unmap = bl->max_unmap;
        s->max_ws = (uint32_t)QIMG_MIN(bl->max_ws_len, (uint64_t)UINT32_MAX);
        if (bl->opt_unmap_gran)
            s->unmap_gran = bl->opt_unmap_gran;
        scsi_free_scsi_task(t);
    }
}

static int iscsi_open(struct qimg_storage *st, const struct qimg_opts *opts,
                      unsigned flags, enum qimg_cache cache,
                      struct qimg_error *err)
{
    struct iscsi_state *s = calloc(1, sizeof(*s));
    int ret;

    (void)cache;
    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->progress, NULL);
    pthread_rwlock_init(&s->rmw, NULL);
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        ret = -errno;
        state_free(s);
        return qimg_error_set(err, ret, "%s", strerror(-ret));
    }
    ret = connect_lun(s, opts, err);
    if (ret == 0)
        read_provisioning(s);
    if (ret == 0 && (flags & QIMG_OPEN_RDWR) && s->write_protected &&
        s->type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS)
        ret = qimg_error_set(err, -EACCES, "LUN is write protected");
    if (ret < 0) {
        state_free(s);
        return ret;
    }
    st->priv = s;
    return 0;
}

static void iscsi_close(struct qimg_storage *st)
{
    struct iscsi_state *s = st->priv;
    if (!s)
        return;
    state_free(s);
    st->priv = NULL;
}

/* ---- I/O ----------------------------------------------------------------- */

static int blocks_read(struct iscsi_state *s, uint64_t lba, uint32_t n,
                       uint8_t *buf)
{
    size_t len = (size_t)n * s->block_size;
    struct iscsi_wait *w;
    struct scsi_task *t = NULL;
    int ret = 0;

    if (s->dead)
        return -EIO;
    /* The data lands in buf itself (as QEMU's iscsi_co_readv), not in a
     * buffer libiscsi would allocate for it: set before the lock is
     * dropped, so before any of it can arrive. */
    if ((w = cmd_begin(s)) &&
        (t = iscsi_read16_task(s->ctx, s->lun, lba, (uint32_t)len,
                               s->block_size, 0, 0, 0, 0, 0, task_done, w))) {
        w->iov = (struct scsi_iovec){buf, len};
        scsi_task_set_iov_in(t, &w->iov, 1);
    }
    t = cmd_end(s, "Read16", t);
    if (!t || t->status != SCSI_STATUS_GOOD) {
        qimg_message(QIMG_MSG_ERROR, "iSCSI READ10/16 failed at lba %" PRIu64
                     ": %s\n", lba, last_error());
        ret = -EIO;
    } else if (t->residual_status == SCSI_RESIDUAL_UNDERFLOW &&
               t->residual) {
        ret = -EIO;             /* the target sent less than asked */
    }
    if (t)
        scsi_free_scsi_task(t);
    return ret;
}

static int blocks_write(struct iscsi_state *s, uint64_t lba, uint32_t n,
                        const uint8_t *buf)
{
    if (s->dead)
        return -EIO;
    struct scsi_task *t = ISCSI_CMD(s, "Write16", iscsi_write16_task, s->lun,
                                    lba, (unsigned char *)buf,
                                    n * s->block_size, s->block_size, 0, 0,
                                    0, 0, 0);
    int ret = 0;

    if (!t || t->status != SCSI_STATUS_GOOD) {
        qimg_message(QIMG_MSG_ERROR, "iSCSI WRITE10/16 failed at lba %" PRIu64
                     ": %s\n", lba, last_error());
        ret = -EIO;
    }
    if (t)
        scsi_free_scsi_task(t);
    return ret;
}

/* Whole blocks from lba, split into transfers of at most ISCSI_MAX_XFER. */
static int blocks_io(struct iscsi_state *s, bool write, uint64_t lba,
                     uint64_t n, uint8_t *buf)
{
    uint32_t per = ISCSI_MAX_XFER / s->block_size;

    while (n) {
        uint32_t k = n < per ? (uint32_t)n : per;
        int ret = write ? blocks_write(s, lba, k, buf)
                        : blocks_read(s, lba, k, buf);
        if (ret < 0)
            return ret;
        lba += k;
        n -= k;
        buf += (size_t)k * s->block_size;
    }
    return 0;
}

/* A partial block at its edges is read, patched and (for writes)
 * written back. */
static int edge_io(struct iscsi_state *s, bool write, uint64_t off,
                   size_t len, uint8_t *buf)
{
    uint8_t *blk = malloc(s->block_size);
    uint64_t lba = off / s->block_size;
    size_t in = (size_t)(off % s->block_size);
    int ret;

    if (!blk)
        return -ENOMEM;
    ret = blocks_io(s, false, lba, 1, blk);
    if (ret == 0 && write) {
        memcpy(blk + in, buf, len);
        ret = blocks_io(s, true, lba, 1, blk);
    } else if (ret == 0) {
        memcpy(buf, blk + in, len);
    }
    free(blk);
    return ret;
}

static int span_io(struct iscsi_state *s, bool write, uint64_t off,
                   size_t len, uint8_t *buf)
{
    uint32_t bs = s->block_size;
    int ret = 0;

    if (off % bs) {
        size_t n = QIMG_MIN(len, (size_t)(bs - off % bs));
        if ((ret = edge_io(s, write, off, n, buf)) < 0)
            return ret;
        off += n, buf += n, len -= n;
    }
    if (len >= bs) {
        size_t n = len - len % bs;
        if ((ret = blocks_io(s, write, off / bs, n / bs, buf)) < 0)
            return ret;
        off += n, buf += n, len -= n;
    }
    if (len)
        ret = edge_io(s, write, off, len, buf);
    return ret;
}

static int io(struct qimg_storage *st, bool write, uint64_t off, size_t len,
              uint8_t *buf, struct qimg_error *err)
{
    struct iscsi_state *s = st->priv;
    uint64_t size = s->num_blocks * s->block_size;
    size_t inside = off >= size ? 0 : (size_t)QIMG_MIN((uint64_t)len,
                                                       size - off);
    int ret = 0;

    if (write && inside < len)
        return qimg_error_set(err, -EIO, "%s", strerror(EIO));
    if (write && (off % s->block_size || inside % s->block_size))
        pthread_rwlock_wrlock(&s->rmw);
    else if (write)
        pthread_rwlock_rdlock(&s->rmw);
    if (inside)
        ret = span_io(s, write, off, inside, buf);
    if (write)
        pthread_rwlock_unlock(&s->rmw);
    if (ret < 0)
        return qimg_error_set(err, ret, "%s", strerror(-ret));
    if (!write)
        memset(buf + inside, 0, len - inside);
    return 0;
}

static int iscsi_pread(struct qimg_storage *st, uint64_t off, size_t len,
                       void *buf, struct qimg_error *err)
{
    return io(st, false, off, len, buf, err);
}

static int iscsi_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                        const void *buf, struct qimg_error *err)
{
    return io(st, true, off, len, (uint8_t *)buf, err);
}

static int iscsi_flush(struct qimg_storage *st, struct qimg_error *err)
{
    struct iscsi_state *s = st->priv;
    struct scsi_task *t;
    int ret = 0;

    t = ISCSI_CMD(s, "SynchronizeCache10", iscsi_synchronizecache10_task,
                  s->lun, 0, 0, 0, 0);
    if (!t || t->status != SCSI_STATUS_GOOD) {
        qimg_message(QIMG_MSG_ERROR, "iSCSI SYNCHRONIZECACHE10 failed: %s\n",
                     last_error());
        ret = -EIO;
    }
    if (t)
        scsi_free_scsi_task(t);
    return ret < 0 ? qimg_error_set(err, ret, "%s", strerror(EIO)) : 0;
}

/*
 * Block status through GET LBA STATUS on a thin-provisioned LUN, as 7.2:
 * the first descriptor says whether the blocks from off are mapped (data)
 * or deallocated/anchored (no data; zeroes when the LUN has LBPRZ).  A
 * LUN without LBPME, or a target that fails the command, is all data.
 */
static int iscsi_block_status(struct qimg_storage *st, uint64_t off,
                              uint64_t len, struct qimg_extent *ext,
                              struct qimg_error *err)
{
    struct iscsi_state *s = st->priv;
    struct scsi_get_lba_status *lbas;
    struct scsi_task *t;
    uint64_t lba = off / s->block_size, end = s->num_blocks * s->block_size;
    int ret = net_block_status_data(st, off, len, ext, err);

    if (ret < 0 || !s->lbpme || off >= end || off % s->block_size)
        return ret;
    t = ISCSI_CMD(s, "GetLbaStatus", iscsi_get_lba_status_task, s->lun, lba,
                  8 + 16);
    if (!t || t->status != SCSI_STATUS_GOOD) {
        qimg_message(QIMG_MSG_ERROR, "iSCSI GET_LBA_STATUS failed at lba %"
                     PRIu64 ": %s\n", lba, last_error());
        goto out;                   /* all data, as 7.2 */
    }
    lbas = scsi_datain_unmarshall(t);
    if (!lbas || !lbas->num_descriptors ||
        lbas->descriptors[0].lba != lba) {
        ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
        goto out;
    }
    ext->length = QIMG_MIN(len, QIMG_MIN((uint64_t)lbas->descriptors[0]
                                             .num_blocks * s->block_size,
                                         end - off));
    if (!ext->length) {
        ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
        goto out;
    }
    if (lbas->descriptors[0].provisioning != SCSI_PROVISIONING_TYPE_MAPPED)
        ext->flags = s->lbprz ? QIMG_BS_ZERO : 0;
out:
    if (t)
        scsi_free_scsi_task(t);
    return ret;
}

/*
 * Discard through UNMAP when the LUN supports it (LBPU), as 7.2: only the
 * whole unmap granules inside the range, in descriptors of at most the
 * target's maximum; a target that answers CHECK CONDITION (unhappy with
 * the alignment) is ignored; without LBPU a discard does nothing.
 */
static int iscsi_discard(struct qimg_storage *st, uint64_t off, uint64_t len,
                         struct qimg_error *err)
{
    struct iscsi_state *s = st->priv;
    uint64_t gran = (uint64_t)s->unmap_gran * s->block_size;
    uint64_t first, last, end = s->num_blocks * s->block_size;
    int ret = 0;

    if (!s->lbpu || off >= end)
        return 0;
    last = QIMG_MIN(end, off + len) / gran * gran;
    first = qimg_div_round_up(off, gran) * gran;
    pthread_rwlock_rdlock(&s->rmw);
    while (first < last && ret == 0) {
        uint64_t n = (last - first) / s->block_size;
        uint32_t max = s->max_unmap ? s->max_unmap : UINT32_MAX;
        struct unmap_list list = {first / s->block_size,
                                  (uint32_t)QIMG_MIN(n, (uint64_t)max)};
        struct scsi_task *t = ISCSI_CMD(s, "Unmap", iscsi_unmap_task, s->lun,
                                        0, 0, &list, 1);
        if (!t || (t->status != SCSI_STATUS_GOOD &&
                   t->status != SCSI_STATUS_CHECK_CONDITION)) {
            qimg_message(QIMG_MSG_ERROR, "iSCSI UNMAP failed at lba %" PRIu64
                         ": %s\n", list.lba, last_error());
            ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
        }
        if (t)
            scsi_free_scsi_task(t);
        first += (uint64_t)list.num * s->block_size;
    }
    pthread_rwlock_unlock(&s->rmw);
    return ret;
}

/* WRITE SAME refused as unknown (an ILLEGAL REQUEST naming the opcode or
 * a CDB field): the target has none, as QEMU decides. */
static bool write_same_refused(const struct scsi_task *t)
{
    return t->status == SCSI_STATUS_CHECK_CONDITION &&
           t->sense.key == SCSI_SENSE_ILLEGAL_REQUEST &&
           (t->sense.ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE ||
            t->sense.ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB);
}

/*
 * Zeroes as WRITE SAME(16) of one zero block, as 7.2 does: with the UNMAP
 * bit (they may become a hole) when allowed and the LUN supports it
 * (LBPWS) and reads unmapped blocks as zeroes (LBPRZ), on whole unmap
 * granules; else without it, the target writing the zeroes itself
 * instead of us sending them (a 1 GiB convert -n into tgt, 60% zeroes:
 * 372 MiB sent instead of 1 GiB).  An unaligned range, or a target that
 * refused WRITE SAME once, is -ENOTSUP: the caller writes zeroes.
 */
static int iscsi_zeroes(struct qimg_storage *st, uint64_t off, uint64_t len,
                        unsigned flags, struct qimg_error *err)
{
    struct iscsi_state *s = st->priv;
    uint64_t gran = (uint64_t)s->unmap_gran * s->block_size;
    uint32_t per = ISCSI_MAX_WRITE_SAME / s->block_size;
    bool unmap = (flags & QIMG_ZERO_MAY_UNMAP) && s->lbpws && s->lbprz &&
                 off % gran == 0 && len % gran == 0;
    uint8_t *zero;
    int ret = 0;

    if (off % s->block_size || len % s->block_size ||
        off + len > s->num_blocks * s->block_size || s->no_write_same)
        return -ENOTSUP;
    if (s->max_ws && s->max_ws < per)
        per = s->max_ws;
    if (!(zero = calloc(1, s->block_size)))
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    pthread_rwlock_rdlock(&s->rmw);
    for (uint64_t lba = off / s->block_size, n = len / s->block_size;
         n && ret == 0;) {
        uint32_t k = n < per ? (uint32_t)n : per;
        struct scsi_task *t = ISCSI_CMD(s, "WriteSame16",
                                        iscsi_writesame16_task, s->lun, lba,
                                        zero, s->block_size, k, 0, unmap, 0,
                                        0);
        if (t && write_same_refused(t)) {
            s->no_write_same = true;
            ret = -ENOTSUP;
        } else if (!t || t->status != SCSI_STATUS_GOOD) {
            qimg_message(QIMG_MSG_ERROR, "iSCSI WRITESAME10/16 failed at lba %"
                         PRIu64 ": %s\n", lba, last_error());
            ret = qimg_error_set(err, -EIO, "%s", strerror(EIO));
        }
        if (t)
            scsi_free_scsi_task(t);
        lba += k;
        n -= k;
    }
    pthread_rwlock_unlock(&s->rmw);
    free(zero);
    return ret;
}

static int64_t iscsi_get_size(struct qimg_storage *st)
{
    struct iscsi_state *s = st->priv;
    return (int64_t)(s->num_blocks * s->block_size);
}

static int check_truncate(struct qimg_storage *st, uint64_t size, bool exact,
                          enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct iscsi_state *s = st->priv;
    uint64_t cur;
    int ret;

    if (prealloc != QIMG_PREALLOC_OFF)
        return net_prealloc_refused(prealloc, err);
    if (s->type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS)
        return qimg_error_set(err, -ENOTSUP, "Cannot resize non-disk iSCSI "
                              "devices");
    pthread_rwlock_wrlock(&s->rmw);
    ret = read_capacity(s, err);
    pthread_rwlock_unlock(&s->rmw);
    if (ret < 0)
        return -EIO;
    cur = s->num_blocks * s->block_size;
    if (size != cur && exact)
        return qimg_error_set(err, -ENOTSUP, "Cannot resize iSCSI devices");
    if (size > cur)
        return qimg_error_set(err, -EINVAL, "Cannot grow iSCSI devices");
    return 0;
}

static int iscsi_truncate(struct qimg_storage *st, uint64_t size,
                          enum qimg_prealloc prealloc, struct qimg_error *err)
{
    return check_truncate(st, size, false, prealloc, err);
}

static int iscsi_truncate_exact(struct qimg_storage *st, uint64_t size,
                                enum qimg_prealloc prealloc,
                                struct qimg_error *err)
{
    return check_truncate(st, size, true, prealloc, err);
}

const struct qimg_storage_ops qimg_storage_iscsi = {
    .name = "iscsi",
    .protocol = "iscsi",
    .runtime_opts = iscsi_runtime_opts,
    .strong_opts = iscsi_strong_opts,
    .parse_filename = iscsi_parse_filename,
    .open = iscsi_open,
    .close = iscsi_close,
    .pread = iscsi_pread,
    .pwrite = iscsi_pwrite,
    .flush = iscsi_flush,
    .get_size = iscsi_get_size,
    .truncate = iscsi_truncate,
    .truncate_exact = iscsi_truncate_exact,
    .pwrite_zeroes = iscsi_zeroes,
    .discard = iscsi_discard,
    .block_status = iscsi_block_status,
    .create_by_open = true,
};
