/*
 * name.c - the names QEMU shows for nodes (bdrv_refresh_filename): a
 * node that its file's name opens again is called by that name; one with
 * options that change what it is ("strong" options such as raw's offset),
 * or whose backing chain was chosen by options, is called json:{...}
 * with those options and its children's, in QEMU's dictionary order.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/block.h"
#include "core/json.h"

static json_t *typed_value(const struct qimg_opts *o, size_t i)
{
    const char *v = qimg_opts_value(o, i);

    switch (qimg_opts_type(o, i)) {
    case QIMG_VAL_INT:
        return json_integer(strtoll(v, NULL, 10));
    case QIMG_VAL_REAL:
        return json_real(strtod(v, NULL));
    case QIMG_VAL_BOOL:
        return json_boolean(!strcmp(v, "on"));
    case QIMG_VAL_NULL:
        return json_null();
    default:
        return json_string(v);
    }
}

/*
 * Copy the strong options of o into d: "driver" and "filename" always,
 * then those in strong.  True when one besides driver and filename was
 * there (the node then needs a json: name).
 */
static bool append_strong(json_t *d, const struct qimg_opts *o,
                          const char *const *strong)
{
    static const char *const global[] = {"driver", "filename", NULL};
    bool found = false;

    for (size_t i = 0; i < qimg_opts_count(o); i++) {
        const char *k = qimg_opts_key(o, i);
        bool g = qimg_key_listed(global, k);
        if (!g && !qimg_key_listed(strong, k))
            continue;
        json_object_set_new(d, k, typed_value(o, i));
        found |= !g;
    }
    return found;
}

static json_t *node_full_opts(struct qimg_image *node, bool *strong);

json_t *qimg_storage_full_opts(struct qimg_storage *st)
{
    json_t *d;
    bool strong;

    if (st->node)
        return node_full_opts(st->node, &strong);
    d = json_object();
    if (!d)
        return NULL;
    append_strong(d, st->options, st->ops->strong_opts);
    if (!json_object_get(d, "driver"))
        json_object_set_new(d, "driver", json_string(st->ops->name));
    if (st->child && st->child_name) {
        json_t *c = qimg_storage_full_opts(st->child);
        if (c)
            json_object_set_new(d, st->child_name, c);
    }
    if (st->child2 && st->child2_name) {
        json_t *c = qimg_storage_full_opts(st->child2);
        if (c)
            json_object_set_new(d, st->child2_name, c);
    }
    if (st->children_key) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < st->n_children; i++) {
            json_t *c = qimg_storage_full_opts(st->children[i]);
            if (c)
                json_array_append_new(a, c);
        }
        if (a)
            json_object_set_new(d, st->children_key, a);
    }
    return d;
}

bool qimg_storage_exact_name(struct qimg_storage *st, char *buf, size_t len)
{
    json_t *d;
    bool strong;

    if (st->node) {
        if (!st->node->name || !strncmp(st->node->name, "json:", 5))
            return false;
        return (size_t)snprintf(buf, len, "%s", st->node->name) < len;
    }
    if (st->ops->refresh_name)
        return st->ops->refresh_name(st, buf, len);
    d = json_object();
    if (!d)
        return false;
    strong = append_strong(d, st->options, st->ops->strong_opts);
    json_decref(d);
    if (strong || !st->filename || !*st->filename)
        return false;
    return (size_t)snprintf(buf, len, "%s", st->filename) < len;
}

/* Whether the node's backing chain counts as chosen by options (QEMU
 * ignores that for opens without I/O, such as info). */
static bool backing_counts(const struct qimg_image *node)
{
    return node->backing_overridden && !(node->flags & QIMG_OPEN_NO_IO);
}

static json_t *node_full_opts(struct qimg_image *node, bool *strong)
{
    json_t *d;

    *strong = false;
    if (node->fmt == &qimg_format_protocol)
        return qimg_storage_full_opts(node->file);
    d = json_object();
    if (!d)
        return NULL;
    *strong = append_strong(d, node->options, node->fmt->strong_opts);
    if (!json_object_get(d, "driver"))
        json_object_set_new(d, "driver", json_string(node->fmt->name));
    if (node->file) {
        json_t *f = qimg_storage_full_opts(node->file);
        if (f)
            json_object_set_new(d, "file", f);
    }
    if (backing_counts(node)) {
        bool s;
        json_t *b = node->backing ? node_full_opts(node->backing, &s)
                                  : json_null();
        if (b)
            json_object_set_new(d, "backing", b);
    }
    return d;
}

int qimg_node_refresh_name(struct qimg_image *node)
{
    char exact[4096];
    bool have = false, strong;
    json_t *d = node_full_opts(node, &strong);
    char *name = NULL;

    if (!d)
        return -ENOMEM;
    if (node->fmt == &qimg_format_protocol)
        have = qimg_storage_exact_name(node->file, exact, sizeof(exact));
    else if (node->file && !node->file->node && !strong &&
             !backing_counts(node))
        have = qimg_storage_exact_name(node->file, exact, sizeof(exact));
    if (have) {
        name = strdup(exact);
    } else {
        char *j = qimg_json_compact(d);
        if (j) {
            name = malloc(strlen(j) + 6);
            if (name)
                sprintf(name, "json:%s", j);
            free(j);
        }
    }
    json_decref(d);
    if (!name)
        return -ENOMEM;
    free(node->name);
    node->name = name;
    return 0;
}

/* The directory part of a name, through its last '/' ("" without one). */
static int dir_of(const char *name, char **dir, struct qimg_error *err)
{
    *dir = qimg_path_combine(name, "");
    return *dir ? 0 : qimg_error_set(err, -ENOMEM, "Out of memory");
}

static int no_dirname(const char *driver, char **dir, struct qimg_error *err)
{
    *dir = NULL;
    return qimg_error_set(err, -EINVAL, "Cannot generate a base directory "
                          "for %s nodes", driver);
}

int qimg_storage_dirname(struct qimg_storage *st, char **dir,
                         struct qimg_error *err)
{
    char exact[4096];

    if (st->ops->dirname)
        return st->ops->dirname(st, dir, err);
    if (st->node)
        return qimg_node_dirname(st->node, dir, err);
    if (qimg_storage_exact_name(st, exact, sizeof(exact)))
        return dir_of(exact, dir, err);
    if (st->child)
        return qimg_storage_dirname(st->child, dir, err);
    return no_dirname(st->ops->name, dir, err);
}

int qimg_node_dirname(const struct qimg_image *node, char **dir,
                      struct qimg_error *err)
{
    /* A node being opened has no name yet: its file decides, as in QEMU
     * (the exact name of a format node is its file's). */
    if (node->name && strncmp(node->name, "json:", 5))
        return dir_of(node->name, dir, err);
    if (node->file)
        return qimg_storage_dirname(node->file, dir, err);
    return no_dirname(node->fmt ? node->fmt->name : "unknown", dir, err);
}
