/*
 * cmd-info.c - qemu-img info
 *
 * info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt]
 *      [--backing-chain] [-U] filename
 * Exit status: 0 on success, 1 on any error.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

struct info_args {
    struct cli_image_args img;  /* file name, -f, -U, --image-opts */
    bool backing_chain;
    enum cli_output output;
};

/* The image's description in QEMU's ImageInfo terms (JSON member names). */
static json_t *describe(struct qimg_image *img, struct qimg_error *err)
{
    struct qimg_info info;
    json_t *o;

    if (qimg_get_info(img, &info, err) < 0)
        return NULL;
    o = json_object();
    json_object_set_new(o, "virtual-size", json_integer((json_int_t)info.virtual_size));
    json_object_set_new(o, "filename", json_string(qimg_image_filename(img)));
    /* QEMU keeps the cluster size in an int: 2 GiB (a vpc block size it
     * accepts) shows as negative. */
    if (info.cluster_size)
        json_object_set_new(o, "cluster-size",
                            json_integer((int32_t)info.cluster_size));
    json_object_set_new(o, "format", json_string(qimg_image_format(img)));
    if (info.actual_size >= 0)
        json_object_set_new(o, "actual-size", json_integer(info.actual_size));
    if (info.encrypted)
        json_object_set_new(o, "encrypted", json_true());
    if (info.format_specific_json && *info.format_specific_json) {
        json_t *fs = json_loads(info.format_specific_json, 0, NULL);
        if (fs)
            json_object_set_new(o, "format-specific", fs);
    }
    if (info.backing_file[0]) {
        /* Absent when the image's directory cannot be known (QEMU's
         * "cannot determine actual path"). */
        if (info.full_backing_filename[0])
            json_object_set_new(o, "full-backing-filename",
                                json_string(info.full_backing_filename));
        json_object_set_new(o, "backing-filename", json_string(info.backing_file));
        if (info.backing_fmt[0])
            json_object_set_new(o, "backing-filename-format",
                                json_string(info.backing_fmt));
    }
    if (info.has_dirty_flag)
        json_object_set_new(o, "dirty-flag", json_boolean(info.dirty));
    qimg_info_release(&info);
    struct qimg_snapshot *snaps = NULL;
    size_t nsnaps = 0;
    if (qimg_snapshot_list(img, &snaps, &nsnaps, NULL) == 0 && nsnaps)
        json_object_set_new(o, "snapshots", cli_snapshots_json(snaps, nsnaps));
    free(snaps);
    return o;
}

static void print_human(FILE *out, const json_t *o)
{
    char buf[64];
    json_t *v;
    uint64_t vsize = (uint64_t)json_integer_value(json_object_get(o, "virtual-size"));

    fprintf(out, "image: %s\n", json_string_value(json_object_get(o, "filename")));
    fprintf(out, "file format: %s\n", json_string_value(json_object_get(o, "format")));
    fprintf(out, "virtual size: %s (%llu bytes)\n", cli_size_str(vsize, buf, sizeof(buf)),
           (unsigned long long)vsize);
    v = json_object_get(o, "actual-size");
    if (v)
        fprintf(out, "disk size: %s\n",
               cli_size_str((uint64_t)json_integer_value(v), buf, sizeof(buf)));
    else
        fprintf(out, "disk size: unavailable\n");
    if (json_object_get(o, "encrypted"))
        fprintf(out, "encrypted: yes\n");
    if ((v = json_object_get(o, "cluster-size")))
        fprintf(out, "cluster_size: %lld\n", (long long)json_integer_value(v));
    if ((v = json_object_get(o, "backing-filename"))) {
        const char *bf = json_string_value(v);
        const char *full = json_string_value(json_object_get(o, "full-backing-filename"));
        fprintf(out, "backing file: %s", bf);
        if (!full)
            fprintf(out, " (cannot determine actual path)");
        else if (strcmp(bf, full))
            fprintf(out, " (actual path: %s)", full);
        fprintf(out, "\n");
        if ((v = json_object_get(o, "backing-filename-format")))
            fprintf(out, "backing file format: %s\n", json_string_value(v));
    }
    if (json_is_true(json_object_get(o, "dirty-flag")))
        fprintf(out, "cleanly shut down: no\n");
    if ((v = json_object_get(o, "snapshots"))) {
        /* Back from JSON to the table qemu-img prints. */
        size_t n = json_array_size(v);
        struct qimg_snapshot *list = calloc(n, sizeof(*list));
        for (size_t i = 0; list && i < n; i++) {
            json_t *e = json_array_get(v, i);
            snprintf(list[i].id, sizeof(list[i].id), "%s",
                     json_string_value(json_object_get(e, "id")));
            snprintf(list[i].name, sizeof(list[i].name), "%s",
                     json_string_value(json_object_get(e, "name")));
            list[i].vm_state_size = (uint64_t)json_integer_value(json_object_get(e, "vm-state-size"));
            list[i].date_sec = (uint32_t)json_integer_value(json_object_get(e, "date-sec"));
            list[i].date_nsec = (uint32_t)json_integer_value(json_object_get(e, "date-nsec"));
            list[i].vm_clock_nsec =
                (uint64_t)json_integer_value(json_object_get(e, "vm-clock-sec")) * 1000000000ull +
                (uint64_t)json_integer_value(json_object_get(e, "vm-clock-nsec"));
            list[i].has_icount = json_object_get(e, "icount") != NULL;
            list[i].icount = (uint64_t)json_integer_value(json_object_get(e, "icount"));
        }
        fprintf(out, "Snapshot list:\n");
        if (list)
            cli_print_snapshot_table(out, list, n);
        free(list);
    }
    if ((v = json_object_get(o, "format-specific"))) {
        fprintf(out, "Format specific information:\n");
        cli_json_print_human(out, json_object_get(v, "data"), 1);
    }
}

