/* SPDX-License-Identifier: MIT */
/* Unit tests of the public basics that need no job: every status has a distinct string, unknown codes too,
 * the version macros agree with the package version, and calls before dsm_init fail cleanly. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"
#include "tests/tap.h"

int main(void)
{
    /* Walk the whole range the enum uses and beyond. */
    int known = 0, never_null = 1;
    const char *unknown = dsm_strerror(-12345);
    for (int s = 1; s >= -60; s--) {
        const char *m = dsm_strerror(s);
        never_null &= m != NULL && m[0] != '\0';
        if (m && strcmp(m, unknown) != 0)
            known++;
    }
    tap_ok(never_null, "dsm_strerror never returns NULL or an empty string");
    tap_is(known, 15, "every defined status has its own string");
    tap_ok(strcmp(dsm_strerror(DSM_OK), "success") == 0, "DSM_OK is success");
    const int codes[] = {DSM_EINVAL, DSM_ENOMEM, DSM_ENOSYS, DSM_EBUSY, DSM_EALREADY, DSM_ENOTINIT,
                         DSM_EMISMATCH, DSM_ESYS, DSM_EVERSION, DSM_ETIMEDOUT, DSM_EPROTO, DSM_EUNREACH,
                         DSM_EBOOTSTRAP, DSM_ENODE};
    int distinct = 1;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        for (size_t j = 0; j < i; j++)
            distinct &= strcmp(dsm_strerror(codes[i]), dsm_strerror(codes[j])) != 0;
    tap_ok(distinct, "status strings are distinct");
    tap_ok(DSM_ETIMEDOUT <= -20 && DSM_EBOOTSTRAP > -40 && DSM_ENODE <= -40, "codes grouped by what is lost");

    char v[32];
    snprintf(v, sizeof v, "%d.%d.%d", DSM_VERSION_MAJOR, DSM_VERSION_MINOR, DSM_VERSION_PATCH);
    tap_ok(strcmp(v, PACKAGE_VERSION) == 0, "dsm.h version %s matches the package version %s", v, PACKAGE_VERSION);
    tap_ok(strcmp(dsm_version_string(), PACKAGE_VERSION) == 0, "dsm_version_string()");
    tap_is(dsm_version(), DSM_API_VERSION, "dsm_version() == DSM_API_VERSION");

    tap_is(dsm_rank(), -1, "dsm_rank before dsm_init is -1");
    tap_is(dsm_last_error(), DSM_ENOTINIT, "... and dsm_last_error says not initialized");
    tap_is(dsm_size(), -1, "dsm_size before dsm_init is -1");
    tap_is(dsm_barrier(), DSM_ENOTINIT, "dsm_barrier before dsm_init");
    tap_is(dsm_finalize(), DSM_ENOTINIT, "dsm_finalize before dsm_init");
    tap_ok(strcmp(dsm_transport_name(), "none") == 0, "transport name before dsm_init is none");
    tap_is(dsm_init_version(DSM_VERSION(DSM_VERSION_MAJOR + 1, 0), NULL, NULL), DSM_EVERSION,
           "a program built for the next major version is refused");

    /* A single-node run: no launcher variables. */
    unsetenv("DSM_RANK");
    unsetenv("DSM_SIZE");
    unsetenv("DSM_COORD");
    unsetenv("PMIX_RANK");
    tap_is(dsm_init(NULL, NULL), DSM_OK, "dsm_init alone is a single-node run");
    tap_ok(dsm_rank() == 0 && dsm_size() == 1, "rank 0 of 1");
    tap_ok(strcmp(dsm_transport_name(), "self") == 0, "transport is self");
    tap_is(dsm_init(NULL, NULL), DSM_EALREADY, "second dsm_init is DSM_EALREADY");
    tap_is(dsm_barrier(), DSM_OK, "barrier of one");
    tap_is(dsm_finalize(), DSM_OK, "finalize");
    tap_is(dsm_finalize(), DSM_ENOTINIT, "second finalize is DSM_ENOTINIT");

    /* A bad setting fails dsm_init and leaves nothing initialized. */
    setenv("DSM_TRANSPORT", "foo", 1);
    tap_is(dsm_init(NULL, NULL), DSM_EINVAL, "DSM_TRANSPORT=foo fails dsm_init");
    tap_is(dsm_rank(), -1, "... and nothing is initialized");
    setenv("DSM_TRANSPORT", "rdma", 1);
    tap_is(dsm_init(NULL, NULL), DSM_OK, "single node needs no transport, even one not built");
    dsm_finalize();
    unsetenv("DSM_TRANSPORT");

    /* The shared range clashes with an existing mapping. */
    setenv("DSM_BASE", "0x300000000000", 1);
    setenv("DSM_HEAP_SIZE", "1M", 1);
    tap_is(dsm_init(NULL, NULL), DSM_OK, "init with DSM_BASE=0x300000000000");
    tap_is(dsm_finalize(), DSM_OK, "finalize releases the range");
    tap_is(dsm_init(NULL, NULL), DSM_OK, "the same range can be reserved again");
    dsm_finalize();
    return tap_done();
}
