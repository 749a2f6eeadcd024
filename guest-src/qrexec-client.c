/*
 * qrexec-client-vm, the common case in C.
 *
 * An RPC call from a qube starts this program; inside gVisor a Python
 * start alone costs more than the rest of the call. This handles
 *
 *   qrexec-client-vm [--[no-]filter-escape-chars-stdout|stderr]
 *                    [--buffer-size=N] [--] TARGET SERVICE[+ARG]
 *
 * with valid names and no local program, and behaves there as the Python
 * client (qlite_guest.client) does: the same frames (docs/rpc.md), exit
 * codes and messages. Anything else (a local program, --help, an unknown
 * option, a bad name, an odd target or socket path) execs the Python
 * client with the same arguments before anything is sent, so its answer
 * is the Python one: qrexec-client-vm.py next to this program's
 * ../lib/qlite, else /usr/lib/qlite/qrexec-client-vm.py.
 *
 * Build: gcc -static -Os -s -Wall -Wextra -Werror -o qrexec-client-vm qrexec-client.c
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define PROG "qrexec-client-vm"
#define PY_NAME "qrexec-client-vm.py"
#define PY_ABS "/usr/lib/qlite/" PY_NAME
#define DEFAULT_SOCKET "/run/qlite/rpc.sock"

/* qlite/rpc/wire.py */
enum { REQUEST = 1, STDIN_ = 2, RESULT = 3, STDOUT_ = 4, STDERR_ = 5, EXIT_ = 6, ERROR_ = 7 };
#define HEADER 5
#define MAX_PAYLOAD (64 * 1024)
#define MAX_REQUEST (4 * 1024)
#define MAX_FRAME (MAX_PAYLOAD + HEADER)
/* qlite_guest.client: outgoing bytes held before stdin is no longer read. */
#define HIGH_WATER (4 * MAX_FRAME)
#define EXIT_REFUSED 126
#define EXIT_RPC_FAILED 125
/* Python's int() refuses longer digit strings (sys.int_info.default_max_str_digits). */
#define INT_MAX_DIGITS 4300
/* Arrays and objects nested deeper than this are a RecursionError for the
 * Python client's JSON scanner, whose limit is Python's recursion limit
 * less the client's own frames at that point: RESULT is read two frames
 * nearer main() than EXIT, and an ERROR one frame further than the frame
 * it came instead of. */
#define DEPTH_RESULT 993

static char **orig_argv;

/* -- the Python client, for everything but the common case ------------------------------------ */

static void exec_python(void) {
    char self[PATH_MAX], path[PATH_MAX + 64];
    const char *cands[2] = {NULL, PY_ABS};
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            snprintf(path, sizeof path, "%s/../lib/qlite/" PY_NAME, self);
            cands[0] = path;
        }
    }
    int err = ENOENT;
    for (int i = 0; i < 2; i++) {
        if (!cands[i] || access(cands[i], F_OK)) continue;
        orig_argv[0] = (char *)cands[i];
        execv(cands[i], orig_argv);
        err = errno;
        /* Not executable (a tree copied without its modes): through the interpreter. */
        int argc = 0;
        while (orig_argv[argc]) argc++;
        char **av = calloc((size_t)argc + 3, sizeof *av);
        if (!av) break;
        av[0] = "python3";
        av[1] = "-SE";
        for (int k = 0; k <= argc; k++) av[k + 2] = orig_argv[k];
        execv("/usr/bin/python3", av);
        free(av);
        break;
    }
    fprintf(stderr, PROG ": cannot run the Python client: %s\n", strerror(err));
    exit(EXIT_RPC_FAILED);
}

/* -- output ------------------------------------------------------------------------------------- */

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                struct pollfd pf = {fd, POLLOUT, 0};
                poll(&pf, 1, -1);
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

struct sink {
    int fd, filter, broken;
};

/* As the Python sink: terminal control bytes (C0 but TAB, LF, CR; and DEL)
 * become '_' when filtering; a reader gone (EPIPE) drops the rest quietly. */
static void sink_write(struct sink *s, const unsigned char *data, size_t n) {
    static unsigned char buf[MAX_PAYLOAD];
    if (s->broken) return;
    if (s->filter) {
        for (size_t i = 0; i < n; i++) {
            unsigned char c = data[i];
            buf[i] = ((c < 32 && c != 9 && c != 10 && c != 13) || c == 127) ? '_' : c;
        }
        data = buf;
    }
    if (write_all(s->fd, data, n)) s->broken = 1;
}

