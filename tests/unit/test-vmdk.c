/* Unit tests for the vmdk descriptor parser (lib/fmt/vmdk/vmdk-desc.c):
 * extent lines as QEMU's sscanf reads them, the key lookups and the CID
 * rewrite. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fmt/vmdk/vmdk.h"

static void scan(const char *s, struct vmdk_extent_line *l)
{
    vmdk_scan_extent_line(s, l);
}

static void test_extent_lines(void **state)
{
    struct vmdk_extent_line l;

    scan("RW 2048 FLAT \"a b.vmdk\" 7\n", &l);
    assert_int_equal(l.matches, 5);
    assert_string_equal(l.access, "RW");
    assert_int_equal(l.sectors, 2048);
    assert_string_equal(l.type, "FLAT");
    assert_string_equal(l.fname, "a b.vmdk");
    assert_int_equal(l.flat_offset, 7);
    scan("RW 2048 SPARSE \"x.vmdk\"\nRW 5", &l);   /* crosses the line */
    assert_int_equal(l.matches, 4);
    scan("RW 2048 SPARSE \"x.vmdk\"\n12 x", &l);
    assert_int_equal(l.matches, 5);
    assert_int_equal(l.flat_offset, 12);
    scan("RW -5 FLAT \"f\" -3", &l);
    assert_int_equal(l.matches, 5);
    assert_int_equal(l.sectors, -5);
    assert_int_equal(l.flat_offset, -3);
    scan("RW 99999999999999999999 FLAT \"f\" 0", &l);
    assert_true(l.sectors == INT64_MAX);
    scan("RW -99999999999999999999 FLAT \"f\" 0", &l);
    assert_true(l.sectors == INT64_MIN);
    scan("RWRWRWRWRWX 5 FLAT \"f\" 0", &l);       /* %10s stops at 10 */
    assert_int_equal(l.matches, 1);
    assert_string_equal(l.access, "RWRWRWRWRW");
    scan("RW 5 FLAT \"\" 0", &l);                  /* empty name */
    assert_int_equal(l.matches, 3);
    scan("RW 5 FLAT f 0", &l);
    assert_int_equal(l.matches, 3);
    scan("RW 5 FLAT \"f\r\" 0", &l);               /* \r ends the name */
    assert_int_equal(l.matches, 4);
    scan("# comment", &l);
    assert_int_equal(l.matches, 1);
    scan("   ", &l);
    assert_int_equal(l.matches, 0);
    char long_name[700];
    memset(long_name, 'a', sizeof(long_name));
    memcpy(long_name, "RW 1 FLAT \"", 11);
    long_name[sizeof(long_name) - 1] = '\0';
    scan(long_name, &l);                          /* 511 characters kept */
    assert_int_equal(l.matches, 4);
    assert_int_equal(strlen(l.fname), 511);
}

/* The scanner against glibc's sscanf itself, on random lines built from
 * the pieces extent lines are made of. */
static void test_against_sscanf(void **state)
{
    static const char *const pieces[] = {
        "RW", "RDONLY", " ", "  ", "\n", "\r", "\t", "\"", "FLAT", "SPARSE",
        "12", "-3", "+7", "0", "99999999999999999999", "-", "x.vmdk",
        "a b", "#", "RWRWRWRWRWRW", "VMFS", "ZERO", "\"f\"",
    };
    unsigned seed = 1;

    for (int iter = 0; iter < 200000; iter++) {
        char line[128] = "", access[11], type[11], fname[512];
        int64_t sectors = 0, off = -1;
        struct vmdk_extent_line l;
        int n = 1 + rand_r(&seed) % 12, m;

        for (int i = 0; i < n; i++) {
            const char *p = pieces[rand_r(&seed) % (sizeof(pieces) /
                                                    sizeof(pieces[0]))];
            if (strlen(line) + strlen(p) < sizeof(line))
                strcat(line, p);
        }
        m = sscanf(line, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64,
                   access, &sectors, type, fname, &off);
        vmdk_scan_extent_line(line, &l);
        if (m < 0)
            m = 0;
        assert_int_equal(l.matches, m);
        if (m >= 1)
            assert_string_equal(l.access, access);
        if (m >= 2)
            assert_true(l.sectors == sectors);
        if (m >= 3)
            assert_string_equal(l.type, type);
        if (m >= 4)
            assert_string_equal(l.fname, fname);
        if (m >= 5)
            assert_true(l.flat_offset == off);
    }
}

