/* Power-loss recorder and fsync fault injector for rin-ship's crash-consistency tests
 * (tests/test_powerloss.py), loaded with LD_PRELOAD. It owns nothing of rin-ship: it only
 * watches. It must never change what a call does (except the one fsync it is told to fail),
 * and never record files outside RIN_SHIP_SHIM_DIR.
 *
 * For paths under RIN_SHIP_SHIM_DIR it appends to RIN_SHIP_SHIM_TRACE one record per
 * open(O_CREAT/O_TRUNC or any open, to know the fd)/write/pwrite/writev/ftruncate/fsync/
 * fdatasync/rename/unlink/mkdir/rmdir/close/dup, with the bytes written; and for every TCP
 * socket the bytes sent (send/sendto/sendmsg/write/writev), with the peer's port. One lock
 * covers each call and its record, so the trace is a total order of what happened: a forward
 * ack or an HTTP response appears after the fsyncs it waited for.
 *
 * RIN_SHIP_SHIM_FAIL_FSYNC=N makes the Nth fsync/fdatasync (counting from 1) of a file whose
 * path contains RIN_SHIP_SHIM_FAIL_MATCH (any file under the dir when unset) fail with EIO
 * without syncing, as a disk that lost the write would; RIN_SHIP_SHIM_FAIL_COUNT (default 1)
 * fails that many in a row.
 *
 * Record: u32 length of the rest, u8 op, i32 fd, i64 a, i64 b, u16 path length, u16 second
 * path length, u32 data length, then path, second path, data. Little-endian. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { OP_OPEN = 1, OP_WRITE = 2, OP_TRUNCATE = 5, OP_FSYNC = 6, OP_RENAME = 8, OP_UNLINK = 9,
       OP_MKDIR = 10, OP_RMDIR = 11, OP_SEND = 12, OP_FSYNC_FAILED = 13, OP_CLOSE = 14,
       OP_DUP = 15 };

#define MAX_FD 65536
static char *fd_path[MAX_FD];
static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static int trace_fd = -1;
static char dir[4096];
static size_t dir_len;
static long fail_at, fail_count = 1, fsyncs_seen;
static const char *fail_match;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_open64)(const char *, int, ...);
static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_ftruncate64)(int, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_unlink)(const char *);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_rmdir)(const char *);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);

__attribute__((constructor)) static void init(void) {
#define LOAD(n) real_##n = dlsym(RTLD_NEXT, #n)
    LOAD(write); LOAD(pwrite64); LOAD(writev); LOAD(send); LOAD(sendto); LOAD(sendmsg);
    LOAD(open64); LOAD(open); LOAD(openat); LOAD(openat64); LOAD(ftruncate64); LOAD(ftruncate);
    LOAD(fsync); LOAD(fdatasync); LOAD(rename); LOAD(unlink); LOAD(mkdir); LOAD(rmdir);
    LOAD(close); LOAD(dup); LOAD(dup2); LOAD(fcntl); LOAD(fcntl64);
    const char *d = getenv("RIN_SHIP_SHIM_DIR"), *t = getenv("RIN_SHIP_SHIM_TRACE");
    if (!d || !t) return;
    snprintf(dir, sizeof dir, "%s", d);
    dir_len = strlen(dir);
    trace_fd = real_open64(t, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const char *f = getenv("RIN_SHIP_SHIM_FAIL_FSYNC");
    if (f) fail_at = atol(f);
    const char *c = getenv("RIN_SHIP_SHIM_FAIL_COUNT");
    if (c) fail_count = atol(c);
    fail_match = getenv("RIN_SHIP_SHIM_FAIL_MATCH");
}

/* The absolute form of `path` (relative to the working folder), if it lies under the dir. */
static int watched(const char *path, char *out, size_t n) {
    if (trace_fd < 0 || !path) return 0;
    if (path[0] == '/') snprintf(out, n, "%s", path);
    else {
        char cwd[4096];
        if (!getcwd(cwd, sizeof cwd)) return 0;
        snprintf(out, n, "%s/%s", cwd, path);
    }
    return strncmp(out, dir, dir_len) == 0 && (out[dir_len] == '/' || out[dir_len] == 0);
}

static void put_all(const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = real_write(trace_fd, c, n);
        if (w <= 0) { if (w < 0 && errno == EINTR) continue; abort(); }
        c += w; n -= (size_t)w;
    }
}

static void record(uint8_t op, int fd, int64_t a, int64_t b, const char *p1, const char *p2,
                   const struct iovec *data, int ndata, size_t dlen) {
    int saved = errno;
    uint16_t l1 = p1 ? (uint16_t)strlen(p1) : 0, l2 = p2 ? (uint16_t)strlen(p2) : 0;
    uint32_t d32 = (uint32_t)dlen;
    uint32_t total = 1 + 4 + 8 + 8 + 2 + 2 + 4 + l1 + l2 + d32;
    char head[33];
    int32_t fd32 = fd;
    memcpy(head, &total, 4); head[4] = (char)op; memcpy(head + 5, &fd32, 4);
    memcpy(head + 9, &a, 8); memcpy(head + 17, &b, 8); memcpy(head + 25, &l1, 2);
    memcpy(head + 27, &l2, 2); memcpy(head + 29, &d32, 4);
    put_all(head, sizeof head);
    if (l1) put_all(p1, l1);
    if (l2) put_all(p2, l2);
    size_t left = dlen;
    for (int i = 0; i < ndata && left > 0; i++) {
        size_t take = data[i].iov_len < left ? data[i].iov_len : left;
        put_all(data[i].iov_base, take);
        left -= take;
    }
    errno = saved;
}

