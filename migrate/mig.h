/* SPDX-License-Identifier: MIT */
/* mig.h - dsm threads and migration (migrate/, DESIGN.md 4.6): what the core calls. */
#ifndef DSM_MIG_H
#define DSM_MIG_H

/* Collective (dsm_init, after the other modules): compare the executables and libraries of every node, agree on
 * the stack-protector canary and pointer guard of carriers, reserve the carriers' memory, register the messages. */
int dsm_mig_setup(void);
/* Stop the idle carriers (dsm_finalize, or a failed dsm_init). */
void dsm_mig_teardown(void);

/* The context switch (ctx.S): save the caller's context, saving its stack pointer in *save_sp, and resume the
 * one saved at next_sp. */
void dsm_mig_switch(void **save_sp, void *next_sp);
/* Where the first switch to a new context returns: calls r12(r13). */
void dsm_mig_boot(void);

#endif /* DSM_MIG_H */
