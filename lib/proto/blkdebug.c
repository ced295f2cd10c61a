/*
 * blkdebug.c - the blkdebug storage, QEMU's fault-injection filter, as
 * its tests use it: "blkdebug:CONFIG:IMAGE" names or driver=blkdebug with
 * inject-error.* / set-state.* rules (or a config file of [inject-error]
 * and [set-state] sections) over the storage "image".
 *
 * Formats raise events (qimg_storage_event) where QEMU's raise theirs.
 * An event activates its inject-error rules for the current state (the
 * first such rule of an event replaces the set of active rules, as in
 * QEMU), and its set-state rules move the state.  Every request then
 * checks the active rules: the first whose I/O type matches and whose
 * sector (if any) lies in the request fails it with the rule's errno,
 * once or every time.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/util.h"

/* Rules come from the command line or a config file, never from an
 * image: the bound only keeps a runaway file from taking memory. */
#define BLKDEBUG_MAX_RULES 4096

enum { IO_READ, IO_WRITE, IO_WRITE_ZEROES, IO_DISCARD, IO_FLUSH,
       IO_BLOCK_STATUS, IO_COUNT };
static const char *const io_names[IO_COUNT] = {
    "read", "write", "write-zeroes", "discard", "flush", "block-status",
};

enum { ACT_INJECT, ACT_SET_STATE };

struct rule {
    enum qimg_event event;
    int action;
    int64_t state;              /* 0: any */
    int error;                  /* positive errno, 0: none */
    bool once;
    int64_t offset;             /* byte offset of "sector", -1: any */
    unsigned iomask;
    int64_t new_state;
    bool dead;                  /* a fired once-rule */
};

struct bd_state {
    pthread_mutex_t lock;
    int64_t state;
    struct rule *rules;
    size_t n, cap;
    struct rule **active;       /* most recently activated first */
    size_t n_active;
    char *config;
};

/* ---- rules ---------------------------------------------------------------- */

static int parse_event(const char *name, enum qimg_event *ev,
                       struct qimg_error *err)
{
    if (!name)
        return qimg_error_set(err, -EINVAL, "Missing event name for rule");
    for (int i = 0; i < QIMG_EV_COUNT; i++)
        if (!strcmp(qimg_event_name(i), name)) {
            *ev = i;
            return 0;
        }
    return qimg_error_set(err, -EINVAL, "invalid parameter value: %s", name);
}

static int get_num(const struct qimg_opts *o, const char *key, int64_t def,
                   int64_t *out, struct qimg_error *err)
{
    const char *v = qimg_opts_get(o, key);
    char *end;

    if (!v) {
        *out = def;
        return 0;
    }
    errno = 0;
    *out = strtoll(v, &end, 0);
    if (errno || *end || end == v)
        return qimg_error_set(err, -EINVAL, "Parameter '%s' expects a number",
                              key);
    return 0;
}

static const char *const inject_keys[] = {
    "event", "state", "iotype", "errno", "sector", "once", "immediately", NULL,
};
static const char *const set_state_keys[] = {
    "event", "state", "new_state", NULL,
};

/* One [inject-error] or [set-state] section (keys without prefix). */
static int add_rule(struct bd_state *s, int action, const struct qimg_opts *o,
                    struct qimg_error *err)
{
    const char *const *keys = action == ACT_INJECT ? inject_keys
                                                   : set_state_keys;
    const char *group = action == ACT_INJECT ? "inject-error" : "set-state";
    struct rule r = {.action = action, .offset = -1};
    int64_t v;
    bool b;
    int ret;

