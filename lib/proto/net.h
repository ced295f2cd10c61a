/*
 * net.h - what the network storages share: QEMU's URI parser (util/uri.c
 * semantics: RFC 3986 with unescaped user, server and path, the query
 * kept raw), its query-string splitter, socket addresses taken from
 * "server.*" options as QEMU's SocketAddress visitor takes them, and
 * connecting a socket with QEMU's messages.  The protocol clients
 * themselves are libraries (libnbd, libssh, ...); this is only the glue
 * that makes their names, options and errors look like QEMU's.
 */
#ifndef QIMG_PROTO_NET_H
#define QIMG_PROTO_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "core/block.h"

/* A parsed URI; absent parts are NULL (port 0: none). */
struct net_uri {
    char *scheme;
    char *user;
    char *server;
    int port;
    char *path;
    char *query;
    char *fragment;
};

/* Parse str as QEMU's uri_parse does; false when it is no URI. */
bool net_uri_parse(const char *str, struct net_uri *uri);
void net_uri_free(struct net_uri *uri);

/* One name=value of a query string (value NULL for a bare "name"). */
struct net_query_param {
    char *name;
    char *value;
};
struct net_query {
    struct net_query_param *p;
    size_t n;
};
/* Split a query as QEMU's query_params_parse ('&' or ';', unescaped);
 * false only when out of memory. */
bool net_query_parse(const char *query, struct net_query *q);
void net_query_free(struct net_query *q);
/* Percent-decode len bytes of s (malloc'ed). */
char *net_unescape(const char *s, size_t len);

/* A socket address (QEMU's SocketAddress, inet and unix kinds). */
enum net_addr_type { NET_ADDR_INET, NET_ADDR_UNIX, NET_ADDR_VSOCK,
                     NET_ADDR_FD };
struct net_addr {
    enum net_addr_type type;
    char host[1024];
    char port[64];
    char path[4096];
    /* inet options set: the name cannot be written as a URI then. */
    bool has_ipv4, has_ipv6, has_to;
    bool ipv4, ipv6;
};
/*
 * Read the address under prefix ("server.") from opts as QEMU's
 * SocketAddress visitor reads it: "Parameter 'type' is missing", "...
 * does not accept value ...", "Parameter 'X' is unexpected".  The
 * caller reports an empty prefix itself (its own message).
 */
int net_addr_from_opts(const struct qimg_opts *opts, const char *prefix,
                       struct net_addr *addr, struct qimg_error *err);
/* True when opts hold any key starting with prefix. */
bool net_opts_have_prefix(const struct qimg_opts *opts, const char *prefix);
/*
 * Connect a stream socket to addr with QEMU's messages ("address
 * resolution failed for H:P: ...", "Failed to connect to 'H:P': ...",
 * "Failed to connect to 'PATH': ...").  Returns the fd or a negative
 * errno.
 */
int net_connect(const struct net_addr *addr, struct qimg_error *err);

/* QEMU's parse of a number option ("Parameter 'X' expects a number"). */
int net_opt_number(const struct qimg_opts *opts, const char *key,
                   unsigned long long def, unsigned long long *out,
                   struct qimg_error *err);

/*
 * After open: make st->filename the storage's exact name (nbd://...),
 * which formats report as the file holding their data (map's "File"
 * column), as QEMU shows bs->filename.  Left alone when there is none.
 */
void net_name_as_filename(struct qimg_storage *st);

/* The secret called id as UTF-8 text (QEMU's qcrypto_secret_lookup_as_utf8),
 * malloc'ed in *out; QEMU's messages when it is missing or not text. */
int net_secret_text(const char *id, char **out, struct qimg_error *err);

/* Block status of a storage that cannot tell: everything is data where it
 * is asked for, named by the storage (QEMU's protocol nodes show their
 * name in map's "File" column). */
int net_block_status_data(struct qimg_storage *st, uint64_t off, uint64_t len,
                          struct qimg_extent *ext, struct qimg_error *err);

/* QEMU's "Unsupported preallocation mode 'X'" of network truncates. */
int net_prealloc_refused(enum qimg_prealloc prealloc, struct qimg_error *err);

#endif /* QIMG_PROTO_NET_H */