/* The name to open after img, as "full-backing-filename" says, or NULL. */
static char *next_in_chain(const json_t *d)
{
    const char *bf = json_string_value(json_object_get(d, "backing-filename"));
    const char *img = json_string_value(json_object_get(d, "filename"));

    if (!bf)
        return NULL;
    /* Resolved here too: the name may outgrow the info structure. */
    if (!strncmp(bf, "json:", 5))
        return strdup(bf);
    if (!strncmp(img, "json:", 5)) {
        const char *full = json_string_value(
            json_object_get(d, "full-backing-filename"));
        return strdup(full ? full : bf);
    }
    return qimg_path_combine(img, bf);
}

static bool seen_before(json_t *seen, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(seen, i, v) {
        if (!strcmp(json_string_value(v), name))
            return true;
    }
    return false;
}

/*
 * Like qemu-img, each image of a chain is opened on its own (without its
 * backing file), by the name and format its overlay records, so that a
 * missing image is named and a loop is caught by name.
 */
static int run_info(const struct info_args *a)
{
    /* info reads only headers: no read permission, but formats still
     * refuse to share write, as QEMU's do */
    struct cli_open o = cli_image_args_open(&a->img, QIMG_OPEN_NO_IO |
                                            QIMG_OPEN_NO_BACKING);
    struct qimg_error err = {0};
    json_t *list = json_array(), *seen = json_array();
    char *name = strdup(a->img.filename), *fmt = NULL;
    /* Human output is rendered image by image and each description freed
     * at once (printed only when the whole chain opened, as qemu-img
     * does): a chain's descriptions would otherwise all stay in memory,
     * ~3 KiB of JSON objects a layer against ~0.3 KiB of text. */
    char *text = NULL;
    size_t text_len = 0;
    FILE *out = a->output == CLI_OUTPUT_JSON ? NULL
                                             : open_memstream(&text, &text_len);
    size_t n = 0;
    int ret = 1;

    if (a->output != CLI_OUTPUT_JSON && !out) {
        cli_error("Out of memory");
        goto out;
    }

    while (name) {
        struct qimg_image *img;
        json_t *d;

        if (seen_before(seen, name)) {
            cli_error("Backing file '%s' creates an infinite loop.", name);
            goto out;
        }
        if (cli_untrusted() &&
            json_array_size(seen) >= QIMG_UNTRUSTED_MAX_CHAIN_DEPTH) {
            cli_error("Backing chain of '%s' is deeper than %d images",
                      a->img.filename, QIMG_UNTRUSTED_MAX_CHAIN_DEPTH);
            goto out;
        }
        json_array_append_new(seen, json_string(name));
        o.filename = name;
        img = cli_open_image(&o);
        if (!img)
            goto out;
        d = describe(img, &err);
        if (!d) {
            cli_report(&err, "%s: ", qimg_image_filename(img));
            qimg_close(img);
            goto out;
        }
        qimg_close(img);
        free(name);
        free(fmt);
        name = fmt = NULL;
        if (a->backing_chain) {
            name = next_in_chain(d);
            if (json_object_get(d, "backing-filename-format"))
                fmt = strdup(json_string_value(json_object_get(d, "backing-filename-format")));
        }
        if (out) {
            if (n)
                fputc('\n', out);
            print_human(out, d);
            json_decref(d);
        } else {
            json_array_append_new(list, d);
        }
        n++;
        if (!a->backing_chain)
            break;
        o.fmt = fmt;
        o.image_opts = false;
        /* The next name is the image's: the untrusted-image policy's. */
        o.role = QIMG_ROLE_BACKING;
    }
    if (a->output == CLI_OUTPUT_JSON) {
        cli_json_print(stdout, a->backing_chain ? list : json_array_get(list, 0), 0);
        printf("\n");
    } else {
        fclose(out);
        out = NULL;
        fwrite(text, 1, text_len, stdout);
    }
    ret = 0;
out:
    if (out)
        fclose(out);
    free(text);
    free(name);
    free(fmt);
    json_decref(list);
    json_decref(seen);
    return ret;
}

int cmd_info(int argc, char **argv)
{
    enum { OPT_BACKING_CHAIN = CLI_OPT_OWN };
    static const struct option longopts[] = {
        CLI_LONGOPT_HELP, CLI_LONGOPT_FORMAT, CLI_LONGOPT_OUTPUT,
        {"backing-chain", no_argument, NULL, OPT_BACKING_CHAIN},
        CLI_LONGOPT_OBJECT, CLI_LONGOPT_IMAGE_OPTS, CLI_LONGOPT_FORCE_SHARE,
        {NULL, 0, NULL, 0},
    };
    struct info_args a = {.output = CLI_OUTPUT_HUMAN};
    int c, ret;

    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case CLI_OPT_OUTPUT:    /* info checks it at once, unlike check */
            if (!cli_parse_output(optarg, &a.output))
                return 1;
            break;
        case OPT_BACKING_CHAIN: a.backing_chain = true; break;
        default:
            if ((ret = cli_image_option(c, argv, &a.img)) != CLI_CONTINUE)
                return ret;
        }
    }
    ret = cli_image_args_end(argc, argv, &a.img, NULL);
    return ret != CLI_CONTINUE ? ret : run_info(&a);
}
