/*
 * json.c - JSON in QEMU's dialect (see json.h).
 *
 * The parser reproduces what QEMU's JSON reader accepts and says, which
 * json: filenames expose to users:
 * - a lexer that cuts tokens as QEMU's does: strings in double or single
 *   quotes, numbers without leading zeros, lower-case keywords; a
 *   character that cannot continue a token ends it as an error ("stray
 *   '<token so far and that character>'"), after which characters are
 *   skipped up to the next structural character;
 * - values are assembled as the tokens of one top-level value arrive
 *   (brackets balanced), so a second value or an error after a complete
 *   one is "Expecting at most one JSON value";
 * - the grammar's first error is the one reported.
 * Values become jansson objects (members in insertion order).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/util.h"

/* QEMU's bounds on one JSON message. */
#define JSON_MAX_NESTING 1024
#define JSON_MAX_TOKENS (2 * 1024 * 1024)
#define JSON_MAX_TEXT (64u << 20)

enum tok_type {
    T_LCURLY, T_RCURLY, T_LSQUARE, T_RSQUARE, T_COLON, T_COMMA,
    T_STRING, T_INTEGER, T_FLOAT, T_KEYWORD,
};

struct token {
    enum tok_type type;
    const char *text;          /* into the input */
    size_t len;
};

struct parser {
    const char *in;
    size_t pos, len;
    /* tokens of the value being assembled */
    struct token *toks;
    size_t ntoks, cap, next;
    int braces, brackets;
    /* outcome */
    json_t *result;
    bool have_err;
    char err[256];
    /* first grammar error of the current value */
    bool perr;
    char pmsg[256];
};

