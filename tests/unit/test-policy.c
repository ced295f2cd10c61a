/* Unit tests for lib/core/policy.c: allow-list matching, recorded-name
 * classification, quoting, and the checks before and after an open (real
 * files, symlinks, a file replaced after it was allowed, a descriptor that
 * is another inode). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/policy.h"

static char dir[256];

static char *path_in(const char *name)
{
    static char buf[4][512];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(path_in(name), "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/qimg-policy-XXXXXX");
    assert_non_null(mkdtemp(dir));
    write_file("base", "base");
    write_file("other", "other");
    assert_int_equal(symlink(path_in("base"), path_in("link")), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    const char *names[] = {"base", "other", "link", "moved"};
    for (size_t i = 0; i < 4; i++)
        unlink(path_in(names[i]));
    rmdir(dir);
    qimg_untrusted_reset();
    return 0;
}

static void test_match(void **state)
{
    (void)state;
    struct qimg_policy_entry e[] = {
        {QIMG_ROLE_BACKING, 1, 10, "/a/base"},
        {QIMG_ROLE_DATA_FILE | QIMG_ROLE_EXTENT, 1, 11, "/a/data"},
        {QIMG_ROLE_ANY, 2, 10, "/b/any"},
    };
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_BACKING, "/a/base", 1,
                                       10), 0);
    /* the role must be one of the entry's */
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_DATA_FILE, "/a/base", 1,
                                       10), -1);
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_EXTENT, "/a/data", 1,
                                       11), 1);
    /* the same path but another inode (replaced), another device */
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_BACKING, "/a/base", 1,
                                       12), -1);
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_BACKING, "/a/base", 2,
                                       10), -1);
    /* the same inode under another real path (a hard link elsewhere) */
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_BACKING, "/a/copy", 1,
                                       10), -1);
    /* no path: the inode alone (after the open) */
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_BACKING, NULL, 1, 10),
                     0);
    assert_int_equal(qimg_policy_match(e, 3, QIMG_ROLE_OTHER, "/b/any", 2, 10),
                     2);
    assert_int_equal(qimg_policy_match(e, 0, QIMG_ROLE_BACKING, "/a/base", 1,
                                       10), -1);
}

static void test_name_kind(void **state)
{
    (void)state;
    char p[16];
    assert_int_equal(qimg_policy_name_kind("base.qcow2", p, sizeof(p)),
                     QIMG_NAME_PATH);
    assert_int_equal(qimg_policy_name_kind("/a/b:c", p, sizeof(p)),
                     QIMG_NAME_PATH);
    assert_int_equal(qimg_policy_name_kind("./nbd:x", p, sizeof(p)),
                     QIMG_NAME_PATH);
    assert_int_equal(qimg_policy_name_kind("json:{}", p, sizeof(p)),
                     QIMG_NAME_JSON);
    assert_int_equal(qimg_policy_name_kind("nbd://h/x", p, sizeof(p)),
                     QIMG_NAME_PROTOCOL);
    assert_string_equal(p, "nbd");
    assert_int_equal(qimg_policy_name_kind("file:/etc/shadow", p, sizeof(p)),
                     QIMG_NAME_PROTOCOL);
    assert_string_equal(p, "file");
    assert_int_equal(qimg_policy_name_kind("averyveryverylongproto:x", p,
                                           sizeof(p)), QIMG_NAME_PROTOCOL);
    assert_string_equal(p, "averyveryverylo");
}

static void test_quote(void **state)
{
    (void)state;
    char q[16];
    qimg_policy_quote("plain", q, sizeof(q));
    assert_string_equal(q, "plain");
    qimg_policy_quote("a\033[2Jb", q, sizeof(q));
    assert_string_equal(q, "a\\x1b[2Jb");
    qimg_policy_quote("back\\slash", q, sizeof(q));
    assert_string_equal(q, "back\\x5cslash");
    qimg_policy_quote("0123456789abcdefghij", q, sizeof(q));
    assert_string_equal(q, "0123456789ab...");
    assert_int_equal(strlen(q), 15);
    qimg_policy_quote("\xff\xfe", q, 4);
    assert_string_equal(q, "...");
}

static void test_off_by_default(void **state)
{
    (void)state;
    struct qimg_error err = {0};
    qimg_untrusted_reset();
    assert_false(qimg_untrusted_enabled());
    assert_int_equal(qimg_policy_max_depth(), QIMG_MAX_CHAIN_DEPTH);
    assert_int_equal(qimg_policy_check_name(QIMG_ROLE_BACKING, "json:{}",
                                            NULL, &err), 0);
    assert_int_equal(qimg_policy_check_open(QIMG_OPEN_ROLE(QIMG_ROLE_BACKING),
                                            &qimg_storage_null_co, "x", &err),
                     0);
}

static void test_names_refused(void **state)
{
    (void)state;
    struct qimg_error err = {0};
    qimg_untrusted_enable();
    assert_int_equal(qimg_policy_max_depth(), QIMG_UNTRUSTED_MAX_CHAIN_DEPTH);
    assert_int_equal(qimg_policy_check_name(QIMG_ROLE_BACKING,
                                            "json:{\"driver\":\"raw\"}", NULL,
                                            &err), -EPERM);
    assert_non_null(strstr(err.msg, "json:"));
    assert_int_equal(qimg_policy_check_name(QIMG_ROLE_DATA_FILE, "nbd://x",
                                            NULL, &err), -EPERM);
    assert_non_null(strstr(err.msg, "data file 'nbd://x'"));
    assert_non_null(strstr(err.msg, "protocol 'nbd'"));
    /* the resolved path is looked at too */
    assert_int_equal(qimg_policy_check_name(QIMG_ROLE_EXTENT, "x",
                                            "null-co://", &err), -EPERM);
    assert_int_equal(qimg_policy_check_name(QIMG_ROLE_BACKING, "dir/x.qcow2",
                                            "/a/dir/x.qcow2", &err), 0);
}

