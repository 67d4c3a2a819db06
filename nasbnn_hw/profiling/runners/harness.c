/* nasbnn-harness: time one TVM-compiled kernel library on a board that has nothing but a C runtime.
 *
 * Usage:  nasbnn-harness SPEC        (SPEC a file, or "-" for standard input)
 *         nasbnn-harness --info      (prints the harness version and the architecture it was built for)
 *
 * The library is one `export_library` output of an LLVM (or "c") target: it exports the packed-ABI entry
 * `__tvm_ffi_main` and calls the TVM runtime only through a few function-pointer slots
 * (`__TVMBackendParallelLaunch`, ...) that TVM's module loader normally fills; this program fills them
 * with its own small implementations (a pthread pool, aligned allocation), so no libtvm_runtime is needed.
 *
 * SPEC is text, one item per line:
 *   nasbnn-harness 1
 *   lib kernel.so
 *   warmup W / repeat R / number N / threads T (0: every online CPU) / seed S / outputs 0|1
 *   arg in|out CODE BITS NDIM D0 .. Dn-1 gen|FILE      (one line per argument, in call order)
 * CODE/BITS are DLPack's type code and bit width. An input is read from FILE (raw little-endian bytes)
 * or generated ("gen") by the counter-based splitmix64 stream that nasbnn_hw/runners/inputs.py mirrors.
 * Output: "sample SECONDS" per timed repeat (each the mean of N calls); with "outputs 1" every output
 * argument I is written to the file "out<I>.bin" in the working directory. Exit status 0 on success.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HARNESS_VERSION 1
#define MAX_ARGS 1024  /* a whole ImageNet subnet passes several hundred parameter tensors */
#define MAX_DIMS 16

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
 * Each block carries its size in a 64-byte header, which keeps the returned pointer 64-byte aligned. */
#define WS_HEADER 64
#define WS_CACHE 256
static pthread_mutex_t ws_mu = PTHREAD_MUTEX_INITIALIZER;
static void* ws_free_list[WS_CACHE];
static int ws_free_count;

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
    if (posix_memalign(&base, 64, WS_HEADER + (nbytes ? nbytes : 1))) return NULL;
    *(uint64_t*)base = nbytes;
  }
  return (char*)base + WS_HEADER;
}
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  if (!ptr) return 0;
  void* base = (char*)ptr - WS_HEADER;
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

