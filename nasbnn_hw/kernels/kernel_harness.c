/* Run a TVM-compiled kernel library on a device that has no TVM runtime (e.g. an aarch64 board).
 *
 * Usage: kernel_harness LIB.so SPEC [REPEAT]
 * SPEC is a text file, one argument per line, in call order:
 *     in|out DTYPE_CODE BITS NDIM D0 .. Dn-1 PATH
 * (DLPack dtype codes: 0 int, 1 uint, 2 float). Inputs are read from PATH (raw little-endian), outputs
 * are written to PATH after the first call. Then the function is called REPEAT more times, timing each
 * call; one line "seconds: t1 t2 ..." is printed.
 * The library's entry `main` is called through its packed-ABI symbol `__tvm_ffi_main`. The runtime
 * services generated code asks for (parallel launch, workspace) are provided here: parallel loops run
 * serially on one thread.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tvm/ffi/c_api.h"
#include "tvm/runtime/c_backend_api.h"

#define MAX_ARGS 1024
#define MAX_DIMS 8

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "kernel error [%s]: ", kind);
  for (int i = 0; i < n; ++i) fputs(parts[i], stderr);
  fputc('\n', stderr);
}
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* msg) {
  fprintf(stderr, "kernel error [%s]: %s\n", kind, msg);
}
static int parallel_launch(FTVMParallelLambda f, void* cdata, int num_task) {
  TVMParallelGroupEnv env = {NULL, 1};
  (void)num_task;
  return f(0, &env, cdata);
}
static int parallel_barrier(int task_id, TVMParallelGroupEnv* penv) { (void)task_id; (void)penv; return 0; }
static void* alloc_workspace(int dt, int did, uint64_t nbytes, int dtc, int dtb) {
  void* p = NULL;
  (void)dt; (void)did; (void)dtc; (void)dtb;
  return posix_memalign(&p, 64, nbytes ? nbytes : 64) ? NULL : p;
}
static int free_workspace(int dt, int did, void* ptr) { (void)dt; (void)did; free(ptr); return 0; }

typedef int32_t (*packed_fn)(void*, void*, int32_t, void*);

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s LIB.so SPEC [REPEAT]\n", argv[0]); return 2; }
  int repeat = argc > 3 ? atoi(argv[3]) : 0;
  static DLTensor t[MAX_ARGS];
  static int64_t shapes[MAX_ARGS][MAX_DIMS];
  static char paths[MAX_ARGS][1024];
  static int is_out[MAX_ARGS];
  static TVMFFIAny args[MAX_ARGS];
  FILE* spec = fopen(argv[2], "r");
  if (!spec) { perror(argv[2]); return 2; }
  int n = 0;
  char dir[8];
  int code, bits, ndim;
  while (n < MAX_ARGS && fscanf(spec, "%7s %d %d %d", dir, &code, &bits, &ndim) == 4) {
    if (ndim > MAX_DIMS) { fprintf(stderr, "too many dims\n"); return 2; }
    size_t count = 1;
    for (int d = 0; d < ndim; ++d) {
      if (fscanf(spec, "%ld", (long*)&shapes[n][d]) != 1) { fprintf(stderr, "bad spec\n"); return 2; }
      count *= (size_t)shapes[n][d];
    }
    if (fscanf(spec, "%1023s", paths[n]) != 1) { fprintf(stderr, "bad spec\n"); return 2; }
    size_t nbytes = count * (size_t)(bits / 8);
    void* data = NULL;
    if (posix_memalign(&data, 64, nbytes ? nbytes : 64)) return 3;
    memset(data, 0, nbytes);
    is_out[n] = strcmp(dir, "out") == 0;
    if (!is_out[n]) {
      FILE* f = fopen(paths[n], "rb");
      if (!f || fread(data, 1, nbytes, f) != nbytes) { fprintf(stderr, "cannot read %s\n", paths[n]); return 4; }
      fclose(f);
    }
    DLTensor x = {data, {kDLCPU, 0}, ndim, {(uint8_t)code, (uint8_t)bits, 1}, shapes[n], NULL, 0};
    t[n] = x;
    memset(&args[n], 0, sizeof args[n]);
    args[n].type_index = kTVMFFIDLTensorPtr;
    args[n].v_ptr = &t[n];
    ++n;
  }
  fclose(spec);
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 5; }
  void** slot;
  if ((slot = (void**)dlsym(h, "__TVMBackendParallelLaunch"))) *slot = (void*)parallel_launch;
  if ((slot = (void**)dlsym(h, "__TVMBackendParallelBarrier"))) *slot = (void*)parallel_barrier;
  if ((slot = (void**)dlsym(h, "__TVMBackendAllocWorkspace"))) *slot = (void*)alloc_workspace;
  if ((slot = (void**)dlsym(h, "__TVMBackendFreeWorkspace"))) *slot = (void*)free_workspace;
  packed_fn fn = (packed_fn)dlsym(h, "__tvm_ffi_main");
  if (!fn) { fprintf(stderr, "dlsym __tvm_ffi_main: %s\n", dlerror()); return 6; }
  TVMFFIAny ret;
  memset(&ret, 0, sizeof ret);
  if (fn(NULL, args, n, &ret) != 0) { fprintf(stderr, "kernel returned an error\n"); return 7; }
  for (int i = 0; i < n; ++i) {
    if (!is_out[i]) continue;
    size_t count = 1;
    for (int d = 0; d < t[i].ndim; ++d) count *= (size_t)t[i].shape[d];
    FILE* f = fopen(paths[i], "wb");
    if (!f || fwrite(t[i].data, 1, count * (t[i].dtype.bits / 8), f) != count * (t[i].dtype.bits / 8)) {
      fprintf(stderr, "cannot write %s\n", paths[i]); return 8;
    }
    fclose(f);
  }
  printf("seconds:");
  for (int r = 0; r < repeat; ++r) {
    double a = now();
    fn(NULL, args, n, &ret);
    printf(" %.9f", now() - a);
  }
  printf("\n");
  return 0;
}