/* The client's one-line messages ("qrexec-client-vm: ..."), built here. */
static char msg[4096];

static void setmsg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
}

static int fail(int code) {
    size_t n = strlen(msg);
    char line[sizeof msg + 32];
    int len = snprintf(line, sizeof line, PROG ": %.*s\n", (int)n, msg);
    write_all(2, (unsigned char *)line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
    return code;
}

/* -- JSON, as the Python client's scanner (json's C half) reads it ------------------------------ */

/* Unicode 14 (Python 3.11's unicodedata) format characters, category Cf. */
static const uint32_t CF[][2] = {
    {0xad, 0xad}, {0x600, 0x605}, {0x61c, 0x61c}, {0x6dd, 0x6dd}, {0x70f, 0x70f}, {0x890, 0x891},
    {0x8e2, 0x8e2}, {0x180e, 0x180e}, {0x200b, 0x200f}, {0x202a, 0x202e}, {0x2060, 0x2064},
    {0x2066, 0x206f}, {0xfeff, 0xfeff}, {0xfff9, 0xfffb}, {0x110bd, 0x110bd}, {0x110cd, 0x110cd},
    {0x13430, 0x13438}, {0x1bca0, 0x1bca3}, {0x1d173, 0x1d17a}, {0xe0001, 0xe0001}, {0xe0020, 0xe007f},
};

/* names.printable: Cc, Cf, Cs, Zl, Zp (TAB excepted) shown as '?'. */
static int unsafe(uint32_t c) {
    if (c == 9) return 0;
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || (c >= 0xd800 && c <= 0xdfff) || c == 0x2028 || c == 0x2029)
        return 1;
    for (size_t i = 0; i < sizeof CF / sizeof CF[0]; i++)
        if (c >= CF[i][0] && c <= CF[i][1]) return 1;
    return 0;
}

struct js {
    const unsigned char *s;
    size_t n;
    int depth, max_depth;
    /* the first error: a ready message */
    int failed;
    char err[256];
};

static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Code points before byte offset POS (the text is valid UTF-8). */
static size_t cp_index(const struct js *j, size_t pos) {
    size_t k = 0;
    for (size_t i = 0; i < pos && i < j->n; i++) k += (j->s[i] & 0xC0) != 0x80;
    return k;
}

/* A JSONDecodeError's message: what json.decoder would say. */
static int jerr(struct js *j, const char *what, size_t pos) {
    if (j->failed) return -1;
    size_t line = 1, last_nl = 0;
    int seen_nl = 0;
    for (size_t i = 0; i < pos && i < j->n; i++)
        if (j->s[i] == '\n') line++, last_nl = i, seen_nl = 1;
    size_t ch = cp_index(j, pos);
    size_t col = seen_nl ? ch - cp_index(j, last_nl) : ch + 1;
    snprintf(j->err, sizeof j->err, "malformed message: %s: line %zu column %zu (char %zu)", what, line, col, ch);
    j->failed = 1;
    return -1;
}

static int jmsg(struct js *j, const char *text) {
    if (!j->failed) snprintf(j->err, sizeof j->err, "malformed message: %s", text);
    j->failed = 1;
    return -1;
}

