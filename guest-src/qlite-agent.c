/*
 * qlite-agent: the guest agent of a container qube, in C.
 *
 * The main process of every container qube. It behaves as the Python agent
 * (qlite_guest.vmagent --serve) does, in a fraction of the memory: a
 * container qube that idles with it costs about as much as one that idles
 * with `sleep infinity`.
 *
 *   qlite-agent --serve PATH
 *
 * Connects to PATH (the daemon's socket for this qube; tries again with a
 * backoff from 20 ms to 1 s, forever), greets with HELLO, and runs the
 * commands the host sends, their stdio carried over the link in the frames
 * of qlite/agent/channel.py: a 1-byte type, a 4-byte channel, a 4-byte
 * payload length (big-endian) and at most 64 KiB of payload. When the link
 * ends, every command it started is killed and the agent connects again.
 *
 * One thread, one poll() loop: the link, every command's output, a
 * command's stdin while input waits for it, and a self-pipe for SIGCHLD.
 * Input for a command is queued (its stdin is non-blocking); while one
 * command holds more than STDIN_QUEUE_MAX bytes of it, the agent stops
 * reading the link until that drains, so the daemon's writes wait instead
 * of the agent's memory growing.
 *
 * Build: gcc -static -Os -s -Wall -Wextra -Werror -o qlite-agent qlite-agent.c
 * (libc only; users come from /etc/passwd, read here: a static getpwnam
 * would need NSS).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* Frame types (qlite/agent/channel.py). */
enum {
    HELLO = 0x10, OPEN, STDIN, STDOUT, STDERR, EXIT, DATA, CLOSE, ERROR, SIGNAL, PING, PONG, RESIZE
};
#define FIRST_TYPE HELLO
#define LAST_TYPE RESIZE
#define HEADER_SIZE 9
#define MAX_PAYLOAD 65536
#define VERSION 1

#define MAX_SESSIONS 64
#define STDIN_QUEUE_MAX (1024 * 1024)
#define PIPE_GRACE_S 30 /* after a command exits, how long its output may stay open */
#define TTY_GRACE_S 5
#define MAX_DEPTH 128   /* JSON nesting */
#define MAX_MESSAGE 1024

static const char BASE_PATH[] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/* -- sessions -------------------------------------------------------------------------- */

struct chunk {
    struct chunk *next;
    size_t len, off;
    unsigned char data[];
};

struct session {
    int used;
    uint32_t chan;
    pid_t pid;          /* the command: its process group leader */
    int reaped, code;
    int tty;
    int out_fd, err_fd; /* -1 once at EOF; with a terminal, out_fd is its primary side and err_fd is -1 */
    int in_fd;          /* pipes: the stdin pipe (-1 once closed); terminal: the primary side */
    int in_eof, in_dead;
    struct chunk *qhead, *qtail;
    size_t queued;
    int has_deadline;
    struct timespec deadline;
};

static struct session sessions[MAX_SESSIONS];
static int link_fd = -1, link_dead;
static int wake_r = -1, wake_w = -1;
static unsigned char outbuf[MAX_PAYLOAD];

/* -- small helpers ----------------------------------------------------------------------- */

static void logmsg(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "qlite-agent: ");
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(buf);
    if (len < sizeof buf - 1) buf[len++] = '\n';
    ssize_t r = write(2, buf, len);
    (void)r;
}

static int write_all(int fd, const void *data, size_t len) {
    const unsigned char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One frame to the host. The link is blocking (the host is the only peer);
 * a failed write marks it dead, and the main loop then drops it. */
static void send_frame(int kind, uint32_t chan, const void *payload, size_t len) {
    if (link_dead || len > MAX_PAYLOAD) return;
    unsigned char hdr[HEADER_SIZE];
    hdr[0] = (unsigned char)kind;
    put32(hdr + 1, chan);
    put32(hdr + 5, (uint32_t)len);
    struct iovec iov[2] = {{hdr, HEADER_SIZE}, {(void *)payload, len}};
    int cnt = len ? 2 : 1;
    struct iovec *v = iov;
    while (cnt) {
        ssize_t n = writev(link_fd, v, cnt);
        if (n < 0) {
            if (errno == EINTR) continue;
            link_dead = 1;
            return;
        }
        while (cnt && (size_t)n >= v->iov_len) {
            n -= (ssize_t)v->iov_len;
            v++;
            cnt--;
        }
        if (cnt) {
            v->iov_base = (unsigned char *)v->iov_base + n;
            v->iov_len -= (size_t)n;
        }
    }
}

/* ERROR {"message": MSG} on CHAN. MSG is UTF-8, cut to MAX_MESSAGE bytes. */
static void send_error(uint32_t chan, const char *msg) {
    char buf[16 + MAX_MESSAGE * 6 + 4];
    size_t n = 0, len = strlen(msg);
    if (len > MAX_MESSAGE) {
        len = MAX_MESSAGE;
        while (len && ((unsigned char)msg[len] & 0xC0) == 0x80) len--; /* not inside a character */
    }
    memcpy(buf, "{\"message\":\"", 12);
    n = 12;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c < 0x20 || c == 0x7F) {
            n += (size_t)sprintf(buf + n, "\\u%04x", c);
        } else {
            buf[n++] = (char)c;
        }
    }
    buf[n++] = '"';
    buf[n++] = '}';
    send_frame(ERROR, chan, buf, n);
}

static void send_code(uint32_t chan, int code) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "{\"code\":%d}", code);
    send_frame(EXIT, chan, buf, (size_t)n);
}

static void now(struct timespec *ts) { clock_gettime(CLOCK_MONOTONIC, ts); }

static long long ms_until(const struct timespec *t) {
    struct timespec n;
    now(&n);
    return (long long)(t->tv_sec - n.tv_sec) * 1000 + (t->tv_nsec - n.tv_nsec) / 1000000;
}

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* -- JSON: the strict subset the requests need ------------------------------------------------ */

enum { J_NULL = 1, J_FALSE, J_TRUE, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ };

struct jv {
    int type;
    int truthy;    /* as Python's bool() would see the value */
    long long num; /* J_INT, when not big */
    int big;       /* J_INT beyond +-2^62 */
    char *str;     /* J_STR: decoded, NUL-terminated, in the arena */
    int bad;       /* J_STR: 1 holds a NUL, 2 a lone surrogate */
};

