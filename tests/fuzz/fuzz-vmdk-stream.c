/*
 * fuzz-vmdk-stream.c - the input sent down a pipe and opened as a vmdk
 * over the stream storage, as `convert -f vmdk - ...` opens stdin: a
 * streamOptimized image whose directory is at the end is then read
 * forward, grain marker by grain marker (vmdk-stream.c), and walked as
 * the commands do (block status, then reads, mostly in order).
 *
 * A thread writes the input into the pipe; closing the image closes the
 * read end, so that the writer stops (EPIPE) whatever was left unread.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "fuzz-common.h"

struct feed {
    int fd;
    const uint8_t *data;
    size_t size;
};

static void *feed_pipe(void *opaque)
{
    struct feed *f = opaque;
    size_t done = 0;

    while (done < f->size) {
        ssize_t n = write(f->fd, f->data + done, f->size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    close(f->fd);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_opts *o = qimg_opts_new();
    struct qimg_open_params p = {.format = "vmdk", .options = o,
                                 .flags = QIMG_OPEN_NO_LOCK};
    struct qimg_image *img = NULL;
    struct qimg_error err;
    struct feed f = {.data = data, .size = size};
    uint64_t budget = FUZZ_READ_BUDGET;
    char name[64];
    pthread_t t;
    int fds[2];

    fuzz_init_storage();
    signal(SIGPIPE, SIG_IGN);
    if (!o || pipe(fds) < 0) {
        qimg_opts_free(o);
        return 0;
    }
    f.fd = fds[1];
    snprintf(name, sizeof(name), "/proc/self/fd/%d", fds[0]);
    qimg_opts_set(o, "file.driver", "stream");
    qimg_opts_set(o, "file.filename", name);
    if (pthread_create(&t, NULL, feed_pipe, &f)) {
        close(fds[0]);
        close(fds[1]);
        qimg_opts_free(o);
        return 0;
    }
    if (qimg_open(&img, &p, &err) == 0) {
        fuzz_walk(img, &budget);
        qimg_close(img);
    }
    /* the storage opened its own descriptor of the pipe: ours goes too */
    close(fds[0]);
    pthread_join(t, NULL);
    qimg_opts_free(o);
    return 0;
}