/* StopIteration from the scanner: json reports where the text began. */
#define STOP (-2)

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static uint32_t utf8_at(const unsigned char *p, size_t *len) {
    unsigned char c = p[0];
    if (c < 0x80) return *len = 1, c;
    if (c < 0xE0) return *len = 2, (uint32_t)(c & 0x1F) << 6 | (p[1] & 0x3F);
    if (c < 0xF0) return *len = 3, (uint32_t)(c & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
    return *len = 4, (uint32_t)(c & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 | (uint32_t)(p[2] & 0x3F) << 6 |
                         (p[3] & 0x3F);
}

/* A string whose opening quote is at IDX-1; its code points go to OUT
 * (at most CAP of them; *COUNT gets the whole length). Returns the index
 * after the closing quote, or -1. Mirrors scanstring_unicode. */
static long jstring(struct js *j, size_t idx, uint32_t *out, size_t cap, size_t *count) {
    size_t begin = idx - 1, next = idx, k = 0;
    for (;;) {
        if (next >= j->n) return jerr(j, "Unterminated string starting at", begin);
        unsigned char d = j->s[next];
        uint32_t c;
        if (d == '"') break;
        if (d < 0x20) return jerr(j, "Invalid control character at", next);
        if (d != '\\') {
            size_t l;
            c = utf8_at(j->s + next, &l);
            next += l;
        } else {
            next++;
            if (next == j->n) return jerr(j, "Unterminated string starting at", begin);
            d = j->s[next];
            if (d != 'u') {
                switch (d) {
                case '"': case '\\': case '/': c = d; break;
                case 'b': c = '\b'; break;
                case 'f': c = '\f'; break;
                case 'n': c = '\n'; break;
                case 'r': c = '\r'; break;
                case 't': c = '\t'; break;
                default: return jerr(j, "Invalid \\escape", next - 1);
                }
                next++;
            } else {
                next++;
                size_t end = next + 4;
                if (end >= j->n) return jerr(j, "Invalid \\uXXXX escape", next - 1);
                c = 0;
                for (; next < end; next++) {
                    int h = hexval(j->s[next]);
                    if (h < 0) return jerr(j, "Invalid \\uXXXX escape", end - 5);
                    c = c << 4 | (uint32_t)h;
                }
                if (c >= 0xD800 && c <= 0xDBFF && end + 6 < j->n && j->s[next] == '\\' && j->s[next + 1] == 'u') {
                    uint32_t c2 = 0;
                    size_t e2 = end + 6;
                    for (next += 2; next < e2; next++) {
                        int h = hexval(j->s[next]);
                        if (h < 0) return jerr(j, "Invalid \\uXXXX escape", e2 - 5);
                        c2 = c2 << 4 | (uint32_t)h;
                    }
                    if (c2 >= 0xDC00 && c2 <= 0xDFFF) c = 0x10000 + ((c - 0xD800) << 10) + (c2 - 0xDC00);
                    else next = end;
                }
            }
        }
        if (out && k < cap) out[k] = c;
        k++;
    }
    if (count) *count = k;
    return (long)next + 1;
}

struct num {
    int is_int, neg, big;
    long long val; /* clamped: big when past 10^15 */
};

static long jnumber(struct js *j, size_t idx, struct num *v) {
    size_t start = idx, end_idx = j->n - 1, digits = 0;
    int is_float = 0;
    memset(v, 0, sizeof *v);
    if (j->s[idx] == '-') {
        v->neg = 1;
        idx++;
        if (idx > end_idx) return STOP;
    }
    if (j->s[idx] >= '1' && j->s[idx] <= '9') {
        while (idx <= end_idx && is_digit(j->s[idx])) {
            if (v->val < 1000000000000000LL) v->val = v->val * 10 + (j->s[idx] - '0');
            else v->big = 1;
            idx++;
            digits++;
        }
    } else if (j->s[idx] == '0') {
        idx++;
        digits = 1;
    } else {
        return STOP;
    }
    if (idx < end_idx && j->s[idx] == '.' && is_digit(j->s[idx + 1])) {
        is_float = 1;
        idx += 2;
        while (idx <= end_idx && is_digit(j->s[idx])) idx++;
    }
    if (idx < end_idx && (j->s[idx] == 'e' || j->s[idx] == 'E')) {
        size_t e_start = idx++;
        if (idx < end_idx && (j->s[idx] == '-' || j->s[idx] == '+')) idx++;
        while (idx <= end_idx && is_digit(j->s[idx])) idx++;
        if (is_digit(j->s[idx - 1])) is_float = 1;
        else idx = e_start;
    }
    (void)start;
    v->is_int = !is_float;
    if (v->is_int && digits > INT_MAX_DIGITS) {
        char text[200];
        snprintf(text, sizeof text,
                 "Exceeds the limit (%d digits) for integer string conversion: value has %zu digits; "
                 "use sys.set_int_max_str_digits() to increase the limit",
                 INT_MAX_DIGITS, digits);
        jmsg(j, text);
        return -1;
    }
    return (long)idx;
}

/* What a member's value is, for the few the client reads. */
enum { V_OTHER, V_STR, V_INT };
struct val {
    int type;
    size_t at; /* V_STR: the index after its opening quote */
    size_t len; /* V_STR: code points */
    struct num num;
};

static long jvalue(struct js *j, size_t idx, struct val *v);

static long jcontainer(struct js *j, size_t idx, int obj) {
    /* IDX: after the opening bracket */
    unsigned char close = obj ? '}' : ']';
    size_t end_idx = j->n - 1;
    if (++j->depth > j->max_depth) return jmsg(j, "nested too deeply");
    while (idx <= end_idx && is_ws(j->s[idx])) idx++;
    if (idx > end_idx || j->s[idx] != close) {
        for (;;) {
            long next;
            struct val item;
            if (obj) {
                if (idx > end_idx || j->s[idx] != '"')
                    return jerr(j, "Expecting property name enclosed in double quotes", idx);
                next = jstring(j, idx + 1, NULL, 0, NULL);
                if (next < 0) return next;
                idx = (size_t)next;
                while (idx <= end_idx && is_ws(j->s[idx])) idx++;
                if (idx > end_idx || j->s[idx] != ':') return jerr(j, "Expecting ':' delimiter", idx);
                idx++;
                while (idx <= end_idx && is_ws(j->s[idx])) idx++;
            }
            next = jvalue(j, idx, &item);
            if (next < 0) return next;
            idx = (size_t)next;
            while (idx <= end_idx && is_ws(j->s[idx])) idx++;
            if (idx <= end_idx && j->s[idx] == close) break;
            if (idx > end_idx || j->s[idx] != ',') return jerr(j, "Expecting ',' delimiter", idx);
            idx++;
            while (idx <= end_idx && is_ws(j->s[idx])) idx++;
        }
    }
    j->depth--;
    return (long)idx + 1;
}

static int lit(const struct js *j, size_t idx, const char *w) {
    size_t n = strlen(w);
    return idx + n <= j->n && !memcmp(j->s + idx, w, n);
}

static long constant(struct js *j, const char *name) {
    char text[64];
    snprintf(text, sizeof text, "%s is not a JSON value", name);
    return jmsg(j, text);
}

/* scan_once_unicode */
static long jvalue(struct js *j, size_t idx, struct val *v) {
    memset(v, 0, sizeof *v);
    if (idx >= j->n) return STOP;
    switch (j->s[idx]) {
    case '"':
        v->type = V_STR;
        v->at = idx + 1;
        return jstring(j, idx + 1, NULL, 0, &v->len);
    case '{':
        return jcontainer(j, idx + 1, 1);
    case '[':
        return jcontainer(j, idx + 1, 0);
    case 'n':
        if (lit(j, idx, "null")) return (long)idx + 4;
        break;
    case 't':
        if (lit(j, idx, "true")) return (long)idx + 4;
        break;
    case 'f':
        if (lit(j, idx, "false")) return (long)idx + 5;
        break;
    case 'N':
        if (lit(j, idx, "NaN")) return constant(j, "NaN");
        break;
    case 'I':
        if (lit(j, idx, "Infinity")) return constant(j, "Infinity");
        break;
    case '-':
        if (lit(j, idx, "-Infinity")) return constant(j, "-Infinity");
        break;
    }
    long next = jnumber(j, idx, &v->num);
    if (next >= 0 && v->num.is_int) v->type = V_INT;
    return next;
}

static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) need = 1, cp = c & 0x1F, min = 0x80;
        else if (c >= 0xE0 && c <= 0xEF) need = 2, cp = c & 0x0F, min = 0x800;
        else if (c >= 0xF0 && c <= 0xF4) need = 3, cp = c & 0x07, min = 0x10000;
        else return 0;
        if (n - i <= need) return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += need + 1;
    }
    return 1;
}