struct jp {
    const unsigned char *start, *p, *end;
    char *arena;
    size_t used, cap;
    const char *err;
    size_t err_at;
    int depth;
};

static int jfail(struct jp *j, const char *why) {
    if (!j->err) {
        j->err = why;
        j->err_at = (size_t)(j->p - j->start);
    }
    return -1;
}

static void jws(struct jp *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
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

static int hex4(struct jp *j, uint32_t *out) {
    if (j->end - j->p < 4) return jfail(j, "bad \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = j->p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return jfail(j, "bad \\u escape");
    }
    j->p += 4;
    *out = v;
    return 0;
}

/* A string (at its opening quote), decoded into the arena. A decoded
 * string with its NUL is never longer than its quoted source, so an arena
 * as large as the payload cannot run out; checked all the same. */
static int jstring(struct jp *j, struct jv *v) {
    j->p++; /* the quote */
    char *out = j->arena + j->used;
    size_t room = j->cap - j->used, n = 0;
    int bad = 0;
    for (;;) {
        if (j->p >= j->end) return jfail(j, "unterminated string");
        unsigned char c = *j->p++;
        unsigned char tmp[4];
        size_t tl = 0;
        if (c == '"') break;
        if (c < 0x20) return jfail(j, "control character in a string");
        if (c != '\\') {
            tmp[0] = c;
            tl = 1;
        } else {
            if (j->p >= j->end) return jfail(j, "unterminated string");
            c = *j->p++;
            switch (c) {
            case '"': case '\\': case '/': tmp[0] = c; tl = 1; break;
            case 'b': tmp[0] = '\b'; tl = 1; break;
            case 'f': tmp[0] = '\f'; tl = 1; break;
            case 'n': tmp[0] = '\n'; tl = 1; break;
            case 'r': tmp[0] = '\r'; tl = 1; break;
            case 't': tmp[0] = '\t'; tl = 1; break;
            case 'u': {
                uint32_t cp;
                if (hex4(j, &cp)) return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF && j->end - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u') {
                    const unsigned char *save = j->p;
                    uint32_t lo;
                    j->p += 2;
                    if (hex4(j, &lo)) return -1;
                    if (lo >= 0xDC00 && lo <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    else j->p = save; /* a lone high surrogate; the next escape stands alone */
                }
                if (cp >= 0xD800 && cp <= 0xDFFF) {
                    bad = bad ? bad : 2;
                    continue;
                }
                if (cp == 0) {
                    bad = 1;
                    continue;
                }
                if (cp < 0x80) {
                    tmp[0] = (unsigned char)cp;
                    tl = 1;
                } else if (cp < 0x800) {
                    tmp[0] = (unsigned char)(0xC0 | cp >> 6);
                    tmp[1] = (unsigned char)(0x80 | (cp & 0x3F));
                    tl = 2;
                } else if (cp < 0x10000) {
                    tmp[0] = (unsigned char)(0xE0 | cp >> 12);
                    tmp[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    tmp[2] = (unsigned char)(0x80 | (cp & 0x3F));
                    tl = 3;
                } else {
                    tmp[0] = (unsigned char)(0xF0 | cp >> 18);
                    tmp[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
                    tmp[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    tmp[3] = (unsigned char)(0x80 | (cp & 0x3F));
                    tl = 4;
                }
                break;
            }
            default:
                return jfail(j, "bad escape in a string");
            }
        }
        if (room - n <= tl) return jfail(j, "string too long");
        memcpy(out + n, tmp, tl);
        n += tl;
    }
    out[n] = 0;
    j->used += n + 1;
    v->type = J_STR;
    v->str = out;
    v->bad = bad;
    v->truthy = n > 0 || bad;
    return 0;
}

static int isdigit_(unsigned char c) { return c >= '0' && c <= '9'; }

static int jnumber(struct jp *j, struct jv *v) {
    int neg = 0, is_float = 0, nonzero = 0;
    long long val = 0;
    if (*j->p == '-') neg = 1, j->p++;
    if (j->p >= j->end || !isdigit_(*j->p)) return jfail(j, "expecting a value");
    if (*j->p == '0') {
        j->p++;
    } else {
        while (j->p < j->end && isdigit_(*j->p)) {
            int d = *j->p++ - '0';
            nonzero = 1;
            if (val > ((1LL << 62) - d) / 10) v->big = 1;
            else val = val * 10 + d;
        }
    }
    if (j->p < j->end && *j->p == '.') {
        is_float = 1;
        j->p++;
        if (j->p >= j->end || !isdigit_(*j->p)) return jfail(j, "bad number");
        while (j->p < j->end && isdigit_(*j->p)) nonzero |= *j->p++ != '0';
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        is_float = 1;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || !isdigit_(*j->p)) return jfail(j, "bad number");
        while (j->p < j->end && isdigit_(*j->p)) j->p++;
    }
    v->type = is_float ? J_FLOAT : J_INT;
    v->num = neg ? -val : val;
    v->truthy = nonzero;
    return 0;
}

static int jlit(struct jp *j, const char *word, int type, struct jv *v) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n)) return jfail(j, "expecting a value");
    j->p += n;
    v->type = type;
    v->truthy = type == J_TRUE;
    return 0;
}

static int jvalue(struct jp *j, struct jv *v);

/* An array or object whose items nobody needs: checked, then forgotten. */
static int jskip_container(struct jp *j, struct jv *v) {
    int obj = *j->p == '{';
    unsigned char close = obj ? '}' : ']';
    if (++j->depth > MAX_DEPTH) return jfail(j, "nested too deeply");
    j->p++;
    v->type = obj ? J_OBJ : J_ARR;
    v->truthy = 0;
    jws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    for (;;) {
        struct jv item = {0};
        size_t mark = j->used;
        if (obj) {
            jws(j);
            if (j->p >= j->end || *j->p != '"') return jfail(j, "expecting a property name in double quotes");
            if (jstring(j, &item)) return -1;
            jws(j);
            if (j->p >= j->end || *j->p != ':') return jfail(j, "expecting ':'");
            j->p++;
        }
        if (jvalue(j, &item)) return -1;
        j->used = mark; /* nothing of it is kept */
        v->truthy = 1;
        jws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == close) {
            j->p++;
            j->depth--;
            return 0;
        }
        return jfail(j, obj ? "expecting ',' or '}'" : "expecting ',' or ']'");
    }
}

