/* SPDX-License-Identifier: MIT */
/*
 * dsm_msi.pml - a Promela model (for SPIN) of libdsm's page coherence protocol, for one page.
 * Checked by tests/model/check-model.sh (make check).
 *
 * Where the C is (keep the two in step; dir_msi.c and coh.h point back to tests/model/ in their headers):
 *   libdsm/dir_msi.c   the home directory: DIR_U/DIR_S/DIR_M, BUSY_RECALL/BUSY_INV, the FIFO wait queue,
 *                      serve(), drain(), dsm_dir_request(), on_inv_ack(), on_recall_ack()
 *   libdsm/pg_fault.c  the node side: DSM_PG_I/S/M, want (one outstanding request per page and node),
 *                      dsm_pg_fault(), dsm_pg_grant(), dsm_pg_demote(), on_grant(), on_inv(), on_recall()
 *   libdsm/coh.h       the messages GETS, GETM, GRANT, INV, INV_ACK, RECALL, RECALL_ACK
 * Every inline below is named after the C function it models and does what that function does, in the same
 * order; every C consistency check that returns DSM_EPROTO or fail-stops is an assert here. Invariant numbers
 * are those of the header comment of dir_msi.c.
 *
 * What is modelled.
 *   - Nodes 0..NODES-1; node HOME (0) is the page's home and also a user of the page: its copy is the home's
 *     memory (ver[HOME]), its requests call dir_request() directly (no message, as dsm_dir_request() from the
 *     home's faulting thread), it is demoted in place, and grants to itself carry no data.
 *   - Each node is two processes, as in the C: app(n), its application threads (faults on one page coalesce
 *     into one outstanding request, want[n], so all of them are one process), and its progress thread, which
 *     runs the message handlers: node_rx(n) on a remote node, and at the home one home_rx(n) per incoming
 *     channel (handlers are atomic under the directory entry's lock, so running them in several processes
 *     gives the same interleavings as one thread; one per channel lets weak fairness say "every channel is
 *     eventually read", which the C's progress thread does).
 *   - Channels: one bounded FIFO per ordered node pair, no order across pairs. For one page only the pairs
 *     (n, HOME) and (HOME, n) carry messages (no message of this protocol goes between two non-home nodes,
 *     and the home never sends to itself), so only those 2*(NODES-1) channels exist. The bound CAP is
 *     asserted never to be reached (snd), so it restricts nothing: the C transport never blocks a send
 *     (transport/tcp: a full socket appends to an unbounded per-peer queue).
 *   - Ghost versions: latest is incremented by every write; ver[n] is the version of node n's copy (ver[HOME]
 *     is the home's memory); data travels with GRANT (when sent with data) and RECALL_ACK.
 *   - Atomic steps are the C's critical sections: a directory operation (entry lock held), a node-side grant
 *     or demotion (page lock held). Sending a request is one step with setting want (the C sends just after
 *     dropping the page lock; the only thing that can come between is a demotion, which does not read or
 *     write want, so both orders reach the same states). A node's INV and RECALL handlers are two steps
 *     (demote, then send the ack, as on_inv/on_recall do), so a request of the node can overtake its ack.
 *
 * Properties.
 *   Safety (exhaustive; check-model.sh runs NODES = 3 with OPS = 6 and NODES = 4 with OPS = 2: each node takes
 *   at most OPS steps, a step being a fault or a write), checked after every step by check():
 *     - single writer or many readers: at most one node in DSM_PG_M, and then none in DSM_PG_S;
 *     - every read returns the latest version: every copy a node may read (DSM_PG_S or DSM_PG_M) has
 *       ver == latest, in every reachable state, so any read by any thread at any moment sees it;
 *     - invariant 2 (M: one owner, no sharers; U: nobody holds the page), and a node in M is the owner;
 *     - the C's own protocol checks (dsm_pg_grant, on_recall, on_inv_ack, on_recall_ack) never fire;
 *     - the queue and the channels never overflow;
 *     - no deadlock: SPIN's invalid end states (a node left waiting for a grant when nothing can move).
 *   Liveness (LIVENESS, NODES = 2 and 3, nodes fault forever, no versions), ltl "done" with weak fairness:
 *     every request completes: [] (want[n] != 0 -> <> want[n] == 0) for every node n.
 *
 * Why one page is enough (pages are independent):
 *   - State: a page's directory entry (state, busy, owner, req, acks, sharers, its wait queue) and its
 *     node-side struct pg (state, want, seq) are per page; no handler reads or writes another page's entry.
 *     The one shared structure, the wait-queue pool, is an allocator: exhausting it is a fail-stop, never a
 *     change of protocol state. Locks are per page (entry, then the page's node lock); the pool lock nests in
 *     them and takes nothing else.
 *   - Messages: each carries one page index, and its handler touches only that page. The home serializes each
 *     page by itself (busy + queue, invariant 1); requests of other pages never wait for this page.
 *   - Channels: the FIFO is per pair, shared by all pages. The protocol relies only on the order of two
 *     messages of the same page on the same pair (invariant 4). The messages of one page on a shared FIFO
 *     still arrive in the order sent (a subsequence of a FIFO sequence is in FIFO order); the other pages'
 *     messages between them only delay them, and the model already allows any delay (any enabled process may
 *     run, any channel may be left unread). Handlers never block, so a message of another page ahead in the
 *     FIFO does not stop this page's message from being handled. Steps of other pages touch no state of this
 *     page, so they commute with this page's steps: the run of the real system projected onto one page is a
 *     run of this model. Every property above mentions one page only, hence holds for every page.
 *   - Several application threads and dsm_pg_prefetch issue at most one request per page and node (want),
 *     so they are covered by the one app process per node. dsm_pg_atomic is a write needing M.
 *   - Not modelled: dsm_alloc/dsm_dealloc (dsm_dir_reset, dsm_pg_reset) are collective and assumed
 *     quiescent; node loss and DSM_TIMEOUT are fail-stop.
 *
 * Negative controls (check-model.sh requires SPIN to find an error with each):
 *   BUG_SKIP_INV   serve() drops the invalidations (no INV, no ack awaited, no demotion of the home), as the
 *                  C's test hook dsm_dir_debug_drop_inv = 1 does: the single-writer assertion must fail.
 *   BUG_STALE_MEM  on_recall_ack() does not store the page in the home's memory: a read must see an old
 *                  version.
 *   BUG_NO_DRAIN   on_inv_ack() does not serve the queued requests: the liveness claim must fail.
 */