    for (size_t i = 0; i < qimg_opts_count(o); i++)
        if (!qimg_key_listed(keys, qimg_opts_key(o, i)))
            return qimg_error_set(err, -EINVAL, "Invalid parameter '%s'",
                                  qimg_opts_key(o, i));
    (void)group;
    ret = parse_event(qimg_opts_get(o, "event"), &r.event, err);
    if (ret < 0)
        return ret;
    ret = get_num(o, "state", 0, &r.state, err);
    if (ret < 0)
        return ret;
    if (action == ACT_INJECT) {
        const char *io = qimg_opts_get(o, "iotype");
        ret = get_num(o, "errno", EIO, &v, err);
        if (ret < 0)
            return ret;
        r.error = (int)v;
        ret = qimg_opts_get_bool(o, "once", false, &b, err);
        if (ret < 0)
            return ret;
        r.once = b;
        ret = qimg_opts_get_bool(o, "immediately", false, &b, err);
        if (ret < 0)
            return ret;
        ret = get_num(o, "sector", -1, &v, err);
        if (ret < 0)
            return ret;
        r.offset = v == -1 ? -1 : v * 512;
        if (io) {
            int t = -1;
            for (int i = 0; i < IO_COUNT; i++)
                if (!strcmp(io_names[i], io))
                    t = i;
            if (t < 0)
                return qimg_error_set(err, -EINVAL, "invalid parameter "
                                      "value: %s", io);
            r.iomask = 1u << t;
        } else {
            r.iomask = (1u << IO_READ) | (1u << IO_WRITE) |
                       (1u << IO_WRITE_ZEROES) | (1u << IO_DISCARD) |
                       (1u << IO_FLUSH);
        }
    } else {
        ret = get_num(o, "new_state", 0, &r.new_state, err);
        if (ret < 0)
            return ret;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct rule *nr;
        if (cap > BLKDEBUG_MAX_RULES)
            return qimg_error_set(err, -E2BIG, "Too many blkdebug rules");
        nr = realloc(s->rules, cap * sizeof(*nr));
        if (!nr)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        s->rules = nr;
        s->cap = cap;
    }
    s->rules[s->n++] = r;
    return 0;
}

/* The sections of group in the options: "group.key" (one) or
 * "group.N.key" (several). */
static int rules_from_opts(struct bd_state *s, const struct qimg_opts *opts,
                           const char *group, int action,
                           struct qimg_error *err)
{
    char prefix[32];
    size_t pl = (size_t)snprintf(prefix, sizeof(prefix), "%s.", group);
    struct qimg_opts *one = qimg_opts_new();
    int ret = 0;

    if (!one)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    for (size_t i = 0; i < qimg_opts_count(opts); i++) {
        const char *k = qimg_opts_key(opts, i);
        if (!strncmp(k, prefix, pl) && !(k[pl] >= '0' && k[pl] <= '9'))
            qimg_opts_set(one, k + pl, qimg_opts_value(opts, i));
    }
    if (qimg_opts_count(one))
        ret = add_rule(s, action, one, err);
    qimg_opts_free(one);
    for (unsigned idx = 0; ret == 0; idx++) {
        char ip[48];
        size_t il = (size_t)snprintf(ip, sizeof(ip), "%s%u.", prefix, idx);
        struct qimg_opts *sec = qimg_opts_new();
        if (!sec)
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        for (size_t i = 0; i < qimg_opts_count(opts); i++) {
            const char *k = qimg_opts_key(opts, i);
            if (!strncmp(k, ip, il))
                qimg_opts_set(sec, k + il, qimg_opts_value(opts, i));
        }
        bool any = qimg_opts_count(sec) > 0;
        if (any)
            ret = add_rule(s, action, sec, err);
        qimg_opts_free(sec);
        if (!any)
            break;
    }
    return ret;
}

/* QEMU's config file: [group] lines, then key = "value" lines. */
static int read_config(struct bd_state *s, const char *path,
                       struct qimg_error *err)
{
    FILE *f = fopen(path, "r");
    char line[1024], group[64] = "", key[64], value[1024];
    struct qimg_opts *sec = NULL;
    int ret = 0;

