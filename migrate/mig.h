/* SPDX-License-Identifier: MIT */
/* mig.h - dsm threads and migration (migrate/, DESIGN.md 4.6): what the core calls. */
#ifndef DSM_MIG_H
#define DSM_MIG_H

/* Collective (dsm_init, after the other modules): compare the executables and libraries of every node, agree on
 * the stack-protector canary and pointer guard of carriers, reserve the carriers' memory, register the messages. */
int dsm_mig_setup(void);
/* Stop the idle carriers (dsm_finalize, or a failed dsm_init). */
void dsm_mig_teardown(void);

/* For checkpoints (ckpt.c; thread.c keeps the records). */
/* Park the calling dsm thread until dsm_mig_resume_parked: 1 when it was one (and is resumed), else 0. */
int dsm_mig_park(void);
/* Threads this node created that run (neither parked nor ended). */
int dsm_mig_busy(void);
/* No dsm thread was ever started in this run (dsm_restore must come first). */
int dsm_mig_fresh(void);
/* Send every parked thread this node created back to its node. */
void dsm_mig_resume_parked(void);
/* This node's thread records as bytes (malloc'ed; the length, 0 when out of memory), checked, and loaded. */
size_t dsm_mig_save_threads(uint8_t **buf_p);
int dsm_mig_check_threads(const uint8_t *b, size_t len);
void dsm_mig_load_threads(const uint8_t *b, size_t len);
/* The job's canary and pointer guard, node 0's code hash, dsm_root's offset; adopt a checkpoint's canary. */
void dsm_mig_secrets(uint64_t *canary, uint64_t *guard, uint64_t *code0, uint64_t *root_off);
void dsm_mig_adopt(uint64_t canary, uint64_t guard);

/* Called before libdsm sends (transport and credit locks ahead): on a dsm thread's stack, which is shared memory,
 * write the next MIG_PROBE bytes below the stack pointer, so the stack pages the send path grows into are present
 * here before a lock is taken (a fault on them inside a transport lock would wait for that same lock). */
void dsm_mig_probe(void);

/* The context switch (ctx.S): save the caller's context, saving its stack pointer in *save_sp, and resume the
 * one saved at next_sp. */
void dsm_mig_switch(void **save_sp, void *next_sp);
/* Where the first switch to a new context returns: calls r12(r13). */
void dsm_mig_boot(void);

#endif /* DSM_MIG_H */