#ifndef NODES
#ifdef LIVENESS
#define NODES 2
#else
#define NODES 3
#endif
#endif
#ifndef OPS
#define OPS 3
#endif
#define HOME 0
#define CAP 2 /* per-channel bound; at most a reply and a request (node->home) or a grant and an INV/RECALL */

/* coh.h: node-side page states */
#define DSM_PG_I 0
#define DSM_PG_S 1
#define DSM_PG_M 2
/* dir_msi.c: directory states and transient (busy) states */
#define DIR_U 0
#define DIR_S 1
#define DIR_M 2
#define BUSY_NONE 0
#define BUSY_RECALL 1
#define BUSY_INV 2

/* coh.h: DSM_AM_GETS ... DSM_AM_RECALL_ACK */
mtype = { GETS, GETM, GRANT, INV, INV_ACK, RECALL, RECALL_ACK };

/* Messages: type, mode (GRANT: S or M; RECALL: state to keep), data carried?, ghost version of the data. */
chan to_home[NODES] = [CAP] of { mtype, byte, bool, byte };   /* node n -> HOME (index HOME unused) */
chan from_home[NODES] = [CAP] of { mtype, byte, bool, byte }; /* HOME -> node n (index HOME unused) */

/* pg_fault.c: struct pg, per node */
byte pg[NODES];   /* DSM_PG_I/S/M */
byte want[NODES]; /* 0, or the mode requested and not granted yet */

/* ghost */
byte ver[NODES];  /* version of node n's copy; ver[HOME] is the home's memory */
byte latest;      /* the version of the last write */

/* dir_msi.c: struct dir, for the one page. Fields meaningless in the current state are kept at 0 (the C
 * leaves stale values there and never reads them), which keeps the state space small. */
byte dstate = DIR_U;
byte busy = BUSY_NONE;
byte owner;    /* meaningful in DIR_M */
byte req;      /* while busy: the request being served */
byte req_mode;
bool req_had;
byte acks;     /* while BUSY_INV: invalidations not acknowledged yet */
byte sharers;  /* a bit per node */
chan q = [NODES] of { byte, byte }; /* the FIFO wait queue: (node, mode); one request per node at most */

/* Temporaries of atomic steps (hidden: not part of the state; no step blocks halfway). */
hidden mtype ht;
hidden byte ha, hv, so, skeep, si, sacks, dr, dm, ci, nm, ns;
hidden byte hd, shad;

inline snd(ch, t, a, d, v)
{
    assert(len(ch) < CAP);
    ch!t, a, d, v
}

/* The safety properties, checked after every step. */
inline check()
{
    nm = 0;
    ns = 0;
    for (ci : 0 .. NODES - 1) {
        if
        :: pg[ci] == DSM_PG_M ->
            nm++;
            assert(dstate == DIR_M && owner == ci)
        :: pg[ci] == DSM_PG_S -> ns++
        :: else -> skip
        fi;
        /* every read returns the latest version */
        assert(pg[ci] == DSM_PG_I || ver[ci] == latest)
    }
    /* single writer or many readers */
    assert(nm <= 1 && (nm == 0 || ns == 0));
    /* invariant 2 */
    assert(dstate != DIR_M || sharers == 0);
    assert(dstate != DIR_U || (sharers == 0 && nm + ns == 0 && busy == BUSY_NONE))
}

