/* nasbnn-run: run an exported nasbnn-hw inference bundle on a board that has nothing but a C library.
 *
 * Usage:  nasbnn-run [options] INPUT...           classify each input, print its top-k classes
 *         nasbnn-run --benchmark [options]        time the model on a generated input
 * Options:
 *   --bundle DIR     the bundle directory (default: the directory of this program)
 *   --top K          classes printed per input (default 5)
 *   --threads T      worker threads (default: the bundle's; 0 = every online CPU)
 *   --warmup W       untimed calls before timing (default 1; --benchmark: 5)
 *   --repeat R       timed calls per batch (default 1; --benchmark: 50)
 *   --logits FILE    also write the logits of every input as raw float32 (inputs x classes)
 *   --dump-input FILE  also write every preprocessed input as raw float32 (inputs x C x H x W)
 *   --info           print the runner version, its architecture and the bundle's shapes
 * An INPUT is an image (binary or ASCII PGM/PPM: P5, P6, P2, P3; 8 or 16 bit), a .npy array, or raw float32.
 * Images and uint8 .npy arrays (H x W or H x W x C) get the bundle's preprocessing: channels converted,
 * shorter side resized (bilinear with antialiasing, as Pillow), centre crop, (x / 255 - mean) / std.
 * float32 .npy arrays (C x H x W or 1 x C x H x W) and raw files (exactly C*H*W float32 values) are the
 * model's input as is. The bundle directory holds bundle.txt (this program's settings, written by
 * `nasbnn-hw export --format bundle`), the compiled model (model.so) and its parameters (params.bin).
 * Output lines: "input I NAME", then "  rank class score [label]" per class (score: softmax probability),
 * and "latency_ms median=.. iqr=.. min=.. max=.. runs=.. warmup=.. threads=.. batch=..".
 * Exit status: 0 success, 2 bad usage or input, 3 bad bundle, 4 the model failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tvm_backend.h"

#define RUNNER_VERSION 1
#define MAX_TENSORS 4096
#define MAX_DIMS 8
#define PARAMS_MAGIC "NBHWPRM1"
#define ENTRY_BYTES 88 /* code u8, bits u8, ndim u8, 5 pad, dims i64[8], offset u64, nbytes u64 */

static const char* prog = "nasbnn-run";

static int fail(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
  return code;
}