/* The members the client reads; the last of a repeated key wins, as in a dict. */
#define NKEYS 4
static const char *const KEYS[NKEYS] = {"result", "code", "message", "target"};
enum { K_RESULT, K_CODE, K_MESSAGE, K_TARGET };

struct obj {
    int has[NKEYS];
    struct val v[NKEYS];
};

/* frames.decode_json: PAYLOAD must be one JSON object. 0, or -1 with J->err. */
static int decode_object(struct js *j, const unsigned char *payload, size_t len, struct obj *o, int max_depth) {
    memset(j, 0, sizeof *j);
    memset(o, 0, sizeof *o);
    j->max_depth = max_depth;
    j->s = payload;
    j->n = len;
    if (!utf8_valid(payload, len)) return jmsg(j, "not UTF-8");
    size_t start = 0;
    while (start < len && is_ws(payload[start])) start++;
    long end;
    int is_obj = start < len && payload[start] == '{';
    if (is_obj) {
        /* the object's own members, then the same walk as any container */
        size_t idx = start + 1, end_idx = len - 1;
        j->depth = 1;
        while (idx <= end_idx && is_ws(payload[idx])) idx++;
        end = -3;
        if (idx > end_idx || payload[idx] != '}') {
            for (;;) {
                uint32_t key[8];
                size_t klen;
                struct val item;
                if (idx > end_idx || payload[idx] != '"') {
                    end = jerr(j, "Expecting property name enclosed in double quotes", idx);
                    break;
                }
                long next = jstring(j, idx + 1, key, 8, &klen);
                if (next < 0) {
                    end = next;
                    break;
                }
                idx = (size_t)next;
                while (idx <= end_idx && is_ws(payload[idx])) idx++;
                if (idx > end_idx || payload[idx] != ':') {
                    end = jerr(j, "Expecting ':' delimiter", idx);
                    break;
                }
                idx++;
                while (idx <= end_idx && is_ws(payload[idx])) idx++;
                next = jvalue(j, idx, &item);
                if (next < 0) {
                    end = next;
                    break;
                }
                for (int k = 0; k < NKEYS; k++) {
                    size_t kl = strlen(KEYS[k]), m = 0;
                    if (klen != kl) continue;
                    while (m < kl && key[m] == (unsigned char)KEYS[k][m]) m++;
                    if (m == kl) o->has[k] = 1, o->v[k] = item;
                }
                idx = (size_t)next;
                while (idx <= end_idx && is_ws(payload[idx])) idx++;
                if (idx <= end_idx && payload[idx] == '}') break;
                if (idx > end_idx || payload[idx] != ',') {
                    end = jerr(j, "Expecting ',' delimiter", idx);
                    break;
                }
                idx++;
                while (idx <= end_idx && is_ws(payload[idx])) idx++;
            }
        }
        if (end == -3) end = (long)idx + 1;
    } else {
        struct val v;
        end = jvalue(j, start, &v);
    }
    if (end == STOP) {
        char text[64];
        snprintf(text, sizeof text, "Expecting value: char %zu", start);
        return jmsg(j, text);
    }
    if (end < 0) return -1;
    for (size_t i = (size_t)end; i < len; i++) {
        if (!is_ws(payload[i])) {
            char text[64];
            snprintf(text, sizeof text, "Extra data: char %zu", cp_index(j, (size_t)end));
            return jmsg(j, text);
        }
    }
    if (!is_obj) return jmsg(j, "not a JSON object");
    return 0;
}

