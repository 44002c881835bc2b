/* SPDX-License-Identifier: MIT */
/* Unit tests of libdsm/settings.c: defaults, every setting's valid and invalid values, and that messages name
 * the variable, the bad value and the valid ones. */
#include "config.h"

#include <string.h>

#include "dsm.h"
#include "libdsm/settings.h"
#include "tests/tap.h"

static const char *env[32][2];

static const char *fake_getenv(const char *name)
{
    for (int i = 0; env[i][0]; i++)
        if (strcmp(env[i][0], name) == 0)
            return env[i][1];
    return NULL;
}

static void setenv_fake(const char *name, const char *val)
{
    int i = 0;
    while (env[i][0] && strcmp(env[i][0], name) != 0)
        i++;
    env[i][0] = name;
    env[i][1] = val;
}

static void clear(void)
{
    memset(env, 0, sizeof env);
}

static int parse(dsm_config_t *c, char *err)
{
    err[0] = '\0';
    return dsm_config_parse(c, fake_getenv, err, 512);
}

/* One invalid value: must fail with DSM_EINVAL and a message containing every needle. */
static void bad(const char *name, const char *val, const char *needle)
{
    dsm_config_t c;
    char err[512];
    clear();
    setenv_fake(name, val);
    int rc = parse(&c, err);
    tap_ok(rc == DSM_EINVAL && strstr(err, name) && strstr(err, needle), "%s='%s' refused: %s", name, val, err);
}

static void good(const char *name, const char *val)
{
    dsm_config_t c;
    char err[512];
    clear();
    setenv_fake(name, val);
    tap_ok(parse(&c, err) == DSM_OK, "%s='%s' accepted %s", name, val, err);
}