static int jvalue(struct jp *j, struct jv *v) {
    jws(j);
    if (j->p >= j->end) return jfail(j, "expecting a value");
    memset(v, 0, sizeof *v);
    switch (*j->p) {
    case '"': return jstring(j, v);
    case '{': case '[': return jskip_container(j, v);
    case 't': return jlit(j, "true", J_TRUE, v);
    case 'f': return jlit(j, "false", J_FALSE, v);
    case 'n': return jlit(j, "null", J_NULL, v);
    default: return jnumber(j, v);
    }
}

/* Parse PAYLOAD as one JSON object, calling KEY for each member (KEY parses
 * the value). Returns 0, or -1 with J->err set (or "not a JSON object" as
 * NOT_OBJECT). */
typedef int (*member_fn)(struct jp *j, const char *key, void *ctx);

static int jobject(struct jp *j, member_fn member, void *ctx, int *not_object) {
    *not_object = 0;
    if (!utf8_valid(j->p, (size_t)(j->end - j->p))) return jfail(j, "not UTF-8");
    jws(j);
    if (j->p < j->end && *j->p != '{') {
        struct jv v;
        if (jvalue(j, &v)) return -1;
        jws(j);
        if (j->p != j->end) return jfail(j, "extra data");
        *not_object = 1;
        return -1;
    }
    if (j->p >= j->end) return jfail(j, "expecting a value");
    j->p++;
    j->depth = 1;
    jws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
    } else {
        for (;;) {
            struct jv key = {0};
            jws(j);
            if (j->p >= j->end || *j->p != '"') return jfail(j, "expecting a property name in double quotes");
            if (jstring(j, &key)) return -1;
            jws(j);
            if (j->p >= j->end || *j->p != ':') return jfail(j, "expecting ':'");
            j->p++;
            jws(j);
            if (member(j, key.bad ? "" : key.str, ctx)) return -1;
            jws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == '}') {
                j->p++;
                break;
            }
            return jfail(j, "expecting ',' or '}'");
        }
    }
    jws(j);
    if (j->p != j->end) return jfail(j, "extra data");
    return 0;
}

static int jinit(struct jp *j, const unsigned char *payload, size_t len) {
    memset(j, 0, sizeof *j);
    j->start = j->p = payload;
    j->end = payload + len;
    j->cap = len + 1;
    j->arena = malloc(j->cap);
    return j->arena ? 0 : -1;
}

/* -- the exec request ----------------------------------------------------------------------- */

struct request {
    char **argv;
    size_t argc, argv_cap;
    int argv_type, argv_nonstr, argv_bad;
    char **env; /* pairs: key, value, key, value ... */
    size_t envc, env_cap;
    int env_type, env_nonstr, env_bad, env_badkey;
    struct jv user, cwd;
    int has_user, has_cwd;
    int tty;
    struct jv rows, cols;
    int has_rows, has_cols;
};

static int open_member(struct jp *j, const char *key, void *ctx) {
    struct request *r = ctx;
    if (!strcmp(key, "argv") && j->p < j->end && *j->p == '[') {
        r->argv_type = J_ARR;
        r->argc = 0;
        r->argv_nonstr = r->argv_bad = 0;
        if (++j->depth > MAX_DEPTH) return jfail(j, "nested too deeply");
        j->p++;
        jws(j);
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            j->depth--;
            return 0;
        }
        for (;;) {
            struct jv item;
            size_t mark = j->used;
            if (jvalue(j, &item)) return -1;
            if (item.type == J_STR && r->argc < r->argv_cap) {
                r->argv[r->argc++] = item.str;
                if (item.bad) r->argv_bad = r->argv_bad ? r->argv_bad : item.bad;
            } else {
                r->argv_nonstr = 1;
                j->used = mark;
            }
            jws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == ']') {
                j->p++;
                j->depth--;
                return 0;
            }
            return jfail(j, "expecting ',' or ']'");
        }
    }
    if (!strcmp(key, "env") && j->p < j->end && *j->p == '{') {
        r->env_type = J_OBJ;
        r->envc = 0;
        r->env_nonstr = r->env_bad = r->env_badkey = 0;
        if (++j->depth > MAX_DEPTH) return jfail(j, "nested too deeply");
        j->p++;
        jws(j);
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            j->depth--;
            return 0;
        }
        for (;;) {
            struct jv k, v;
            jws(j);
            if (j->p >= j->end || *j->p != '"') return jfail(j, "expecting a property name in double quotes");
            if (jstring(j, &k)) return -1;
            jws(j);
            if (j->p >= j->end || *j->p != ':') return jfail(j, "expecting ':'");
            j->p++;
            if (jvalue(j, &v)) return -1;
            if (v.type != J_STR) {
                r->env_nonstr = 1;
            } else {
                if (k.bad || v.bad) r->env_bad = r->env_bad ? r->env_bad : (k.bad ? k.bad : v.bad);
                if (strchr(k.str, '=')) r->env_badkey = 1;
                size_t i;
                for (i = 0; i < r->envc; i++) /* a repeated name: the last one counts */
                    if (!strcmp(r->env[2 * i], k.str)) break;
                if (i < r->envc) {
                    r->env[2 * i + 1] = v.str;
                } else if (r->envc < r->env_cap) {
                    r->env[2 * r->envc] = k.str;
                    r->env[2 * r->envc + 1] = v.str;
                    r->envc++;
                }
            }
            jws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == '}') {
                j->p++;
                j->depth--;
                return 0;
            }
            return jfail(j, "expecting ',' or '}'");
        }
    }
    struct jv v;
    if (jvalue(j, &v)) return -1;
    if (!strcmp(key, "argv")) {
        r->argv_type = v.type;
        r->argc = 0;
    } else if (!strcmp(key, "env")) {
        r->env_type = v.type;
        r->envc = 0;
    } else if (!strcmp(key, "user")) {
        r->user = v;
        r->has_user = 1;
    } else if (!strcmp(key, "cwd")) {
        r->cwd = v;
        r->has_cwd = 1;
    } else if (!strcmp(key, "tty")) {
        r->tty = v.truthy;
    } else if (!strcmp(key, "rows")) {
        r->rows = v;
        r->has_rows = 1;
    } else if (!strcmp(key, "cols")) {
        r->cols = v;
        r->has_cols = 1;
    }
    return 0;
}

