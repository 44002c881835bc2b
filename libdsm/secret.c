/* SPDX-License-Identifier: MIT */
/*
 * secret.c - the per-job secret of secret.h. The secret never goes through a command line, the environment
 * (only a descriptor number or a file name does) or a file others can read.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dsm.h"
#include "libdsm/secret.h"

#define SECRET_MIN 16u   /* bytes of a secret file, at least */
#define SECRET_MAX 4096u /* and at most */
#define SECRET_KEY "dsm.secret"

/* A file's contents of any length become a key through a keyed hash with a fixed label. */
static void derive(const uint8_t *buf, size_t n, uint8_t key[DSM_AUTH_KEY_SIZE])
{
    static const uint8_t label[crypto_generichash_KEYBYTES] = "libdsm job secret v1";
    crypto_generichash(key, DSM_AUTH_KEY_SIZE, buf, n, label, sizeof label);
}

int dsm_secret_from_file(const char *path, uint8_t key[DSM_AUTH_KEY_SIZE], char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(err, err_len, "DSM_SECRET_FILE=%s cannot be opened: %s", path, strerror(errno));
        return DSM_EINVAL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "DSM_SECRET_FILE=%s is not a regular file", path);
        close(fd);
        return DSM_EINVAL;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, err_len, "DSM_SECRET_FILE=%s belongs to uid %u, not to this user (uid %u)", path,
                 (unsigned)st.st_uid, (unsigned)geteuid());
        close(fd);
        return DSM_EINVAL;
    }
    if (st.st_mode & 077) {
        snprintf(err, err_len,
                 "DSM_SECRET_FILE=%s has mode %04o: others may read it; it must be 0600 or 0400 (chmod 600 %s)",
                 path, (unsigned)(st.st_mode & 07777), path);
        close(fd);
        return DSM_EINVAL;
    }
    uint8_t buf[SECRET_MAX + 1];
    size_t n = 0;
    while (n < sizeof buf) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    int rc = DSM_OK;
    if (n < SECRET_MIN || n > SECRET_MAX) {
        snprintf(err, err_len, "DSM_SECRET_FILE=%s holds %s%zu bytes; a secret is %u to %u bytes (e.g. head -c 32 "
                 "/dev/urandom)", path, n > SECRET_MAX ? "more than " : "", n > SECRET_MAX ? (size_t)SECRET_MAX : n,
                 SECRET_MIN, SECRET_MAX);
        rc = DSM_EINVAL;
    } else {
        derive(buf, n, key);
    }
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* dsmrun's memfd: read it whole, then close it and forget its number, so programs this one starts do not
 * inherit it. */
static int from_fd(int fd, uint8_t key[DSM_AUTH_KEY_SIZE], char *err, size_t err_len)
{
    uint8_t buf[DSM_AUTH_KEY_SIZE];
    ssize_t r;
    do
        r = pread(fd, buf, sizeof buf, 0);
    while (r < 0 && errno == EINTR);
    close(fd);
    unsetenv("DSM_SECRET_FD");
    if (r != (ssize_t)sizeof buf) {
        snprintf(err, err_len, "DSM_SECRET_FD=%d does not hold the job secret dsmrun passes (%s)", fd,
                 r < 0 ? strerror(errno) : "short read");
        return DSM_EINVAL;
    }
    memcpy(key, buf, sizeof buf);
    sodium_memzero(buf, sizeof buf);
    return DSM_OK;
}

/* Under PMIx, rank 0 makes the key and the store carries it to the job's processes only. */
static int from_boot(dsm_boot_t *b, uint8_t key[DSM_AUTH_KEY_SIZE], char *err, size_t err_len)
{
    int rc = DSM_OK;
    if (b->rank == 0) {
        randombytes_buf(key, DSM_AUTH_KEY_SIZE);
        rc = b->put(b, SECRET_KEY, key, DSM_AUTH_KEY_SIZE);
    }
    if (rc == DSM_OK)
        rc = b->fence(b);
    size_t n = DSM_AUTH_KEY_SIZE;
    if (rc == DSM_OK && b->rank != 0 && ((rc = b->get(b, 0, SECRET_KEY, key, &n)) == DSM_OK) &&
        n != DSM_AUTH_KEY_SIZE)
        rc = DSM_EPROTO;
    if (rc)
        snprintf(err, err_len, "cannot share the job secret through %s: %s", b->name, dsm_strerror(rc));
    return rc;
}

int dsm_secret_obtain(const dsm_config_t *cfg, dsm_boot_t *b, uint8_t key[DSM_AUTH_KEY_SIZE], char *err,
                      size_t err_len)
{
    if (dsm_auth_init() != 0) {
        snprintf(err, err_len, "libsodium cannot start (no entropy source?)");
        return DSM_ESYS;
    }
    if (cfg->secret_file[0]) {
        if (cfg->secret_fd >= 0) {
            close(cfg->secret_fd);
            unsetenv("DSM_SECRET_FD");
        }
        return dsm_secret_from_file(cfg->secret_file, key, err, err_len);
    }
    if (cfg->secret_fd >= 0)
        return from_fd(cfg->secret_fd, key, err, err_len);
    if (strcmp(b->name, "pmix") == 0)
        return from_boot(b, key, err, err_len);
    snprintf(err, err_len, "no job secret: ranks started by hand need DSM_SECRET_FILE (a file of mode 0600 with the "
             "same secret on every node), or DSM_AUTH=off on a trusted network");
    return DSM_EINVAL;
}
