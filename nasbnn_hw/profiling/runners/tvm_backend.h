/* tvm_backend.h: the few TVM runtime pieces a TVM-compiled kernel library calls, for programs that load such a
 * library with dlopen and no libtvm_runtime (the timing harness and the inference bundle's runner).
 *
 * The library is one `export_library` output of an LLVM (or "c") target: it exports the packed-ABI entry
 * `__tvm_ffi_main` and calls the runtime only through function-pointer slots (`__TVMBackendParallelLaunch`,
 * ...) that TVM's module loader normally fills; `tvm_backend_bind` fills them with the implementations below
 * (a pthread pool started by `tvm_backend_start`, a workspace cache, errors printed on stderr).
 * Include it in one C file (every definition here is the program's own). */
#ifndef NASBNN_TVM_BACKEND_H
#define NASBNN_TVM_BACKEND_H
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the ABI pieces of DLPack and tvm-ffi that the generated code uses (stable C layouts) ---- */
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t* shape; int64_t* strides; uint64_t byte_offset;
} DLTensor;
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void* v_ptr; } v;
} TVMFFIAny;
enum { kTVMFFINone = 0, kTVMFFIDLTensorPtr = 7 };
typedef struct { void* sync_handle; int32_t num_task; } TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
typedef int32_t (*packed_fn)(void* self, TVMFFIAny* args, int32_t num_args, TVMFFIAny* result);

_Static_assert(sizeof(TVMFFIAny) == 16, "TVMFFIAny is 16 bytes");

/* ---- runtime functions the library may call ---- */
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* msg) {
  fprintf(stderr, "kernel error [%s]: %s\n", kind, msg);
}
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "kernel error [%s]: ", kind);
  for (int32_t i = 0; i < n; ++i) fputs(parts[i] ? parts[i] : "", stderr);
  fputc('\n', stderr);
}
/* Workspace: kernels allocate their intermediate buffers on every call. Freed blocks are kept and handed
 * out again for the same size (as TVM's workspace pool does), so repeated calls do not pay for fresh pages.
 * Each block carries its size in a 64-byte header, which keeps the returned pointer 64-byte aligned, and 64
 * guard bytes after its end: a kernel that writes past its workspace is reported when the block is freed
 * (and the program exits) instead of corrupting the heap silently. */
#define WS_HEADER 64
#define WS_GUARD 64
#define WS_CACHE 256
static pthread_mutex_t ws_mu = PTHREAD_MUTEX_INITIALIZER;
static void* ws_free_list[WS_CACHE];
static int ws_free_count;

static unsigned char ws_guard_byte(int i) { return (unsigned char)(0xA5 ^ i); }

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code, int dtype_bits) {
  (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
  void* base = NULL;
  pthread_mutex_lock(&ws_mu);
  for (int i = ws_free_count - 1; i >= 0; --i) {
    if (*(uint64_t*)ws_free_list[i] == nbytes) {
      base = ws_free_list[i];
      ws_free_list[i] = ws_free_list[--ws_free_count];
      break;
    }
  }
  pthread_mutex_unlock(&ws_mu);
  if (!base) {
    if (posix_memalign(&base, 64, WS_HEADER + nbytes + WS_GUARD)) return NULL;
    *(uint64_t*)base = nbytes;
    for (int i = 0; i < WS_GUARD; ++i) ((unsigned char*)base)[WS_HEADER + nbytes + i] = ws_guard_byte(i);
  }
  return (char*)base + WS_HEADER;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  if (!ptr) return 0;
  void* base = (char*)ptr - WS_HEADER;
  uint64_t nbytes = *(uint64_t*)base;
  for (int i = 0; i < WS_GUARD; ++i) {
    if (((unsigned char*)ptr)[nbytes + i] != ws_guard_byte(i)) {
      fprintf(stderr, "kernel error [MemoryError]: the kernel wrote past the end of a %llu-byte workspace "
                      "buffer\n", (unsigned long long)nbytes);
      _exit(70);
    }
  }
  pthread_mutex_lock(&ws_mu);
  if (ws_free_count < WS_CACHE) {
    ws_free_list[ws_free_count++] = base;
    base = NULL;
  }
  pthread_mutex_unlock(&ws_mu);
  free(base);
  return 0;
}

/* A fixed pool of worker threads; a launch runs task 0 on the calling thread. Workers spin a while on the
 * launch counter before sleeping (as TVM's own pool does), so a launch costs microseconds, not a wake-up. */
#define SPIN_ITERS (1 << 16)
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}
static struct {
  int nthreads;
  pthread_mutex_t mu;
  pthread_cond_t go;
  int sleepers;
  _Atomic unsigned long generation;
  _Atomic int remaining, status;
  int num_task;
  FTVMParallelLambda f;
  void* cdata;
  pthread_barrier_t barrier;
} pool = {1, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void* worker(void* arg) {
  int id = (int)(intptr_t)arg;
  unsigned long seen = 0, g;
  for (;;) {
    int spins = 0;
    while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen) {
      if (++spins < SPIN_ITERS) { cpu_relax(); continue; }
      pthread_mutex_lock(&pool.mu);
      pool.sleepers++;
      while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.go, &pool.mu);
      pool.sleepers--;
      pthread_mutex_unlock(&pool.mu);
    }
    seen = g;
    if (id < pool.num_task) {
      TVMParallelGroupEnv env = {&pool.barrier, pool.num_task};
      int rc = pool.f(id, &env, pool.cdata);
      if (rc) atomic_store(&pool.status, rc);
      atomic_fetch_sub_explicit(&pool.remaining, 1, memory_order_acq_rel);
    }
  }
  return NULL;
}

