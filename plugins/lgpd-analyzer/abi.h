/* ztmesh plugin ABI v1 for freestanding C (see docs/plugin-abi.md).
 *
 * The host writes the JSON input into memory it obtained from ztm_alloc, calls an exported
 * function fn(ptr, len) and reads the JSON output at the (ptr << 32 | len) it returns.
 * Every call runs in a fresh instance, so a bump allocator that never frees is enough. */
#ifndef ZTM_ABI_H
#define ZTM_ABI_H

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;

#define ZTM_EXPORT(name) __attribute__((export_name(name)))

extern u8 __heap_base;
static u32 ztm_heap_top;

ZTM_EXPORT("ztm_abi_version") int ztm_abi_version(void) { return 1; }

ZTM_EXPORT("ztm_alloc") void *ztm_alloc(u32 size) {
  if (!ztm_heap_top) ztm_heap_top = (u32)&__heap_base;
  u32 start = (ztm_heap_top + 7u) & ~7u;
  u32 end = start + size;
  if (end < start) return 0;
  u32 have = (u32)__builtin_wasm_memory_size(0) * 65536u;
  if (end > have) {
    u32 pages = (end - have + 65535u) / 65536u;
    if (__builtin_wasm_memory_grow(0, pages) == (unsigned long)-1) return 0;
  }
  ztm_heap_top = end;
  return (void *)start;
}

static inline u64 ztm_result(const u8 *data, u32 len) { return ((u64)(u32)data << 32) | len; }

/* A growable output buffer. */
typedef struct { u8 *data; u32 len, cap; } ztm_buf;

static void ztm_memcpy(u8 *dst, const u8 *src, u32 n) { for (u32 i = 0; i < n; i++) dst[i] = src[i]; }

static int ztm_reserve(ztm_buf *b, u32 more) {
  if (b->len + more <= b->cap) return 1;
  u32 cap = b->cap ? b->cap : 256;
  while (cap < b->len + more) cap *= 2;
  u8 *grown = ztm_alloc(cap);
  if (!grown) return 0;
  if (b->data) ztm_memcpy(grown, b->data, b->len);
  b->data = grown;
  b->cap = cap;
  return 1;
}

static void ztm_put(ztm_buf *b, const char *s) {
  u32 n = 0;
  while (s[n]) n++;
  if (!ztm_reserve(b, n)) return;
  ztm_memcpy(b->data + b->len, (const u8 *)s, n);
  b->len += n;
}

static void ztm_putc(ztm_buf *b, u8 c) {
  if (ztm_reserve(b, 1)) b->data[b->len++] = c;
}

static void ztm_put_uint(ztm_buf *b, u32 v) {
  char tmp[12];
  int i = 11;
  tmp[i] = 0;
  do { tmp[--i] = (char)('0' + v % 10); v /= 10; } while (v);
  ztm_put(b, tmp + i);
}

/* A JSON string body (escaped) from raw bytes. */
static void ztm_put_json_string(ztm_buf *b, const u8 *s, u32 n) {
  static const char hex[] = "0123456789abcdef";
  ztm_putc(b, '"');
  for (u32 i = 0; i < n; i++) {
    u8 c = s[i];
    if (c == '"' || c == '\\') { ztm_putc(b, '\\'); ztm_putc(b, c); }
    else if (c < 0x20) { ztm_put(b, "\\u00"); ztm_putc(b, (u8)hex[c >> 4]); ztm_putc(b, (u8)hex[c & 15]); }
    else ztm_putc(b, c);
  }
  ztm_putc(b, '"');
}

static u64 ztm_error(const char *message) {
  ztm_buf b = {0, 0, 0};
  ztm_put(&b, "{\"error\":");
  u32 n = 0;
  while (message[n]) n++;
  ztm_put_json_string(&b, (const u8 *)message, n);
  ztm_putc(&b, '}');
  return ztm_result(b.data, b.len);
}

#endif