/* ---- node side (pg_fault.c) ---- */

/* dsm_pg_grant(): data is the version carried, if d. */
inline pg_grant(n, m, d, v)
{
    /* "a grant nobody asked for, or one without data for a copy this node does not have" */
    assert(want[n] != 0 && m >= want[n]);
    assert(d || pg[n] != DSM_PG_I || n == HOME);
    if
    :: d -> ver[n] = v
    :: else -> skip
    fi;
    pg[n] = m;
    want[n] = 0
}

/* dsm_pg_demote() */
inline pg_demote(n, st)
{
    if
    :: pg[n] > st -> pg[n] = st
    :: else -> skip
    fi
}

/* ---- home side (dir_msi.c) ---- */

/* grant(): to itself without data through dsm_pg_grant, else a GRANT message with the home's memory. */
inline grant(to, m, wd)
{
    if
    :: to == HOME -> pg_grant(HOME, m, 0, 0)
    :: else ->
        hd = (wd);
        if
        :: hd -> snd(from_home[to], GRANT, m, 1, ver[HOME])
        :: else -> snd(from_home[to], GRANT, m, 0, 0)
        fi
    fi
}

/* serve(): the entry is not busy. */
inline serve(r, mode)
{
    if
    :: dstate == DIR_M && owner != r ->
        so = owner;
        if
        :: mode == DSM_PG_S -> skeep = DSM_PG_S
        :: else -> skeep = DSM_PG_I
        fi;
        if
        :: so == HOME ->
            pg_demote(HOME, skeep); /* the home demoted itself: its memory is current */
            sharers = 0;
            if
            :: skeep == DSM_PG_S ->
                dstate = DIR_S;
                owner = 0;
                sharers = (1 << so) | (1 << r)
            :: else ->
                dstate = DIR_M;
                owner = r
            fi;
            grant(r, mode, r != HOME)
        :: else ->
            busy = BUSY_RECALL;
            req = r;
            req_mode = mode;
            snd(from_home[so], RECALL, skeep, 0, 0)
        fi
    :: dstate == DIR_M && owner == r ->
        /* r already owns it: re-grant (the C comment says this cannot happen) */
        grant(r, DSM_PG_M, 0)
    :: dstate != DIR_M && mode == DSM_PG_S ->
        dstate = DIR_S;
        sharers = sharers | (1 << r);
        grant(r, DSM_PG_S, r != HOME)
    :: dstate != DIR_M && mode == DSM_PG_M ->
        /* GETM on U or S */
        shad = (sharers >> r) & 1;
        sacks = 0;
        if
        :: dstate == DIR_S ->
            for (si : 0 .. NODES - 1) {
                if
                :: si != r && ((sharers >> si) & 1) ->
#ifndef BUG_SKIP_INV
                    if
                    :: si == HOME -> pg_demote(HOME, DSM_PG_I)
                    :: else ->
                        snd(from_home[si], INV, 0, 0, 0);
                        sacks++
                    fi
#else
                    skip /* the injected bug: si keeps a stale copy */
#endif
                :: else -> skip
                fi
            }
        :: else -> skip
        fi;
        sharers = 0;
        if
        :: sacks > 0 ->
            busy = BUSY_INV;
            acks = sacks;
            req = r;
            req_mode = DSM_PG_M;
            req_had = shad
        :: else ->
            dstate = DIR_M;
            owner = r;
            grant(r, DSM_PG_M, !shad && r != HOME)
        fi
    fi
}

/* drain(): serve queued requests until one needs a reply or the queue is empty. */
inline drain()
{
    do
    :: busy == BUSY_NONE && len(q) > 0 ->
        q?dr, dm;
        serve(dr, dm)
    :: else -> break
    od
}

/* dsm_dir_request() */
inline dir_request(src, mode)
{
    if
    :: busy != BUSY_NONE || len(q) > 0 ->
        assert(len(q) < NODES);
        q!src, mode
    :: else -> serve(src, mode)
    fi
}

/* on_inv_ack() */
inline on_inv_ack(src)
{
    /* "unexpected invalidation ack" */
    assert(busy == BUSY_INV && acks > 0);
    acks--;
    if
    :: acks == 0 ->
        busy = BUSY_NONE;
        dstate = DIR_M;
        owner = req;
        grant(req, DSM_PG_M, !req_had && req != HOME);
        req = 0;
        req_mode = 0;
        req_had = 0;
#ifndef BUG_NO_DRAIN
        drain()
#else
        skip
#endif
    :: else -> skip
    fi
}

