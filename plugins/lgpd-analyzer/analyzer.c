/* lgpd-analyzer: finds personal data under the LGPD in Portuguese text.
 *
 * Input  {"text": "..."}
 * Output {"findings":[{"type","start","end","masked","confidence"}...],"risk_score":0-100,
 *         "compliance_level":"low|medium|high|critical"}
 * Positions are byte offsets into the UTF-8 text. Detected: CPF and CNPJ (check digits
 * validated), CRM registrations, e-mail addresses, Brazilian phone numbers, patient names
 * ("paciente Maria Silva") and medical record numbers ("prontuário nº 12345"). */
#include "abi.h"

enum kind { CPF, CNPJ, CRM, EMAIL, PHONE, PATIENT, RECORD, KIND_COUNT };
static const char *KIND_NAME[KIND_COUNT] = {"cpf", "cnpj", "crm", "email", "phone", "patient_name", "medical_record"};
static const u32 KIND_RISK[KIND_COUNT] = {30, 15, 15, 10, 10, 25, 25};

typedef struct { enum kind kind; u32 start, end, confidence; } finding;

#define MAX_FINDINGS 4096
static finding found[MAX_FINDINGS];
static u32 found_count;
static u8 *taken; /* 1 for bytes already inside a finding */

static int is_digit(u8 c) { return c >= '0' && c <= '9'; }
static int is_upper(u8 c) { return c >= 'A' && c <= 'Z'; }
static int is_lower(u8 c) { return c >= 'a' && c <= 'z'; }
static int is_alpha(u8 c) { return is_upper(c) || is_lower(c); }
static int is_alnum(u8 c) { return is_alpha(c) || is_digit(c); }
static u8 lower(u8 c) { return is_upper(c) ? (u8)(c + 32) : c; }

static int free_range(u32 s, u32 e) {
  for (u32 i = s; i < e; i++) if (taken[i]) return 0;
  return 1;
}

static void add(enum kind k, u32 s, u32 e, u32 confidence) {
  if (found_count >= MAX_FINDINGS || !free_range(s, e)) return;
  found[found_count++] = (finding){k, s, e, confidence};
  for (u32 i = s; i < e; i++) taken[i] = 1;
}

/* --- JSON input ----------------------------------------------------------------------------- */

static u32 skip_ws(const u8 *s, u32 n, u32 i) {
  while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  return i;
}

static int hexval(u8 c) {
  if (is_digit(c)) return c - '0';
  c = lower(c);
  return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static void put_utf8(ztm_buf *b, u32 cp) {
  if (cp < 0x80) ztm_putc(b, (u8)cp);
  else if (cp < 0x800) { ztm_putc(b, (u8)(0xC0 | cp >> 6)); ztm_putc(b, (u8)(0x80 | (cp & 63))); }
  else if (cp < 0x10000) {
    ztm_putc(b, (u8)(0xE0 | cp >> 12)); ztm_putc(b, (u8)(0x80 | ((cp >> 6) & 63))); ztm_putc(b, (u8)(0x80 | (cp & 63)));
  } else {
    ztm_putc(b, (u8)(0xF0 | cp >> 18)); ztm_putc(b, (u8)(0x80 | ((cp >> 12) & 63)));
    ztm_putc(b, (u8)(0x80 | ((cp >> 6) & 63))); ztm_putc(b, (u8)(0x80 | (cp & 63)));
  }
}

/* Parse a JSON string at s[i] == '"'; decoded bytes go to out (if given). Returns index after it, 0 on error. */
static u32 parse_string(const u8 *s, u32 n, u32 i, ztm_buf *out) {
  if (i >= n || s[i] != '"') return 0;
  if (out && !ztm_reserve(out, n - i)) return 0; /* decoded text is never longer than its JSON form */
  for (i++; i < n; i++) {
    u8 c = s[i];
    if (c == '"') return i + 1;
    if (c != '\\') { if (out) out->data[out->len++] = c; continue; }
    if (++i >= n) return 0;
    c = s[i];
    u32 cp;
    switch (c) {
      case 'n': cp = '\n'; break; case 't': cp = '\t'; break; case 'r': cp = '\r'; break;
      case 'b': cp = 8; break; case 'f': cp = 12; break;
      case '"': case '\\': case '/': cp = c; break;
      case 'u': {
        if (i + 4 >= n) return 0;
        cp = 0;
        for (int k = 1; k <= 4; k++) { int h = hexval(s[i + k]); if (h < 0) return 0; cp = cp * 16 + (u32)h; }
        i += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u') {
          u32 lo = 0;
          for (int k = 3; k <= 6; k++) { int h = hexval(s[i + k]); if (h < 0) return 0; lo = lo * 16 + (u32)h; }
          if (lo >= 0xDC00 && lo < 0xE000) { cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00); i += 6; }
        }
        break;
      }
      default: return 0;
    }
    if (out) put_utf8(out, cp);
  }
  return 0;
}

