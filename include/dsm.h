/* SPDX-License-Identifier: MIT */
/*
 * dsm.h - the public API of libdsm, the only installed header.
 *
 * libdsm gives the N processes ("nodes") of a job one coherent shared address range (DESIGN.md section 2).
 * This header declares only what is implemented; the names in DESIGN.md section 2 are the contract and later
 * releases add the rest under those names.
 *
 * Conventions: every call returns int, DSM_OK (0) on success or a negative DSM_E* code; dsm_strerror() names it.
 * Calls marked "collective" must be made by every node of the job, in the same order.
 * All calls are thread-safe once dsm_init() has returned, unless stated otherwise.
 */
#ifndef DSM_H
#define DSM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(DSM_BUILDING_LIBRARY)
#define DSM_API __attribute__((visibility("default")))
#else
#define DSM_API
#endif

/* Versions. DSM_API_VERSION is what this header was written for; dsm_init() passes it to the library, which
 * refuses a program built against a newer major version than itself. */
#define DSM_VERSION_MAJOR 0
#define DSM_VERSION_MINOR 1
#define DSM_VERSION_PATCH 0
#define DSM_VERSION(maj_x, min_x) (((maj_x) << 16) | (min_x))
#define DSM_API_VERSION DSM_VERSION(DSM_VERSION_MAJOR, DSM_VERSION_MINOR)

/*
 * Status codes, grouped by what is lost: the call (-1..-19), a peer (-20..-39), the job (-40 and below).
 */
enum dsm_status {
    DSM_OK = 0,
    /* The call failed; nothing else is affected. */
    DSM_EINVAL = -1,       /* invalid argument or setting (the log names it) */
    DSM_ENOMEM = -2,       /* out of memory or address space */
    DSM_ENOSYS = -3,       /* not supported by this build or transport */
    DSM_EBUSY = -4,        /* resource busy */
    DSM_EALREADY = -5,     /* dsm_init called twice */
    DSM_ENOTINIT = -6,     /* libdsm is not initialized */
    DSM_EMISMATCH = -7,    /* nodes disagree (settings, collective calls, versions) */
    DSM_ESYS = -8,         /* a system call failed (the log gives errno) */
    DSM_EVERSION = -9,     /* the program was built for a newer libdsm */
    /* A peer misbehaved or could not be reached. */
    DSM_ETIMEDOUT = -20,   /* no answer within DSM_TIMEOUT */
    DSM_EPROTO = -21,      /* malformed or unexpected message */
    DSM_EUNREACH = -22,    /* a peer could not be reached by any transport */
    DSM_EBOOTSTRAP = -23,  /* the rendezvous (dsmrun, PMIx) failed */
    /* The job cannot continue. */
    DSM_ENODE = -40        /* a node was lost */
};

/*
 * Start libdsm. Collective. Reads the DSM_* settings from the environment (dsm_info lists them), joins the job
 * (dsmrun, PMIx or DSM_RANK/DSM_SIZE/DSM_COORD; else a single-node run) and connects to every peer.
 * argc/argv may be NULL; they are not modified in this version.
 * Errors: DSM_EALREADY, DSM_EINVAL (a bad setting), DSM_EMISMATCH (nodes disagree), DSM_EBOOTSTRAP, DSM_EUNREACH,
 * DSM_ETIMEDOUT, DSM_EVERSION. On error nothing is left initialized and the call may be retried.
 */
DSM_API int dsm_init_version(int api_version, int *argc, char ***argv);
static inline int dsm_init(int *argc, char ***argv)
{
    return dsm_init_version(DSM_API_VERSION, argc, argv);
}

/* Leave the job. Collective: waits for every node, then closes the connections. Prints statistics to stderr when
 * DSM_STATS=1. Errors: DSM_ENOTINIT, DSM_ETIMEDOUT. */
DSM_API int dsm_finalize(void);

/* This node's index in [0, dsm_size()), and the number of nodes; -1 before dsm_init. */
DSM_API int dsm_rank(void);
DSM_API int dsm_size(void);

/* Block until every node has entered the barrier. Collective; message-based (a dissemination barrier), and a full
 * memory fence. Calls from several threads of one node are serialized: each is one barrier of the job.
 * Errors: DSM_ENOTINIT, DSM_ETIMEDOUT. A lost node fails the job stop (DESIGN.md 4.7). */
DSM_API int dsm_barrier(void);