static void test_allow_and_open(void **state)
{
    (void)state;
    struct qimg_error err = {0};
    unsigned backing = QIMG_OPEN_ROLE(QIMG_ROLE_BACKING);

    qimg_untrusted_reset();
    assert_int_equal(qimg_untrusted_allow(QIMG_ROLE_BACKING,
                                          path_in("missing"), &err), -ENOENT);
    assert_non_null(strstr(err.msg, "Could not access"));
    assert_int_equal(qimg_untrusted_allow(QIMG_ROLE_BACKING, "/dev/null",
                                          &err), -EINVAL);
    assert_int_equal(qimg_untrusted_allow(QIMG_ROLE_BACKING, path_in("base"),
                                          &err), 0);
    assert_true(qimg_untrusted_enabled());
    /* by its name, and through a symlink to it: the same file */
    assert_int_equal(qimg_policy_check_open(backing, &qimg_storage_file,
                                            path_in("base"), &err), 0);
    assert_int_equal(qimg_policy_check_open(backing, &qimg_storage_file,
                                            path_in("link"), &err), 0);
    /* another file, another role, another driver */
    assert_int_equal(qimg_policy_check_open(backing, &qimg_storage_file,
                                            path_in("other"), &err), -EPERM);
    assert_non_null(strstr(err.msg, "is not allowed (--allow-backing)"));
    assert_int_equal(qimg_policy_check_open(QIMG_OPEN_ROLE(QIMG_ROLE_EXTENT),
                                            &qimg_storage_file,
                                            path_in("base"), &err), -EPERM);
    assert_non_null(strstr(err.msg, "(--allow-extent)"));
    assert_int_equal(qimg_policy_check_open(backing, &qimg_storage_null_co,
                                            path_in("base"), &err), -EPERM);
    assert_non_null(strstr(err.msg, "'null-co' driver"));
    /* without a role (the caller's own names) nothing is checked */
    assert_int_equal(qimg_policy_check_open(0, &qimg_storage_file,
                                            path_in("other"), &err), 0);

    /* the symlink now leads elsewhere: refused */
    unlink(path_in("link"));
    assert_int_equal(symlink(path_in("other"), path_in("link")), 0);
    assert_int_equal(qimg_policy_check_open(backing, &qimg_storage_file,
                                            path_in("link"), &err), -EPERM);
    /* the allowed file replaced by another one under its name: refused */
    assert_int_equal(rename(path_in("base"), path_in("moved")), 0);
    write_file("base", "replaced");
    assert_int_equal(qimg_policy_check_open(backing, &qimg_storage_file,
                                            path_in("base"), &err), -EPERM);
    /* the original inode under another real path is not it either */
    assert_int_equal(qimg_policy_check_open(backing, &qimg_storage_file,
                                            path_in("moved"), &err), -EPERM);
}

static void test_opened(void **state)
{
    (void)state;
    struct qimg_error err = {0};
    struct stat st;
    unsigned data = QIMG_OPEN_ROLE(QIMG_ROLE_DATA_FILE);

    qimg_untrusted_reset();
    assert_int_equal(qimg_untrusted_allow(QIMG_ROLE_DATA_FILE,
                                          path_in("other"), &err), 0);
    assert_int_equal(stat(path_in("other"), &st), 0);
    struct qimg_storage s = {.filename = path_in("other"), .has_id = true,
                             .id_dev = st.st_dev, .id_ino = st.st_ino};
    assert_int_equal(qimg_policy_check_opened(data, &s, &err), 0);
    /* what was opened is another inode than the one checked */
    s.id_ino++;
    assert_int_equal(qimg_policy_check_opened(data, &s, &err), -EPERM);
    assert_non_null(strstr(err.msg, "changed while it was being opened"));
    /* a storage that cannot tell who it is */
    s.id_ino--;
    s.has_id = false;
    assert_int_equal(qimg_policy_check_opened(data, &s, &err), -EPERM);
    /* a reopen must find the same file */
    struct qimg_storage a = {.has_id = true, .id_dev = 1, .id_ino = 2};
    struct qimg_storage b = a;
    assert_int_equal(qimg_policy_check_same(&a, &b, &err), 0);
    b.id_ino = 3;
    assert_int_equal(qimg_policy_check_same(&a, &b, &err), -EPERM);
}

static void test_children(void **state)
{
    (void)state;
    struct qimg_error err = {0};
    struct qimg_image parent = {0};

    qimg_untrusted_enable();
    for (int i = 0; i < QIMG_UNTRUSTED_MAX_CHILDREN; i++)
        assert_int_equal(qimg_policy_count_child(&parent, "x", &err), 0);
    assert_int_equal(qimg_policy_count_child(&parent, "x", &err), -EMFILE);
    qimg_untrusted_reset();
    assert_int_equal(qimg_policy_count_child(&parent, "x", &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_name_kind),
        cmocka_unit_test(test_quote),
        cmocka_unit_test(test_off_by_default),
        cmocka_unit_test(test_names_refused),
        cmocka_unit_test(test_allow_and_open),
        cmocka_unit_test(test_opened),
        cmocka_unit_test(test_children),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