static int size_ok(const struct jv *v) { return v->type == J_INT && !v->big && v->num >= 1 && v->num <= 0xFFFF; }

/* {"signal": N} or {"rows": R, "cols": C}: the integers wanted. */
struct ints {
    const char *names[2];
    struct jv vals[2];
    int has[2];
};

static int ints_member(struct jp *j, const char *key, void *ctx) {
    struct ints *w = ctx;
    struct jv v;
    if (jvalue(j, &v)) return -1;
    for (int i = 0; i < 2; i++)
        if (w->names[i] && !strcmp(key, w->names[i])) w->vals[i] = v, w->has[i] = 1;
    return 0;
}

static int parse_ints(const unsigned char *payload, size_t len, struct ints *w) {
    struct jp j;
    int not_object, rc;
    if (jinit(&j, payload, len)) return -1;
    rc = jobject(&j, ints_member, w, &not_object);
    free(j.arena);
    return rc;
}

/* -- users ------------------------------------------------------------------------------------ */

struct user {
    uid_t uid;
    gid_t gid;
    char name[256];
    char home[PATH_MAX];
};

static int parse_id(const char *s, unsigned long *out) {
    char *end;
    if (!*s || !isdigit_((unsigned char)*s)) return -1;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > 0xFFFFFFFEUL) return -1;
    *out = v;
    return 0;
}

/* NAME's entry in /etc/passwd: 0, or -1 if there is none. */
static int lookup_user(const char *name, struct user *u) {
    FILE *f = fopen("/etc/passwd", "re");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int found = -1;
    while (found && (n = getline(&line, &cap, f)) >= 0) {
        if (n && line[n - 1] == '\n') line[--n] = 0;
        char *field[7];
        int nf = 0;
        char *p = line;
        field[nf++] = p;
        while (nf < 7 && (p = strchr(p, ':'))) {
            *p++ = 0;
            field[nf++] = p;
        }
        if (nf < 7 || strcmp(field[0], name)) continue;
        unsigned long uid, gid;
        if (parse_id(field[2], &uid) || parse_id(field[3], &gid)) continue;
        if (strlen(field[0]) >= sizeof u->name || strlen(field[5]) >= sizeof u->home) continue;
        u->uid = (uid_t)uid;
        u->gid = (gid_t)gid;
        strcpy(u->name, field[0]);
        strcpy(u->home, field[5]);
        found = 0;
    }
    free(line);
    fclose(f);
    return found;
}

/* Python's repr() of a str, near enough for a message. */
static void repr(char *out, size_t cap, const char *s) {
    char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
    size_t n = 0;
    out[n++] = q;
    for (; *s && n + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == (unsigned char)q || c == '\\') n += (size_t)sprintf(out + n, "\\%c", c);
        else if (c == '\n') n += (size_t)sprintf(out + n, "\\n");
        else if (c == '\r') n += (size_t)sprintf(out + n, "\\r");
        else if (c == '\t') n += (size_t)sprintf(out + n, "\\t");
        else if (c < 0x20 || c == 0x7F) n += (size_t)sprintf(out + n, "\\x%02x", c);
        else out[n++] = (char)c;
    }
    out[n++] = q;
    out[n] = 0;
}

/* -- starting a command ---------------------------------------------------------------------- */

static void child_fail(const char *argv0, const char *what, int code) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "%.200s: %s\n", argv0, what);
    if (write_all(2, buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1))) {
    }
    _exit(code);
}

static const char *env_get(char **envp, const char *name) {
    size_t n = strlen(name);
    for (; *envp; envp++)
        if (!strncmp(*envp, name, n) && (*envp)[n] == '=') return *envp + n + 1;
    return NULL;
}

/* execvpe with the command's own PATH, and no shell for a file that is
 * not an executable (as Python's subprocess does not). Returns the errno. */
static int exec_search(char **argv, char **envp) {
    const char *file = argv[0];
    if (!*file) return ENOENT;
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    const char *path = env_get(envp, "PATH");
    if (!path) path = "/bin:/usr/bin";
    size_t flen = strlen(file);
    int seen_eacces = 0;
    char buf[PATH_MAX];
    for (const char *p = path;; p++) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        if (dlen + 1 + flen < sizeof buf) {
            memcpy(buf, p, dlen);
            size_t n = dlen;
            if (dlen) buf[n++] = '/';
            memcpy(buf + n, file, flen + 1);
            execve(buf, argv, envp);
            switch (errno) {
            case EACCES: seen_eacces = 1; /* fall through */
            case ENOENT: case ENOTDIR: case ESTALE: case ENODEV: case ETIMEDOUT: case ELOOP: case ENAMETOOLONG:
                break;
            default:
                return errno;
            }
        }
        if (!colon) break;
        p = colon;
    }
    return seen_eacces ? EACCES : ENOENT;
}

/* -- RPC services: what /usr/lib/qlite/qubes-rpc-dispatch does ----------------------------
 *
 * The broker starts every RPC service as "qubes-rpc-dispatch SERVICE [ARG]".
 * The dispatcher is a shell script (it serves VM qubes and the tests too),
 * and a shell's start is most of what a call costs inside gVisor. So the
 * agent does the script's work itself in the command's process, after it
 * became the command's user: the same name rules, lookup order, argv and
 * exit codes, and the same messages. */

#define DISPATCHER "/usr/lib/qlite/qubes-rpc-dispatch"
#define DEFAULT_RPC_DIRS "/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc"

static void dispatch_fail(const char *fmt, const char *a, const char *b) {
    char buf[1200];
    int n = snprintf(buf, sizeof buf, "qubes-rpc-dispatch: ");
    n += snprintf(buf + n, sizeof buf - (size_t)n, fmt, a, b);
    if (n >= (int)sizeof buf - 1) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write_all(2, buf, (size_t)n)) {
    }
    _exit(127);
}