/*
 * Shared memory. Memory from these calls is zero-filled, page-aligned and at the same address on every node;
 * plain loads and stores on it are coherent across nodes (page-level single writer / multiple readers).
 */

/* Collective: len bytes of shared memory, its pages homed block-wise over the nodes. NULL on error, with
 * dsm_last_error(): DSM_EINVAL (len 0), DSM_ENOMEM (no room in DSM_HEAP_SIZE), DSM_EMISMATCH (nodes passed
 * different sizes, or called in a different order). */
DSM_API void *dsm_alloc(size_t len);

/* Collective: as dsm_alloc, every page homed on node home. DSM_EINVAL for a home outside [0, dsm_size()). */
DSM_API void *dsm_alloc_home(size_t len, int home);

/* Collective: free what dsm_alloc or dsm_alloc_home returned. Every node must be done with the memory; an access
 * after it dies with SIGSEGV. DSM_EINVAL for any other pointer, DSM_EMISMATCH when nodes pass different ones. */
DSM_API int dsm_dealloc(void *ptr);

/* Collective: len bytes of words that live only at their home and are never cached, for the atomic calls
 * below only (native RDMA atomics); a plain load or store on them is reported as a usage error and stops the
 * job. Free with dsm_dealloc. Errors as dsm_alloc. */
DSM_API void *dsm_alloc_atomic(size_t len);

/* Local (not collective): len bytes of zero-filled shared memory that any node may use, homed on the calling
 * node. NULL on error, with dsm_last_error(): DSM_EINVAL (len 0), DSM_ENOMEM (this node's arena, half of
 * DSM_HEAP_SIZE divided by the node count, is full). */
DSM_API void *dsm_malloc(size_t len);

/* Free what dsm_malloc returned, on any node; NULL is ignored. Anything else is reported (dsm_last_error()
 * DSM_EINVAL) and ignored. */
DSM_API void dsm_free(void *ptr);

/* Bulk access. Modes for dsm_prefetch. */
#define DSM_READ 1
#define DSM_WRITE 2

/* Fetch [addr, addr+len) for reading or writing in one batch (all page requests in flight at once). Afterwards
 * the range may be given to a system call, provided no other node writes it meanwhile (the kernel does not
 * fault shared memory in on libdsm's behalf: such a call fails with EFAULT). Errors: DSM_EINVAL (the range is
 * not entirely shared memory, or a bad mode). */
DSM_API int dsm_prefetch(const void *addr, size_t len, int mode);

/* Copy len bytes from shared memory src (to private or shared dst), or into shared memory dst, coherently and
 * without faulting page by page. Errors: DSM_EINVAL (the shared side is not entirely shared memory). */
DSM_API int dsm_get(void *dst, const void *src, size_t len);
DSM_API int dsm_put(void *dst, const void *src, size_t len);

/* Atomics on any 8-byte-aligned word of shared memory; they return the old value. On dsm_alloc memory they are
 * coherent with plain loads and stores on every node; on dsm_alloc_atomic memory they run at the word's home.
 * A misaligned or non-shared address is a usage error: reported, then abort(). */
DSM_API uint64_t dsm_fetch_add(uint64_t *addr, uint64_t v);
DSM_API uint64_t dsm_cas(uint64_t *addr, uint64_t expect, uint64_t desired);
DSM_API uint64_t dsm_atomic_load(const uint64_t *addr);
DSM_API void dsm_atomic_store(uint64_t *addr, uint64_t v);

/*
 * Global locks. A dsm_lock_t is a plain 40-byte struct that may live anywhere in shared memory (e.g. inside a
 * dsm_alloc'ed struct); any one thread initializes it once with dsm_lock_init. The home node of its page keeps
 * its FIFO queue. Data written under the lock is seen by the next holder. Errors: DSM_EINVAL (not an
 * initialized lock in shared memory, or unlocking a lock this node does not hold), DSM_EBUSY (dsm_trylock: held).
 */
typedef struct dsm_lock {
    uint64_t opaque[5];
} dsm_lock_t;

DSM_API int dsm_lock_init(dsm_lock_t *l);
DSM_API int dsm_lock(dsm_lock_t *l);
DSM_API int dsm_trylock(dsm_lock_t *l);
DSM_API int dsm_unlock(dsm_lock_t *l);
/* For a lock from dsm_lock_create this is collective and frees it; else it marks it uninitialized. */
DSM_API int dsm_lock_destroy(dsm_lock_t *l);
/* Collective: a lock allocated and initialized for every node; NULL on error (dsm_last_error()). */
DSM_API dsm_lock_t *dsm_lock_create(void);