/* A string member made printable (names.printable): UTF-8 into OUT. */
static void printable(const unsigned char *payload, size_t plen, const struct val *v, char *out, size_t cap) {
    struct js j = {.s = payload, .n = plen};
    size_t n = v->len < 201 ? v->len : 201, o = 0;
    uint32_t cps[201];
    jstring(&j, v->at, cps, n, NULL);
    for (size_t i = 0; i < n && i < 200; i++) {
        uint32_t c = unsafe(cps[i]) ? '?' : cps[i];
        unsigned char b[4];
        size_t bl;
        if (c < 0x80) b[0] = (unsigned char)c, bl = 1;
        else if (c < 0x800) b[0] = (unsigned char)(0xC0 | c >> 6), b[1] = (unsigned char)(0x80 | (c & 0x3F)), bl = 2;
        else if (c < 0x10000)
            b[0] = (unsigned char)(0xE0 | c >> 12), b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F)),
            b[2] = (unsigned char)(0x80 | (c & 0x3F)), bl = 3;
        else
            b[0] = (unsigned char)(0xF0 | c >> 18), b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F)),
            b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F)), b[3] = (unsigned char)(0x80 | (c & 0x3F)), bl = 4;
        if (o + bl + 4 >= cap) break;
        memcpy(out + o, b, bl);
        o += bl;
    }
    if (v->len > 200 && o + 4 < cap) memcpy(out + o, "...", 3), o += 3;
    out[o] = 0;
}

/* -- frames ------------------------------------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The decoder (frames.Decoder): a header, then the payload; at most one
 * partial frame held. */
static unsigned char head[HEADER], body[MAX_PAYLOAD];
static size_t head_got, body_got;

static const char *check_header(const unsigned char *h) {
    static char why[96];
    unsigned kind = h[0];
    uint32_t len = get32(h + 1), limit = kind == REQUEST ? MAX_REQUEST : MAX_PAYLOAD;
    if (kind < REQUEST || kind > ERROR_) {
        snprintf(why, sizeof why, "unknown frame type 0x%x", kind);
        return why;
    }
    if (len > limit) {
        snprintf(why, sizeof why, "frame of %u bytes is over the %u-byte limit", len, limit);
        return why;
    }
    return NULL;
}

/* A bad header anywhere in DATA fails the whole feed, frames before it
 * included, as Decoder.feed raises before it returns any. */
