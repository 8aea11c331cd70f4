/*
 * libspprof_alloc.so: the LD_PRELOAD library through which spprof.memprof sees native
 * allocations (malloc from C extensions, numpy buffers, any library).
 *
 *     LD_PRELOAD=$(python -m spprof.memprof --preload-path) python app.py
 *
 * It interposes the malloc family and forwards every call to the next definition
 * (dlsym(RTLD_NEXT), normally glibc's). The sampling itself (Poisson byte sampling, the heap map,
 * the Python stack) stays in spprof's native module, which registers two callbacks with
 * spprof_alloc_set_hooks() when memprof starts and clears them at shutdown. Until then — and in
 * every process that never starts the profiler — each call costs one load and one branch.
 *
 * Why C and not Rust: the library is loaded before anything else in the process and its entry
 * points run before any runtime is initialised, inside malloc itself; a Rust cdylib would bring
 * a std runtime whose own initialisation may allocate through these very functions. C has no
 * such runtime, and maturin builds only one Rust cdylib per wheel (see docs/design.md).
 *
 * Rules: no allocation, no lock, nothing that may allocate (stdio, dlerror), no lazy TLS.
 *  - dlsym may call calloc/malloc before the real functions are known: those calls are served
 *    from a small static arena, and the arena's blocks are never handed to the real free.
 *  - `busy` (initial-exec TLS: a slot in the static TLS block, allocated when the library is
 *    preloaded, never lazily) keeps a callback that allocates from being re-entered.
 *  - fork: there is no lock to be held across it; the hooks pointer is inherited as it is.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef struct spprof_alloc_hooks {
    /* A block of `size` bytes was allocated at `ptr` (never NULL). */
    void (*on_alloc)(void *ptr, size_t size);
    /* The block at `ptr` (never NULL) is about to be released. */
    void (*on_free)(void *ptr);
} spprof_alloc_hooks;

static _Atomic(const spprof_alloc_hooks *) hooks;
static __thread int busy __attribute__((tls_model("initial-exec")));

static void *(*real_malloc)(size_t);
static void (*real_free)(void *);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);

/* ---- bootstrap arena: what dlsym allocates while the real functions are being looked up ---- */

static _Alignas(64) unsigned char arena[64 * 1024];
static atomic_size_t arena_used;

static void *arena_alloc(size_t size, size_t align) {
    if (align < 16)
        align = 16;
    size_t start, end;
    size_t used = atomic_load(&arena_used);
    do {
        start = (used + align - 1) & ~(align - 1);
        end = start + size;
        if (end > sizeof arena || end < start)
            return NULL;
    } while (!atomic_compare_exchange_weak(&arena_used, &used, end));
    return arena + start; /* static storage: already zeroed */
}

static int in_arena(const void *p) {
    return (const unsigned char *)p >= arena && (const unsigned char *)p < arena + sizeof arena;
}

static int resolving;

static void resolve(void) {
    if (resolving)
        return;
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_free = dlsym(RTLD_NEXT, "free");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_valloc = dlsym(RTLD_NEXT, "valloc");
    resolving = 0;
}

__attribute__((constructor)) static void init(void) {
    if (!real_malloc)
        resolve();
}

/* ---- the interface the native module uses ---------------------------------------------------- */

EXPORT int spprof_alloc_version(void) { return 1; }

/* Install (or, with NULL, remove) the callbacks. The struct must outlive every call. */
EXPORT void spprof_alloc_set_hooks(const spprof_alloc_hooks *h) { atomic_store(&hooks, h); }

/* ---- the interposed functions ----------------------------------------------------------------- */

static inline const spprof_alloc_hooks *active(void) {
    return atomic_load_explicit(&hooks, memory_order_relaxed);
}

static inline void note_alloc(void *p, size_t size) {
    const spprof_alloc_hooks *h = active();
    if (h && p && !busy) {
        busy = 1;
        h->on_alloc(p, size);
        busy = 0;
    }
}

static inline void note_free(void *p) {
    const spprof_alloc_hooks *h = active();
    if (h && p && !busy) {
        busy = 1;
        h->on_free(p);
        busy = 0;
    }
}

/* Before the real functions are known (dlsym at work), serve from the arena; after, a missing
 * function (a C library without it) fails like an allocation failure. */
#define REAL_OR(fn, fallback)                  \
    if (__builtin_expect(!real_##fn, 0)) {     \
        resolve();                             \
        if (!real_##fn)                        \
            return resolving ? (void *)(fallback) : NULL; \
    }

EXPORT void *malloc(size_t size) {
    REAL_OR(malloc, arena_alloc(size, 16))
    void *p = real_malloc(size);
    note_alloc(p, size);
    return p;
}

EXPORT void free(void *p) {
    if (!p || in_arena(p))
        return;
    note_free(p);
    if (real_free)
        real_free(p);
}

EXPORT void *calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    REAL_OR(calloc, arena_alloc(n * size, 16))
    void *p = real_calloc(n, size);
    note_alloc(p, n * size);
    return p;
}

/* realloc = free of the old block + a new one. The old block is forgotten before the call, so
 * its address cannot be handed out again (to another thread) before our record of it is gone;
 * if realloc then fails, that one sample is lost. */
EXPORT void *realloc(void *p, size_t size) {
    if (__builtin_expect(in_arena(p), 0)) { /* move a bootstrap block to the real heap */
        size_t room = (size_t)(arena + sizeof arena - (unsigned char *)p);
        void *q = malloc(size);
        if (q)
            memcpy(q, p, size < room ? size : room);
        return q;
    }
    REAL_OR(realloc, NULL)
    note_free(p);
    void *q = real_realloc(p, size);
    note_alloc(q, size);
    return q;
}

EXPORT void *reallocarray(void *p, size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n * size);
}

EXPORT int posix_memalign(void **out, size_t align, size_t size) {
    if (__builtin_expect(!real_posix_memalign, 0)) {
        resolve();
        if (!real_posix_memalign) {
            void *p = resolving ? arena_alloc(size, align) : 0;
            if (!p)
                return ENOMEM;
            *out = p;
            return 0;
        }
    }
    int rc = real_posix_memalign(out, align, size);
    if (rc == 0)
        note_alloc(*out, size);
    return rc;
}

EXPORT void *aligned_alloc(size_t align, size_t size) {
    REAL_OR(aligned_alloc, arena_alloc(size, align))
    void *p = real_aligned_alloc(align, size);
    note_alloc(p, size);
    return p;
}

EXPORT void *memalign(size_t align, size_t size) {
    REAL_OR(memalign, arena_alloc(size, align))
    void *p = real_memalign(align, size);
    note_alloc(p, size);
    return p;
}

EXPORT void *valloc(size_t size) {
    REAL_OR(valloc, arena_alloc(size, 4096))
    void *p = real_valloc(size);
    note_alloc(p, size);
    return p;
}
