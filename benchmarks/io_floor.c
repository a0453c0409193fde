/* The I/O floor of a cold scan: lists each given store directory and opens, reads to the end and closes every
 * *.dat file in it, in one thread, doing nothing with the bytes. No reader of the same files can do less work.
 *
 *   io_floor <store directory>...    prints "files <n>\nbytes <n>\nseconds <s>" (listing included in the time)
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char buffer[1 << 16];

static int has_dat_suffix(const char *name) {
    size_t length = strlen(name);
    return length > 4 && strcmp(name + length - 4, ".dat") == 0;
}

/* Reads every *.dat file of one directory; returns -1 (with a message) on any error. */
static int read_store(const char *path, long long *files, long long *bytes) {
    DIR *dir = opendir(path);
    if (dir == NULL) {
        perror(path);
        return -1;
    }
    int dir_fd = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!has_dat_suffix(entry->d_name)) continue;
        int fd = openat(dir_fd, entry->d_name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            perror(entry->d_name);
            closedir(dir);
            return -1;
        }
        ssize_t got;
        while ((got = read(fd, buffer, sizeof buffer)) > 0) *bytes += got;
        close(fd);
        if (got < 0) {
            perror(entry->d_name);
            closedir(dir);
            return -1;
        }
        ++*files;
    }
    closedir(dir);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <store directory>...\n", argv[0]);
        return 2;
    }
    long long files = 0, bytes = 0;
    struct timespec started, ended;
    clock_gettime(CLOCK_MONOTONIC, &started);
    for (int i = 1; i < argc; ++i) {
        if (read_store(argv[i], &files, &bytes) != 0) return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &ended);
    double seconds = (double)(ended.tv_sec - started.tv_sec) + (double)(ended.tv_nsec - started.tv_nsec) / 1e9;
    printf("files %lld\nbytes %lld\nseconds %.6f\n", files, bytes, seconds);
    return 0;
}