static void test_values(void **state)
{
    char buf[16];
    uint32_t cid;

    assert_int_equal(vmdk_desc_value("createType=\"vmfs\"\n", "createType",
                                     buf, sizeof(buf)), 0);
    assert_string_equal(buf, "vmfs");
    /* QEMU skips two characters whatever they are */
    assert_int_equal(vmdk_desc_value("createType = \"vmfs\"", "createType",
                                     buf, sizeof(buf)), 0);
    assert_string_equal(buf, " ");
    assert_int_equal(vmdk_desc_value("createType=\"0123456789abcdef\"",
                                     "createType", buf, sizeof(buf)), -1);
    assert_int_equal(vmdk_desc_value("createType=\"x", "createType", buf,
                                     sizeof(buf)), -1);
    assert_int_equal(vmdk_desc_value("createType", "createType", buf,
                                     sizeof(buf)), -1);
    assert_int_equal(vmdk_desc_cid("CID=1a2b\nparentCID=ffffffff\n", false,
                                   &cid), 0);
    assert_int_equal(cid, 0x1a2b);
    assert_int_equal(vmdk_desc_cid("CID=1a2b\nparentCID=ffffffff\n", true,
                                   &cid), 0);
    assert_int_equal(cid, 0xffffffff);
    /* the first "CID" may be the one in parentCID, as in QEMU */
    assert_int_equal(vmdk_desc_cid("parentCID=5\n", false, &cid), 0);
    assert_int_equal(cid, 5);
    assert_int_equal(vmdk_desc_cid("CID=zz", false, &cid), -EINVAL);
    assert_int_equal(vmdk_desc_cid("CID", false, &cid), -EINVAL);
}

static void test_parent(void **state)
{
    char desc[64] = "x\nparentFileNameHint=\"base.vmdk\"\n", name[32];

    assert_int_equal(vmdk_desc_parent(desc, sizeof(desc), name, sizeof(name)),
                     1);
    assert_string_equal(name, "base.vmdk");
    strcpy(desc, "parentFileNameHint=\"unterminated\n");
    assert_int_equal(vmdk_desc_parent(desc, sizeof(desc), name, sizeof(name)),
                     -EINVAL);
    strcpy(desc, "none here");
    assert_int_equal(vmdk_desc_parent(desc, sizeof(desc), name, sizeof(name)),
                     0);
    /* the hint's skip would run past the buffer */
    char end[24] = "parentFileNameHint";
    assert_int_equal(vmdk_desc_parent(end, 19, name, sizeof(name)), -EINVAL);
}

static void test_set_cid(void **state)
{
    char d[96] = "CID=12345678\nparentCID=ffffffff\ncreateType=\"x\"\n";

    assert_int_equal(vmdk_desc_set_cid(d, sizeof(d), 0xab), 0);
    assert_string_equal(d, "CID=ab\nparentCID=ffffffff\ncreateType=\"x\"\n");
    char n[32] = "CID=1\n";
    assert_int_equal(vmdk_desc_set_cid(n, sizeof(n), 2), -EINVAL);
    /* a buffer that ends inside the text is cut, never overrun */
    char s[20] = "CID=1\nparentCID=2\nX";
    assert_int_equal(vmdk_desc_set_cid(s, sizeof(s), 0xffffffff), 0);
    assert_true(strlen(s) < sizeof(s));
}

static void test_round_up(void **state)
{
    assert_int_equal(vmdk_round_up(129, 128), 256);
    assert_int_equal(vmdk_round_up(128, 128), 128);
    assert_int_equal(vmdk_round_up(5, 0), 0);   /* QEMU's mask with 0 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_extent_lines),
        cmocka_unit_test(test_against_sscanf), cmocka_unit_test(test_values),
        cmocka_unit_test(test_parent), cmocka_unit_test(test_set_cid),
        cmocka_unit_test(test_round_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