/* Skip any JSON value; returns index after it, 0 on error. */
static u32 skip_value(const u8 *s, u32 n, u32 i) {
  i = skip_ws(s, n, i);
  if (i >= n) return 0;
  if (s[i] == '"') return parse_string(s, n, i, 0);
  if (s[i] == '{' || s[i] == '[') {
    u32 depth = 0;
    for (; i < n; i++) {
      if (s[i] == '"') { i = parse_string(s, n, i, 0); if (!i) return 0; i--; continue; }
      if (s[i] == '{' || s[i] == '[') depth++;
      else if (s[i] == '}' || s[i] == ']') { if (--depth == 0) return i + 1; }
    }
    return 0;
  }
  while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\n') i++;
  return i;
}

/* Extract input.text. Returns 1 on success. */
static int read_text(const u8 *s, u32 n, ztm_buf *text) {
  u32 i = skip_ws(s, n, 0);
  if (i >= n || s[i] != '{') return 0;
  i = skip_ws(s, n, i + 1);
  int seen = 0;
  while (i < n && s[i] != '}') {
    ztm_buf key = {0, 0, 0};
    i = parse_string(s, n, i, &key);
    if (!i) return 0;
    i = skip_ws(s, n, i);
    if (i >= n || s[i] != ':') return 0;
    i = skip_ws(s, n, i + 1);
    if (key.len == 4 && key.data[0] == 't' && key.data[1] == 'e' && key.data[2] == 'x' && key.data[3] == 't') {
      i = parse_string(s, n, i, text);
      seen = 1;
    } else {
      i = skip_value(s, n, i);
    }
    if (!i) return 0;
    i = skip_ws(s, n, i);
    if (i < n && s[i] == ',') i = skip_ws(s, n, i + 1);
  }
  return seen;
}

/* --- detectors ------------------------------------------------------------------------------ */

/* Collect up to max digits from s[i..] allowing separators at given positions; returns end or 0. */
static u32 digits_with_format(const u8 *t, u32 n, u32 i, const char *format, u8 *digits) {
  /* format: 'd' digit, other chars literal */
  u32 k = 0;
  for (const char *f = format; *f; f++, i++) {
    if (i >= n) return 0;
    if (*f == 'd') { if (!is_digit(t[i])) return 0; digits[k++] = (u8)(t[i] - '0'); }
    else if (t[i] != (u8)*f) return 0;
  }
  return i;
}