static int tracked(int fd) { return fd >= 0 && fd < MAX_FD && fd_path[fd]; }

/* The peer's TCP port when `fd` is a connected inet socket, else 0. */
static int peer_port(int fd) {
    struct stat st;
    if (trace_fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return 0;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

static void after_write(int fd, const struct iovec *v, int n, ssize_t got, int64_t at) {
    if (got <= 0) return;
    if (tracked(fd)) {
        if (at < 0) at = lseek(fd, 0, SEEK_CUR) - got;
        record(OP_WRITE, fd, at, got, NULL, NULL, v, n, (size_t)got);
    } else {
        int port = peer_port(fd);
        if (port) record(OP_SEND, fd, port, got, NULL, NULL, v, n, (size_t)got);
    }
}

ssize_t write(int fd, const void *buf, size_t n) {
    if (trace_fd < 0 || fd == trace_fd) return real_write(fd, buf, n);
    pthread_mutex_lock(&lock);
    ssize_t r = real_write(fd, buf, n);
    struct iovec v = {(void *)buf, n};
    after_write(fd, &v, 1, r, -1);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    if (trace_fd < 0) return real_pwrite64(fd, buf, n, off);
    pthread_mutex_lock(&lock);
    ssize_t r = real_pwrite64(fd, buf, n, off);
    struct iovec v = {(void *)buf, n};
    after_write(fd, &v, 1, r, off);
    pthread_mutex_unlock(&lock);
    return r;
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return pwrite64(fd, buf, n, off); }

ssize_t writev(int fd, const struct iovec *v, int n) {
    if (trace_fd < 0) return real_writev(fd, v, n);
    pthread_mutex_lock(&lock);
    ssize_t r = real_writev(fd, v, n);
    after_write(fd, v, n, r, -1);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t send(int fd, const void *buf, size_t n, int flags) {
    if (trace_fd < 0) return real_send(fd, buf, n, flags);
    pthread_mutex_lock(&lock);
    ssize_t r = real_send(fd, buf, n, flags);
    struct iovec v = {(void *)buf, n};
    after_write(fd, &v, 1, r, -1);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
               socklen_t tl) {
    if (trace_fd < 0) return real_sendto(fd, buf, n, flags, to, tl);
    pthread_mutex_lock(&lock);
    ssize_t r = real_sendto(fd, buf, n, flags, to, tl);
    struct iovec v = {(void *)buf, n};
    after_write(fd, &v, 1, r, -1);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t sendmsg(int fd, const struct msghdr *m, int flags) {
    if (trace_fd < 0) return real_sendmsg(fd, m, flags);
    pthread_mutex_lock(&lock);
    ssize_t r = real_sendmsg(fd, m, flags);
    after_write(fd, m->msg_iov, (int)m->msg_iovlen, r, -1);
    pthread_mutex_unlock(&lock);
    return r;
}

static int after_open(int fd, const char *path, int flags) {
    char abs[4096];
    if (fd >= 0 && fd < MAX_FD && watched(path, abs, sizeof abs)) {
        free(fd_path[fd]);
        fd_path[fd] = strdup(abs);
        record(OP_OPEN, fd, flags, 0, abs, NULL, NULL, 0, 0);
    }
    return fd;
}

#define OPEN_BODY(call)                                                                    \
    mode_t mode = 0;                                                                       \
    if (flags & (O_CREAT | __O_TMPFILE)) {                                                 \
        va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap);            \
    }                                                                                      \
    if (trace_fd < 0) return call;                                                         \
    pthread_mutex_lock(&lock);                                                             \
    int fd = call;                                                                         \
    after_open(fd, path, flags);                                                           \
    pthread_mutex_unlock(&lock);                                                           \
    return fd;

int open64(const char *path, int flags, ...) { OPEN_BODY(real_open64(path, flags, mode)) }
int open(const char *path, int flags, ...) { OPEN_BODY(real_open(path, flags, mode)) }
/* Paths relative to another folder's descriptor are taken as relative to the working folder:
 * rin-ship and SQLite open with absolute paths or AT_FDCWD only. */
int openat(int at, const char *path, int flags, ...) { OPEN_BODY(real_openat(at, path, flags, mode)) }
int openat64(int at, const char *path, int flags, ...) {
    OPEN_BODY(real_openat64(at, path, flags, mode))
}

static int truncate_common(int fd, off_t len, int (*real)(int, off_t)) {
    if (trace_fd < 0) return real(fd, len);
    pthread_mutex_lock(&lock);
    int r = real(fd, len);
    if (r == 0 && tracked(fd)) record(OP_TRUNCATE, fd, len, 0, NULL, NULL, NULL, 0, 0);
    pthread_mutex_unlock(&lock);
    return r;
}
int ftruncate64(int fd, off_t len) { return truncate_common(fd, len, real_ftruncate64); }
int ftruncate(int fd, off_t len) { return truncate_common(fd, len, real_ftruncate); }

static int sync_common(int fd, int (*real)(int)) {
    if (trace_fd < 0 || !tracked(fd)) return real(fd);
    pthread_mutex_lock(&lock);
    int r;
    int counts = !fail_match || strstr(fd_path[fd], fail_match);
    if (counts) fsyncs_seen++;
    if (counts && fail_at > 0 && fsyncs_seen >= fail_at && fsyncs_seen < fail_at + fail_count) {
        /* Linux after a failed writeback: the dirty pages are dropped or marked clean, so
         * what the file holds is unknown; the recorder notes the failure and syncs nothing. */
        record(OP_FSYNC_FAILED, fd, 0, 0, NULL, NULL, NULL, 0, 0);
        errno = EIO;
        r = -1;
    } else {
        r = real(fd);
        if (r == 0) record(OP_FSYNC, fd, 0, 0, NULL, NULL, NULL, 0, 0);
    }
    pthread_mutex_unlock(&lock);
    return r;
}
int fsync(int fd) { return sync_common(fd, real_fsync); }
int fdatasync(int fd) { return sync_common(fd, real_fdatasync); }

int rename(const char *from, const char *to) {
    char a[4096], b[4096];
    if (trace_fd < 0) return real_rename(from, to);
    pthread_mutex_lock(&lock);
    int r = real_rename(from, to);
    int wa = watched(from, a, sizeof a), wb = watched(to, b, sizeof b);
    if (r == 0 && (wa || wb)) record(OP_RENAME, -1, wa, wb, a, b, NULL, 0, 0);
    pthread_mutex_unlock(&lock);
    return r;
}

static int path_op(const char *path, uint8_t op, int r) {
    char a[4096];
    if (r == 0 && watched(path, a, sizeof a)) record(op, -1, 0, 0, a, NULL, NULL, 0, 0);
    return r;
}
int unlink(const char *path) {
    if (trace_fd < 0) return real_unlink(path);
    pthread_mutex_lock(&lock);
    int r = path_op(path, OP_UNLINK, real_unlink(path));
    pthread_mutex_unlock(&lock);
    return r;
}
int mkdir(const char *path, mode_t mode) {
    if (trace_fd < 0) return real_mkdir(path, mode);
    pthread_mutex_lock(&lock);
    int r = path_op(path, OP_MKDIR, real_mkdir(path, mode));
    pthread_mutex_unlock(&lock);
    return r;
}
int rmdir(const char *path) {
    if (trace_fd < 0) return real_rmdir(path);
    pthread_mutex_lock(&lock);
    int r = path_op(path, OP_RMDIR, real_rmdir(path));
    pthread_mutex_unlock(&lock);
    return r;
}

int close(int fd) {
    if (trace_fd < 0 || fd == trace_fd) return fd == trace_fd ? 0 : real_close(fd);
    pthread_mutex_lock(&lock);
    if (tracked(fd)) {
        record(OP_CLOSE, fd, 0, 0, NULL, NULL, NULL, 0, 0);
        free(fd_path[fd]);
        fd_path[fd] = NULL;
    }
    int r = real_close(fd);
    pthread_mutex_unlock(&lock);
    return r;
}

static int after_dup(int old, int fd) {
    if (fd >= 0 && fd < MAX_FD && old != fd) {
        free(fd_path[fd]);
        fd_path[fd] = tracked(old) ? strdup(fd_path[old]) : NULL;
        if (fd_path[fd]) record(OP_DUP, fd, old, 0, NULL, NULL, NULL, 0, 0);
    }
    return fd;
}
int dup(int old) {
    if (trace_fd < 0) return real_dup(old);
    pthread_mutex_lock(&lock);
    int r = after_dup(old, real_dup(old));
    pthread_mutex_unlock(&lock);
    return r;
}
int dup2(int old, int fd) {
    if (trace_fd < 0) return real_dup2(old, fd);
    pthread_mutex_lock(&lock);
    int r = after_dup(old, real_dup2(old, fd));
    pthread_mutex_unlock(&lock);
    return r;
}

#define FCNTL_BODY(real)                                                                   \
    va_list ap; va_start(ap, cmd); long arg = va_arg(ap, long); va_end(ap);                \
    if (trace_fd < 0 || (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC)) return real(fd, cmd, arg); \
    pthread_mutex_lock(&lock);                                                             \
    int r = after_dup(fd, real(fd, cmd, arg));                                             \
    pthread_mutex_unlock(&lock);                                                           \
    return r;
int fcntl(int fd, int cmd, ...) { FCNTL_BODY(real_fcntl) }
int fcntl64(int fd, int cmd, ...) { FCNTL_BODY(real_fcntl64) }