static int all_of(const char *s, const char *extra) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr(extra, c)))
            return 0;
    }
    return 1;
}

/* Exec NAME from the first directory of DIRS that has it as an executable
 * regular file; return if none has. */
static void run_from_dirs(const char *dirs, const char *name, const char *argument, char **envp) {
    char path[PATH_MAX];
    for (const char *p = dirs;; p++) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        struct stat st;
        if (dlen && dlen + 1 + strlen(name) < sizeof path) {
            memcpy(path, p, dlen);
            path[dlen] = '/';
            strcpy(path + dlen + 1, name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0) {
                char *args[] = {path, (char *)argument, NULL};
                if (!*argument) args[1] = NULL;
                execve(path, args, envp);
                if (errno == ENOEXEC) { /* no #! line: a shell runs it, as the script's exec would */
                    char *sh[] = {"/bin/sh", path, (char *)argument, NULL};
                    if (!*argument) sh[2] = NULL;
                    execve("/bin/sh", sh, envp);
                }
                child_fail(path, strerror(errno), 126);
            }
        }
        if (!colon) return;
        p = colon;
    }
}

static void dispatch_service(char **argv, char **envp) {
    int argc = 0;
    while (argv[argc]) argc++;
    if (argc < 2 || argc > 3) dispatch_fail("usage: qubes-rpc-dispatch SERVICE [ARG]%s%s", "", "");
    const char *service = argv[1], *argument = argc == 3 ? argv[2] : "";
    if (!*service || !strcmp(service, ".") || !strcmp(service, "..") || strlen(service) > 64 || !all_of(service, "._-"))
        dispatch_fail("invalid service name '%s': use at most 64 of A-Z a-z 0-9 . _ -%s", service, "");
    if (strlen(argument) > 256 || !all_of(argument, "._+-"))
        dispatch_fail("invalid service argument '%s': use at most 256 of A-Z a-z 0-9 . _ + -%s", argument, "");
    const char *dirs = env_get(envp, "QLITE_RPC_DIRS");
    if (!dirs || !*dirs) dirs = DEFAULT_RPC_DIRS;
    char full[64 + 1 + 256 + 1];
    snprintf(full, sizeof full, "%s%s%s", service, *argument ? "+" : "", argument);
    if (*argument) run_from_dirs(dirs, full, argument, envp);
    run_from_dirs(dirs, service, argument, envp);
    dispatch_fail("no such service %s (looked in %s)", full, dirs);
}

/* In the child: become the command. Never returns. */
static void child(char **argv, char **envp, const struct user *u, const char *cwd, int fd0, int fd1, int fd2,
                  int tty) {
    sigset_t all;
    if (setsid() < 0) _exit(126);
    if (tty && ioctl(fd0, TIOCSCTTY, 0) < 0) _exit(126);
    /* The agent's own 0, 1 and 2 are always open, so these fds are above 2. */
    if (dup2(fd0, 0) < 0 || dup2(fd1, 1) < 0 || dup2(fd2, 2) < 0) _exit(126);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    if (geteuid() == 0 && setgroups(0, NULL) < 0) child_fail(argv[0], "cannot drop supplementary groups", 126);
    if (setgid(u->gid) < 0) child_fail(argv[0], "cannot switch to the command's group", 126);
    if (setuid(u->uid) < 0) child_fail(argv[0], "cannot switch to the command's user", 126);
    if (chdir(cwd) < 0 && chdir("/") < 0) child_fail(argv[0], "cannot change to its directory", 126);
    if (!strcmp(argv[0], DISPATCHER)) dispatch_service(argv, envp);
    int err = exec_search(argv, envp);
    if (err == ENOENT) child_fail(argv[0], "command not found", 127);
    child_fail(argv[0], strerror(err), 126);
}

static struct session *find_session(uint32_t chan) {
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (sessions[i].used && sessions[i].chan == chan) return &sessions[i];
    return NULL;
}

static int open_pty(int *primary, int *secondary) {
    char name[64];
    *primary = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*primary < 0) return -1;
    if (grantpt(*primary) || unlockpt(*primary) || ptsname_r(*primary, name, sizeof name)) goto fail;
    *secondary = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*secondary < 0) goto fail;
    return 0;
fail:
    close(*primary);
    return -1;
}

static void set_size(int fd, long long rows, long long cols) {
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    ioctl(fd, TIOCSWINSZ, &ws);
}

/* An "KEY=VALUE" string. */
static char *env_entry(const char *k, const char *v) {
    size_t kl = strlen(k), vl = strlen(v);
    char *s = malloc(kl + vl + 2);
    if (!s) return NULL;
    memcpy(s, k, kl);
    s[kl] = '=';
    memcpy(s + kl + 1, v, vl + 1);
    return s;
}

/* Set NAME in the (NAME, VALUE) pair list KV of *N entries (room for CAP). */
static void kv_set(const char **kv, size_t *n, size_t cap, const char *name, const char *value) {
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(kv[2 * i], name)) {
            kv[2 * i + 1] = value;
            return;
        }
    if (*n < cap) {
        kv[2 * *n] = name;
        kv[2 * *n + 1] = value;
        (*n)++;
    }
}