static void set_err(struct parser *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_err(struct parser *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
}

static void parse_error(struct parser *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void parse_error(struct parser *p, const char *fmt, ...)
{
    va_list ap;
    if (p->perr)
        return;
    p->perr = true;
    va_start(ap, fmt);
    vsnprintf(p->pmsg, sizeof(p->pmsg), fmt, ap);
    va_end(ap);
}

/* ---- values from tokens -------------------------------------------------- */

static json_t *parse_value(struct parser *p, int depth);

static struct token *peek(struct parser *p)
{
    return p->next < p->ntoks ? &p->toks[p->next] : NULL;
}

static struct token *pop(struct parser *p)
{
    return p->next < p->ntoks ? &p->toks[p->next++] : NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at s (the token always has them: it ends with a
 * quote), or -1. */
static int hex4(const char *s, const char *end)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int h = s + i < end ? hexval(s[i]) : -1;
        if (h < 0)
            return -1;
        v = v << 4 | h;
    }
    return v;
}

/* QEMU's "modified UTF-8": U+0000 as C0 80, no surrogates. */
static int utf8_put(char *out, int cp)
{
    if (cp < 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    if (cp == 0) {
        out[0] = (char)0xC0;
        out[1] = (char)0x80;
        return 2;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at s (shortest form, no surrogates,
 * at most U+10FFFF, C0 80 allowed), or 0. */
static size_t utf8_len(const unsigned char *s, const unsigned char *end)
{
    unsigned c = s[0], n, cp;

    if (c < 0x80)
        return 1;
    if (c == 0xC0 && s + 1 < end && s[1] == 0x80)
        return 2;
    if (c >= 0xC2 && c <= 0xDF)
        n = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 2, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 3, cp = c & 0x07;
    else
        return 0;
    if ((size_t)(end - s) <= n)
        return 0;
    for (unsigned i = 1; i <= n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n + 1;
}

static json_t *parse_string(struct parser *p, const struct token *t)
{
    const char *s = t->text + 1, *end = t->text + t->len - 1;
    char *out = malloc(t->len * 2 + 1), quote = t->text[0];
    size_t n = 0;
    json_t *v = NULL;

    (void)quote;
    if (!out)
        return NULL;
    while (s < end) {
        if (*s != '\\') {
            size_t l = utf8_len((const unsigned char *)s,
                                (const unsigned char *)end);
            if (!l) {
                parse_error(p, "invalid UTF-8 sequence in string");
                goto out;
            }
            memcpy(out + n, s, l);
            n += l;
            s += l;
            continue;
        }
        const char *beg = s++;
        char c = s < end ? *s++ : 0;
        switch (c) {
        case '"': out[n++] = '"'; break;
        case '\'': out[n++] = '\''; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            int cp = hex4(s, end);
            s += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && s + 1 < end && s[0] == '\\' &&
                s[1] == 'u') {
                int tr = hex4(s + 2, end);
                if (tr >= 0xDC00 && tr <= 0xDFFF) {
                    cp = 0x10000 + ((cp & 0x3FF) << 10) + (tr & 0x3FF);
                    s += 6;
                } else {
                    cp = -1;
                }
            }
            int l = utf8_put(out + n, cp);
            if (l < 0) {
                int shown = (int)(QIMG_MIN(s, end) - beg);
                parse_error(p, "%.*s is not a valid Unicode character", shown,
                            beg);
                goto out;
            }
            n += (size_t)l;
            break;
        }
        default:
            parse_error(p, "invalid escape sequence in string");
            goto out;
        }
    }
    /* QEMU's strings may hold C0 80 (its NUL): keep the bytes as they
     * are, unchecked. */
    v = json_stringn_nocheck(out, n);
out:
    free(out);
    return v;
}

static json_t *parse_number(const struct token *t)
{
    char buf[512];
    size_t l = QIMG_MIN(t->len, sizeof(buf) - 1);
    char *end;

    memcpy(buf, t->text, l);
    buf[l] = '\0';
    if (t->type == T_INTEGER) {
        errno = 0;
        long long v = strtoll(buf, &end, 10);
        if (!errno)
            return json_integer(v);
        /* Beyond int64: QEMU keeps it as uint64 or as a double; jansson
         * has no uint64, so both become doubles here. */
    }
    double d = strtod(buf, NULL);
    /* jansson has no infinities: an overflowing number (QEMU keeps inf)
     * is kept as its text. */
    if (!isfinite(d))
        return json_string(d > 0 ? "inf" : "-inf");
    return json_real(d);
}

static json_t *parse_object(struct parser *p, int depth)
{
    json_t *obj = json_object();
    struct token *t;

    pop(p);
    if (!obj)
        return NULL;
    if (!peek(p)) {
        parse_error(p, "premature EOI");
        goto fail;
    }
    if (peek(p)->type == T_RCURLY) {
        pop(p);
        return obj;
    }
    for (;;) {
        if (!peek(p)) {
            parse_error(p, "premature EOI");
            goto fail;
        }
        json_t *key = parse_value(p, depth + 1);
        if (!json_is_string(key)) {
            json_decref(key);
            parse_error(p, "key is not a string in object");
            goto fail;
        }
        t = pop(p);
        if (!t || t->type != T_COLON) {
            json_decref(key);
            if (!t)
                parse_error(p, "premature EOI");
            else
                parse_error(p, "missing : in object pair");
            goto fail;
        }
        json_t *val = parse_value(p, depth + 1);
        if (!val) {
            json_decref(key);
            parse_error(p, "Missing value in dict");
            goto fail;
        }
        if (json_object_get(obj, json_string_value(key))) {
            json_decref(key);
            json_decref(val);
            parse_error(p, "duplicate key");
            goto fail;
        }
        json_object_set_new_nocheck(obj, json_string_value(key), val);
        json_decref(key);
        t = pop(p);
        if (!t) {
            parse_error(p, "premature EOI");
            goto fail;
        }
        if (t->type == T_RCURLY)
            return obj;
        if (t->type != T_COMMA) {
            parse_error(p, "expected separator in dict");
            goto fail;
        }
    }
fail:
    json_decref(obj);
    return NULL;
}

static json_t *parse_array(struct parser *p, int depth)
{
    json_t *arr = json_array();
    struct token *t;

    pop(p);
    if (!arr)
        return NULL;
    if (!peek(p)) {
        parse_error(p, "premature EOI");
        goto fail;
    }
    if (peek(p)->type == T_RSQUARE) {
        pop(p);
        return arr;
    }
    for (;;) {
        json_t *v = parse_value(p, depth + 1);
        if (!v) {
            parse_error(p, "expecting value");
            goto fail;
        }
        json_array_append_new(arr, v);
        t = pop(p);
        if (!t) {
            parse_error(p, "premature EOI");
            goto fail;
        }
        if (t->type == T_RSQUARE)
            return arr;
        if (t->type != T_COMMA) {
            parse_error(p, "expected separator in list");
            goto fail;
        }
    }
fail:
    json_decref(arr);
    return NULL;
}

static json_t *parse_value(struct parser *p, int depth)
{
    struct token *t = peek(p);

    if (!t) {
        parse_error(p, "premature EOI");
        return NULL;
    }
    switch (t->type) {
    case T_LCURLY:
        return parse_object(p, depth);
    case T_LSQUARE:
        return parse_array(p, depth);
    case T_STRING:
        pop(p);
        return parse_string(p, t);
    case T_INTEGER:
    case T_FLOAT:
        pop(p);
        return parse_number(t);
    case T_KEYWORD:
        pop(p);
        if (t->len == 4 && !memcmp(t->text, "true", 4))
            return json_true();
        if (t->len == 5 && !memcmp(t->text, "false", 5))
            return json_false();
        if (t->len == 4 && !memcmp(t->text, "null", 4))
            return json_null();
        parse_error(p, "invalid keyword '%.*s'", (int)t->len, t->text);
        return NULL;
    default:
        parse_error(p, "expecting value");
        return NULL;
    }
}

/* ---- assembling top-level values ----------------------------------------- */

/* A complete value (or an error) arrived: keep the first, as QEMU does. */
static void emit(struct parser *p, json_t *v, const char *msg)
{
    if (p->result) {
        json_decref(p->result);
        p->result = NULL;
        set_err(p, "Expecting at most one JSON value");
        p->have_err = true;
    }
    if (p->have_err) {
        json_decref(v);
        return;
    }
    if (v) {
        p->result = v;
    } else {
        p->have_err = true;
        set_err(p, "%s", msg);
    }
}

static void emit_tokens(struct parser *p)
{
    json_t *v;
    char msg[300];

    p->next = 0;
    p->perr = false;
    v = parse_value(p, 0);
    if (v && p->next < p->ntoks) {
        /* QEMU reads one value per message and ignores nothing: tokens
         * past it cannot happen with balanced brackets. */
        json_decref(v);
        v = NULL;
        parse_error(p, "expecting value");
    }
    if (!v) {
        if (!p->perr)
            parse_error(p, "out of memory");
        snprintf(msg, sizeof(msg), "JSON parse error, %s", p->pmsg);
    }
    emit(p, v, msg);
    p->ntoks = 0;
    p->braces = p->brackets = 0;
}

static int push_token(struct parser *p, enum tok_type type, size_t start)
{
    if (p->ntoks == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        struct token *t;
        if (cap > JSON_MAX_TOKENS) {
            emit(p, NULL, "JSON token count limit exceeded");
            p->ntoks = 0;
            p->braces = p->brackets = 0;
            return 0;
        }
        t = realloc(p->toks, cap * sizeof(*t));
        if (!t)
            return -ENOMEM;
        p->toks = t;
        p->cap = cap;
    }
    p->toks[p->ntoks++] = (struct token){type, p->in + start, p->pos - start};
    switch (type) {
    case T_LCURLY: p->braces++; break;
    case T_RCURLY: p->braces--; break;
    case T_LSQUARE: p->brackets++; break;
    case T_RSQUARE: p->brackets--; break;
    default: break;
    }
    if (p->braces + p->brackets > JSON_MAX_NESTING) {
        emit(p, NULL, "JSON nesting depth limit exceeded");
        p->ntoks = 0;
        p->braces = p->brackets = 0;
        return 0;
    }
    if ((p->braces > 0 || p->brackets > 0) && p->braces >= 0 &&
        p->brackets >= 0)
        return 0;
    emit_tokens(p);
    return 0;
}

/* A character that cannot continue the token that began at start: the
 * token so far and that character (none at the end) are "stray", then
 * characters up to the next structural one are skipped. */
static void lex_error(struct parser *p, size_t start, bool consume)
{
    char msg[300];
    size_t end = p->pos + (consume ? 1 : 0);

    snprintf(msg, sizeof(msg), "JSON parse error, stray '%.*s'",
             (int)QIMG_MIN(end - start, (size_t)200), p->in + start);
    emit(p, NULL, msg);
    p->ntoks = 0;
    p->braces = p->brackets = 0;
    p->pos = end;
    while (p->pos < p->len) {
        unsigned char c = (unsigned char)p->in[p->pos];
        if (c < 0x20 ? c != '\t' : (c >= 0xFE || strchr("[]{}:,", c)))
            break;
        p->pos++;
    }
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Scan a number from p->pos; false after a lexical error. */
static bool lex_number(struct parser *p, size_t start, enum tok_type *type)
{
    const char *s = p->in;
    size_t n = p->len;

    *type = T_INTEGER;
    if (s[p->pos] == '-') {
        p->pos++;
        if (p->pos >= n || !is_digit(s[p->pos])) {
            lex_error(p, start, p->pos < n);
            return false;
        }
    }
    if (s[p->pos] == '0') {
        p->pos++;
        if (p->pos < n && is_digit(s[p->pos])) {
            lex_error(p, start, true);
            return false;
        }
    } else {
        while (p->pos < n && is_digit(s[p->pos]))
            p->pos++;
    }
    if (p->pos < n && s[p->pos] == '.') {
        *type = T_FLOAT;
        p->pos++;
        if (p->pos >= n || !is_digit(s[p->pos])) {
            lex_error(p, start, p->pos < n);
            return false;
        }
        while (p->pos < n && is_digit(s[p->pos]))
            p->pos++;
    }
    /* QEMU's lexer takes an exponent after a fraction or after digits,
     * not after a lone zero. */
    bool lone_zero = p->pos - start == 1 + (s[start] == '-') &&
                     s[p->pos - 1] == '0';
    if (p->pos < n && (s[p->pos] == 'e' || s[p->pos] == 'E') && !lone_zero) {
        *type = T_FLOAT;
        p->pos++;
        if (p->pos < n && (s[p->pos] == '+' || s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= n || !is_digit(s[p->pos])) {
            lex_error(p, start, p->pos < n);
            return false;
        }
        while (p->pos < n && is_digit(s[p->pos]))
            p->pos++;
    }
    return true;
}

static int lex(struct parser *p)
{
    const char *s = p->in;
    size_t n = p->len;

    while (p->pos < n) {
        char c = s[p->pos];
        size_t start = p->pos;
        enum tok_type type;
        int ret = 0;

        switch (c) {
        case ' ': case '\t': case '\r': case '\n':
            p->pos++;
            continue;
        case '{': type = T_LCURLY; break;
        case '}': type = T_RCURLY; break;
        case '[': type = T_LSQUARE; break;
        case ']': type = T_RSQUARE; break;
        case ':': type = T_COLON; break;
        case ',': type = T_COMMA; break;
        case '"':
        case '\'': {
            p->pos++;
            for (;;) {
                if (p->pos >= n) {
                    lex_error(p, start, false);
                    break;
                }
                unsigned char d = (unsigned char)s[p->pos];
                if (d < 0x20 || d > 0xFD) {
                    lex_error(p, start, true);
                    break;
                }
                p->pos++;
                if (d == '\\') {
                    if (p->pos >= n) {
                        lex_error(p, start, false);
                        break;
                    }
                    d = (unsigned char)s[p->pos];
                    if (d < 0x20 || d > 0xFD) {
                        lex_error(p, start, true);
                        break;
                    }
                    p->pos++;
                } else if (d == (unsigned char)c) {
                    ret = push_token(p, T_STRING, start);
                    break;
                }
            }
            if (ret < 0)
                return ret;
            continue;
        }
        default:
            if (c == '-' || is_digit(c)) {
                if (lex_number(p, start, &type)) {
                    ret = push_token(p, type, start);
                    if (ret < 0)
                        return ret;
                }
                continue;
            }
            if (c >= 'a' && c <= 'z') {
                while (p->pos < n && s[p->pos] >= 'a' && s[p->pos] <= 'z')
                    p->pos++;
                ret = push_token(p, T_KEYWORD, start);
                if (ret < 0)
                    return ret;
                continue;
            }
            lex_error(p, start, true);
            continue;
        }
        p->pos++;
        ret = push_token(p, type, start);
        if (ret < 0)
            return ret;
    }
    if (p->ntoks)
        emit_tokens(p);
    return 0;
}

int qimg_json_parse(const char *text, json_t **out, struct qimg_error *err)
{
    struct parser p = {.in = text, .len = strlen(text)};
    int ret;

    *out = NULL;
    if (p.len > JSON_MAX_TEXT)
        return qimg_error_set(err, -EINVAL, "JSON token size limit exceeded");
    ret = lex(&p);
    free(p.toks);
    if (ret < 0) {
        json_decref(p.result);
        return qimg_error_set(err, ret, "Out of memory");
    }
    if (p.have_err) {
        json_decref(p.result);
        return qimg_error_set(err, -EINVAL, "%s", p.err);
    }
    if (!p.result)
        return qimg_error_set(err, -EINVAL, "Expecting a JSON value");
    *out = p.result;
    return 0;
}

/* ---- QEMU's dictionary order and compact output --------------------------- */

unsigned qimg_qdict_bucket(const char *key)
{
    uint32_t v = 0x238F13AFu * (uint32_t)strlen(key);
    for (unsigned i = 0; key[i]; i++)
        v += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
    return (1103515243u * v + 12345u) % 512u;
}

struct okey {
    const char *key;
    unsigned bucket;
    size_t index;
};

/* By bucket, and within a bucket the newest key first (QEMU's QDict
 * inserts at the head of a bucket's list). */
static int cmp_okey(const void *a, const void *b)
{
    const struct okey *x = a, *y = b;
    if (x->bucket != y->bucket)
        return x->bucket < y->bucket ? -1 : 1;
    return x->index > y->index ? -1 : 1;
}

int qimg_json_object_keys(const json_t *v, const char ***keys)
{
    size_t n = json_object_size(v), i = 0;
    struct okey *ok = calloc(n ? n : 1, sizeof(*ok));
    const char *key;
    json_t *member;

    *keys = calloc(n ? n : 1, sizeof(**keys));
    if (!ok || !*keys) {
        free(ok);
        free(*keys);
        *keys = NULL;
        return -ENOMEM;
    }
    json_object_foreach((json_t *)v, key, member) {
        ok[i] = (struct okey){key, qimg_qdict_bucket(key), i};
        i++;
    }
    qsort(ok, n, sizeof(*ok), cmp_okey);
    for (i = 0; i < n; i++)
        (*keys)[i] = ok[i].key;
    free(ok);
    return (int)n;
}

struct sbuf {
    char *s;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t l)
{
    if (b->oom)
        return;
    if (b->n + l + 1 > b->cap) {
        size_t cap = (b->n + l + 1) * 2;
        char *t = realloc(b->s, cap);
        if (!t) {
            b->oom = true;
            return;
        }
        b->s = t;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, l);
    b->n += l;
    b->s[b->n] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* Strings as QEMU's JSON writer escapes them. */
static void sb_json_string(struct sbuf *b, const char *s, size_t len)
{
    char tmp[8];

    sb_put(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': sb_str(b, "\\\""); break;
        case '\\': sb_str(b, "\\\\"); break;
        case '\b': sb_str(b, "\\b"); break;
        case '\f': sb_str(b, "\\f"); break;
        case '\n': sb_str(b, "\\n"); break;
        case '\r': sb_str(b, "\\r"); break;
        case '\t': sb_str(b, "\\t"); break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(tmp, sizeof(tmp), "\\u%04X", c);
                sb_str(b, tmp);
            } else {
                sb_put(b, (const char *)&s[i], 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

static void sb_value(struct sbuf *b, const json_t *v)
{
    char num[64];

    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char **keys;
        int n = qimg_json_object_keys(v, &keys);
        if (n < 0) {
            b->oom = true;
            return;
        }
        sb_str(b, "{");
        for (int i = 0; i < n; i++) {
            if (i)
                sb_str(b, ", ");
            sb_json_string(b, keys[i], strlen(keys[i]));
            sb_str(b, ": ");
            sb_value(b, json_object_get(v, keys[i]));
        }
        sb_str(b, "}");
        free(keys);
        break;
    }
    case JSON_ARRAY:
        sb_str(b, "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i)
                sb_str(b, ", ");
            sb_value(b, json_array_get(v, i));
        }
        sb_str(b, "]");
        break;
    case JSON_STRING:
        sb_json_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(v));
        sb_str(b, num);
        break;
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        sb_str(b, num);
        break;
    case JSON_TRUE: sb_str(b, "true"); break;
    case JSON_FALSE: sb_str(b, "false"); break;
    default: sb_str(b, "null"); break;
    }
}

char *qimg_json_compact(const json_t *v)
{
    struct sbuf b = {0};

    sb_value(&b, v);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s ? b.s : strdup("");
}