    if (!f)
        return qimg_error_set(err, -errno, "Could not read blkdebug config "
                              "file: %s", strerror(errno));
    while (ret == 0 && fgets(line, sizeof(line), f)) {
        if (line[0] == '\n' || line[0] == '#')
            continue;
        if (line[0] == '[') {
            char g[64];
            if (sscanf(line, "[%63[^]]]", g) == 1) {
                if (sec && (!strcmp(group, "inject-error") ||
                            !strcmp(group, "set-state")))
                    ret = add_rule(s, !strcmp(group, "inject-error")
                                          ? ACT_INJECT : ACT_SET_STATE,
                                   sec, err);
                qimg_opts_free(sec);
                sec = qimg_opts_new();
                snprintf(group, sizeof(group), "%s", g);
                continue;
            }
        }
        value[0] = '\0';
        if (sscanf(line, " %63s = \"%1023[^\"]\"", key, value) == 2 ||
            sscanf(line, " %63s = \"\"", key) == 1) {
            if (!sec) {
                ret = qimg_error_set(err, -EINVAL, "no group defined");
                break;
            }
            qimg_opts_set(sec, key, value);
            continue;
        }
        ret = qimg_error_set(err, -EINVAL, "parse error");
    }
    if (ret == 0 && sec && (!strcmp(group, "inject-error") ||
                            !strcmp(group, "set-state")))
        ret = add_rule(s, !strcmp(group, "inject-error") ? ACT_INJECT
                                                         : ACT_SET_STATE,
                       sec, err);
    qimg_opts_free(sec);
    fclose(f);
    return ret;
}

static void bd_event(struct qimg_storage *st, enum qimg_event ev);

/* ---- events and checks --------------------------------------------------------- */

static void bd_event(struct qimg_storage *st, enum qimg_event ev)
{
    struct bd_state *s = st->priv;
    bool first_inject = true;
    int64_t new_state;

    pthread_mutex_lock(&s->lock);
    new_state = s->state;
    /* QEMU keeps each event's rules newest first. */
    for (size_t i = s->n; i-- > 0;) {
        struct rule *r = &s->rules[i];
        if (r->dead || r->event != ev || (r->state && r->state != s->state))
            continue;
        if (r->action == ACT_SET_STATE) {
            new_state = r->new_state;
            continue;
        }
        if (first_inject) {
            s->n_active = 0;
            first_inject = false;
        }
        memmove(s->active + 1, s->active, s->n_active * sizeof(*s->active));
        s->active[0] = r;
        s->n_active++;
    }
    s->state = new_state;
    pthread_mutex_unlock(&s->lock);
}

