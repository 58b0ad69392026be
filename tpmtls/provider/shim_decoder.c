/*
 * Decoders: PEM ("TSS2 PRIVATE KEY", "TPMTLS KEY HANDLE") -> DER with structure
 * "TSS2", then DER -> an RSA or EC key object backed by the TPM (the shape of
 * tpm2-openssl's decoders). Python parses and loads; C only moves bytes.
 * Returning 1 without an object means "not ours": OpenSSL tries other decoders. While
 * Python has switched a core's decoding off (tpmtls_set_decoding), every input is "not ours".
 */
#include <stdlib.h>
#include <string.h>

#include "shim.h"

/* Each dispatch function declared with OpenSSL's own type before the table casts it to
 * void (*)(void): a definition that does not match the core's signature fails to compile. */
static OSSL_FUNC_decoder_newctx_fn pem_newctx;
static OSSL_FUNC_decoder_freectx_fn dec_freectx;
static OSSL_FUNC_decoder_decode_fn pem_decode;
static OSSL_FUNC_decoder_newctx_fn rsa_newctx;
static OSSL_FUNC_decoder_does_selection_fn key_does_selection;
static OSSL_FUNC_decoder_decode_fn key_decode;
static OSSL_FUNC_decoder_newctx_fn ec_newctx;

#define SHIM_MAX_INPUT (64 * 1024) /* key files are < 4 KB */

typedef struct {
    shim_provctx *prov;
    int type; /* SHIM_RSA / SHIM_EC; 0 for the PEM decoder */
} dec_ctx;

static void *dec_new(void *provctx, int type)
{
    dec_ctx *ctx = calloc(1, sizeof(*ctx));

    if (ctx != NULL) {
        ctx->prov = provctx;
        ctx->type = type;
    }
    return ctx;
}

static void *pem_newctx(void *provctx)
{
    return dec_new(provctx, 0);
}

static void *rsa_newctx(void *provctx)
{
    return dec_new(provctx, SHIM_RSA);
}

static void *ec_newctx(void *provctx)
{
    return dec_new(provctx, SHIM_EC);
}

static void dec_freectx(void *ctx)
{
    free(ctx);
}

/* Read the whole input (bounded). Returns a malloc'd buffer or NULL. */
static unsigned char *read_all(dec_ctx *ctx, OSSL_CORE_BIO *in, size_t *len)
{
    unsigned char *buf = malloc(SHIM_MAX_INPUT);
    size_t total = 0, n = 0;

    if (buf == NULL || ctx->prov->bio_read_ex == NULL) {
        free(buf);
        return NULL;
    }
    while (total < SHIM_MAX_INPUT && ctx->prov->bio_read_ex(in, buf + total, SHIM_MAX_INPUT - total, &n) && n > 0)
        total += n;
    *len = total;
    return buf;
}

static int pem_decode(void *vctx, OSSL_CORE_BIO *in, int selection, OSSL_CALLBACK *object_cb, void *object_cbarg,
                      OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    dec_ctx *ctx = vctx;
    size_t len = 0;
    unsigned char *pem, *der;
    long der_len;
    int ok = 1;

    if (!shim_decoding(ctx->prov) || shim_cb.pem2der == NULL || !shim_python_alive()
        || (pem = read_all(ctx, in, &len)) == NULL)
        return 1; /* not ours to judge */
    der = malloc(len + 1);
    der_len = der == NULL ? -1 : shim_cb.pem2der(pem, len, der, len + 1);
    if (der_len > 0) {
        OSSL_PARAM params[3];

        params[0] = shim_param_octets(OSSL_OBJECT_PARAM_DATA, der, (size_t)der_len);
        params[1] = shim_param_utf8(OSSL_OBJECT_PARAM_DATA_STRUCTURE, "TSS2");
        params[2] = shim_param_end();
        ok = object_cb(params, object_cbarg);
    }
    free(pem);
    free(der);
    return ok;
}

static int key_decode(void *vctx, OSSL_CORE_BIO *in, int selection, OSSL_CALLBACK *object_cb, void *object_cbarg,
                      OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    dec_ctx *ctx = vctx;
    size_t len = 0;
    unsigned char *der;
    shim_key *key;
    int rc, ok = 0;

    if (selection != 0 && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0)
        return 1; /* asked for public parts only: the certificate's job, not ours */
    if (!shim_decoding(ctx->prov) || shim_cb.load == NULL || !shim_python_alive()
        || (der = read_all(ctx, in, &len)) == NULL)
        return 1;
    if ((key = shim_key_new(ctx->prov)) == NULL) {
        free(der);
        return 0;
    }
    /*
     * Key passwords come from tpmtls (ssl_context(password=), the injected
     * load_cert_chain(password=)), never from OpenSSL's passphrase callback: without
     * a caller's callback OpenSSL's default one prompts on the terminal, and a
     * library never prompts. So pw_cb is not used.
     */
    rc = shim_cb.load(der, len, ctx->type, &key->info);
    free(der);
    if (rc == 1) {
        OSSL_PARAM params[4];
        int object_type = OSSL_OBJECT_PKEY;
        OSSL_PARAM type = { OSSL_OBJECT_PARAM_TYPE, OSSL_PARAM_INTEGER, &object_type, sizeof(object_type),
                            SHIM_PARAM_UNMODIFIED };

        key->has_private = 1;
        params[0] = type;
        params[1] = shim_param_utf8(OSSL_OBJECT_PARAM_DATA_TYPE, ctx->type == SHIM_RSA ? "RSA" : "EC");
        params[2] = shim_param_octets(OSSL_OBJECT_PARAM_REFERENCE, &key, sizeof(key));
        params[3] = shim_param_end();
        /* on success the keymgmt's load() took our reference */
        if (object_cb(params, object_cbarg))
            return 1;
        ok = 0;
    } else if (rc == 0) {
        ok = 1; /* empty-handed: another decoder may know this input */
    } else {
        shim_error_from_python(ctx->prov, "cannot load the TPM key");
    }
    shim_key_unref(key);
    return ok;
}

static int key_does_selection(void *provctx, int selection)
{
    return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

const OSSL_DISPATCH shim_pem_decoder_functions[] = {
    { OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))pem_newctx },
    { OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx },
    { OSSL_FUNC_DECODER_DECODE, (void (*)(void))pem_decode },
    { 0, NULL },
};

const OSSL_DISPATCH shim_rsa_decoder_functions[] = {
    { OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))rsa_newctx },
    { OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx },
    { OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))key_does_selection },
    { OSSL_FUNC_DECODER_DECODE, (void (*)(void))key_decode },
    { 0, NULL },
};

const OSSL_DISPATCH shim_ec_decoder_functions[] = {
    { OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))ec_newctx },
    { OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx },
    { OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))key_does_selection },
    { OSSL_FUNC_DECODER_DECODE, (void (*)(void))key_decode },
    { 0, NULL },
};