/* on_recall_ack(): v is the version of the page carried. */
inline on_recall_ack(src, v)
{
    /* "unexpected recall ack" */
    assert(busy == BUSY_RECALL && owner == src);
    /* "Its own view is I here (the owner was another node)": the copy does not overwrite a readable page */
    assert(pg[HOME] == DSM_PG_I);
#ifndef BUG_STALE_MEM
    ver[HOME] = v; /* memcpy to the home's memory */
#endif
    busy = BUSY_NONE;
    sharers = 0;
    if
    :: req_mode == DSM_PG_S ->
        dstate = DIR_S;
        owner = 0;
        sharers = (1 << src) | (1 << req)
    :: else ->
        dstate = DIR_M;
        owner = req
    fi;
    grant(req, req_mode, req != HOME);
    req = 0;
    req_mode = 0;
    drain()
}

/* ---- processes ---- */

/* send_request() from dsm_pg_fault(), after want was set: the home calls its directory directly. */
inline request(n, mode)
{
    want[n] = mode;
    if
    :: n == HOME -> dir_request(HOME, mode)
    :: else ->
        if
        :: mode == DSM_PG_S -> snd(to_home[n], GETS, 0, 0, 0)
        :: else -> snd(to_home[n], GETM, 0, 0, 0)
        fi
    fi
}

/* A node's application threads: faults (dsm_pg_fault) and writes. Reads need no step: check() asserts in
 * every state that every readable copy is the latest, which is what any read at any time would return. */
proctype app(byte n)
{
#ifndef LIVENESS
    byte ops = OPS;
    do
    :: atomic { ops > 0 && want[n] == 0 && pg[n] == DSM_PG_I -> ops--; request(n, DSM_PG_S); check() }
    :: atomic { ops > 0 && want[n] == 0 && pg[n] != DSM_PG_M -> ops--; request(n, DSM_PG_M); check() }
    :: atomic { ops > 0 && pg[n] == DSM_PG_M -> ops--; latest++; ver[n] = latest; check() }
    :: ops == 0 && want[n] == 0 -> break /* a faulting thread returns only once granted */
    od
#else
    /* Fault forever: any request whenever none is outstanding and the page is not already M. */
end:
    do
    :: atomic { want[n] == 0 && pg[n] == DSM_PG_I -> request(n, DSM_PG_S); check() }
    :: atomic { want[n] == 0 && pg[n] != DSM_PG_M -> request(n, DSM_PG_M); check() }
    od
#endif
}

/* A remote node's progress thread: on_grant, on_inv, on_recall. */
proctype node_rx(byte n)
{
end:
    do
    :: atomic { from_home[n]?GRANT, ha, hd, hv -> pg_grant(n, ha, hd, hv); check() }
    :: atomic { from_home[n]?INV, _, _, _ -> pg_demote(n, DSM_PG_I); check() };
        snd(to_home[n], INV_ACK, 0, 0, 0)
    :: atomic {
            from_home[n]?RECALL, ha, _, _ ->
            /* "recalled page ..., which this node does not own" */
            assert(pg[n] == DSM_PG_M);
            /* protection first, then the data */
            pg_demote(n, ha);
            check()
        };
        snd(to_home[n], RECALL_ACK, 0, 1, ver[n])
    od
}

/* The home's progress thread, for the channel from node n: on_get, on_inv_ack, on_recall_ack. */
proctype home_rx(byte n)
{
end:
    do
    :: atomic {
            to_home[n]?ht, ha, hd, hv ->
            if
            :: ht == GETS -> dir_request(n, DSM_PG_S)
            :: ht == GETM -> dir_request(n, DSM_PG_M)
            :: ht == INV_ACK -> on_inv_ack(n)
            :: ht == RECALL_ACK -> assert(hd); on_recall_ack(n, hv)
            :: else -> assert(false) /* no other message goes to the home */
            fi;
            check()
        }
    od
}

init
{
    byte i;
    atomic {
        for (i : 0 .. NODES - 1) {
            run app(i);
            if
            :: i != HOME ->
                run node_rx(i);
                run home_rx(i)
            :: else -> skip
            fi
        }
    }
}

#ifdef LIVENESS
/* every request completes */
#if NODES == 2
ltl done { [] ((want[0] != 0) -> <> (want[0] == 0)) && [] ((want[1] != 0) -> <> (want[1] == 0)) }
#elif NODES == 3
ltl done { [] ((want[0] != 0) -> <> (want[0] == 0)) && [] ((want[1] != 0) -> <> (want[1] == 0)) &&
           [] ((want[2] != 0) -> <> (want[2] == 0)) }
#endif
#endif