/* ---- deterministic inputs: splitmix64 over a counter (mirrored by inputs.py) ---- */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static int fill_random(void* data, uint64_t count, int code, int bits, uint64_t seed, int index) {
  uint64_t base = seed ^ ((uint64_t)index * 0xD1B54A32D192ED03ULL);
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t z = mix64(base + (i + 1) * 0x9E3779B97F4A7C15ULL);
    if (code == 2 && bits == 16) z = (z & 0x83FFULL) | 0x3800ULL;              /* float16 in ±[0.5, 1) */
    else if (code == 2 && bits == 32) z = (z & 0x807FFFFFULL) | 0x3F000000ULL;
    else if (code == 2 && bits == 64) z = (z & 0x800FFFFFFFFFFFFFULL) | 0x3FE0000000000000ULL;
    else if (code == 4 && bits == 16) z = (z & 0x807FULL) | 0x3F00ULL;         /* bfloat16 */
    else if (code == 6) z &= 1ULL;                                            /* bool */
    else if (code == 2 || code == 4) return -1;
    switch (bits) {
      case 1: case 8: ((uint8_t*)data)[i] = (uint8_t)z; break;
      case 16: ((uint16_t*)data)[i] = (uint16_t)z; break;
      case 32: ((uint32_t*)data)[i] = (uint32_t)z; break;
      case 64: ((uint64_t*)data)[i] = z; break;
      default: return -1;
    }
  }
  return 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int die(int code, const char* what, const char* detail) {
  fprintf(stderr, "nasbnn-harness: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  return code;
}

static int safe_name(const char* s) { /* file names in SPEC stay inside the working directory */
  if (!*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..")) return 0;
  return 1;
}

int main(int argc, char** argv) {
  if (argc == 2 && !strcmp(argv[1], "--info")) {
#if defined(__aarch64__)
    const char* arch = "aarch64";
#elif defined(__x86_64__)
    const char* arch = "x86_64";
#elif defined(__arm__)
    const char* arch = "arm";
#elif defined(__riscv) && __riscv_xlen == 64
    const char* arch = "riscv64";
#else
    const char* arch = "unknown";
#endif
    printf("nasbnn-harness %d arch=%s cpus=%ld\n", HARNESS_VERSION, arch, sysconf(_SC_NPROCESSORS_ONLN));
    return 0;
  }
  if (argc != 2) return die(2, "usage: nasbnn-harness SPEC|-|--info", NULL);
  FILE* spec = strcmp(argv[1], "-") ? fopen(argv[1], "r") : stdin;
  if (!spec) return die(2, "cannot open spec", strerror(errno));

  char line[4096], lib[1024] = "";
  long warmup = 0, repeat = 1, number = 1, threads = 0, outputs = 0;
  unsigned long long seed = 0;
  int nargs = 0, version = 0;
  static int is_out[MAX_ARGS];
  static char src[MAX_ARGS][256];
  static int64_t shapes[MAX_ARGS][MAX_DIMS];
  static DLTensor tensors[MAX_ARGS];
  static uint64_t nbytes[MAX_ARGS];
  memset(tensors, 0, sizeof tensors);
  while (fgets(line, sizeof line, spec)) {
    char key[32], io[8], name[256];
    if (sscanf(line, "%31s", key) != 1) continue;
    if (!strcmp(key, "nasbnn-harness")) sscanf(line, "%*s %d", &version);
    else if (!strcmp(key, "lib")) { if (sscanf(line, "%*s %1023s", lib) != 1) return die(2, "bad lib line", line); }
    else if (!strcmp(key, "warmup")) warmup = strtol(line + 6, NULL, 10);
    else if (!strcmp(key, "repeat")) repeat = strtol(line + 6, NULL, 10);
    else if (!strcmp(key, "number")) number = strtol(line + 6, NULL, 10);
    else if (!strcmp(key, "threads")) threads = strtol(line + 7, NULL, 10);
    else if (!strcmp(key, "outputs")) outputs = strtol(line + 7, NULL, 10);
    else if (!strcmp(key, "seed")) seed = strtoull(line + 4, NULL, 10);
    else if (!strcmp(key, "arg")) {
      if (nargs == MAX_ARGS) return die(2, "too many arguments", NULL);
      int code, bits, ndim, pos;
      if (sscanf(line, "%*s %7s %d %d %d%n", io, &code, &bits, &ndim, &pos) != 4 || ndim < 0 || ndim > MAX_DIMS)
        return die(2, "bad arg line", line);
      char* p = line + pos;
      uint64_t count = 1;
      for (int d = 0; d < ndim; ++d) {
        char* end;
        shapes[nargs][d] = strtoll(p, &end, 10);
        if (end == p || shapes[nargs][d] < 0) return die(2, "bad shape", line);
        count *= (uint64_t)shapes[nargs][d];
        p = end;
      }
      if (sscanf(p, "%255s", name) != 1) return die(2, "bad arg source", line);
      DLTensor* t = &tensors[nargs];
      t->device.device_type = 1; /* kDLCPU */
      t->ndim = ndim;
      t->dtype.code = (uint8_t)code; t->dtype.bits = (uint8_t)bits; t->dtype.lanes = 1;
      t->shape = shapes[nargs];
      nbytes[nargs] = count * (uint64_t)((bits + 7) / 8);
      if (posix_memalign(&t->data, 64, nbytes[nargs] ? nbytes[nargs] : 1)) return die(3, "out of memory", NULL);
      memset(t->data, 0, nbytes[nargs]);
      is_out[nargs] = !strcmp(io, "out");
      snprintf(src[nargs], sizeof src[nargs], "%s", name);
      if (!is_out[nargs]) {
        if (!strcmp(name, "gen")) {
          if (fill_random(t->data, count, code, bits, seed, nargs)) return die(2, "cannot generate dtype", line);
        } else {
          if (!safe_name(name)) return die(2, "input file name not allowed", name);
          FILE* f = fopen(name, "rb");
          if (!f) return die(2, "cannot open input", name);
          size_t got = fread(t->data, 1, nbytes[nargs], f);
          int extra = fgetc(f) != EOF;
          fclose(f);
          if (got != nbytes[nargs] || extra) return die(2, "input file has the wrong size", name);
        }
      }
      nargs++;
    } else return die(2, "unknown spec line", line);
  }
  if (spec != stdin) fclose(spec);
  if (version != HARNESS_VERSION) return die(2, "spec version mismatch", NULL);
  if (!lib[0] || repeat < 1 || number < 1 || warmup < 0) return die(2, "incomplete spec", NULL);

  pool.nthreads = threads > 0 ? (int)threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (pool.nthreads < 1) pool.nthreads = 1;
  for (int i = 1; i < pool.nthreads; ++i) {
    pthread_t th;
    if (pthread_create(&th, NULL, worker, (void*)(intptr_t)i)) return die(3, "cannot start threads", NULL);
    pthread_detach(th);
  }

  char libpath[1100];
  snprintf(libpath, sizeof libpath, "%s%s", lib[0] == '/' ? "" : "./", lib);
  void* h = dlopen(libpath, RTLD_NOW | RTLD_LOCAL);
  if (!h) return die(4, "dlopen failed", dlerror());
  void** slot;
  if ((slot = (void**)dlsym(h, "__TVMBackendParallelLaunch"))) *slot = (void*)TVMBackendParallelLaunch;
  if ((slot = (void**)dlsym(h, "__TVMBackendParallelBarrier"))) *slot = (void*)TVMBackendParallelBarrier;
  if ((slot = (void**)dlsym(h, "__TVMBackendAllocWorkspace"))) *slot = (void*)TVMBackendAllocWorkspace;
  if ((slot = (void**)dlsym(h, "__TVMBackendFreeWorkspace"))) *slot = (void*)TVMBackendFreeWorkspace;
  if ((slot = (void**)dlsym(h, "__TVMFFIErrorSetRaisedFromCStr"))) *slot = (void*)TVMFFIErrorSetRaisedFromCStr;
  if ((slot = (void**)dlsym(h, "__TVMFFIErrorSetRaisedFromCStrParts")))
    *slot = (void*)TVMFFIErrorSetRaisedFromCStrParts;
  packed_fn fn = (packed_fn)dlsym(h, "__tvm_ffi_main");
  if (!fn) return die(5, "library has no function 'main' (__tvm_ffi_main)", dlerror());

  static TVMFFIAny args[MAX_ARGS];
  TVMFFIAny ret;
  memset(args, 0, sizeof args);
  for (int i = 0; i < nargs; ++i) { args[i].type_index = kTVMFFIDLTensorPtr; args[i].v.v_ptr = &tensors[i]; }

  for (long w = 0; w < warmup; ++w) {
    memset(&ret, 0, sizeof ret);
    if (fn(NULL, args, nargs, &ret)) return die(6, "kernel returned an error", NULL);
  }
  for (long r = 0; r < repeat; ++r) {
    double t0 = now();
    for (long k = 0; k < number; ++k) {
      memset(&ret, 0, sizeof ret);
      if (fn(NULL, args, nargs, &ret)) return die(6, "kernel returned an error", NULL);
    }
    printf("sample %.9e\n", (now() - t0) / (double)number);
  }
  if (outputs) {
    for (int i = 0; i < nargs; ++i) {
      if (!is_out[i]) continue;
      char name[32];
      snprintf(name, sizeof name, "out%d.bin", i);
      FILE* f = fopen(name, "wb");
      if (!f || fwrite(tensors[i].data, 1, nbytes[i], f) != nbytes[i] || fclose(f)) return die(7, "cannot write", name);
    }
  }
  fflush(stdout);
  return 0;
}