static void open_session(uint32_t chan, const unsigned char *payload, size_t len) {
    struct request r;
    struct jp j;
    struct user u;
    char msg[MAX_MESSAGE + 64], rep[600];
    const char **kv = NULL;
    char **envp = NULL;
    size_t nkv = 0;
    int fds[6] = {-1, -1, -1, -1, -1, -1};

    memset(&r, 0, sizeof r);
    if (jinit(&j, payload, len)) {
        send_error(chan, "out of memory");
        return;
    }
    r.argv_cap = len / 3 + 2;
    r.env_cap = len / 6 + 2;
    r.argv = calloc(r.argv_cap + 1, sizeof *r.argv);
    r.env = calloc(2 * r.env_cap, sizeof *r.env);
    if (!r.argv || !r.env) {
        send_error(chan, "out of memory");
        goto out;
    }
    int not_object;
    if (jobject(&j, open_member, &r, &not_object)) {
        if (not_object) snprintf(msg, sizeof msg, "malformed message: not a JSON object");
        else snprintf(msg, sizeof msg, "malformed message: %s at byte %zu", j.err ? j.err : "?", j.err_at);
        send_error(chan, msg);
        goto out;
    }
    r.argv[r.argc] = NULL; /* a repeated "argv" may have left longer lists behind */
    if (r.argv_type != J_ARR || r.argc == 0 || r.argv_nonstr) {
        send_error(chan, "exec needs a non-empty argv of strings");
        goto out;
    }
    if ((r.has_user && r.user.type != J_STR) || (r.has_cwd && r.cwd.type != J_STR)) {
        send_error(chan, "user and cwd must be strings");
        goto out;
    }
    if ((r.env_type && r.env_type != J_OBJ) || r.env_nonstr) {
        send_error(chan, "env must map strings to strings");
        goto out;
    }
    if ((r.has_rows || r.has_cols) && !(size_ok(&r.rows) && size_ok(&r.cols))) {
        send_error(chan, "a terminal size is two whole numbers from 1 to 65535");
        goto out;
    }
    const char *argv0 = r.argv[0];
    int bad = r.argv_bad ? r.argv_bad : r.env_bad;
    if (!bad && r.has_user) bad = r.user.bad;
    if (!bad && r.has_cwd) bad = r.cwd.bad;
    if (bad) {
        snprintf(msg, sizeof msg, "%.512s: %s", argv0, bad == 1 ? "embedded null byte" : "a string holds a lone surrogate");
        send_error(chan, msg);
        goto out;
    }
    if (r.env_badkey) {
        snprintf(msg, sizeof msg, "%.512s: illegal environment variable name", argv0);
        send_error(chan, msg);
        goto out;
    }
    if (find_session(chan)) {
        send_error(chan, "the channel is in use");
        goto out;
    }
    struct session *s = NULL;
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (!sessions[i].used) {
            s = &sessions[i];
            break;
        }
    if (!s) {
        snprintf(msg, sizeof msg, "%.512s: this qube runs %d commands already", argv0, MAX_SESSIONS);
        send_error(chan, msg);
        goto out;
    }
    const char *user = r.has_user ? r.user.str : "root";
    if (lookup_user(user, &u)) {
        repr(rep, sizeof rep, user);
        snprintf(msg, sizeof msg, "%.400s: no user %s in this qube", argv0, rep);
        send_error(chan, msg);
        goto out;
    }
    const char *cwd = r.has_cwd ? r.cwd.str : "/";
    struct stat st;
    if (stat(cwd, &st) || !S_ISDIR(st.st_mode)) cwd = "/";

    /* The environment: the base, the user's, then the request's on top. */
    size_t kv_cap = r.envc + 7;
    kv = calloc(2 * kv_cap, sizeof *kv);
    if (!kv) {
        send_error(chan, "out of memory");
        goto out;
    }
    kv_set(kv, &nkv, kv_cap, "PATH", BASE_PATH);
    kv_set(kv, &nkv, kv_cap, "LANG", "C.UTF-8");
    kv_set(kv, &nkv, kv_cap, "HOME", u.home);
    kv_set(kv, &nkv, kv_cap, "USER", u.name);
    kv_set(kv, &nkv, kv_cap, "LOGNAME", u.name);
    for (size_t i = 0; i < r.envc; i++) kv_set(kv, &nkv, kv_cap, r.env[2 * i], r.env[2 * i + 1]);
    if (r.tty) {
        size_t i;
        for (i = 0; i < nkv && strcmp(kv[2 * i], "TERM"); i++) {
        }
        if (i == nkv) kv_set(kv, &nkv, kv_cap, "TERM", "xterm-256color");
    }
    envp = calloc(nkv + 1, sizeof *envp);
    if (!envp) {
        send_error(chan, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nkv; i++)
        if (!(envp[i] = env_entry(kv[2 * i], kv[2 * i + 1]))) {
            send_error(chan, "out of memory");
            goto out;
        }

    /* fds: [0] stdin read, [1] stdin write, [2] stdout read, [3] stdout write, [4] stderr read,
     * [5] stderr write; with a terminal, [0] is the secondary side and [2] the primary. */
    if (r.tty) {
        if (open_pty(&fds[2], &fds[0])) {
            snprintf(msg, sizeof msg, "%.512s: no terminal: %s", argv0, strerror(errno));
            send_error(chan, msg);
            goto out;
        }
        if (r.has_rows) set_size(fds[2], r.rows.num, r.cols.num);
    } else if (pipe2(fds, O_CLOEXEC) || pipe2(fds + 2, O_CLOEXEC) || pipe2(fds + 4, O_CLOEXEC)) {
        snprintf(msg, sizeof msg, "%.512s: %s", argv0, strerror(errno));
        send_error(chan, msg);
        goto out;
    }
    pid_t pid = fork();
    if (pid == 0) {
        if (r.tty) child(r.argv, envp, &u, cwd, fds[0], fds[0], fds[0], 1);
        else child(r.argv, envp, &u, cwd, fds[0], fds[3], fds[5], 0);
    }
    if (pid < 0) {
        snprintf(msg, sizeof msg, "%.512s: %s", argv0, strerror(errno));
        send_error(chan, msg);
        goto out;
    }
    memset(s, 0, sizeof *s);
    s->used = 1;
    s->chan = chan;
    s->pid = pid;
    s->tty = r.tty;
    if (r.tty) {
        s->out_fd = s->in_fd = fds[2];
        s->err_fd = -1;
        fds[2] = -1;
    } else {
        s->in_fd = fds[1];
        s->out_fd = fds[2];
        s->err_fd = fds[4];
        fds[1] = fds[2] = fds[4] = -1;
    }
    /* All three: a stale readiness of a closed session's fd, reused by
     * this one, must not block the loop. */
    set_nonblock(s->in_fd);
    set_nonblock(s->out_fd);
    if (s->err_fd >= 0) set_nonblock(s->err_fd);
out:
    for (int i = 0; i < 6; i++)
        if (fds[i] >= 0) close(fds[i]);
    if (envp)
        for (size_t i = 0; envp[i]; i++) free(envp[i]);
    free(envp);
    free(kv);
    free(r.argv);
    free(r.env);
    free(j.arena);
}

/* -- sessions at work ------------------------------------------------------------------------ */

static void drop_queue(struct session *s) {
    while (s->qhead) {
        struct chunk *c = s->qhead;
        s->qhead = c->next;
        free(c);
    }
    s->qtail = NULL;
    s->queued = 0;
}

static void close_stdin(struct session *s) {
    drop_queue(s);
    s->in_dead = 1;
    if (!s->tty && s->in_fd >= 0) close(s->in_fd);
    if (!s->tty) s->in_fd = -1;
}

static void free_session(struct session *s) {
    drop_queue(s);
    if (s->out_fd >= 0) close(s->out_fd);
    if (s->err_fd >= 0) close(s->err_fd);
    if (!s->tty && s->in_fd >= 0) close(s->in_fd);
    memset(s, 0, sizeof *s);
}

/* The command has exited and its output has ended (or the grace after its
 * exit is over): the last frames, and the session is gone. */
static void finish(struct session *s) {
    if (s->tty || s->out_fd >= 0) send_frame(STDOUT, s->chan, NULL, 0);
    if (s->tty || s->err_fd >= 0) send_frame(STDERR, s->chan, NULL, 0);
    send_code(s->chan, s->code);
    free_session(s);
}

static void maybe_finish(struct session *s) {
    if (!s->reaped) return;
    if (s->out_fd < 0 && s->err_fd < 0) {
        finish(s);
    } else if (!s->has_deadline) {
        now(&s->deadline);
        s->deadline.tv_sec += s->tty ? TTY_GRACE_S : PIPE_GRACE_S;
        s->has_deadline = 1;
    }
}

/* One read of a command's output: data goes out as it comes; EOF (or a
 * terminal's EIO once the command and its children are gone) ends it. */
static void pump_out(struct session *s, int is_err) {
    int *fd = is_err ? &s->err_fd : &s->out_fd;
    ssize_t n = read(*fd, outbuf, sizeof outbuf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n > 0) {
        send_frame(is_err ? STDERR : STDOUT, s->chan, outbuf, (size_t)n);
        return;
    }
    if (s->tty) {
        close(*fd);
        s->in_fd = -1;
        s->in_dead = 1;
        drop_queue(s);
    } else {
        send_frame(is_err ? STDERR : STDOUT, s->chan, NULL, 0);
        close(*fd);
    }
    *fd = -1;
    maybe_finish(s);
}

static void pump_in(struct session *s) {
    while (s->qhead) {
        struct chunk *c = s->qhead;
        ssize_t n = write(s->in_fd, c->data + c->off, c->len - c->off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            close_stdin(s); /* the command closed its stdin, or is gone */
            return;
        }
        c->off += (size_t)n;
        s->queued -= (size_t)n;
        if (c->off == c->len) {
            s->qhead = c->next;
            if (!s->qhead) s->qtail = NULL;
            free(c);
        }
    }
    if (s->in_eof && !s->tty) close_stdin(s);
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_SESSIONS; i++) {
            struct session *s = &sessions[i];
            if (!s->used || s->reaped || s->pid != pid) continue;
            s->reaped = 1;
            s->code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
            maybe_finish(s);
            break;
        }
    }
}

