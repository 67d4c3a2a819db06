/* nasbnn-harness: time one TVM-compiled kernel library on a board that has nothing but a C runtime.
 *
 * Usage:  nasbnn-harness SPEC        (SPEC a file, or "-" for standard input)
 *         nasbnn-harness --info      (prints the harness version and the architecture it was built for)
 *
 * The library is one `export_library` output of an LLVM (or "c") target, loaded with dlopen; the TVM runtime
 * pieces it calls come from tvm_backend.h (a pthread pool, a workspace cache), so no libtvm_runtime is needed.
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

#include "tvm_backend.h"

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
    const char* arch = build_arch();
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

  if (tvm_backend_start(threads)) return die(3, "cannot start threads", NULL);

  char libpath[1100];
  snprintf(libpath, sizeof libpath, "%s%s", lib[0] == '/' ? "" : "./", lib);
  void* h = dlopen(libpath, RTLD_NOW | RTLD_LOCAL);
  if (!h) return die(4, "dlopen failed", dlerror());
  packed_fn fn = tvm_backend_bind(h);
  if (!fn) return die(5, "library has no function 'main' (__tvm_ffi_main)", dlerror());

  static TVMFFIAny args[MAX_ARGS];
  memset(args, 0, sizeof args);
  for (int i = 0; i < nargs; ++i) { args[i].type_index = kTVMFFIDLTensorPtr; args[i].v.v_ptr = &tensors[i]; }

  for (long w = 0; w < warmup; ++w) {
    if (tvm_backend_call(fn, args, nargs)) return die(6, "kernel returned an error", NULL);
  }
  for (long r = 0; r < repeat; ++r) {
    double t0 = now();
    for (long k = 0; k < number; ++k) {
      if (tvm_backend_call(fn, args, nargs)) return die(6, "kernel returned an error", NULL);
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