/*
 * Thread-level barrier and condition variable for any mix of threads on any nodes. Like dsm_lock_t they are
 * plain structs that may live anywhere in shared memory; any one thread initializes each once; the home node of
 * the page keeps the waiters. The sizes leave room to overlay pthread_barrier_t and pthread_cond_t.
 * dsm_barrier_wait returns when count threads (of any nodes) have called it, DSM_OK to each, then the barrier is
 * ready for the next round; threads that wait with different counts get DSM_EINVAL.
 * dsm_cond_wait(c, l) needs l held by the calling node; it releases l, waits, and holds l again on return. As
 * with pthreads, a wake-up may be spurious: wait in a loop that tests the predicate. A signal reaches at least
 * one thread that was waiting when it was sent; a broadcast reaches all of them.
 * Errors: DSM_EINVAL (not initialized, not in shared memory, count 0, l not held), DSM_ENOTINIT.
 */
typedef struct dsm_barrier {
    uint64_t opaque[4];
} dsm_barrier_t;

typedef struct dsm_cond {
    uint64_t opaque[6];
} dsm_cond_t;

DSM_API int dsm_barrier_init(dsm_barrier_t *b, unsigned count);
DSM_API int dsm_barrier_wait(dsm_barrier_t *b);
DSM_API int dsm_barrier_destroy(dsm_barrier_t *b);
DSM_API int dsm_cond_init(dsm_cond_t *c);
DSM_API int dsm_cond_wait(dsm_cond_t *c, dsm_lock_t *l);
DSM_API int dsm_cond_signal(dsm_cond_t *c);
DSM_API int dsm_cond_broadcast(dsm_cond_t *c);
DSM_API int dsm_cond_destroy(dsm_cond_t *c);

/*
 * dsm threads (DESIGN.md 4.6): threads that start on any node and move between nodes while they run. A dsm
 * thread is a user-level context whose stack (256 KiB, with no guard page: keep large arrays in shared memory
 * from dsm_malloc) and control block are shared memory, run on each node by a carrier pthread of its own. Migration needs the same code at the same addresses on every node: the same
 * executable and libraries, started with address randomization off (dsmrun does it; under mpirun or srun, start
 * the program as `setarch -R prog`). dsm_init checks this; where it does not hold, dsm_migrate and a
 * dsm_thread_create on another node fail with DSM_EMISMATCH and the log names the cause (all else works).
 *
 * What a thread keeps across dsm_migrate: its stack and every local (pointers to locals stay valid), the
 * callee-saved registers, the SSE and x87 control words (rounding mode, exception masks) and its signal mask.
 * What it does not keep: TLS, errno included, is the carrier's, i.e. the new node's (a TLS address kept across
 * the call stays valid and names the new carrier's variable); private memory (malloc, globals, files) is the
 * node's own: keep what the thread needs in shared memory. Never migrate while holding a pthread mutex or a
 * dsm lock (dsm locks are held by a node), nor from a signal handler. dsm threads must not call atexit or
 * pthread_exit: their pointer guard is the job's, not the process's; leave by returning or dsm_thread_exit.
 * libdsm exports exit: exit() called in a dsm thread is forwarded to node 0, which exits with that status as if
 * it had called exit (its atexit handlers run; the other nodes stop as after a lost node). Elsewhere it is the
 * C library's exit.
 */
typedef struct dsm_thread {
    uint64_t id;
} dsm_thread_t;

/* Start fn(arg) as a dsm thread on node (remote spawn), from any thread of any node. Its FP control state and
 * signal mask are the caller's. Errors: DSM_EINVAL (NULL fn or t, node out of range), DSM_EMISMATCH (another
 * node, and nodes run different code, see above), DSM_EBUSY (this node has 512 threads not joined yet),
 * DSM_ENOMEM. */
DSM_API int dsm_thread_create(dsm_thread_t *t, int node, void *(*fn)(void *), void *arg);
/* Wait for a dsm thread to end, from any thread of any node, and get what fn returned (or dsm_thread_exit was
 * given) in *ret (ret may be NULL). Each thread is joined once. Errors: DSM_EINVAL (unknown or already joined
 * thread, or the caller itself). */
