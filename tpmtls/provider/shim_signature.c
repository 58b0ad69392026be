/*
 * RSA (PKCS#1 v1.5, PSS) and ECDSA signatures: parameters and message buffering
 * only. The message (or a caller's digest) goes to Python, which hashes it in
 * software and makes exactly one TPM signature through the pool.
 *
 * OpenSSL 3 requires digest_sign_* from a provider signature (m_sigver.c has no
 * fallback that hashes for us), and the shim has no digests of its own, so the
 * message is buffered: TLS signs small inputs (a TLS 1.3 CertificateVerify is
 * ~130 bytes; TLS 1.2 a transcript of a few KB).
 */
#include <stdlib.h>
#include <string.h>

#include "shim.h"

/* Each dispatch function declared with OpenSSL's own type before the table casts it to
 * void (*)(void): a definition that does not match the core's signature fails to compile. */
static OSSL_FUNC_signature_freectx_fn sig_freectx;
static OSSL_FUNC_signature_dupctx_fn sig_dupctx;
static OSSL_FUNC_signature_sign_init_fn sig_sign_init;
static OSSL_FUNC_signature_sign_fn sig_sign;
static OSSL_FUNC_signature_digest_sign_init_fn sig_digest_sign_init;
static OSSL_FUNC_signature_digest_sign_update_fn sig_update;
static OSSL_FUNC_signature_digest_sign_final_fn sig_digest_sign_final;
static OSSL_FUNC_signature_digest_sign_fn sig_digest_sign;
static OSSL_FUNC_signature_get_ctx_params_fn sig_get_ctx_params;
static OSSL_FUNC_signature_gettable_ctx_params_fn sig_gettable_ctx_params;
static OSSL_FUNC_signature_set_ctx_params_fn sig_set_ctx_params;
static OSSL_FUNC_signature_newctx_fn rsa_newctx;
static OSSL_FUNC_signature_settable_ctx_params_fn rsa_settable_ctx_params;
static OSSL_FUNC_signature_newctx_fn ec_newctx;
static OSSL_FUNC_signature_settable_ctx_params_fn ec_settable_ctx_params;

#define MAX_MESSAGE (1u << 24) /* 16 MiB: far above any handshake */

typedef struct {
    shim_provctx *prov;
    shim_key *key;
    int type;                  /* SHIM_RSA or SHIM_EC */
    char mdname[32];           /* "" = not set */
    char mgf1[32];
    int pad_mode;              /* RSA_PKCS1_PADDING (1) or RSA_PKCS1_PSS_PADDING (6) */
    int saltlen;               /* >= 0, or -1 digest, -2 auto, -3 max, -4 auto-digest-max */
    unsigned char *buf;
    size_t len, cap;
} sig_ctx;

enum { PAD_PKCS1 = 1, PAD_PSS = 6 };
/* RSA_PSS_SALTLEN_* of OpenSSL's rsa.h (a libcrypto header we do not include) */
enum { SALT_DIGEST = -1, SALT_AUTO = -2, SALT_MAX = -3, SALT_AUTO_DIGEST_MAX = -4 };
#ifndef OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO_DIGEST_MAX /* OpenSSL 3.1+; the system's is 3.0 */
#define OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO_DIGEST_MAX "auto-digestmax"
#endif

/* The defaults of a fresh operation: every (re-)init starts from these. */
static void sig_reset(sig_ctx *ctx)
{
    ctx->mdname[0] = '\0';
    ctx->mgf1[0] = '\0';
    ctx->pad_mode = PAD_PKCS1;
    ctx->saltlen = SALT_DIGEST;
    ctx->len = 0;
}

static void *sig_newctx(shim_provctx *prov, int type)
{
    sig_ctx *ctx = calloc(1, sizeof(*ctx));

    if (ctx != NULL) {
        ctx->prov = prov;
        ctx->type = type;
        sig_reset(ctx);
    }
    return ctx;
}

static void *rsa_newctx(void *provctx, const char *propq)
{
    return sig_newctx(provctx, SHIM_RSA);
}

static void *ec_newctx(void *provctx, const char *propq)
{
    return sig_newctx(provctx, SHIM_EC);
}

static void sig_freectx(void *vctx)
{
    sig_ctx *ctx = vctx;

    if (ctx == NULL)
        return;
    shim_key_unref(ctx->key);
    free(ctx->buf);
    free(ctx);
}