static const char *check_feed(const unsigned char *data, size_t n) {
    unsigned char h[HEADER];
    size_t hg = head_got, need = 0, pos = 0;
    memcpy(h, head, sizeof h);
    if (hg == HEADER) need = get32(h + 1) - body_got;
    for (;;) {
        if (hg < HEADER) {
            size_t take = HEADER - hg < n - pos ? HEADER - hg : n - pos;
            memcpy(h + hg, data + pos, take);
            hg += take;
            pos += take;
            if (hg < HEADER) return NULL;
            const char *why = check_header(h);
            if (why) return why;
            need = get32(h + 1);
        }
        size_t take = need < n - pos ? need : n - pos;
        need -= take;
        pos += take;
        if (need) return NULL;
        hg = 0;
        if (pos == n) return NULL;
    }
}

/* What the frames so far have decided. */
static int answered, exit_code;
static struct sink out_sink = {1, 0, 0}, err_sink = {2, 0, 0};

static int exit_from(const unsigned char *p, size_t n) {
    struct js j;
    struct obj o;
    if (decode_object(&j, p, n, &o, DEPTH_RESULT - 2)) {
        setmsg("broken EXIT frame: %s", j.err);
        return -1;
    }
    if (!o.has[K_CODE] || o.v[K_CODE].type != V_INT) {
        setmsg("broken EXIT frame: no integer code");
        return -1;
    }
    const struct num *c = &o.v[K_CODE].num;
    if (c->neg && (c->val || c->big)) exit_code = c->big || c->val > 127 ? 255 : 128 + (int)c->val;
    else exit_code = c->big || c->val > 255 ? 255 : (int)c->val;
    return 1;
}

static void error_message(const unsigned char *p, size_t n) {
    struct js j;
    struct obj o;
    char text[1024];
    if (decode_object(&j, p, n, &o, DEPTH_RESULT - (answered ? 2 : 1)) == 0 && o.has[K_MESSAGE] && o.v[K_MESSAGE].type == V_STR) {
        printable(p, n, &o.v[K_MESSAGE], text, sizeof text);
        setmsg("qlite RPC error: %s", text);
    } else {
        setmsg("qlite RPC error: (no message)");
    }
}

/* One whole frame: 0 go on, 1 the call is over (exit_code), -1 it failed (msg). */
static int on_frame(int kind, const unsigned char *p, size_t n) {
    if (!answered) {
        struct js j;
        struct obj o;
        char text[1024];
        if (kind == ERROR_) return error_message(p, n), -1;
        if (kind != RESULT) {
            setmsg("unexpected frame 0x%x instead of the broker's answer", (unsigned)kind);
            return -1;
        }
        if (decode_object(&j, p, n, &o, DEPTH_RESULT)) {
            setmsg("broken answer from the broker: %s", j.err);
            return -1;
        }
        const struct val *r = &o.v[K_RESULT];
        if (o.has[K_RESULT] && r->type == V_STR && r->len == 5) {
            uint32_t cps[5];
            struct js j2 = {.s = p, .n = n};
            jstring(&j2, r->at, cps, 5, NULL);
            if (cps[0] == 'a' && cps[1] == 'l' && cps[2] == 'l' && cps[3] == 'o' && cps[4] == 'w') {
                answered = 1;
                return 0;
            }
        }
        const struct val *m = &o.v[K_MESSAGE], *c = &o.v[K_CODE];
        if (o.has[K_MESSAGE] && m->type == V_STR && m->len) printable(p, n, m, text, sizeof text);
        else snprintf(text, sizeof text, "request refused");
        setmsg("request refused: %s", text);
        exit_code = EXIT_REFUSED;
        if (o.has[K_CODE] && c->type == V_INT && !c->num.neg && !c->num.big && c->num.val > 0 && c->num.val < 256)
            exit_code = (int)c->num.val;
        return -2;
    }
    switch (kind) {
    case STDOUT_:
        if (n) sink_write(&out_sink, p, n);
        return 0;
    case STDERR_:
        if (n) sink_write(&err_sink, p, n);
        return 0;
    case EXIT_:
        return exit_from(p, n);
    case ERROR_:
        error_message(p, n);
        return -1;
    default:
        setmsg("unexpected frame 0x%x from the broker", (unsigned)kind);
        return -1;
    }
}