DSM_API int dsm_thread_join(dsm_thread_t t, void **ret);
/* End the calling dsm thread from any depth with ret. A usage error (abort) outside a dsm thread. */
DSM_API void dsm_thread_exit(void *ret) __attribute__((noreturn));
/* Move the calling dsm thread to node; the call returns there. Its stack pages follow on demand (the active part
 * in one batch). Errors: DSM_EINVAL (not a dsm thread, node out of range), DSM_EMISMATCH (see above). */
DSM_API int dsm_migrate(int node);
/* The node the caller runs on now (for a dsm thread, where it has migrated to). */
DSM_API int dsm_current_node(void);

/*
 * Checkpoints (DESIGN.md 4.6). Private memory (main-thread stacks, globals, malloc) is not saved: keep what must
 * survive in shared memory, reachable from dsm_root().
 */

/* One pointer-sized word of shared memory, the same for every node and saved with checkpoints: where a restored
 * run finds its data. NULL before dsm_init. */
DSM_API void **dsm_root(void);

/* Collective over the main threads of all nodes: save the shared memory (Modified pages are recalled to their
 * homes first), the allocators' tables and the dsm threads into a new directory under path (created if needed;
 * on a filesystem every node sees), then switch path/current to it atomically; the previous checkpoint stays
 * whole until then and is removed after. Succeeds only while every dsm thread that has not ended waits in
 * dsm_checkpoint: called from a dsm thread, dsm_checkpoint parks it until the main threads' next checkpoint
 * completes (it then returns DSM_OK, in this run or in a restored one). Errors: DSM_EBUSY on every node when a
 * dsm thread still runs user code (its dsm_thread_join, dsm_lock, barriers do not count as parked: retry),
 * DSM_ESYS (the log names the file), DSM_EINVAL (no path). */
DSM_API int dsm_checkpoint(const char *path);

/* Collective, right after dsm_init and before any allocation or dsm thread: load path/current, written by the
 * same binary with the same node count and DSM_HEAP_SIZE, and resume its parked dsm threads. Everything is
 * checked on every node before anything changes: a missing path, a truncated or corrupted file (DSM_EINVAL), a
 * checkpoint of another binary or node count (DSM_EMISMATCH) leave the run as dsm_init made it, with the cause
 * in the log. */
DSM_API int dsm_restore(const char *path);

/* Per-node counters. Set size to sizeof(dsm_stats_t) before the call: later versions add fields at the end
 * and fill only what the caller's struct has room for. */
typedef struct dsm_stats {
    size_t size;
    uint64_t read_faults, write_faults, upgrades;      /* page requests this node sent, by kind */
    uint64_t pages_received, pages_sent;               /* page data moved */
    uint64_t invalidations_received, invalidations_sent;
    uint64_t recalls_received;                         /* as owner, asked to give a page back */
    uint64_t messages_sent, bytes_sent, messages_received, bytes_received;
    uint64_t migrations;                               /* dsm threads that migrated away from this node */
} dsm_stats_t;

/* Fill s (s->size set by the caller). Errors: DSM_EINVAL, DSM_ENOTINIT. */
DSM_API int dsm_stats(dsm_stats_t *s);

/* A static description of a status code; never NULL, also for unknown values. */
DSM_API const char *dsm_strerror(int status);

/* The status of the calling thread's last failed call that returns a pointer or an index. */
DSM_API int dsm_last_error(void);

/* Set the function called when this node fails stop (DESIGN.md 4.7): once, on whichever thread detected the
 * failure, just before the process exits with status 1. err is DSM_ENODE with node the lost node (its connection
 * closed or failed, or no heartbeat came from it within DSM_TIMEOUT), or DSM_EPROTO with node -1 when this node
 * itself cannot go on. It must not call libdsm and should be short (e.g. flush a log); the process exits when it
 * returns. NULL removes it. May be called before dsm_init. */
DSM_API void dsm_set_error_handler(void (*fn)(int err, int node));

/* The providers this node uses, e.g. "tcp", or "self" for a single-node run; "none" before dsm_init.
 * The string is static. */
DSM_API const char *dsm_transport_name(void);

/* The library's version as DSM_VERSION(major, minor) and its "major.minor.patch" string. */
DSM_API int dsm_version(void);
DSM_API const char *dsm_version_string(void);

#ifdef __cplusplus
}
#endif

#endif /* DSM_H */