static void* xalloc(size_t n) {
  void* p = NULL;
  if (posix_memalign(&p, 64, n ? n : 1)) fail(3, "out of memory (%zu bytes)", n);
  memset(p, 0, n);
  return p;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- bundle.txt ---- */
typedef struct {
  char library[256], params[256], labels[256];
  int64_t in_shape[4], out_shape[2]; /* N C H W, N classes */
  int resize;                        /* shorter side before the centre crop; 0: whole image to H x W */
  float mean[4], std[4];
  int gray_mean;                     /* 1 channel from RGB: 0 luma (ITU-R 601, as Pillow), 1 channel mean */
  long threads;
} Bundle;

static int safe_name(const char* s) { /* names in bundle.txt stay inside the bundle directory */
  return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

static void read_bundle(const char* dir, Bundle* b) {
  char path[4096], line[1024];
  snprintf(path, sizeof path, "%s/bundle.txt", dir);
  FILE* f = fopen(path, "r");
  if (!f) fail(3, "cannot open %s: %s (is --bundle a bundle directory?)", path, strerror(errno));
  memset(b, 0, sizeof *b);
  int version = 0, have_in = 0, have_out = 0, lineno = 0;
  b->threads = 1;
  while (fgets(line, sizeof line, f)) {
    char key[32], name[256];
    lineno++;
    if (sscanf(line, "%31s", key) != 1 || key[0] == '#') continue;
    int ok = 1;
    if (!strcmp(key, "nasbnn-bundle")) ok = sscanf(line, "%*s %d", &version) == 1;
    else if (!strcmp(key, "library") || !strcmp(key, "params") || !strcmp(key, "labels")) {
      ok = sscanf(line, "%*s %255s", name) == 1 && safe_name(name);
      if (ok) strcpy(!strcmp(key, "library") ? b->library : !strcmp(key, "params") ? b->params : b->labels, name);
    } else if (!strcmp(key, "input"))
      ok = have_in = sscanf(line, "%*s %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64, &b->in_shape[0], &b->in_shape[1],
                            &b->in_shape[2], &b->in_shape[3]) == 4;
    else if (!strcmp(key, "output"))
      ok = have_out = sscanf(line, "%*s %" SCNd64 " %" SCNd64, &b->out_shape[0], &b->out_shape[1]) == 2;
    else if (!strcmp(key, "resize")) ok = sscanf(line, "%*s %d", &b->resize) == 1 && b->resize >= 0;
    else if (!strcmp(key, "mean") || !strcmp(key, "std")) {
      float* v = !strcmp(key, "mean") ? b->mean : b->std;
      int n = sscanf(line, "%*s %f %f %f %f", &v[0], &v[1], &v[2], &v[3]);
      ok = n >= 1;
    } else if (!strcmp(key, "gray")) {
      ok = sscanf(line, "%*s %255s", name) == 1 && (!strcmp(name, "luma") || !strcmp(name, "mean"));
      b->gray_mean = ok && !strcmp(name, "mean");
    } else if (!strcmp(key, "threads")) ok = sscanf(line, "%*s %ld", &b->threads) == 1 && b->threads >= 0;
    else ok = 0;
    if (!ok) fail(3, "%s line %d is not valid: %s", path, lineno, line);
  }
  fclose(f);
  if (version != 1) fail(3, "%s: bundle version %d, this runner reads version 1 (export the bundle again)", path, version);
  if (!have_in || !have_out || !b->library[0] || !b->params[0]) fail(3, "%s: incomplete (input/output/library/params)", path);
  for (int i = 0; i < 4; ++i)
    if (b->in_shape[i] < 1 || b->in_shape[i] > 1 << 16) fail(3, "%s: bad input shape", path);
  if (b->in_shape[1] > 4 || b->out_shape[0] != b->in_shape[0] || b->out_shape[1] < 1 || b->out_shape[1] > 1 << 24)
    fail(3, "%s: bad input or output shape", path);
  for (int c = 0; c < b->in_shape[1]; ++c)
    if (!(b->std[c] > 0) || !isfinite(b->mean[c])) fail(3, "%s: mean/std must give each of the %ld channels (std > 0)",
                                                          path, (long)b->in_shape[1]);
}

/* ---- params.bin: the model's parameters in call order ---- */
typedef struct { int count; DLTensor t[MAX_TENSORS]; int64_t shapes[MAX_TENSORS][MAX_DIMS]; void* blob; } Params;

static uint64_t rd64(const unsigned char* p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const unsigned char* p) { uint32_t v; memcpy(&v, p, 4); return v; }

static uint32_t crc32_update(uint32_t crc, const unsigned char* p, uint64_t n) { /* zlib's CRC-32 */
  static uint32_t table[256];
  if (!table[1])
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  crc = ~crc;
  for (uint64_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

static void read_params(const char* path, Params* P) {
  FILE* f = fopen(path, "rb");
  if (!f) fail(3, "cannot open %s: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END)) fail(3, "cannot read %s", path);
  long size = ftell(f);
  rewind(f);
  if (size < 32) fail(3, "%s is truncated: %ld bytes, not even a header (export the bundle again)", path, size);
  unsigned char* blob = xalloc((size_t)size);
  if (fread(blob, 1, (size_t)size, f) != (size_t)size) fail(3, "cannot read %s", path);
  fclose(f);
  if (memcmp(blob, PARAMS_MAGIC, 8)) fail(3, "%s is not a nasbnn-hw parameter file (bad magic)", path);
  uint32_t version = rd32(blob + 8), count = rd32(blob + 12);
  uint64_t total = rd64(blob + 16), sum = rd64(blob + 24);
  if (version != 1) fail(3, "%s: parameter format %u, this runner reads 1", path, version);
  if (total != (uint64_t)size)
    fail(3, "%s is %s: %ld bytes, its header says %llu (copy or export it again)", path,
         (uint64_t)size < total ? "truncated" : "longer than written", size, (unsigned long long)total);
  if (count > MAX_TENSORS || 32 + (uint64_t)count * ENTRY_BYTES > total) fail(3, "%s: bad tensor count %u", path, count);
  uint32_t crc = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const unsigned char* e = blob + 32 + (uint64_t)i * ENTRY_BYTES;
    DLTensor* t = &P->t[i];
    t->device.device_type = 1;
    t->dtype.code = e[0]; t->dtype.bits = e[1]; t->dtype.lanes = 1;
    t->ndim = e[2];
    if (t->ndim > MAX_DIMS || !(t->dtype.bits == 8 || t->dtype.bits == 16 || t->dtype.bits == 32 || t->dtype.bits == 64))
      fail(3, "%s: tensor %u has a bad header", path, i);
    uint64_t n = t->dtype.bits / 8;
    for (int d = 0; d < t->ndim; ++d) {
      int64_t v = (int64_t)rd64(e + 8 + 8 * d);
      if (v < 0 || v > (1LL << 40) || (v && n > (1ULL << 40) / (uint64_t)v)) fail(3, "%s: tensor %u has a bad shape", path, i);
      P->shapes[i][d] = v;
      n *= (uint64_t)v;
    }
    t->shape = P->shapes[i];
    uint64_t off = rd64(e + 72), nb = rd64(e + 80);
    if (nb != n || off % 64 || off > total || nb > total - off)
      fail(3, "%s: tensor %u (%llu bytes at offset %llu) does not fit the file's %llu bytes", path, i,
           (unsigned long long)nb, (unsigned long long)off, (unsigned long long)total);
    t->data = blob + off;
    crc = crc32_update(crc, blob + off, nb);
  }
  if (crc != sum) fail(3, "%s is damaged: its checksum does not match (copy or export it again)", path);
  P->count = (int)count;
  P->blob = blob;
}

/* ---- inputs ---- */
typedef struct { int w, h, c; unsigned char* px; } Image; /* interleaved, c = 1 or 3 */

static int next_token(FILE* f, long* v) { /* PNM header numbers, skipping blanks and # comments */
  int ch;
  do {
    ch = fgetc(f);
    if (ch == '#') while (ch != '\n' && ch != EOF) ch = fgetc(f);
  } while (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r');
  if (ch < '0' || ch > '9') return 0;
  *v = 0;
  while (ch >= '0' && ch <= '9') {
    *v = *v * 10 + (ch - '0');
    if (*v > 1 << 24) return 0;
    ch = fgetc(f);
  }
  return 1; /* the one whitespace after the last header number is consumed */
}

static int read_pnm(const char* name, FILE* f, Image* im) {
  char m[2];
  if (fread(m, 1, 2, f) != 2 || m[0] != 'P' || !strchr("2356", m[1])) return 0;
  long w, h, maxval;
  if (!next_token(f, &w) || !next_token(f, &h) || !next_token(f, &maxval) || w < 1 || h < 1 || maxval < 1 ||
      maxval > 65535 || w * h > (1L << 28))
    fail(2, "%s: bad PGM/PPM header (width, height, maxval 1-65535 expected)", name);
  im->w = (int)w; im->h = (int)h; im->c = (m[1] == '3' || m[1] == '6') ? 3 : 1;
  size_t n = (size_t)w * (size_t)h * (size_t)im->c;
  im->px = xalloc(n);
  for (size_t i = 0; i < n; ++i) {
    long v;
    if (m[1] == '2' || m[1] == '3') {
      if (!next_token(f, &v)) fail(2, "%s: PGM/PPM data ends after %zu of %zu values", name, i, n);
    } else if (maxval < 256) {
      int ch = fgetc(f);
      if (ch == EOF) fail(2, "%s: PGM/PPM data ends after %zu of %zu bytes", name, i, n);
      v = ch;
    } else {
      int a = fgetc(f), b = fgetc(f);
      if (b == EOF) fail(2, "%s: PGM/PPM data ends after %zu of %zu values", name, i, n);
      v = (a << 8) | b;
    }
    if (v > maxval) fail(2, "%s: value %ld above maxval %ld", name, v, maxval);
    im->px[i] = (unsigned char)(maxval == 255 ? v : lrint((double)v * 255.0 / (double)maxval));
  }
  return 1;
}

/* .npy: returns 1 with *img filled (uint8 H x W [x C]) or *raw (float32 of `want` values) */
static int read_npy(const char* name, FILE* f, Image* im, float** raw, int64_t want, const int64_t* chw) {
  unsigned char head[10];
  if (fread(head, 1, 8, f) != 8 || memcmp(head, "\x93NUMPY", 6)) return 0;
  uint32_t hlen;
  if (head[6] == 1) {
    unsigned char l[2];
    if (fread(l, 1, 2, f) != 2) fail(2, "%s: truncated .npy header", name);
    hlen = l[0] | (l[1] << 8);
  } else if (head[6] == 2 || head[6] == 3) {
    unsigned char l[4];
    if (fread(l, 1, 4, f) != 4) fail(2, "%s: truncated .npy header", name);
    hlen = rd32(l);
  } else fail(2, "%s: .npy version %d not supported", name, head[6]);
  if (hlen > 65536) fail(2, "%s: .npy header too long", name);
  char* hd = xalloc(hlen + 1);
  if (fread(hd, 1, hlen, f) != hlen) fail(2, "%s: truncated .npy header", name);
  char* d = strstr(hd, "'descr':");
  char* fo = strstr(hd, "'fortran_order':");
  char* sh = strstr(hd, "'shape':");
  if (!d || !fo || !sh) fail(2, "%s: .npy header lacks descr/fortran_order/shape", name);
  if (strncmp(fo + 16, " False", 6) && strncmp(fo + 16, "False", 5)) fail(2, "%s: Fortran-ordered .npy not supported", name);
  int is_f32 = strstr(d, "'<f4'") == d + 9 || strstr(d, "'<f4'") == d + 8;
  int is_u8 = strstr(d, "'|u1'") == d + 9 || strstr(d, "'|u1'") == d + 8;
  if (!is_f32 && !is_u8) fail(2, "%s: .npy dtype must be float32 ('<f4', the model's input) or uint8 ('|u1', an image)", name);
  int64_t dims[8];
  int nd = 0;
  char* p = strchr(sh, '(');
  if (!p) fail(2, "%s: bad .npy shape", name);
  for (++p;;) {
    while (*p == ' ' || *p == ',') ++p;
    if (*p == ')') break;
    if (nd == 8) fail(2, "%s: .npy of more than 8 dimensions", name);
    char* end;
    dims[nd++] = strtoll(p, &end, 10);
    if (end == p) fail(2, "%s: bad .npy shape", name);
    p = end;
  }
  /* sizes are bounded before they are multiplied: a product that overflows must not pass for a small one */
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) {
    if (dims[i] < 0 || dims[i] > (1LL << 28) || (dims[i] && n > (1LL << 28) / dims[i]))
      fail(2, "%s: .npy shape of more than 2^28 values or a negative size", name);
    n *= dims[i];
  }
  if (is_f32) {
    if (n != want) fail(2, "%s: float32 .npy of %lld values; the model takes %lld x %lld x %lld = %lld", name,
                        (long long)n, (long long)chw[0], (long long)chw[1], (long long)chw[2], (long long)want);
    *raw = xalloc((size_t)n * 4);
    if (fread(*raw, 4, (size_t)n, f) != (size_t)n) fail(2, "%s: .npy data is truncated", name);
    return 1;
  }
  if (!(nd == 2 || (nd == 3 && (dims[2] == 1 || dims[2] == 3))) || dims[0] < 1 || dims[1] < 1)
    fail(2, "%s: a uint8 .npy image must be H x W or H x W x C with C = 1 or 3", name);
  im->h = (int)dims[0]; im->w = (int)dims[1]; im->c = nd == 3 ? (int)dims[2] : 1;
  im->px = xalloc((size_t)n);
  if (fread(im->px, 1, (size_t)n, f) != (size_t)n) fail(2, "%s: .npy data is truncated", name);
  return 1;
}

/* Pillow's antialiased bilinear resampling of 8-bit images (ImagingResample): a triangle filter widened by
 * the scale factor, coefficients normalised then rounded to 22-bit fixed point, the horizontal pass first
 * (rounded to 8 bits) and then the vertical one. */
#define PRECISION_BITS (32 - 8 - 2)
static int coeffs(int in_size, int out_size, int** bounds_out, int32_t** k_out) {
  double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * filterscale;
  int ksize = (int)ceil(support) * 2 + 1;
  double* pre = xalloc(sizeof(double) * (size_t)ksize);
  int32_t* kk = xalloc(sizeof(int32_t) * (size_t)out_size * (size_t)ksize);
  int* bounds = xalloc(sizeof(int) * 2 * (size_t)out_size);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
    int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
    if (xmin < 0) xmin = 0;
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double t = fabs((x + xmin - center + 0.5) * ss), w = t < 1.0 ? 1.0 - t : 0.0;
      pre[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      double v = ww != 0.0 ? pre[x] / ww : pre[x];
      kk[xx * ksize + x] = (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  free(pre);
  *bounds_out = bounds;
  *k_out = kk;
  return ksize;
}

static unsigned char clip8(int64_t ss) {
  int64_t v = ss >> PRECISION_BITS;
  return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static Image resize(const Image* in, int w, int h) {
  Image cur = *in;
  if (w != cur.w) {
    int *b; int32_t* k;
    int ks = coeffs(cur.w, w, &b, &k);
    Image o = {w, cur.h, cur.c, xalloc((size_t)w * cur.h * cur.c)};
    for (int y = 0; y < cur.h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < cur.c; ++c) {
          int64_t ss = 1 << (PRECISION_BITS - 1);
          for (int i = 0; i < b[2 * x + 1]; ++i)
            ss += (int64_t)cur.px[((size_t)y * cur.w + b[2 * x] + i) * cur.c + c] * k[x * ks + i];
          o.px[((size_t)y * w + x) * cur.c + c] = clip8(ss);
        }
    free(b); free(k);
    if (cur.px != in->px) free(cur.px);
    cur = o;
  }
  if (h != cur.h) {
    int *b; int32_t* k;
    int ks = coeffs(cur.h, h, &b, &k);
    Image o = {cur.w, h, cur.c, xalloc((size_t)cur.w * h * cur.c)};
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < cur.w; ++x)
        for (int c = 0; c < cur.c; ++c) {
          int64_t ss = 1 << (PRECISION_BITS - 1);
          for (int i = 0; i < b[2 * y + 1]; ++i)
            ss += (int64_t)cur.px[((size_t)(b[2 * y] + i) * cur.w + x) * cur.c + c] * k[y * ks + i];
          o.px[((size_t)y * cur.w + x) * cur.c + c] = clip8(ss);
        }
    free(b); free(k);
    if (cur.px != in->px) free(cur.px);
    cur = o;
  }
  return cur;
}

/* Channels, resize, pad, centre crop and normalisation of eval: writes C x H x W floats to `dst`. */
static void preprocess(const Bundle* b, Image im, float* dst) {
  int C = (int)b->in_shape[1], H = (int)b->in_shape[2], W = (int)b->in_shape[3];
  if (C == 1 && im.c == 3) { /* Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16; or the mean */
    unsigned char* g = xalloc((size_t)im.w * im.h);
    for (size_t i = 0; i < (size_t)im.w * im.h; ++i) {
      const unsigned char* p = im.px + 3 * i;
      g[i] = b->gray_mean ? (unsigned char)((p[0] + p[1] + p[2] + 1) / 3)
                          : (unsigned char)((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
    }
    free(im.px);
    im.px = g; im.c = 1;
  }
  int nw, nh;
  if (b->resize == 0) { nw = W; nh = H; }
  else if (im.w <= im.h) { nw = b->resize; nh = (int)((long long)b->resize * im.h / im.w); }
  else { nh = b->resize; nw = (int)((long long)b->resize * im.w / im.h); }
  Image r = (nw != im.w || nh != im.h) ? resize(&im, nw, nh) : im;
  int pw = nw < W ? W - nw : 0, ph = nh < H ? H - nh : 0; /* smaller than the crop: zero padding, centred */
  int cw = nw + pw, ch = nh + ph;
  int top = (int)rint((ch - H) / 2.0), left = (int)rint((cw - W) / 2.0);
  for (int c = 0; c < C; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        int sy = y + top - ph / 2, sx = x + left - pw / 2;
        unsigned char v = 0;
        if (sy >= 0 && sy < nh && sx >= 0 && sx < nw) v = r.px[((size_t)sy * nw + sx) * r.c + (r.c == 1 ? 0 : c)];
        float f = (float)v / 255.0f;
        f = f - b->mean[c];
        dst[((size_t)c * H + y) * W + x] = f / b->std[c];
      }
  if (r.px != im.px) free(r.px);
  free(im.px);
}

static void load_input(const Bundle* b, const char* name, float* dst) {
  int64_t chw[3] = {b->in_shape[1], b->in_shape[2], b->in_shape[3]};
  int64_t want = chw[0] * chw[1] * chw[2];
  FILE* f = fopen(name, "rb");
  if (!f) fail(2, "cannot open input %s: %s", name, strerror(errno));
  Image im = {0};
  float* raw = NULL;
  if (read_pnm(name, f, &im) || (rewind(f), read_npy(name, f, &im, &raw, want, chw))) {
    if (!raw) {
      fclose(f);
      preprocess(b, im, dst);
      return;
    }
  } else { /* raw float32 */
    if (fseek(f, 0, SEEK_END)) fail(2, "cannot read %s", name);
    long size = ftell(f);
    if (size != want * 4)
      fail(2, "%s: %ld bytes is neither an image (PGM/PPM), a .npy, nor raw float32 input of %lld x %lld x %lld "
           "(%lld bytes)", name, size, (long long)chw[0], (long long)chw[1], (long long)chw[2], (long long)(want * 4));
    rewind(f);
    raw = xalloc((size_t)want * 4);
    if (fread(raw, 4, (size_t)want, f) != (size_t)want) fail(2, "cannot read %s", name);
  }
  fclose(f);
  for (int64_t i = 0; i < want; ++i)
    if (!isfinite(raw[i])) fail(2, "%s: value %lld is not a finite number", name, (long long)i);
  memcpy(dst, raw, (size_t)want * 4);
  free(raw);
}

/* One label per line; a label longer than 511 bytes is cut there (the rest of its line is skipped, so the
 * labels after it keep their classes). */
static char** read_labels(const char* path, int64_t n) {
  FILE* f = fopen(path, "r");
  if (!f) return NULL;
  char** labels = xalloc(sizeof(char*) * (size_t)n);
  char line[512];
  for (int64_t i = 0; i < n && fgets(line, sizeof line, f); ++i) {
    size_t len = strcspn(line, "\r\n");
    int cut = line[len] == 0 && len == sizeof line - 1;
    line[len] = 0;
    if (!(labels[i] = strdup(line))) fail(3, "out of memory (labels)");
    for (int c; cut && (c = fgetc(f)) != EOF && c != '\n';) {}
  }
  fclose(f);
  return labels;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static double quantile(const double* s, int n, double q) { /* linear, as numpy's default */
  double pos = q * (n - 1);
  int lo = (int)floor(pos), hi = lo + 1 < n ? lo + 1 : lo;
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

static long parse_count(const char* opt, const char* v, long lo, long hi) {
  char* end;
  errno = 0;
  long x = v ? strtol(v, &end, 10) : 0;
  if (!v || *end || errno || x < lo || x > hi) fail(2, "%s needs an integer in %ld..%ld (got %s)", opt, lo, hi, v ? v : "nothing");
  return x;
}

int main(int argc, char** argv) {
  const char* dir = NULL;
  const char* logits_path = NULL;
  const char* dump_path = NULL;
  long top = 5, threads = -1, warmup = -1, repeat = -1;
  int bench = 0, info = 0, ninputs = 0;
  const char** inputs = calloc((size_t)argc, sizeof(char*));
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (!strcmp(a, "--bundle")) dir = i + 1 < argc ? argv[++i] : (fail(2, "--bundle needs a directory"), NULL);
    else if (!strcmp(a, "--top")) top = parse_count(a, i + 1 < argc ? argv[++i] : NULL, 1, 1 << 24);
    else if (!strcmp(a, "--threads")) threads = parse_count(a, i + 1 < argc ? argv[++i] : NULL, 0, 1024);
    else if (!strcmp(a, "--warmup")) warmup = parse_count(a, i + 1 < argc ? argv[++i] : NULL, 0, 1000000);
    else if (!strcmp(a, "--repeat")) repeat = parse_count(a, i + 1 < argc ? argv[++i] : NULL, 1, 1000000);
    else if (!strcmp(a, "--logits")) logits_path = i + 1 < argc ? argv[++i] : (fail(2, "--logits needs a file"), NULL);
    else if (!strcmp(a, "--dump-input")) dump_path = i + 1 < argc ? argv[++i] : (fail(2, "--dump-input needs a file"), NULL);
    else if (!strcmp(a, "--benchmark")) bench = 1;
    else if (!strcmp(a, "--info")) info = 1;
    else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      printf("usage: nasbnn-run [--bundle DIR] [--top K] [--threads T] [--warmup W] [--repeat R] [--logits FILE] "
             "[--dump-input FILE] INPUT...\n       nasbnn-run --benchmark [--bundle DIR] [--threads T] [--warmup W] [--repeat R]\n"
             "INPUT: PGM/PPM image, .npy (uint8 image or float32 model input) or raw float32 model input\n");
      return 0;
    } else if (!strcmp(a, "--")) { while (++i < argc) inputs[ninputs++] = argv[i]; }
    else if (a[0] == '-' && a[1]) fail(2, "unknown option %s (see --help)", a);
    else inputs[ninputs++] = a;
  }
  char self_dir[4096];
  if (!dir) { /* the program's own directory */
    snprintf(self_dir, sizeof self_dir, "%s", argv[0]);
    char* slash = strrchr(self_dir, '/');
    if (slash) *slash = 0; else strcpy(self_dir, ".");
    dir = self_dir;
  }
  Bundle b;
  read_bundle(dir, &b);
  if (info) {
    const char* arch = build_arch();
    printf("nasbnn-run %d arch=%s input=%ldx%ldx%ldx%ld classes=%ld\n", RUNNER_VERSION, arch, (long)b.in_shape[0],
           (long)b.in_shape[1], (long)b.in_shape[2], (long)b.in_shape[3], (long)b.out_shape[1]);
    return 0;
  }
  if (!bench && !ninputs) fail(2, "no input given (an image, .npy or raw float32 file; or --benchmark)");
  if (warmup < 0) warmup = bench ? 5 : 1;
  if (repeat < 0) repeat = bench ? 50 : 1;
  if (threads < 0) threads = b.threads;
  { uint16_t one = 1; if (*(unsigned char*)&one != 1) fail(3, "this runner reads little-endian bundles only"); }

  static Params P;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, b.params);
  read_params(path, &P);
  if (P.count + 2 > MAX_TENSORS) fail(3, "too many parameters");
  if (tvm_backend_start(threads)) fail(3, "cannot start %ld threads", threads);
  snprintf(path, sizeof path, "%s%s/%s", dir[0] == '/' ? "" : "./", dir, b.library);
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) fail(3, "cannot load %s: %s", path, dlerror());
  packed_fn fn = tvm_backend_bind(h);
  if (!fn) fail(3, "%s has no function 'main' (not a nasbnn-hw export?)", path);

  int64_t N = b.in_shape[0], per = b.in_shape[1] * b.in_shape[2] * b.in_shape[3], K = b.out_shape[1];
  DLTensor x = {0}, y = {0};
  x.device.device_type = y.device.device_type = 1;
  x.ndim = 4; x.shape = b.in_shape; x.dtype.code = 2; x.dtype.bits = 32; x.dtype.lanes = 1;
  y.ndim = 2; y.shape = b.out_shape; y.dtype = x.dtype;
  x.data = xalloc((size_t)(N * per) * 4);
  y.data = xalloc((size_t)(N * K) * 4);
  static TVMFFIAny args[MAX_TENSORS];
  int nargs = 0;
  args[nargs].type_index = kTVMFFIDLTensorPtr; args[nargs++].v.v_ptr = &x;
  for (int i = 0; i < P.count; ++i) { args[nargs].type_index = kTVMFFIDLTensorPtr; args[nargs++].v.v_ptr = &P.t[i]; }
  args[nargs].type_index = kTVMFFIDLTensorPtr; args[nargs++].v.v_ptr = &y;

  int batches = bench ? 1 : (int)((ninputs + N - 1) / N);
  double* samples = xalloc(sizeof(double) * (size_t)batches * (size_t)repeat);
  int nsamples = 0;
  FILE *lf = NULL, *df = NULL;
  if (logits_path && !(lf = fopen(logits_path, "wb"))) fail(2, "cannot write %s: %s", logits_path, strerror(errno));
  if (dump_path && !(df = fopen(dump_path, "wb"))) fail(2, "cannot write %s: %s", dump_path, strerror(errno));
  char** labels = b.labels[0] ? (snprintf(path, sizeof path, "%s/%s", dir, b.labels), read_labels(path, K)) : NULL;
  float* xs = x.data;
  if (bench) { /* a fixed input in [-1, 1) */
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    for (int64_t i = 0; i < N * per; ++i) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      xs[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
  }
  for (int bi = 0; bi < batches; ++bi) {
    int first = bi * (int)N, n = bench ? (int)N : (ninputs - first < N ? ninputs - first : (int)N);
    if (!bench) {
      memset(xs, 0, (size_t)(N * per) * 4);
      for (int j = 0; j < n; ++j) load_input(&b, inputs[first + j], xs + j * per);
      if (df && fwrite(xs, 4, (size_t)(n * per), df) != (size_t)(n * per)) fail(2, "cannot write %s", dump_path);
    }
    for (long w = 0; w < (bi == 0 ? warmup : 0); ++w)
      if (tvm_backend_call(fn, args, nargs)) fail(4, "the model returned an error (see above)");
    for (long r = 0; r < repeat; ++r) {
      double t0 = now();
      if (tvm_backend_call(fn, args, nargs)) fail(4, "the model returned an error (see above)");
      samples[nsamples++] = now() - t0;
    }
    if (bench) break;
    const float* lg = y.data;
    for (int j = 0; j < n; ++j) {
      const float* row = lg + (int64_t)j * K;
      if (lf && fwrite(row, 4, (size_t)K, lf) != (size_t)K) fail(2, "cannot write %s", logits_path);
      double mx = row[0], z = 0;
      for (int64_t c = 1; c < K; ++c) if (row[c] > mx) mx = row[c];
      for (int64_t c = 0; c < K; ++c) z += exp(row[c] - mx);
      printf("input %d %s\n", first + j, inputs[first + j]);
      char* used = calloc((size_t)K, 1);
      for (long t = 0; t < top && t < K; ++t) {
        int64_t best = -1;
        for (int64_t c = 0; c < K; ++c) if (!used[c] && (best < 0 || row[c] > row[best])) best = c;
        used[best] = 1;
        printf("  %ld %lld %.6f%s%s\n", t + 1, (long long)best, exp(row[best] - mx) / z,
               labels && labels[best] ? " " : "", labels && labels[best] ? labels[best] : "");
      }
      free(used);
    }
  }
  if (lf && fclose(lf)) fail(2, "cannot write %s", logits_path);
  if (df && fclose(df)) fail(2, "cannot write %s", dump_path);
  qsort(samples, (size_t)nsamples, sizeof(double), cmp_double);
  printf("latency_ms median=%.6f iqr=%.6f min=%.6f max=%.6f runs=%d warmup=%ld threads=%d batch=%lld\n",
         1e3 * quantile(samples, nsamples, 0.5), 1e3 * (quantile(samples, nsamples, 0.75) - quantile(samples, nsamples, 0.25)),
         1e3 * samples[0], 1e3 * samples[nsamples - 1], nsamples, warmup, pool.nthreads, (long long)N);
  fflush(stdout);
  return 0;
}