int TVMBackendParallelLaunch(FTVMParallelLambda f, void* cdata, int num_task) {
  int n = (num_task <= 0 || num_task > pool.nthreads) ? pool.nthreads : num_task;
  TVMParallelGroupEnv env = {&pool.barrier, n};
  if (n == 1) return f(0, &env, cdata);
  pthread_barrier_init(&pool.barrier, NULL, (unsigned)n);
  pool.f = f; pool.cdata = cdata; pool.num_task = n;
  atomic_store(&pool.status, 0);
  atomic_store(&pool.remaining, n - 1);
  atomic_fetch_add_explicit(&pool.generation, 1, memory_order_acq_rel);
  pthread_mutex_lock(&pool.mu);
  if (pool.sleepers) pthread_cond_broadcast(&pool.go);
  pthread_mutex_unlock(&pool.mu);
  int rc = f(0, &env, cdata);
  for (int spins = 0; atomic_load_explicit(&pool.remaining, memory_order_acquire) > 0;)
    if (++spins < SPIN_ITERS) cpu_relax(); else sched_yield();
  if (!rc) rc = atomic_load(&pool.status);
  pthread_barrier_destroy(&pool.barrier);
  return rc;
}

int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) {
  (void)task_id;
  if (penv->num_task > 1) pthread_barrier_wait((pthread_barrier_t*)penv->sync_handle);
  return 0;
}

/* The architecture this program was built for, as `uname -m` names it. */
static const char* build_arch(void) {
#if defined(__aarch64__)
  return "aarch64";
#elif defined(__x86_64__)
  return "x86_64";
#elif defined(__arm__)
  return "arm";
#elif defined(__riscv) && __riscv_xlen == 64
  return "riscv64";
#else
  return "unknown";
#endif
}

/* Start the worker threads: `threads` > 0, or 0 for every online CPU. 0 on success. */
static int tvm_backend_start(long threads) {
  pool.nthreads = threads > 0 ? (int)threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (pool.nthreads < 1) pool.nthreads = 1;
  for (int i = 1; i < pool.nthreads; ++i) {
    pthread_t th;
    if (pthread_create(&th, NULL, worker, (void*)(intptr_t)i)) return -1;
    pthread_detach(th);
  }
  return 0;
}

/* Fill the runtime slots of the library `h` (from dlopen) and return its `main` entry (NULL if absent). */
static packed_fn tvm_backend_bind(void* h) {
  void** slot;
  if ((slot = (void**)dlsym(h, "__TVMBackendParallelLaunch"))) *slot = (void*)TVMBackendParallelLaunch;
  if ((slot = (void**)dlsym(h, "__TVMBackendParallelBarrier"))) *slot = (void*)TVMBackendParallelBarrier;
  if ((slot = (void**)dlsym(h, "__TVMBackendAllocWorkspace"))) *slot = (void*)TVMBackendAllocWorkspace;
  if ((slot = (void**)dlsym(h, "__TVMBackendFreeWorkspace"))) *slot = (void*)TVMBackendFreeWorkspace;
  if ((slot = (void**)dlsym(h, "__TVMFFIErrorSetRaisedFromCStr"))) *slot = (void*)TVMFFIErrorSetRaisedFromCStr;
  if ((slot = (void**)dlsym(h, "__TVMFFIErrorSetRaisedFromCStrParts")))
    *slot = (void*)TVMFFIErrorSetRaisedFromCStrParts;
  return (packed_fn)dlsym(h, "__tvm_ffi_main");
}

/* Call `main` once with `n` DLTensor arguments; 0 on success (the kernel printed its error otherwise). */
static int tvm_backend_call(packed_fn fn, TVMFFIAny* args, int n) {
  TVMFFIAny ret;
  memset(&ret, 0, sizeof ret);
  return fn(NULL, args, n, &ret);
}

#endif
