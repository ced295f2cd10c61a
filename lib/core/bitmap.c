/*
 * bitmap.c - persistent dirty bitmaps, format independent part: the checks
 * QEMU's block layer makes before a driver sees the request, and the
 * messages for formats that store no bitmaps.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "core/block.h"
#include "core/util.h"

/*
 * QEMU names anonymous nodes "#block" + a counter + two random digits; the
 * format node qemu-img bitmap opens is the second one it creates.
 */
void qimg_node_name(const struct qimg_image *node, char *buf, size_t len)
{
    static unsigned seed;
    (void)node;
    if (!seed)
        seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    snprintf(buf, len, "#block1%02d", rand_r(&seed) % 100);
}

static int not_found(const char *name, struct qimg_error *err)
{
    return qimg_error_set(err, -ENOENT, "Dirty bitmap '%s' not found", name);
}

bool qimg_bitmap_supported(struct qimg_image *img)
{
    return img->fmt->bitmap && img->fmt->bitmap->supported(img);
}

int qimg_bitmap_list(struct qimg_image *img, struct qimg_bitmap **list,
                     size_t *n, struct qimg_error *err)
{
    *list = NULL;
    *n = 0;
    if (!img->fmt->bitmap)
        return qimg_error_set(err, -ENOTSUP, "Block format '%s' does not "
                              "support persistent bitmaps", img->fmt->name);
    return img->fmt->bitmap->list(img, list, n, err);
}

int qimg_bitmap_add(struct qimg_image *img, const char *name,
                    uint64_t granularity, bool disabled,
                    struct qimg_error *err)
{
    char node[32];

    if (!name[0])
        return qimg_error_set(err, -EINVAL, "Bitmap name cannot be empty");
    if (granularity && (granularity < 512 || !qimg_is_pow2(granularity)))
        return qimg_error_set(err, -EINVAL, "Granularity must be power of 2 "
                              "and at least 512");
    if (img->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    if (!img->fmt->bitmap) {
        qimg_node_name(img, node, sizeof(node));
        return qimg_error_set(err, -ENOTSUP, "Can't store persistent bitmaps "
                              "to %s: Operation not supported", node);
    }
    return img->fmt->bitmap->add(img, name, granularity, disabled, err);
}

/* What every operation on an existing bitmap checks first. */
static int check_node(struct qimg_image *img, const char *name,
                      struct qimg_error *err)
{
    if (!img->fmt->bitmap)
        return not_found(name, err);
    if (img->read_only)
        return qimg_error_set(err, -EACCES, "Image is read-only");
    return 0;
}

int qimg_bitmap_remove(struct qimg_image *img, const char *name,
                       struct qimg_error *err)
{
    int ret = check_node(img, name, err);
    return ret < 0 ? ret : img->fmt->bitmap->remove(img, name, err);
}

int qimg_bitmap_clear(struct qimg_image *img, const char *name,
                      struct qimg_error *err)
{
    int ret = check_node(img, name, err);
    return ret < 0 ? ret : img->fmt->bitmap->clear(img, name, err);
}

int qimg_bitmap_enable(struct qimg_image *img, const char *name, bool enable,
                       struct qimg_error *err)
{
    int ret = check_node(img, name, err);
    return ret < 0 ? ret : img->fmt->bitmap->enable(img, name, enable, err);
}

int qimg_bitmap_merge(struct qimg_image *img, const char *name,
                      struct qimg_image *src, const char *src_name,
                      struct qimg_error *err)
{
    int ret = check_node(img, name, err);
    return ret < 0 ? ret : img->fmt->bitmap->merge(img, name, src, src_name,
                                                   err);
}

int qimg_bitmap_view(struct qimg_image *node, const char *name,
                     struct qimg_bitmap_view *v, struct qimg_error *err)
{
    if (!node->fmt->bitmap)
        return not_found(name, err);
    return node->fmt->bitmap->view(node, name, v, err);
}
