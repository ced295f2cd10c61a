/*
 * qimg-io - a small qemu-io-like tool over libqimg's public API, for tests:
 * writes patterns, zeroes and discards into images and verifies reads.
 *
 *   qimg-io [-f fmt] [-t cache] [-s SECRETDEF] [-o KEY=VALUE] FILE CMD...
 *   -s: an --object secret definition; -o: an open option for the format
 *   (e.g. key-secret=s0 or encrypt.key-secret=s0), repeatable.
 *   CMD: "write -P PATTERN OFFSET LENGTH" | "write -z [-u] OFFSET LENGTH"
 *        "read -P PATTERN OFFSET LENGTH" (exit 1 on mismatch)
 *        "discard OFFSET LENGTH" | "flush" | "truncate SIZE"
 *        "writec -P PATTERN OFFSET LENGTH" (compressed, whole clusters)
 * Offsets and lengths accept size suffixes (k, M, G).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qimg.h"

static uint64_t num(const char *s)
{
    uint64_t v;
    if (qimg_parse_size(s, &v, NULL) < 0) {
        fprintf(stderr, "qimg-io: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

static int run(struct qimg_image *img, char *cmd)
{
    char *argv[16];
    int argc = 0, pattern = -1, ret = 0;
    bool zero = false, unmap = false;
    struct qimg_error err = {0};
    uint64_t off, len;
    uint8_t *buf = NULL;

    for (char *t = strtok(cmd, " "); t && argc < 15; t = strtok(NULL, " "))
        argv[argc++] = t;
    argv[argc] = NULL;
    if (!argc)
        return 0;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "-P") && i + 1 < argc)
            pattern = (int)strtol(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "-z"))
            zero = true;
        else if (!strcmp(argv[i], "-u"))
            unmap = true;
    }
    if (!strcmp(argv[0], "flush"))
        ret = qimg_flush(img, &err);
    else if (!strcmp(argv[0], "truncate") && i < argc)
        ret = qimg_truncate(img, num(argv[i]), false, QIMG_PREALLOC_OFF, &err);
    else if (i + 1 < argc) {
        off = num(argv[i]);
        len = num(argv[i + 1]);
        if (!strcmp(argv[0], "discard")) {
            ret = qimg_discard(img, off, len, &err);
        } else if (!strcmp(argv[0], "write") && zero) {
            ret = qimg_pwrite_zeroes(img, off, len, unmap ? QIMG_ZERO_MAY_UNMAP : 0,
                                     &err);
        } else {
            buf = malloc(len ? len : 1);
            if (!buf)
                return -ENOMEM;
            if (!strcmp(argv[0], "write")) {
                memset(buf, pattern < 0 ? 0xcd : pattern, len);
                ret = qimg_pwrite(img, off, len, buf, &err);
            } else if (!strcmp(argv[0], "writec")) {
                memset(buf, pattern < 0 ? 0xcd : pattern, len);
                ret = qimg_pwrite_compressed(img, off, len, buf, &err);
            } else if (!strcmp(argv[0], "read")) {
                ret = qimg_pread(img, off, len, buf, &err);
                for (uint64_t k = 0; !ret && pattern >= 0 && k < len; k++) {
                    if (buf[k] != pattern) {
                        fprintf(stderr, "qimg-io: mismatch at %llu: %#x != %#x\n",
                                (unsigned long long)(off + k), buf[k], pattern);
                        ret = 1;
                    }
                }
            } else {
                fprintf(stderr, "qimg-io: unknown command '%s'\n", argv[0]);
                ret = 2;
            }
        }
    } else {
        fprintf(stderr, "qimg-io: bad command '%s'\n", argv[0]);
        ret = 2;
    }
    free(buf);
    if (ret < 0)
        fprintf(stderr, "qimg-io: %s: %s\n", argv[0], err.msg);
    return ret;
}

int main(int argc, char **argv)
{
    struct qimg_open_params p = {.flags = QIMG_OPEN_RDWR | QIMG_OPEN_RESIZE};
    struct qimg_image *img;
    struct qimg_error err = {0};
    struct qimg_opts *o = NULL;
    bool ack = false;
    int c, ret = 0;

    /* -a: print "ok CMD" once each command has completed, so that crash
     * tests know which writes and flushes were acknowledged. */
    while ((c = getopt(argc, argv, "af:t:s:o:")) != -1) {
        if (c == 's' && qimg_secret_add(optarg, &err) < 0) {
            fprintf(stderr, "qimg-io: %s\n", err.msg);
            return 2;
        }
        if (c == 'o') {
            if (!o)
                o = qimg_opts_new();
            qimg_opts_parse(o, optarg, NULL, NULL);
        }
        if (c == 'a')
            ack = true;
        else if (c == 'f')
            p.format = optarg;
        else if (c == 't' && qimg_cache_parse(optarg, &p.cache) < 0)
            return 2;
    }
    if (optind >= argc) {
        fprintf(stderr, "usage: qimg-io [-a] [-f fmt] [-t cache] FILE CMD...\n");
        return 2;
    }
    p.filename = argv[optind++];
    p.options = o;   /* options beside the file name */
    if (qimg_open(&img, &p, &err) < 0) {
        fprintf(stderr, "qimg-io: %s\n", err.msg);
        return 1;
    }
    for (; optind < argc && !ret; optind++) {
        char *cmd = strdup(argv[optind]);   /* run() splits its argument */
        if (!cmd)
            return 1;
        ret = run(img, argv[optind]);
        if (!ret && ack) {
            printf("ok %s\n", cmd);
            fflush(stdout);
        }
        free(cmd);
    }
    if (!ret && qimg_flush(img, &err) < 0) {
        fprintf(stderr, "qimg-io: flush: %s\n", err.msg);
        ret = 1;
    }
    qimg_close(img);
    qimg_opts_free(o);
    return ret ? 1 : 0;
}