static int rule_check(struct qimg_storage *st, uint64_t off, uint64_t len,
                      int iotype, struct qimg_error *err)
{
    struct bd_state *s = st->priv;
    int error = 0;

    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n_active; i++) {
        struct rule *r = s->active[i];
        if ((r->offset == -1 ||
             (len && (uint64_t)r->offset >= off &&
              (uint64_t)r->offset < off + len)) &&
            (r->iomask & (1u << iotype))) {
            error = r->error;
            if (error && r->once) {
                r->dead = true;
                memmove(s->active + i, s->active + i + 1,
                        (s->n_active - i - 1) * sizeof(*s->active));
                s->n_active--;
            }
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (!error)
        return 0;
    return qimg_error_set(err, -error, "%s", strerror(error));
}

static int bd_pread(struct qimg_storage *st, uint64_t off, size_t len,
                    void *buf, struct qimg_error *err)
{
    int ret = rule_check(st, off, len, IO_READ, err);
    return ret ? ret : st->child->ops->pread(st->child, off, len, buf, err);
}

/* QEMU's block layer raises pwritev / pwritev_zero on the node written
 * to before the write and pwritev_done after it. */
static int bd_pwrite(struct qimg_storage *st, uint64_t off, size_t len,
                     const void *buf, struct qimg_error *err)
{
    int ret;

    bd_event(st, QIMG_EV_PWRITEV);
    ret = rule_check(st, off, len, IO_WRITE, err);
    if (!ret)
        ret = st->child->ops->pwrite(st->child, off, len, buf, err);
    bd_event(st, QIMG_EV_PWRITEV_DONE);
    return ret;
}

static int bd_zeroes(struct qimg_storage *st, uint64_t off, uint64_t len,
                     unsigned flags, struct qimg_error *err)
{
    struct qimg_storage *c = st->child;
    int ret;

    if (!c->ops->pwrite_zeroes)
        return -ENOTSUP;
    bd_event(st, QIMG_EV_PWRITEV_ZERO);
    ret = rule_check(st, off, len, IO_WRITE_ZEROES, err);
    if (!ret)
        ret = c->ops->pwrite_zeroes(c, off, len, flags, err);
    bd_event(st, QIMG_EV_PWRITEV_DONE);
    return ret;
}

static int bd_discard(struct qimg_storage *st, uint64_t off, uint64_t len,
                      struct qimg_error *err)
{
    struct qimg_storage *c = st->child;
    int ret = rule_check(st, off, len, IO_DISCARD, err);
    if (ret)
        return ret;
    return c->ops->discard ? c->ops->discard(c, off, len, err) : 0;
}

static int bd_flush(struct qimg_storage *st, struct qimg_error *err)
{
    struct qimg_storage *c = st->child;
    int ret = rule_check(st, 0, 0, IO_FLUSH, err);
    if (ret)
        return ret;
    return c->ops->flush ? c->ops->flush(c, err) : 0;
}

static int bd_block_status(struct qimg_storage *st, uint64_t off,
                           uint64_t len, struct qimg_extent *ext,
                           struct qimg_error *err)
{
    struct qimg_storage *c = st->child;
    int ret = rule_check(st, off, len, IO_BLOCK_STATUS, err);
    if (ret)
        return ret;
    if (!c->ops->block_status) {
        memset(ext, 0, sizeof(*ext));
        ext->length = len;
        ext->flags = QIMG_BS_DATA;
        return 0;
    }
    return c->ops->block_status(c, off, len, ext, err);
}

static int64_t bd_get_size(struct qimg_storage *st)
{
    return st->child->ops->get_size(st->child);
}

static int bd_truncate(struct qimg_storage *st, uint64_t size,
                       enum qimg_prealloc prealloc, struct qimg_error *err)
{
    struct qimg_storage *c = st->child;
    if (!c->ops->truncate)
        return qimg_error_set(err, -ENOTSUP, "Cannot resize");
    return c->ops->truncate(c, size, prealloc, err);
}

static int bd_set_perm(struct qimg_storage *st, unsigned flags,
                       struct qimg_error *err)
{
    struct qimg_storage *c = st->child;
    return c->ops->set_perm ? c->ops->set_perm(c, flags, err) : 0;
}

/* ---- open ------------------------------------------------------------------- */

/* "blkdebug:CONFIG:IMAGE" (CONFIG may be empty); without the prefix
 * the whole name is the image. */
static int bd_parse_filename(const char *filename, struct qimg_opts *opts,
                             struct qimg_error *err)
{
    const char *c;

    if (strncmp(filename, "blkdebug:", 9))
        return qimg_opts_set(opts, "x-image", filename) < 0
                   ? qimg_error_set(err, -ENOMEM, "Out of memory") : 0;
    filename += 9;
    c = strchr(filename, ':');
    if (!c)
        return qimg_error_set(err, -EINVAL, "blkdebug requires both config "
                              "file and image path");
    if (c != filename) {
        char *cfg = qimg_strndup(filename, (size_t)(c - filename));
        if (!cfg || qimg_opts_set(opts, "config", cfg) < 0) {
            free(cfg);
            return qimg_error_set(err, -ENOMEM, "Out of memory");
        }
        free(cfg);
    }
    if (qimg_opts_set(opts, "x-image", c + 1) < 0)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    return 0;
}

static void bd_free(struct bd_state *s)
{
    pthread_mutex_destroy(&s->lock);
    free(s->rules);
    free(s->active);
    free(s->config);
    free(s);
}

static int check_size_opt(const struct qimg_opts *o, const char *key,
                          struct qimg_error *err)
{
    uint64_t v;
    int ret = qimg_opts_get_size(o, key, 0, &v, err);
    if (ret < 0)
        return ret;
    if (v && (v >= INT32_MAX || (!strcmp(key, "align") && !qimg_is_pow2(v))))
        return qimg_error_set(err, -EINVAL, "Cannot meet constraints with %s "
                              "%llu", key, (unsigned long long)v);
    return 0;
}

static int bd_open(struct qimg_storage *st, const struct qimg_opts *opts,
                   unsigned flags, enum qimg_cache cache,
                   struct qimg_error *err)
{
    struct bd_state *s = calloc(1, sizeof(*s));
    struct qimg_opts *child = NULL;
    const char *cfg = qimg_opts_get(opts, "config");
    static const char *const sizes[] = {
        "align", "max-transfer", "opt-write-zero", "max-write-zero",
        "opt-discard", "max-discard",
    };
    int ret = 0;

    if (!s)
        return qimg_error_set(err, -ENOMEM, "Out of memory");
    pthread_mutex_init(&s->lock, NULL);
    if (cfg) {
        s->config = strdup(cfg);
        ret = s->config ? read_config(s, cfg, err)
                        : qimg_error_set(err, -ENOMEM, "Out of memory");
    }
    if (ret == 0)
        ret = rules_from_opts(s, opts, "inject-error", ACT_INJECT, err);
    if (ret == 0)
        ret = rules_from_opts(s, opts, "set-state", ACT_SET_STATE, err);
    if (ret == 0 && s->n &&
        !(s->active = calloc(s->n, sizeof(*s->active))))
        ret = qimg_error_set(err, -ENOMEM, "Out of memory");
    s->state = 1;
    if (ret == 0) {
        child = qimg_opts_new();
        if (!child)
            ret = qimg_error_set(err, -ENOMEM, "Out of memory");
        for (size_t i = 0; child && i < qimg_opts_count(opts); i++) {
            const char *k = qimg_opts_key(opts, i);
            if (!strncmp(k, "image.", 6))
                qimg_opts_set_typed(child, k + 6, qimg_opts_value(opts, i),
                                    qimg_opts_type(opts, i));
        }
    }
    if (ret == 0 && !qimg_opts_get(opts, "x-image") &&
        !qimg_opts_count(child))
        ret = qimg_error_set(err, -EINVAL, "A block device must be specified "
                             "for \"image\"");
    if (ret == 0)
        ret = qimg_storage_open_opts(&st->child, qimg_opts_get(opts, "x-image"),
                                     child, flags, cache, 0, err);
    for (size_t i = 0; ret == 0 && i < QIMG_ARRAY_SIZE(sizes); i++)
        ret = check_size_opt(opts, sizes[i], err);
    qimg_opts_free(child);
    if (ret < 0) {
        qimg_storage_close(st->child);
        st->child = NULL;
        bd_free(s);
        return ret;
    }
    st->child_name = "image";
    st->priv = s;
    st->caps = st->child->caps;
    st->align = st->child->align;
    /* Rules on the "none" event are active from the start. */
    bd_event(st, QIMG_EV_NONE);
    return 0;
}

static void bd_close(struct qimg_storage *st)
{
    qimg_storage_close(st->child);
    st->child = NULL;
    if (st->priv)
        bd_free(st->priv);
    st->priv = NULL;
}

static const char *const bd_runtime_opts[] = {
    "config", "x-image", "align", "max-transfer", "opt-write-zero",
    "max-write-zero", "opt-discard", "max-discard", "inject-error.",
    "set-state.", "take-child-perms.", "unshare-child-perms.", NULL,
};
static const char *const bd_strong_opts[] = {
    "config", "inject-error.", "set-state.", "align", "max-transfer",
    "opt-write-zero", "max-write-zero", "opt-discard", "max-discard", NULL,
};

/* "blkdebug:CONFIG:IMAGE" while only the config and the image are
 * given. */
static bool bd_refresh_name(struct qimg_storage *st, char *buf, size_t len)
{
    struct bd_state *s = st->priv;
    char child[4096];

    for (size_t i = 0; i < qimg_opts_count(st->options); i++) {
        const char *k = qimg_opts_key(st->options, i);
        if (qimg_key_listed(bd_strong_opts, k) && strcmp(k, "config"))
            return false;
    }
    if (!qimg_storage_exact_name(st->child, child, sizeof(child)))
        return false;
    return (size_t)snprintf(buf, len, "blkdebug:%s:%s",
                            s->config ? s->config : "", child) < len;
}

const struct qimg_storage_ops qimg_storage_blkdebug = {
    .name = "blkdebug",
    .protocol = "blkdebug",
    .runtime_opts = bd_runtime_opts,
    .strong_opts = bd_strong_opts,
    .parse_filename = bd_parse_filename,
    .refresh_name = bd_refresh_name,
    .open = bd_open,
    .close = bd_close,
    .pread = bd_pread,
    .pwrite = bd_pwrite,
    .flush = bd_flush,
    .get_size = bd_get_size,
    .truncate = bd_truncate,
    .pwrite_zeroes = bd_zeroes,
    .discard = bd_discard,
    .block_status = bd_block_status,
    .set_perm = bd_set_perm,
    .event = bd_event,
};