static int boundary_before(const u8 *t, u32 i) { return i == 0 || !is_alnum(t[i - 1]); }
static int boundary_after(const u8 *t, u32 n, u32 i) { return i >= n || !is_alnum(t[i]); }
static int digit_run_edge(const u8 *t, u32 n, u32 s, u32 e) {
  /* A number inside a longer run of digits or separators-with-digits is not this identifier. */
  if (s > 0 && (is_digit(t[s - 1]) || ((t[s - 1] == '.' || t[s - 1] == '-') && s > 1 && is_digit(t[s - 2])))) return 0;
  if (e < n && (is_digit(t[e]) || ((t[e] == '.' || t[e] == '-' || t[e] == '/') && e + 1 < n && is_digit(t[e + 1])))) return 0;
  return boundary_before(t, s) && boundary_after(t, n, e);
}

static int cpf_valid(const u8 *d) {
  int same = 1;
  for (int i = 1; i < 11; i++) if (d[i] != d[0]) same = 0;
  if (same) return 0;
  u32 sum = 0;
  for (int i = 0; i < 9; i++) sum += d[i] * (u32)(10 - i);
  u32 d1 = (sum * 10) % 11 % 10;
  sum = 0;
  for (int i = 0; i < 10; i++) sum += d[i] * (u32)(11 - i);
  u32 d2 = (sum * 10) % 11 % 10;
  return d1 == d[9] && d2 == d[10];
}

static int cnpj_valid(const u8 *d) {
  static const u32 w1[12] = {5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2};
  static const u32 w2[13] = {6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2};
  int same = 1;
  for (int i = 1; i < 14; i++) if (d[i] != d[0]) same = 0;
  if (same) return 0;
  u32 sum = 0;
  for (int i = 0; i < 12; i++) sum += d[i] * w1[i];
  u32 r = sum % 11, d1 = r < 2 ? 0 : 11 - r;
  sum = 0;
  for (int i = 0; i < 13; i++) sum += d[i] * w2[i];
  r = sum % 11;
  u32 d2 = r < 2 ? 0 : 11 - r;
  return d1 == d[12] && d2 == d[13];
}

static void detect_numbers(const u8 *t, u32 n) {
  u8 d[14];
  for (u32 i = 0; i < n; i++) {
    if (!is_digit(t[i]) || !boundary_before(t, i) || (i > 0 && (t[i - 1] == '.' || t[i - 1] == '-'))) continue;
    u32 e;
    if ((e = digits_with_format(t, n, i, "dd.ddd.ddd/dddd-dd", d)) && digit_run_edge(t, n, i, e) && cnpj_valid(d)) {
      add(CNPJ, i, e, 95);
    } else if ((e = digits_with_format(t, n, i, "ddd.ddd.ddd-dd", d)) && digit_run_edge(t, n, i, e) && cpf_valid(d)) {
      add(CPF, i, e, 95);
    } else if ((e = digits_with_format(t, n, i, "dddddddddddddd", d)) && digit_run_edge(t, n, i, e) && cnpj_valid(d)) {
      add(CNPJ, i, e, 80);
    } else if ((e = digits_with_format(t, n, i, "ddddddddddd", d)) && digit_run_edge(t, n, i, e) && cpf_valid(d)) {
      add(CPF, i, e, 80);
    }
  }
}

static const char *UFS = "AC AL AP AM BA CE DF ES GO MA MT MS MG PA PB PR PE PI RJ RN RS RO RR SC SP SE TO ";

static int is_uf(u8 a, u8 b) {
  for (const char *u = UFS; *u; u += 3) if ((u8)u[0] == a && (u8)u[1] == b) return 1;
  return 0;
}

static void detect_crm(const u8 *t, u32 n) {
  for (u32 i = 0; i + 8 <= n; i++) {
    if (t[i] != 'C' || t[i + 1] != 'R' || t[i + 2] != 'M' || !boundary_before(t, i)) continue;
    u32 j = i + 3;
    if (j < n && (t[j] == '/' || t[j] == '-' || t[j] == ' ')) j++;
    if (j + 2 > n || !is_uf(t[j], t[j + 1])) continue;
    j += 2;
    while (j < n && (t[j] == ' ' || t[j] == ':' || t[j] == '-')) j++;
    /* optional "nº" / "n°" (UTF-8 º = C2 BA, ° = C2 B0) */
    if (j + 2 < n && (t[j] == 'n' || t[j] == 'N') && t[j + 1] == 0xC2 && (t[j + 2] == 0xBA || t[j + 2] == 0xB0)) {
      j += 3;
      while (j < n && t[j] == ' ') j++;
    }
    u32 s = j;
    while (j < n && is_digit(t[j])) j++;
    if (j - s < 4 || j - s > 7 || !boundary_after(t, n, j)) continue;
    add(CRM, i, j, 90);
  }
}