/* Feed DATA (checked) through the decoder; stops at the first frame that ends the call. */
static int feed(const unsigned char *data, size_t n) {
    size_t pos = 0;
    while (pos < n) {
        if (head_got < HEADER) {
            size_t take = HEADER - head_got < n - pos ? HEADER - head_got : n - pos;
            memcpy(head + head_got, data + pos, take);
            head_got += take;
            pos += take;
            if (head_got < HEADER) return 0;
        }
        size_t len = get32(head + 1), take = len - body_got < n - pos ? len - body_got : n - pos;
        const unsigned char *payload;
        if (!body_got && take == len) {
            payload = data + pos;
        } else {
            memcpy(body + body_got, data + pos, take);
            body_got += take;
            if (body_got < len) return 0;
            payload = body;
        }
        pos += take;
        head_got = body_got = 0;
        int r = on_frame(head[0], payload, len);
        if (r) return r;
    }
    return 0;
}

/* -- the call ----------------------------------------------------------------------------------- */

static int valid_chars(const char *s, size_t n, const char *extra) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr(extra, c)) || !c)
            return 0;
    }
    return 1;
}

static size_t json_ascii(char *out, const char *s) {
    size_t o = 0;
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') out[o++] = '\\';
        out[o++] = *s;
    }
    return o;
}

static unsigned char outbuf[HIGH_WATER + 2 * MAX_FRAME];
static size_t out_start, out_len;

static void queue(int kind, const unsigned char *p, size_t n) {
    if (out_start + out_len + HEADER + n > sizeof outbuf) {
        memmove(outbuf, outbuf + out_start, out_len);
        out_start = 0;
    }
    unsigned char *w = outbuf + out_start + out_len;
    w[0] = (unsigned char)kind;
    put32(w + 1, (uint32_t)n);
    if (n) memcpy(w + HEADER, p, n);
    out_len += HEADER + n;
}

static int result_of(int r) {
    if (r == 1) return exit_code;
    if (r == -2) return fail(exit_code);
    return fail(EXIT_RPC_FAILED);
}