static void *sig_dupctx(void *vctx)
{
    const sig_ctx *src = vctx;
    sig_ctx *dst = malloc(sizeof(*dst));

    if (dst == NULL)
        return NULL;
    *dst = *src;
    dst->buf = NULL;
    dst->cap = 0;
    if (src->len > 0) {
        if ((dst->buf = malloc(src->len)) == NULL) {
            free(dst);
            return NULL;
        }
        memcpy(dst->buf, src->buf, src->len);
        dst->cap = src->len;
    }
    shim_key_ref(dst->key);
    return dst;
}

static int sig_set_ctx_params(void *vctx, const OSSL_PARAM params[]);

static int sig_init(sig_ctx *ctx, void *keydata, const char *mdname, const OSSL_PARAM params[])
{
    shim_key *key = keydata;

    if (key == NULL || !key->has_private) {
        shim_error(ctx->prov, SHIM_R_NO_PRIVATE, "this key object has no TPM key behind it");
        return 0;
    }
    if (key->info.type != ctx->type)
        return 0;
    shim_key_unref(ctx->key);
    ctx->key = shim_key_ref(key);
    sig_reset(ctx); /* nothing of a previous operation carries over */
    if (mdname != NULL && mdname[0] != '\0') {
        if (strlen(mdname) >= sizeof(ctx->mdname))
            return 0;
        strcpy(ctx->mdname, mdname);
    }
    return sig_set_ctx_params(ctx, params);
}

static int sig_sign_init(void *vctx, void *keydata, const OSSL_PARAM params[])
{
    return sig_init(vctx, keydata, NULL, params);
}

static int sig_digest_sign_init(void *vctx, const char *mdname, void *keydata, const OSSL_PARAM params[])
{
    return sig_init(vctx, keydata, mdname, params);
}

static int sig_update(void *vctx, const unsigned char *data, size_t len)
{
    sig_ctx *ctx = vctx;

    if (len > MAX_MESSAGE - ctx->len) {
        shim_error(ctx->prov, SHIM_R_BUFFER, "message too long to sign");
        return 0;
    }
    if (ctx->len + len > ctx->cap) {
        size_t cap = ctx->cap ? ctx->cap : 256;
        unsigned char *buf;

        while (cap < ctx->len + len)
            cap *= 2;
        if ((buf = realloc(ctx->buf, cap)) == NULL)
            return 0;
        ctx->buf = buf;
        ctx->cap = cap;
    }
    if (len > 0)
        memcpy(ctx->buf + ctx->len, data, len);
    ctx->len += len;
    return 1;
}

/* Ask Python to sign; sig == NULL asks for the maximum size (OpenSSL convention). */
static int do_sign(sig_ctx *ctx, int prehashed, const unsigned char *tbs, size_t tbs_len,
                   unsigned char *sig, size_t *siglen, size_t sigsize)
{
    size_t len = sigsize;

    if (ctx->key == NULL)
        return 0;
    if (sig == NULL) {
        *siglen = (size_t)ctx->key->info.max_size;
        return 1;
    }
    if (shim_cb.sign == NULL || !shim_python_alive()) {
        shim_error(ctx->prov, SHIM_R_NOT_LOADED,
                   "tpmtls cannot sign now: not imported in this process, or the interpreter is exiting");
        return 0;
    }
    if (shim_cb.sign(ctx->key->info.id, ctx->mdname, ctx->pad_mode, ctx->saltlen, ctx->mgf1, prehashed,
                     tbs, tbs_len, sig, &len) != 1) {
        shim_error_from_python(ctx->prov, "TPM signature failed");
        return 0;
    }
    *siglen = len;
    return 1;
}

static int sig_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize, const unsigned char *tbs,
                    size_t tbslen)
{
    return do_sign(vctx, 1, tbs, tbslen, sig, siglen, sigsize);
}

static int sig_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    sig_ctx *ctx = vctx;
    int ok = do_sign(ctx, 0, ctx->buf, ctx->len, sig, siglen, sigsize);

    if (sig != NULL)
        ctx->len = 0;
    return ok;
}

static int sig_digest_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                           const unsigned char *tbs, size_t tbslen)
{
    return do_sign(vctx, 0, tbs, tbslen, sig, siglen, sigsize);
}