static int email_local(u8 c) {
  return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

static void detect_email(const u8 *t, u32 n) {
  for (u32 at = 1; at + 1 < n; at++) {
    if (t[at] != '@') continue;
    u32 s = at;
    while (s > 0 && email_local(t[s - 1])) s--;
    while (s < at && t[s] == '.') s++;
    if (s == at) continue;
    u32 e = at + 1, last_dot = 0;
    while (e < n && (is_alnum(t[e]) || t[e] == '-' || t[e] == '.')) { if (t[e] == '.') last_dot = e; e++; }
    while (e > at + 1 && t[e - 1] == '.') e--;  /* a sentence's full stop is not part of the address */
    last_dot = 0;
    for (u32 k = at + 1; k < e; k++) if (t[k] == '.') last_dot = k;
    if (!last_dot || last_dot >= e || last_dot <= at + 1) continue;
    u32 tld = e - last_dot - 1;
    int alpha_tld = tld >= 2;
    for (u32 k = last_dot + 1; k < e; k++) if (!is_alpha(t[k])) alpha_tld = 0;
    if (alpha_tld) add(EMAIL, s, e, 95);
  }
}

/* Brazilian phone: [+55 ]( DD ) or DD, then [9]dddd[- ]dddd. An area code is required. */
static void detect_phone(const u8 *t, u32 n) {
  for (u32 i = 0; i < n; i++) {
    if (!(t[i] == '+' || t[i] == '(' || is_digit(t[i])) || (i > 0 && (is_alnum(t[i - 1]) || t[i - 1] == '.'))) continue;
    u32 j = i;
    int country = 0;
    if (t[j] == '+') {
      if (j + 3 > n || t[j + 1] != '5' || t[j + 2] != '5') continue;
      j += 3;
      country = 1;
      while (j < n && t[j] == ' ') j++;
    }
    int paren = j < n && t[j] == '(';
    if (paren) j++;
    if (j + 2 > n || !is_digit(t[j]) || !is_digit(t[j + 1]) || t[j] == '0') continue;
    j += 2;
    if (paren) { if (j >= n || t[j] != ')') continue; j++; }
    int spaced = 0;
    while (j < n && t[j] == ' ') { j++; spaced = 1; }
    if (!paren && !country && !spaced) continue; /* bare digit runs are not phones */
    u32 s = j;
    while (j < n && is_digit(t[j])) j++;
    u32 head = j - s;
    if (head == 8 || head == 9) {
      /* 912345678 */
    } else if (head == 4 || head == 5) {
      if (j >= n || (t[j] != '-' && t[j] != ' ')) continue;
      j++;
      u32 s2 = j;
      while (j < n && is_digit(t[j])) j++;
      if (j - s2 != 4) continue;
    } else {
      continue;
    }
    if (!boundary_after(t, n, j)) continue;
    add(PHONE, i, j, country || paren ? 90 : 75);
  }
}

/* Length of an uppercase letter at t[j]: ASCII, or Latin-1 capitals in UTF-8 (À..Þ except ×). */
static u32 upper_at(const u8 *t, u32 n, u32 j) {
  if (j < n && is_upper(t[j])) return 1;
  if (j + 1 < n && t[j] == 0xC3 && t[j + 1] >= 0x80 && t[j + 1] <= 0x9E && t[j + 1] != 0x97) return 2;
  return 0;
}

static int starts_with_ci(const u8 *t, u32 n, u32 i, const char *word) {
  for (u32 k = 0; word[k]; k++) if (i + k >= n || lower(t[i + k]) != (u8)word[k]) return 0;
  return 1;
}

static void detect_patient(const u8 *t, u32 n) {
  for (u32 i = 0; i < n; i++) {
    if (lower(t[i]) != 'p' || !boundary_before(t, i)) continue;
    /* "paciente Maria da Silva" */
    if (starts_with_ci(t, n, i, "paciente ") ) {
      u32 j = i + 9, end = 0;
      while (j < n) {
        if (upper_at(t, n, j)) {
          u32 w = j;
          while (w < n && (is_alpha(t[w]) || t[w] >= 0x80)) w++;
          end = w;
          j = w;
        } else if (end && (starts_with_ci(t, n, j, "da ") || starts_with_ci(t, n, j, "de ") ||
                           starts_with_ci(t, n, j, "do ") || starts_with_ci(t, n, j, "dos ") ||
                           starts_with_ci(t, n, j, "das ")) && is_lower(t[j])) {
          u32 w = j;
          while (w < n && t[w] != ' ') w++;
          if (upper_at(t, n, w + 1)) j = w + 1; else break;
          continue;
        } else {
          break;
        }
        if (j < n && t[j] == ' ' && j + 1 < n && (upper_at(t, n, j + 1) || is_lower(t[j + 1]))) { j++; continue; }
        break;
      }
      if (end) add(PATIENT, i + 9, end, 70);
      continue;
    }
    /* "prontuário nº 12345", "prontuario 12345", "prontuário: 12345" */
    if (starts_with_ci(t, n, i, "prontu")) {
      u32 j = i + 6;
      if (j + 1 < n && t[j] == 0xC3 && (t[j + 1] == 0xA1 || t[j + 1] == 0x81)) j += 2;   /* á */
      else if (j < n && lower(t[j]) == 'a') j++;
      else continue;
      if (!(starts_with_ci(t, n, j, "rio"))) continue;
      j += 3;
      while (j < n && (t[j] == ' ' || t[j] == ':' || t[j] == '#')) j++;
      if (j + 2 < n && (t[j] == 'n' || t[j] == 'N') && t[j + 1] == 0xC2 && (t[j + 2] == 0xBA || t[j + 2] == 0xB0)) j += 3;
      else if (j + 2 < n && (t[j] == 'n' || t[j] == 'N') && t[j + 1] == 'o' && t[j + 2] == '.') j += 3;
      while (j < n && t[j] == ' ') j++;
      u32 s = j;
      while (j < n && is_digit(t[j])) j++;
      if (j - s >= 3 && j - s <= 12 && boundary_after(t, n, j)) add(RECORD, s, j, 90);
    }
  }
}

/* --- output --------------------------------------------------------------------------------- */

static void put_masked(ztm_buf *b, const u8 *t, finding *f) {
  ztm_buf m = {0, 0, 0};
  u32 len = f->end - f->start;
  const u8 *s = t + f->start;
  if (f->kind == EMAIL) {
    u32 at = 0;
    while (at < len && s[at] != '@') at++;
    ztm_putc(&m, s[0]);
    ztm_put(&m, "***");
    for (u32 k = at; k < len; k++) ztm_putc(&m, s[k]);
  } else if (f->kind == PATIENT) {
    int word_start = 1;
    for (u32 k = 0; k < len; k++) {
      if (s[k] == ' ') { ztm_putc(&m, ' '); word_start = 1; }
      else if (word_start) {
        ztm_putc(&m, s[k]); /* the whole first character, continuation bytes included */
        while (k + 1 < len && (s[k + 1] & 0xC0) == 0x80) ztm_putc(&m, s[++k]);
        ztm_put(&m, "***");
        word_start = 0;
      }
    }
  } else {
    /* keep punctuation and letters, hide digits except the last `keep` */
    u32 keep = (f->kind == PHONE) ? 4 : 2, digits = 0, seen = 0;
    for (u32 k = 0; k < len; k++) if (is_digit(s[k])) digits++;
    for (u32 k = 0; k < len; k++) {
      if (is_digit(s[k])) { seen++; ztm_putc(&m, seen + keep > digits ? s[k] : '*'); }
      else ztm_putc(&m, s[k]);
    }
  }
  ztm_put_json_string(b, m.data ? m.data : (const u8 *)"", m.len);
}

static u64 report(const u8 *t, u32 n) {
  /* Findings never overlap, so ordering them by start is a walk over the text. */
  u32 *index_at = ztm_alloc((n + 1) * 4);
  if (!index_at) return ztm_error("out of memory");
  for (u32 i = 0; i <= n; i++) index_at[i] = 0;
  for (u32 i = 0; i < found_count; i++) index_at[found[i].start] = i + 1;
  finding *ordered = ztm_alloc(found_count * sizeof(finding) + 1);
  if (!ordered) return ztm_error("out of memory");
  u32 k = 0;
  for (u32 i = 0; i <= n; i++) if (index_at[i]) ordered[k++] = found[index_at[i] - 1];
  for (u32 i = 0; i < found_count; i++) found[i] = ordered[i];
  u32 score = 0, health = 0, identifier = 0;
  for (u32 i = 0; i < found_count; i++) {
    score += KIND_RISK[found[i].kind];
    enum kind k = found[i].kind;
    if (k == PATIENT || k == RECORD || k == CRM) health = 1;
    if (k == CPF || k == EMAIL || k == PHONE || k == PATIENT) identifier = 1;
  }
  if (score > 100) score = 100;
  if (health && identifier && found_count > 1 && score < 75) score = 75; /* health data tied to a person */
  const char *level = score >= 75 ? "critical" : score >= 50 ? "high" : score >= 25 ? "medium" : "low";
  ztm_buf b = {0, 0, 0};
  ztm_put(&b, "{\"findings\":[");
  for (u32 i = 0; i < found_count; i++) {
    finding *f = &found[i];
    if (i) ztm_putc(&b, ',');
    ztm_put(&b, "{\"type\":\"");
    ztm_put(&b, KIND_NAME[f->kind]);
    ztm_put(&b, "\",\"start\":");
    ztm_put_uint(&b, f->start);
    ztm_put(&b, ",\"end\":");
    ztm_put_uint(&b, f->end);
    ztm_put(&b, ",\"masked\":");
    put_masked(&b, t, f);
    ztm_put(&b, ",\"confidence\":0.");
    ztm_putc(&b, (u8)('0' + f->confidence / 10));
    ztm_putc(&b, (u8)('0' + f->confidence % 10));
    ztm_putc(&b, '}');
  }
  ztm_put(&b, "],\"risk_score\":");
  ztm_put_uint(&b, score);
  ztm_put(&b, ",\"compliance_level\":\"");
  ztm_put(&b, level);
  ztm_put(&b, "\"}");
  return ztm_result(b.data, b.len);
}

ZTM_EXPORT("analyze") u64 analyze(const u8 *input, u32 len) {
  ztm_buf text = {0, 0, 0};
  if (!read_text(input, len, &text)) return ztm_error("input must be a JSON object with a string field \"text\"");
  u32 n = text.len;
  const u8 *t = text.data ? text.data : (const u8 *)"";
  taken = ztm_alloc(n + 1);
  if (!taken) return ztm_error("out of memory");
  for (u32 i = 0; i < n; i++) taken[i] = 0;
  found_count = 0;
  detect_numbers(t, n);
  detect_crm(t, n);
  detect_email(t, n);
  detect_phone(t, n);
  detect_patient(t, n);
  return report(t, n);
}
