/*
 * json-out.c - print jansson values in the layout of QEMU's pretty JSON
 * (4-space indent, "key": value, members in insertion order) and in the
 * "key: value" layout of qemu-img's human format-specific section.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

static void indent(FILE *out, int level)
{
    for (int i = 0; i < level; i++)
        fputs("    ", out);
}

static void print_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\b': fputs("\\b", out); break;
        case '\f': fputs("\\f", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(out, "\\u%04X", *p);
            else
                fputc(*p, out);
        }
    }
    fputc('"', out);
}

static void print_scalar(FILE *out, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING: print_string(out, json_string_value(v)); break;
    case JSON_INTEGER:
        fprintf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL: fprintf(out, "%.17g", json_real_value(v)); break;
    case JSON_TRUE: fputs("true", out); break;
    case JSON_FALSE: fputs("false", out); break;
    default: fputs("null", out); break;
    }
}

/*
 * QEMU prints a dictionary in the order of its hash table: by bucket of a
 * TDB-style string hash modulo 512, and within a bucket the most recently
 * inserted key first.  We reproduce that order so output matches byte for
 * byte.
 */
struct ordered_key {
    const char *key;
    unsigned bucket;
    size_t index;
};

static int cmp_ordered(const void *a, const void *b)
{
    const struct ordered_key *x = a, *y = b;
    if (x->bucket != y->bucket)
        return x->bucket < y->bucket ? -1 : 1;
    return x->index > y->index ? -1 : 1;   /* newest first */
}

/* The members of object v in QEMU's order; caller frees. */
static struct ordered_key *ordered_keys(const json_t *v, size_t *n)
{
    const char *key;
    json_t *member;
    size_t i = 0;
    struct ordered_key *keys;

    *n = json_object_size(v);
    keys = calloc(*n ? *n : 1, sizeof(*keys));
    if (!keys)
        abort();
    json_object_foreach((json_t *)v, key, member) {
        keys[i].key = key;
        keys[i].bucket = qimg_qdict_bucket(key);
        keys[i].index = i;
        i++;
    }
    qsort(keys, *n, sizeof(*keys), cmp_ordered);
    return keys;
}

void cli_json_print(FILE *out, const json_t *v, int level)
{
    size_t i, n;

    if (json_is_object(v)) {
        struct ordered_key *keys = ordered_keys(v, &n);
        if (!n) {
            fputs("{\n", out);
            indent(out, level);
            fputc('}', out);
            free(keys);
            return;
        }
        fputs("{\n", out);
        for (i = 0; i < n; i++) {
            if (i)
                fputs(",\n", out);
            indent(out, level + 1);
            print_string(out, keys[i].key);
            fputs(": ", out);
            cli_json_print(out, json_object_get(v, keys[i].key), level + 1);
        }
        free(keys);
        fputc('\n', out);
        indent(out, level);
        fputc('}', out);
    } else if (json_is_array(v)) {
        n = json_array_size(v);
        if (!n) {
            /* QEMU prints an empty list over two lines. */
            fputs("[\n", out);
            indent(out, level);
            fputc(']', out);
            return;
        }
        fputs("[\n", out);
        for (i = 0; i < n; i++) {
            if (i)
                fputs(",\n", out);
            indent(out, level + 1);
            cli_json_print(out, json_array_get(v, i), level + 1);
        }
        fputc('\n', out);
        indent(out, level);
        fputc(']', out);
    } else {
        print_scalar(out, v);
    }
}

static void print_human_key(FILE *out, const char *key)
{
    for (const char *p = key; *p; p++)
        fputc(*p == '-' ? ' ' : *p, out);
}

void cli_json_print_human(FILE *out, const json_t *v, int level)
{
    size_t n;
    struct ordered_key *keys = ordered_keys(v, &n);

    for (size_t k = 0; k < n; k++) {
        const char *key = keys[k].key;
        json_t *member = json_object_get(v, key);
        indent(out, level);
        print_human_key(out, key);
        if (json_is_object(member)) {
            fputs(":\n", out);
            cli_json_print_human(out, member, level + 1);
        } else if (json_is_array(member)) {
            fputs(":\n", out);
            for (size_t i = 0; i < json_array_size(member); i++) {
                json_t *e = json_array_get(member, i);
                indent(out, level + 1);
                if (json_is_object(e)) {
                    fprintf(out, "[%zu]:\n", i);
                    cli_json_print_human(out, e, level + 2);
                } else {
                    fprintf(out, "[%zu]: ", i);
                    if (json_is_string(e))
                        fputs(json_string_value(e), out);
                    else
                        print_scalar(out, e);
                    fputc('\n', out);
                }
            }
        } else {
            fputs(": ", out);
            if (json_is_string(member))
                fputs(json_string_value(member), out);
            else
                print_scalar(out, member);
            fputc('\n', out);
        }
    }
    free(keys);
}