int main(int argc, char **argv) {
    orig_argv = argv;
    int filt[2] = {-1, -1}, i = 1;
    while (i < argc && argv[i][0] == '-') {
        const char *opt = argv[i++];
        if (!strcmp(opt, "--")) break;
        if (!strncmp(opt, "--buffer-size=", 14)) continue;
        if (!strcmp(opt, "--filter-escape-chars-stdout")) filt[0] = 1;
        else if (!strcmp(opt, "--no-filter-escape-chars-stdout")) filt[0] = 0;
        else if (!strcmp(opt, "--filter-escape-chars-stderr")) filt[1] = 1;
        else if (!strcmp(opt, "--no-filter-escape-chars-stderr")) filt[1] = 0;
        else exec_python(); /* --help, an unknown option */
    }
    if (argc - i != 2) exec_python(); /* a local program, or too few */
    const char *target = argv[i], *spec = argv[i + 1];
    const char *plus = strchr(spec, '+');
    size_t slen = plus ? (size_t)(plus - spec) : strlen(spec);
    const char *arg = plus ? plus + 1 : "";
    size_t alen = strlen(arg), tlen = strlen(target);
    if (!slen || slen > 64 || !valid_chars(spec, slen, "._-") || (slen == 1 && spec[0] == '.') ||
        (slen == 2 && spec[0] == '.' && spec[1] == '.') || alen > 256 || !valid_chars(arg, alen, "._+-"))
        exec_python();
    /* Printable ASCII needs no JSON escape but '"' and '\'; the request
     * stays well under its limit. Anything else: the Python client. */
    if (tlen > 1024) exec_python();
    for (size_t k = 0; k < tlen; k++)
        if ((unsigned char)target[k] < 0x20 || (unsigned char)target[k] > 0x7e) exec_python();
    const char *path = getenv("QLITE_RPC_SOCKET");
    if (!path || !*path) path = DEFAULT_SOCKET;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) exec_python();
    for (const char *q = path; *q; q++)
        if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e) exec_python();
    memcpy(sa.sun_path, path, strlen(path) + 1);

    /* The common case from here on. */
    signal(SIGPIPE, SIG_IGN);
    struct stat st;
    int have_stdin = fstat(0, &st) == 0;
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        setmsg("cannot reach the qlite broker at %s: %s", path, strerror(errno));
        return fail(EXIT_RPC_FAILED);
    }
    if (sock <= 2) { /* a closed stdio fd: the socket must not stand in for it */
        int moved = fcntl(sock, F_DUPFD_CLOEXEC, 3);
        close(sock);
        sock = moved;
        if (sock < 0) {
            setmsg("cannot reach the qlite broker at %s: %s", path, strerror(errno));
            return fail(EXIT_RPC_FAILED);
        }
    }
    int rc;
    do rc = connect(sock, (struct sockaddr *)&sa, sizeof sa);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        setmsg("cannot reach the qlite broker at %s: %s", path, strerror(errno));
        return fail(EXIT_RPC_FAILED);
    }

    char req[MAX_REQUEST + 64];
    size_t rl = HEADER;
    rl += (size_t)sprintf(req + rl, "{\"version\":1,\"target\":\"");
    if (target[0] == '$') req[rl++] = '@', target++;
    rl += json_ascii(req + rl, target);
    rl += (size_t)sprintf(req + rl, "\",\"service\":\"%.*s\",\"argument\":\"%s\"}", (int)slen, spec, arg);
    req[0] = REQUEST;
    put32((unsigned char *)req + 1, (uint32_t)(rl - HEADER));
    for (size_t sent = 0; sent < rl;) {
        ssize_t w = send(sock, req + sent, rl - sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            setmsg("lost the connection to the broker: %s", strerror(errno));
            return fail(EXIT_RPC_FAILED);
        }
        sent += (size_t)w;
    }

    /* Frames that follow RESULT in its read are the service's already. */
    out_sink.filter = filt[0] >= 0 ? filt[0] : isatty(1);
    err_sink.filter = filt[1] >= 0 ? filt[1] : isatty(2);
    static unsigned char in[MAX_FRAME];
    /* The verdict: blocking reads (an ask may take a while). */
    while (!answered) {
        ssize_t n = recv(sock, in, sizeof in, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            setmsg("lost the connection to the broker: %s", strerror(errno));
            return fail(EXIT_RPC_FAILED);
        }
        if (n == 0) {
            if (head_got || body_got) setmsg("broken answer from the broker: connection closed in the middle of a frame");
            else setmsg("the broker closed the connection without answering");
            return fail(EXIT_RPC_FAILED);
        }
        const char *why = check_feed(in, (size_t)n);
        if (why) {
            setmsg("broken answer from the broker: %s", why);
            return fail(EXIT_RPC_FAILED);
        }
        int r = feed(in, (size_t)n);
        if (r) return result_of(r);
    }

    /* Allowed: pump, as client.pump does. */
    fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
    int feeding = have_stdin, send_broken = 0;
    if (!feeding) queue(STDIN_, NULL, 0);
    for (;;) {
        struct pollfd pf[2] = {{sock, POLLIN, 0}, {0, POLLIN, 0}};
        int nfds = 1;
        if (out_len && !send_broken) pf[0].events |= POLLOUT;
        if (feeding && out_len < HIGH_WATER) nfds = 2;
        if (poll(pf, (nfds_t)nfds, -1) < 0) {
            if (errno == EINTR) continue;
            setmsg("lost the connection to the broker: %s", strerror(errno));
            return fail(EXIT_RPC_FAILED);
        }
        short re = pf[0].revents;
        if (re & ~POLLIN) { /* writable, or hung up/failed: as a selector sees it */
            ssize_t w = send(sock, outbuf + out_start, out_len, MSG_NOSIGNAL);
            if (w >= 0) {
                out_start += (size_t)w;
                out_len -= (size_t)w;
                if (!out_len) out_start = 0;
            } else if (errno != EAGAIN && errno != EINTR) {
                /* the broker stopped taking stdin: keep reading until EXIT */
                send_broken = 1;
                out_start = out_len = 0;
                feeding = 0;
            }
        }
        if (re & ~POLLOUT) {
            ssize_t n = recv(sock, in, sizeof in, 0);
            if (n < 0 && errno == ECONNRESET) n = 0; /* a broker closing with our stdin unread */
            if (n < 0 && errno != EAGAIN && errno != EINTR) {
                setmsg("lost the connection to the broker: %s", strerror(errno));
                return fail(EXIT_RPC_FAILED);
            }
            if (n == 0) {
                if (head_got || body_got)
                    setmsg("the broker closed the connection in the middle of a frame");
                else
                    setmsg("the broker closed the connection before the service's exit code");
                return fail(EXIT_RPC_FAILED);
            }
            if (n > 0) {
                const char *why = check_feed(in, (size_t)n);
                if (why) {
                    setmsg("broken frame from the broker: %s", why);
                    return fail(EXIT_RPC_FAILED);
                }
                int r = feed(in, (size_t)n);
                if (r) return result_of(r);
            }
        }
        if (nfds == 2 && feeding && pf[1].revents) {
            ssize_t n = read(0, in, MAX_PAYLOAD);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (n > 0) {
                queue(STDIN_, in, (size_t)n);
            } else {
                queue(STDIN_, NULL, 0);
                feeding = 0;
            }
        }
    }
}
