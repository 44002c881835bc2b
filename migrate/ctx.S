/* SPDX-License-Identifier: MIT */
/*
 * ctx.S - the context switch of dsm threads (x86-64 System V). A context is a stack pointer; the stack below it
 * holds what the ABI says survives a call (rbx, rbp, r12-r15), the SSE control/status word (mxcsr) and the x87
 * control word, so the rounding mode and exception masks travel with the thread. The signal mask is switched in
 * C (pthread_sigmask): it is kernel state of the carrier thread.
 *
 * Frame at a saved stack pointer, upward: x87 CW (8 bytes), mxcsr (8), r15, r14, r13, r12, rbx, rbp, return.
 */
        .text

/* void dsm_mig_switch(void **save_sp, void *next_sp) */
        .globl  dsm_mig_switch
        .hidden dsm_mig_switch
        .type   dsm_mig_switch, @function
        .p2align 4
dsm_mig_switch:
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        subq    $16, %rsp
        stmxcsr 8(%rsp)
        fnstcw  (%rsp)
        movq    %rsp, (%rdi)
        movq    %rsi, %rsp
        ldmxcsr 8(%rsp)
        fldcw   (%rsp)
        addq    $16, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret
        .size   dsm_mig_switch, .-dsm_mig_switch

/* The first return of a new context lands here: r12 is the entry function, r13 its argument. The entry never
 * returns (it leaves through the carrier). */
        .globl  dsm_mig_boot
        .hidden dsm_mig_boot
        .type   dsm_mig_boot, @function
        .p2align 4
dsm_mig_boot:
        movq    %r13, %rdi
        callq   *%r12
        ud2
        .size   dsm_mig_boot, .-dsm_mig_boot

        .section .note.GNU-stack,"",@progbits