static void kill_session(struct session *s, int sig) {
    if (s->pid > 0) killpg(s->pid, sig); /* the group may outlive its leader */
}

/* -- the host's frames ----------------------------------------------------------------------- */

static int forwarded(long long sig) {
    return sig == SIGHUP || sig == SIGINT || sig == SIGQUIT || sig == SIGTERM || sig == SIGKILL;
}

/* Takes C (the payload, C->len bytes). */
static void dispatch(int kind, uint32_t chan, struct chunk *c) {
    struct session *s;
    switch (kind) {
    case PING:
        send_frame(PONG, chan, c->data, c->len);
        break;
    case OPEN:
        open_session(chan, c->data, c->len);
        break;
    case STDIN:
    case DATA:
        s = find_session(chan);
        if (!s || s->in_dead || s->in_eof) break;
        if (!c->len) {
            s->in_eof = 1;
            if (!s->qhead && !s->tty) close_stdin(s);
            break;
        }
        c->next = NULL;
        c->off = 0;
        if (s->qtail) s->qtail->next = c;
        else s->qhead = c;
        s->qtail = c;
        s->queued += c->len;
        return; /* the queue owns it now */
    case SIGNAL: {
        struct ints w = {.names = {"signal", NULL}};
        s = find_session(chan);
        if (s && !parse_ints(c->data, c->len, &w) && w.has[0] && w.vals[0].type == J_INT && !w.vals[0].big &&
            forwarded(w.vals[0].num))
            kill_session(s, (int)w.vals[0].num);
        break;
    }
    case RESIZE: {
        struct ints w = {.names = {"rows", "cols"}};
        s = find_session(chan);
        if (s && s->tty && s->out_fd >= 0 && !parse_ints(c->data, c->len, &w) && size_ok(&w.vals[0]) &&
            size_ok(&w.vals[1]))
            set_size(s->out_fd, w.vals[0].num, w.vals[1].num);
        break;
    }
    case CLOSE: /* the host side went away: end what it started */
        s = find_session(chan);
        if (s) {
            s->in_eof = 1;
            if (!s->tty) close_stdin(s);
            kill_session(s, SIGKILL);
        }
        break;
    default:
        break;
    }
    free(c);
}

/* The link's decoder: a header, then its payload, straight into a chunk. */
static unsigned char hdr[HEADER_SIZE];
static size_t hdr_got;
static struct chunk *body;
static size_t body_got;
static int body_kind;
static uint32_t body_chan;

static void decoder_reset(void) {
    free(body);
    body = NULL;
    hdr_got = body_got = 0;
}