static int sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    sig_ctx *ctx = vctx;
    OSSL_PARAM *p;

    if ((p = shim_param_locate(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL
        && !shim_param_set_utf8(p, ctx->mdname))
        return 0;
    if (ctx->type == SHIM_RSA) {
        if ((p = shim_param_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL
            && !shim_param_set_int(p, ctx->pad_mode)
            && !shim_param_set_utf8(p, ctx->pad_mode == PAD_PSS ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                                                : OSSL_PKEY_RSA_PAD_MODE_PKCSV15))
            return 0;
        if ((p = shim_param_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL
            && !shim_param_set_int(p, ctx->saltlen))
            return 0;
    }
    return 1;
}

static int parse_pad_mode(const OSSL_PARAM *p, int *mode)
{
    char s[16];

    if (shim_param_get_int(p, mode))
        return *mode == PAD_PKCS1 || *mode == PAD_PSS;
    if (!shim_param_get_utf8(p, s, sizeof(s)))
        return 0;
    if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0)
        *mode = PAD_PKCS1;
    else if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0)
        *mode = PAD_PSS;
    else
        return 0;
    return 1;
}

static int parse_saltlen(const OSSL_PARAM *p, int *saltlen)
{
    char s[32], *end;
    long value;

    if (shim_param_get_int(p, saltlen))
        return *saltlen >= SALT_AUTO_DIGEST_MAX;
    if (!shim_param_get_utf8(p, s, sizeof(s)))
        return 0;
    if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0)
        *saltlen = SALT_DIGEST;
    else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0)
        *saltlen = SALT_AUTO;
    else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0)
        *saltlen = SALT_MAX;
    else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO_DIGEST_MAX) == 0)
        *saltlen = SALT_AUTO_DIGEST_MAX;
    else {
        value = strtol(s, &end, 10);
        if (end == s || *end != '\0' || value < 0 || value > 4096)
            return 0; /* not a number or a name OpenSSL defines: refuse, never guess 0 */
        *saltlen = (int)value;
    }
    return 1;
}

static int sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    sig_ctx *ctx = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = shim_param_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL
        && !shim_param_get_utf8(p, ctx->mdname, sizeof(ctx->mdname)))
        return 0;
    if (ctx->type != SHIM_RSA)
        return 1;
    if ((p = shim_param_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL
        && !parse_pad_mode(p, &ctx->pad_mode)) {
        shim_error(ctx->prov, SHIM_R_BAD_PARAM, "TPM RSA keys sign with PKCS#1 v1.5 or PSS padding only");
        return 0;
    }
    if ((p = shim_param_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL
        && !parse_saltlen(p, &ctx->saltlen)) {
        shim_error(ctx->prov, SHIM_R_BAD_PARAM, "unsupported RSA-PSS salt length");
        return 0;
    }
    if ((p = shim_param_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != NULL
        && !shim_param_get_utf8(p, ctx->mgf1, sizeof(ctx->mgf1)))
        return 0;
    return 1;
}

static const OSSL_PARAM *ec_settable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM settable[] = {
        { OSSL_SIGNATURE_PARAM_DIGEST, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
        { NULL, 0, NULL, 0, 0 },
    };
    return settable;
}

static const OSSL_PARAM *rsa_settable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM settable[] = {
        { OSSL_SIGNATURE_PARAM_DIGEST, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
        { OSSL_SIGNATURE_PARAM_PAD_MODE, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
        { OSSL_SIGNATURE_PARAM_PSS_SALTLEN, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
        { OSSL_SIGNATURE_PARAM_MGF1_DIGEST, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
        { NULL, 0, NULL, 0, 0 },
    };
    return settable;
}

static const OSSL_PARAM *sig_gettable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM gettable[] = {
        { OSSL_SIGNATURE_PARAM_DIGEST, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
        { OSSL_SIGNATURE_PARAM_PAD_MODE, OSSL_PARAM_INTEGER, NULL, 0, 0 },
        { OSSL_SIGNATURE_PARAM_PSS_SALTLEN, OSSL_PARAM_INTEGER, NULL, 0, 0 },
        { NULL, 0, NULL, 0, 0 },
    };
    return gettable;
}

#define SIGNATURE_COMMON                                                                          \
    { OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_freectx },                                 \
    { OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dupctx },                                   \
    { OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))sig_sign_init },                             \
    { OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))sig_sign },                                       \
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))sig_digest_sign_init },               \
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))sig_update },                       \
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))sig_digest_sign_final },             \
    { OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))sig_digest_sign },                         \
    { OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_ctx_params },                   \
    { OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))sig_gettable_ctx_params },         \
    { OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_ctx_params }

const OSSL_DISPATCH shim_rsa_signature_functions[] = {
    { OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))rsa_newctx },
    SIGNATURE_COMMON,
    { OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))rsa_settable_ctx_params },
    { 0, NULL },
};

const OSSL_DISPATCH shim_ecdsa_signature_functions[] = {
    { OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))ec_newctx },
    SIGNATURE_COMMON,
    { OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))ec_settable_ctx_params },
    { 0, NULL },
};
