/* SPDX-License-Identifier: MIT */
/* slots.h - a lock-free set of free slot numbers (1..63) in one word: the reply slots of shm and tcp. */
#ifndef DSM_SLOTS_H
#define DSM_SLOTS_H

#include <stdint.h>

/* Take the lowest free slot: its number, or 0 when none is free. */
static inline uint32_t dsm_slot_take(uint64_t *free_bits)
{
    uint64_t v = __atomic_load_n(free_bits, __ATOMIC_ACQUIRE);
    while (v) {
        uint32_t t = (uint32_t)__builtin_ctzll(v);
        if (__atomic_compare_exchange_n(free_bits, &v, v & ~(1ull << t), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return t;
    }
    return 0;
}

static inline void dsm_slot_put(uint64_t *free_bits, uint32_t t)
{
    __atomic_or_fetch(free_bits, 1ull << t, __ATOMIC_RELEASE);
}

#endif /* DSM_SLOTS_H */