/* Feed N bytes from the link; -1 on a malformed frame. */
static int feed(const unsigned char *p, size_t n) {
    while (n) {
        if (!body) {
            size_t take = HEADER_SIZE - hdr_got < n ? HEADER_SIZE - hdr_got : n;
            memcpy(hdr + hdr_got, p, take);
            hdr_got += take;
            p += take;
            n -= take;
            if (hdr_got < HEADER_SIZE) return 0;
            uint32_t len = get32(hdr + 5);
            if (hdr[0] < FIRST_TYPE || hdr[0] > LAST_TYPE) {
                logmsg("bad frame from the host: unknown frame type %#x", hdr[0]);
                return -1;
            }
            if (len > MAX_PAYLOAD) {
                logmsg("bad frame from the host: %u bytes", len);
                return -1;
            }
            body = malloc(sizeof *body + len);
            if (!body) {
                logmsg("out of memory");
                return -1;
            }
            body->len = len;
            body_got = 0;
            body_kind = hdr[0];
            body_chan = get32(hdr + 1);
        }
        size_t take = body->len - body_got < n ? body->len - body_got : n;
        memcpy(body->data + body_got, p, take);
        body_got += take;
        p += take;
        n -= take;
        if (body_got == body->len) {
            struct chunk *c = body;
            body = NULL;
            hdr_got = 0;
            dispatch(body_kind, body_chan, c);
        }
    }
    return 0;
}

/* -- the loop ---------------------------------------------------------------------------------- */

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    ssize_t r = write(wake_w, "", 1);
    (void)r;
    errno = saved;
}

static void on_sigint(int sig) { (void)sig; }

static void serve(void) {
    static unsigned char rbuf[16384];
    static struct pollfd pfd[2 + 3 * MAX_SESSIONS];
    static struct { struct session *s; int what; } owner[2 + 3 * MAX_SESSIONS];
    enum { W_OUT, W_ERR, W_IN };
    char hello[32];
    int n = snprintf(hello, sizeof hello, "{\"version\":%d}", VERSION);
    send_frame(HELLO, 0, hello, (size_t)n);
    while (!link_dead) {
        int stalled = 0, np = 0, timeout = -1;
        for (int i = 0; i < MAX_SESSIONS; i++)
            if (sessions[i].used && sessions[i].queued > STDIN_QUEUE_MAX) stalled = 1;
        pfd[np++] = (struct pollfd){wake_r, POLLIN, 0};
        pfd[np++] = (struct pollfd){link_fd, stalled ? 0 : POLLIN, 0};
        for (int i = 0; i < MAX_SESSIONS; i++) {
            struct session *s = &sessions[i];
            if (!s->used) continue;
            int want[3][2] = {{s->out_fd, POLLIN}, {s->err_fd, POLLIN}, {-1, POLLOUT}};
            if (s->qhead && !s->in_dead) want[W_IN][0] = s->in_fd;
            for (int w = 0; w < 3; w++) {
                if (want[w][0] < 0) continue;
                owner[np].s = s;
                owner[np].what = w;
                pfd[np++] = (struct pollfd){want[w][0], (short)want[w][1], 0};
            }
            if (s->has_deadline) {
                long long ms = ms_until(&s->deadline);
                if (ms < 0) ms = 0;
                if (timeout < 0 || ms < timeout) timeout = (int)(ms > 60000 ? 60000 : ms);
            }
        }
        if (poll(pfd, (nfds_t)np, timeout) < 0) {
            if (errno == EINTR) continue;
            logmsg("poll: %s", strerror(errno));
            return;
        }
        if (pfd[0].revents) {
            char junk[64];
            while (read(wake_r, junk, sizeof junk) > 0) {
            }
            reap();
        }
        if (pfd[1].revents & POLLIN) {
            ssize_t got = read(link_fd, rbuf, sizeof rbuf);
            if (got < 0 && (errno == EINTR || errno == EAGAIN)) {
                /* again */
            } else if (got <= 0 || feed(rbuf, (size_t)got)) {
                return;
            }
        } else if (pfd[1].revents & (POLLHUP | POLLERR | POLLNVAL)) {
            return; /* gone while its input waited */
        }
        for (int k = 2; k < np; k++) {
            struct session *s = owner[k].s;
            if (!pfd[k].revents || !s->used) continue;
            /* A session finished or replaced since the poll has other fds now. */
            if (owner[k].what == W_OUT && s->out_fd == pfd[k].fd) pump_out(s, 0);
            else if (owner[k].what == W_ERR && s->err_fd == pfd[k].fd) pump_out(s, 1);
            else if (owner[k].what == W_IN && s->in_fd == pfd[k].fd && !s->in_dead) pump_in(s);
        }
        for (int i = 0; i < MAX_SESSIONS; i++) {
            struct session *s = &sessions[i];
            if (s->used && s->has_deadline && ms_until(&s->deadline) <= 0) finish(s);
        }
    }
}

/* The link is gone: every command it started ends with it. */
static void end_sessions(void) {
    for (int i = 0; i < MAX_SESSIONS; i++) {
        struct session *s = &sessions[i];
        if (!s->used) continue;
        kill_session(s, SIGKILL);
        if (!s->reaped) {
            int status;
            while (waitpid(s->pid, &status, 0) < 0 && errno == EINTR) {
            }
        }
        free_session(s);
    }
    decoder_reset();
}

static int connect_to(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, path);
    long pause_ms = 20;
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            logmsg("socket: %s", strerror(errno));
            exit(1);
        }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
        close(fd);
        reap();
        struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
        pause_ms = pause_ms * 2 > 1000 ? 1000 : pause_ms * 2;
    }
}

int main(int argc, char **argv) {
    if (argc != 3 || strcmp(argv[1], "--serve")) {
        fprintf(stderr, "usage: qlite-agent --serve SOCKET\n");
        return 2;
    }
    if (strlen(argv[2]) >= sizeof ((struct sockaddr_un *)0)->sun_path) {
        fprintf(stderr, "qlite-agent: socket path too long: %s\n", argv[2]);
        return 2;
    }
    /* Keep 0, 1 and 2 taken, so that no pipe of a command lands on them. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0) return 1;
    /* Freed buffers go back to the system: an idle agent holds none. */
    mallopt(M_MMAP_THRESHOLD, 64 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);

    int wake[2];
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK)) {
        logmsg("pipe: %s", strerror(errno));
        return 1;
    }
    wake_r = wake[0];
    wake_w = wake[1];
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sa.sa_handler = on_sigchld;
    sigaction(SIGCHLD, &sa, NULL);
    /* A handler, not SIG_IGN: an ignored signal would stay ignored in the
     * commands (the children reset every disposition all the same). */
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (;;) {
        link_fd = connect_to(argv[2]);
        link_dead = 0;
        serve();
        end_sessions();
        close(link_fd);
        link_fd = -1;
    }
}
