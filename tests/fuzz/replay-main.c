/*
 * replay-main.c - a main() for a fuzz target outside libFuzzer: runs
 * LLVMFuzzerTestOneInput on each file named (directories: each file in
 * them, sorted), so the regression inputs in tests/fuzz/regressions/ are
 * replayed by `make check` and by the sanitizer build.  A crash fails the
 * test by crashing this program; so does an input that makes the process
 * peak above libFuzzer's default memory limit (-rss_limit_mb=2048).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define REPLAY_RSS_LIMIT_MB 2048

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (!f) {
        perror(path);
        return -1;
    }
    do {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return -1;
            }
            buf = p;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n);
    fclose(f);
    printf("replay %s (%zu bytes)\n", path, len);
    fflush(stdout);
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0 &&
        ru.ru_maxrss / 1024 > REPLAY_RSS_LIMIT_MB) {
        fprintf(stderr, "%s: peak RSS %ld MiB above %d MiB\n", path,
                ru.ru_maxrss / 1024, REPLAY_RSS_LIMIT_MB);
        abort();
    }
    return 0;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir)
{
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, NULL), ret = 0;

    if (n < 0) {
        perror(dir);
        return -1;
    }
    char **names = calloc((size_t)n + 1, sizeof(*names));
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (ents[i]->d_name[0] != '.' && names &&
            asprintf(&names[k], "%s/%s", dir, ents[i]->d_name) >= 0)
            k++;
        free(ents[i]);
    }
    free(ents);
    if (!names)
        return -1;
    qsort(names, (size_t)k, sizeof(*names), cmp);
    for (int i = 0; i < k; i++) {
        if (run_file(names[i]) < 0)
            ret = -1;
        free(names[i]);
    }
    free(names);
    return ret;
}

int main(int argc, char **argv)
{
    int ret = 0;

    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            perror(argv[i]);
            ret = 1;
        } else if (S_ISDIR(st.st_mode) ? run_dir(argv[i]) < 0
                                       : run_file(argv[i]) < 0) {
            ret = 1;
        }
    }
    return ret;
}
