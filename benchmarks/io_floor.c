/* The I/O floor of a cold scan: lists each given store directory and opens, reads to the end and closes every
 * *.dat file in it, in one thread, doing nothing with the bytes. No reader of the same files can do less work.
 *
 * With `-a <accounts directory>` before a store directory (Prosody 13's account check), it also lists that accounts
 * directory first, after each user file of the store reads the user's account file if the listing has one, as a
 * reader that checks every user's account must, and then the account files of the accounts with no store file (a
 * registered account never active: its registration time is in it). The files read are exactly the store's and
 * every account's.
 *
 *   io_floor [-a <accounts directory>] <store directory>...
 *       prints "files <n>\naccount_files <n>\nbytes <n>\nseconds <s>" (listings included in the time; files counts
 *       the store files, account_files the account files, bytes both)
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char buffer[1 << 16];

/* The *.dat names of an accounts directory, sorted for bsearch, and which of them a store file matched. */
struct names {
    char **items;
    char *matched;
    size_t count, capacity;
};

static int has_dat_suffix(const char *name) {
    size_t length = strlen(name);
    return length > 4 && strcmp(name + length - 4, ".dat") == 0;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(struct names *names) {
    for (size_t i = 0; i < names->count; ++i) free(names->items[i]);
    free(names->items);
    free(names->matched);
    names->items = NULL;
    names->matched = NULL;
    names->count = names->capacity = 0;
}

/* Opens `name` in `dir_fd`, reads it to the end and closes it; returns -1 (with a message) on any error. */
static int read_file(int dir_fd, const char *name, long long *bytes) {
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(name);
        return -1;
    }
    ssize_t got;
    while ((got = read(fd, buffer, sizeof buffer)) > 0) *bytes += got;
    close(fd);
    if (got < 0) {
        perror(name);
        return -1;
    }
    return 0;
}

/* Lists the *.dat names of an accounts directory into `names` (sorted); returns -1 (with a message) on error. */
static int list_accounts(DIR *dir, const char *path, struct names *names) {
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!has_dat_suffix(entry->d_name)) continue;
        if (names->count == names->capacity) {
            size_t capacity = names->capacity ? names->capacity * 2 : 1024;
            char **items = realloc(names->items, capacity * sizeof *items);
            if (items == NULL) {
                perror(path);
                return -1;
            }
            names->items = items;
            names->capacity = capacity;
        }
        if ((names->items[names->count] = strdup(entry->d_name)) == NULL) {
            perror(path);
            return -1;
        }
        ++names->count;
    }
    qsort(names->items, names->count, sizeof *names->items, compare_names);
    if ((names->matched = calloc(names->count + 1, 1)) == NULL) {
        perror(path);
        return -1;
    }
    return 0;
}

/* Reads every *.dat file of one store directory, and with `accounts` (an open directory, listed in `names`) the
 * account file of each of its users that has one, then those of the accounts with no store file; returns -1 (with
 * a message) on any error. */
static int read_store(const char *path, int accounts_fd, struct names *names, long long *files,
                      long long *account_files, long long *bytes) {
    DIR *dir = opendir(path);
    if (dir == NULL) {
        perror(path);
        return -1;
    }
    int dir_fd = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!has_dat_suffix(entry->d_name)) continue;
        if (read_file(dir_fd, entry->d_name, bytes) != 0) {
            closedir(dir);
            return -1;
        }
        ++*files;
        const char *name = entry->d_name;
        char **found = accounts_fd >= 0
            ? bsearch(&name, names->items, names->count, sizeof *names->items, compare_names) : NULL;
        if (found != NULL) {
            if (read_file(accounts_fd, name, bytes) != 0) {
                closedir(dir);
                return -1;
            }
            names->matched[found - names->items] = 1;
            ++*account_files;
        }
    }
    closedir(dir);
    for (size_t i = 0; i < names->count; ++i) {
        if (names->matched[i]) continue;
        if (read_file(accounts_fd, names->items[i], bytes) != 0) return -1;
        ++*account_files;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s [-a <accounts directory>] <store directory>...\n", argv[0]);
        return 2;
    }
    long long files = 0, account_files = 0, bytes = 0;
    struct timespec started, ended;
    clock_gettime(CLOCK_MONOTONIC, &started);
    for (int i = 1; i < argc; ++i) {
        struct names names = {NULL, NULL, 0, 0};
        DIR *accounts = NULL;
        if (strcmp(argv[i], "-a") == 0) {
            if (i + 2 >= argc) {
                fprintf(stderr, "-a needs an accounts directory and a store directory\n");
                return 2;
            }
            const char *path = argv[++i];
            if ((accounts = opendir(path)) == NULL) {
                perror(path);
                return 1;
            }
            if (list_accounts(accounts, path, &names) != 0) return 1;
            ++i;
        }
        int failed = read_store(argv[i], accounts ? dirfd(accounts) : -1, &names, &files, &account_files, &bytes);
        if (accounts != NULL) closedir(accounts);
        free_names(&names);
        if (failed) return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &ended);
    double seconds = (double)(ended.tv_sec - started.tv_sec) + (double)(ended.tv_nsec - started.tv_nsec) / 1e9;
    printf("files %lld\naccount_files %lld\nbytes %lld\nseconds %.6f\n", files, account_files, bytes, seconds);
    return 0;
}
