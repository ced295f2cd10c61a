/* error.c - the error object every library call fills on failure. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "qimg.h"

int qimg_error_set(struct qimg_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void qimg_error_prefix(struct qimg_error *err, const char *fmt, ...)
{
    char prefix[QIMG_ERROR_MSG_MAX / 2];
    char old[QIMG_ERROR_MSG_MAX];
    size_t plen;
    va_list ap;

    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    plen = strlen(prefix);
    memcpy(err->msg, prefix, plen);
    snprintf(err->msg + plen, sizeof(err->msg) - plen, "%s", old);
}

void qimg_error_clear(struct qimg_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
