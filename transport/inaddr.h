/* SPDX-License-Identifier: MIT */
/* inaddr.h - the "a.b.c.d:port" address blob that the tcp and rdma providers publish through the rendezvous. */
#ifndef DSM_TP_INADDR_H
#define DSM_TP_INADDR_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "dsm.h"

/* Parse a peer's NUL-terminated "a.b.c.d:port" blob of len bytes (inline: the rdma module links no libdsm code). */
static inline int dsm_tp_inaddr_parse(const void *blob, size_t len, struct sockaddr_in *sa)
{
    char s[64];
    if (len == 0 || len > sizeof s || ((const char *)blob)[len - 1] != '\0')
        return DSM_EINVAL;
    memcpy(s, blob, len);
    char *colon = strrchr(s, ':');
    if (!colon)
        return DSM_EINVAL;
    *colon = '\0';
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (*end || port == 0 || port > 65535 || inet_pton(AF_INET, s, &sa->sin_addr) != 1)
        return DSM_EINVAL;
    return DSM_OK;
}

#endif /* DSM_TP_INADDR_H */