int main(void)
{
    dsm_config_t c;
    char err[512];

    clear();
    tap_is(parse(&c, err), DSM_OK, "empty environment parses");
    tap_is(c.log_level, DSM_LOG_WARN, "default log level is warn");
    tap_ok(c.ntp == 3 && !strcmp(c.tp[0], "shm") && !strcmp(c.tp[1], "rdma") && !strcmp(c.tp[2], "tcp"),
           "default transport list is shm,rdma,tcp");
    tap_is(c.tp_explicit, 0, "default list is not explicit");
    tap_is(c.timeout_s, 30, "default timeout 30 s");
    tap_ok(c.base == 0x200000000000ull && c.heap_size == (64ull << 30), "default range 64 GiB at 0x200000000000");
    tap_ok(c.rank == -1 && c.size == -1 && c.coord[0] == 0, "no manual bootstrap by default");

    clear();
    setenv_fake("DSM_TRANSPORT", "tcp,rdma");
    tap_is(parse(&c, err), DSM_OK, "DSM_TRANSPORT=tcp,rdma parses");
    tap_ok(c.ntp == 2 && !strcmp(c.tp[0], "tcp") && !strcmp(c.tp[1], "rdma") && c.tp_explicit,
           "explicit list kept in order");
    bad("DSM_TRANSPORT", "foo", "'foo' (valid: shm, rdma, tcp)");
    bad("DSM_TRANSPORT", "tcp,,rdma", "unknown transport ''");
    bad("DSM_TRANSPORT", "", "unknown transport ''");
    bad("DSM_TRANSPORT", "tcp,tcp", "listed twice");
    bad("DSM_TRANSPORT", "TCP", "'TCP'");

    good("DSM_LOG_LEVEL", "trace");
    good("DSM_WAIT", "spin");
    bad("DSM_WAIT", "busy", "valid: spin, block, adaptive");
    clear();
    tap_ok(parse(&c, err) == DSM_OK && c.wait_mode == -1, "DSM_WAIT unset: chosen at init");
    clear();
    setenv_fake("DSM_WAIT", "block");
    tap_ok(parse(&c, err) == DSM_OK && c.wait_mode == DSM_WAIT_BLOCK, "DSM_WAIT=block");
    bad("DSM_LOG_LEVEL", "verbose", "valid: error, warn, info, debug, trace");
    bad("DSM_TIMEOUT", "0", "from 1 to 86400");
    bad("DSM_TIMEOUT", "ten", "'ten'");
    bad("DSM_TIMEOUT", "-5", "'-5'");
    bad("DSM_TIMEOUT", "99999999999999999999", "from 1");
    good("DSM_TIMEOUT", "5");
    bad("DSM_STATS", "yes", "from 0 to 2");
    bad("DSM_STATS", "3", "from 0 to 2");
    good("DSM_STATS", "1");
    good("DSM_STATS", "2");
    bad("DSM_TCP_IFACE", "", "not a valid interface name");
    bad("DSM_TCP_IFACE", "averyveryverylongname0", "not a valid interface name");
    good("DSM_TCP_IFACE", "veth0");

    good("DSM_BASE", "0x100000000000");
    bad("DSM_BASE", "0x200000000001", "page-aligned");
    bad("DSM_BASE", "0x7fff00000000000", "user address space");
    bad("DSM_BASE", "0", "user address space");
    bad("DSM_HEAP_SIZE", "1Q", "multiple of 4K");
    bad("DSM_HEAP_SIZE", "0", "multiple of 4K");
    bad("DSM_HEAP_SIZE", "1000", "multiple of 4K");
    clear();
    setenv_fake("DSM_HEAP_SIZE", "1G");
    tap_ok(parse(&c, err) == DSM_OK && c.heap_size == (1ull << 30), "DSM_HEAP_SIZE=1G is 2^30");
    clear();
    setenv_fake("DSM_HEAP_SIZE", "200T");
    tap_ok(parse(&c, err) == DSM_EINVAL && strstr(err, "does not fit"), "a range past 2^47 is refused: %s", err);

    clear();
    setenv_fake("DSM_RANK", "1");
    setenv_fake("DSM_SIZE", "4");
    setenv_fake("DSM_COORD", "10.0.0.1:4000");
    tap_ok(parse(&c, err) == DSM_OK && c.rank == 1 && c.size == 4 && !strcmp(c.coord, "10.0.0.1:4000"),
           "manual bootstrap parses");
    setenv_fake("DSM_RANK", "4");
    tap_ok(parse(&c, err) == DSM_EINVAL && strstr(err, "DSM_RANK") && strstr(err, "from 0 to 3"),
           "DSM_RANK >= DSM_SIZE refused: %s", err);
    setenv_fake("DSM_RANK", "0");
    setenv_fake("DSM_COORD", "nohostport");
    tap_ok(parse(&c, err) == DSM_EINVAL && strstr(err, "host:port"), "DSM_COORD without port refused: %s", err);
    setenv_fake("DSM_COORD", "h:70000");
    tap_ok(parse(&c, err) == DSM_EINVAL, "DSM_COORD port 70000 refused");
    clear();
    setenv_fake("DSM_RANK", "0");
    tap_ok(parse(&c, err) == DSM_EINVAL && strstr(err, "together"), "DSM_RANK alone refused: %s", err);

    uint64_t v;
    tap_ok(dsm_parse_size("4k", &v) == DSM_OK && v == 4096, "4k is 4096");
    tap_ok(dsm_parse_size("1TB", &v) == DSM_EINVAL, "1TB refused (one suffix letter)");
    tap_ok(dsm_parse_size("99999999999T", &v) == DSM_EINVAL, "overflowing size refused");
    tap_ok(dsm_parse_u64(" 5", &v) == DSM_EINVAL, "leading space refused");

    /* The rdma settings and the progress CPU list (issue 5). */
    {
        dsm_config_t c;
        char e[512];
        clear();
        setenv_fake("DSM_RDMA_DEVICE", "rxe0");
        setenv_fake("DSM_RDMA_PORT", "1");
        setenv_fake("DSM_PROGRESS_CPU", "0,2-3");
        tap_ok(parse(&c, e) == DSM_OK && !strcmp(c.rdma_device, "rxe0") && c.rdma_port == 1 &&
               !strcmp(c.progress_cpu, "0,2-3"), "DSM_RDMA_DEVICE, DSM_RDMA_PORT, DSM_PROGRESS_CPU parse");
        clear();
        setenv_fake("DSM_PROGRESS_CPU", "3-1");
        tap_ok(parse(&c, e) == DSM_EINVAL && strstr(e, "DSM_PROGRESS_CPU='3-1'"), "DSM_PROGRESS_CPU=3-1 refused: %s", e);
        clear();
        setenv_fake("DSM_RDMA_PORT", "0");
        tap_ok(parse(&c, e) == DSM_EINVAL && strstr(e, "DSM_RDMA_PORT='0'"), "DSM_RDMA_PORT=0 refused");
        clear();
        setenv_fake("DSM_RDMA_DEVICE", "a/b");
        tap_ok(parse(&c, e) == DSM_EINVAL, "DSM_RDMA_DEVICE=a/b refused");
        clear();
        setenv_fake("DSM_AUTH", "maybe");
        tap_ok(parse(&c, e) == DSM_EINVAL && strstr(e, "DSM_AUTH='maybe'"), "DSM_AUTH=maybe refused");
        clear();
        setenv_fake("DSM_SECRET_FD", "1");
        tap_ok(parse(&c, e) == DSM_EINVAL && strstr(e, "DSM_SECRET_FD='1'"), "DSM_SECRET_FD=1 refused");
        clear();
        setenv_fake("DSM_AUTH", "off");
        tap_ok(parse(&c, e) == DSM_OK && c.auth == 0 && c.secret_fd == -1, "DSM_AUTH=off parsed");
        clear();
        uint8_t bits[8];
        tap_ok(dsm_parse_cpulist("1,4-6", bits, 64) == DSM_OK && bits[0] == 0x72, "CPU list 1,4-6");
        clear();
    }

    /* The table dsm_info prints covers every variable the parser reads. */
    const char *read[] = {"DSM_TRANSPORT", "DSM_TCP_IFACE", "DSM_LOG_LEVEL", "DSM_STATS", "DSM_WAIT", "DSM_TIMEOUT",
                          "DSM_BASE", "DSM_HEAP_SIZE", "DSM_RANK", "DSM_SIZE", "DSM_COORD", "DSM_RDMA_DEVICE",
                          "DSM_RDMA_PORT", "DSM_PROGRESS_CPU", "DSM_MODULE_PATH", "DSM_AUTH", "DSM_SECRET_FILE",
                          "DSM_SECRET_FD"};
    int all = 1;
    for (size_t i = 0; i < sizeof read / sizeof read[0]; i++) {
        int found = 0;
        for (size_t j = 0; j < dsm_nsettings; j++)
            found |= !strcmp(dsm_settings[j].name, read[i]) && dsm_settings[j].doc && dsm_settings[j].doc[0];
        all &= found;
    }
    tap_ok(all && dsm_nsettings == sizeof read / sizeof read[0], "settings table documents every variable");
    return tap_done();
}
