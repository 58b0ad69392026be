/* Provider entry point, algorithm tables, errors, key references, OSSL_PARAM helpers. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

struct shim_callbacks shim_cb;

/* Called from Python (ctypes) before any OpenSSL core loads us. */
SHIM_EXPORT void tpmtls_set_callbacks(shim_load_fn load, shim_pem2der_fn pem2der, shim_sign_fn sign,
                                      shim_free_fn free_fn, shim_error_fn error)
{
    shim_cb.load = load;
    shim_cb.pem2der = pem2der;
    shim_cb.sign = sign;
    shim_cb.free = free_fn;
    shim_cb.error = error;
}

/* How many OpenSSL cores have initialised us: `tpmtls doctor` shows it. */
static int init_count;
SHIM_EXPORT int tpmtls_init_count(void)
{
    return __atomic_load_n(&init_count, __ATOMIC_SEQ_CST);
}

/* ---- keys ---- */

shim_key *shim_key_new(shim_provctx *prov)
{
    shim_key *key = calloc(1, sizeof(*key));
    if (key != NULL) {
        key->refs = 1;
        key->prov = prov;
    }
    return key;
}

shim_key *shim_key_ref(shim_key *key)
{
    if (key != NULL)
        __atomic_add_fetch(&key->refs, 1, __ATOMIC_SEQ_CST);
    return key;
}

void shim_key_unref(shim_key *key)
{
    if (key == NULL || __atomic_sub_fetch(&key->refs, 1, __ATOMIC_SEQ_CST) > 0)
        return;
    if (key->has_private && shim_cb.free != NULL)
        shim_cb.free(key->info.id);
    free(key);
}

/* ---- errors ---- */

static const OSSL_ITEM shim_reasons[] = {
    { SHIM_R_NOT_LOADED, "tpmtls Python side not registered (import tpmtls first)" },
    { SHIM_R_TPM_FAILED, "TPM operation failed" },
    { SHIM_R_BAD_PARAM, "unsupported parameter" },
    { SHIM_R_NO_PRIVATE, "no TPM key behind this object" },
    { SHIM_R_BUFFER, "buffer too small" },
    { 0, NULL },
};

void shim_error(shim_provctx *prov, int reason, const char *fmt, ...)
{
    va_list ap;

    if (prov == NULL || prov->new_error == NULL || prov->vset_error == NULL)
        return;
    prov->new_error(prov->handle);
    if (prov->set_error_debug != NULL)
        prov->set_error_debug(prov->handle, __FILE__, __LINE__, "tpmtls");
    va_start(ap, fmt);
    prov->vset_error(prov->handle, reason, fmt, ap);
    va_end(ap);
}

void shim_error_from_python(shim_provctx *prov, const char *fallback)
{
    char msg[512] = "";

    if (shim_cb.error != NULL)
        shim_cb.error(msg, sizeof(msg));
    shim_error(prov, SHIM_R_TPM_FAILED, "%s", msg[0] ? msg : fallback);
}

/* ---- OSSL_PARAM helpers (see shim.h: no libcrypto symbols) ---- */

OSSL_PARAM *shim_param_locate(OSSL_PARAM *params, const char *key)
{
    for (OSSL_PARAM *p = params; p != NULL && p->key != NULL; p++)
        if (strcmp(p->key, key) == 0)
            return p;
    return NULL;
}

const OSSL_PARAM *shim_param_locate_const(const OSSL_PARAM *params, const char *key)
{
    return shim_param_locate((OSSL_PARAM *)params, key);
}

int shim_param_set_int(OSSL_PARAM *p, int value)
{
    if (p->data_type == OSSL_PARAM_INTEGER || p->data_type == OSSL_PARAM_UNSIGNED_INTEGER) {
        p->return_size = p->data_size;
        if (p->data == NULL)
            return 1;
        if (p->data_size == sizeof(int32_t)) {
            *(int32_t *)p->data = value;
            return 1;
        }
        if (p->data_size == sizeof(int64_t)) {
            *(int64_t *)p->data = value;
            return 1;
        }
    }
    return 0;
}

int shim_param_set_utf8(OSSL_PARAM *p, const char *value)
{
    size_t len = strlen(value);

    if (p->data_type != OSSL_PARAM_UTF8_STRING)
        return 0;
    p->return_size = len;
    if (p->data == NULL)
        return 1;
    if (p->data_size < len + 1)
        return 0;
    memcpy(p->data, value, len + 1);
    return 1;
}

int shim_param_set_octets(OSSL_PARAM *p, const void *data, size_t len)
{
    if (p->data_type != OSSL_PARAM_OCTET_STRING)
        return 0;
    p->return_size = len;
    if (p->data == NULL)
        return 1;
    if (p->data_size < len)
        return 0;
    memcpy(p->data, data, len);
    return 1;
}

int shim_param_set_bn(OSSL_PARAM *p, const unsigned char *be, size_t len)
{
    unsigned char *out = p->data;

    if (p->data_type != OSSL_PARAM_UNSIGNED_INTEGER)
        return 0;
    p->return_size = len;
    if (out == NULL)
        return 1;
    if (p->data_size < len)
        return 0;
    /* native (little) endian, zero-extended to the buffer size */
    memset(out, 0, p->data_size);
    for (size_t i = 0; i < len; i++)
        out[i] = be[len - 1 - i];
    p->return_size = p->data_size;
    return 1;
}

int shim_param_get_int(const OSSL_PARAM *p, int *value)
{
    if (p->data_type != OSSL_PARAM_INTEGER && p->data_type != OSSL_PARAM_UNSIGNED_INTEGER)
        return 0;
    if (p->data_size == sizeof(int32_t)) {
        *value = *(const int32_t *)p->data;
        return 1;
    }
    if (p->data_size == sizeof(int64_t)) {
        *value = (int)*(const int64_t *)p->data;
        return 1;
    }
    return 0;
}

int shim_param_get_utf8(const OSSL_PARAM *p, char *buf, size_t size)
{
    size_t len;

    if (p->data_type != OSSL_PARAM_UTF8_STRING || p->data == NULL)
        return 0;
    len = strnlen(p->data, p->data_size);
    if (len + 1 > size)
        return 0;
    memcpy(buf, p->data, len);
    buf[len] = '\0';
    return 1;
}

OSSL_PARAM shim_param_utf8(const char *key, char *value)
{
    OSSL_PARAM p = { key, OSSL_PARAM_UTF8_STRING, value, strlen(value), SHIM_PARAM_UNMODIFIED };
    return p;
}

OSSL_PARAM shim_param_octets(const char *key, void *data, size_t len)
{
    OSSL_PARAM p = { key, OSSL_PARAM_OCTET_STRING, data, len, SHIM_PARAM_UNMODIFIED };
    return p;
}

OSSL_PARAM shim_param_uint(const char *key, unsigned char *native, size_t len)
{
    OSSL_PARAM p = { key, OSSL_PARAM_UNSIGNED_INTEGER, native, len, SHIM_PARAM_UNMODIFIED };
    return p;
}

OSSL_PARAM shim_param_end(void)
{
    OSSL_PARAM p = { NULL, 0, NULL, 0, 0 };
    return p;
}

/* ---- provider ---- */

#define PROPS "provider=tpmtls"

static const OSSL_ALGORITHM shim_keymgmt[] = {
    { "RSA:rsaEncryption:1.2.840.113549.1.1.1", PROPS, shim_rsa_keymgmt_functions, "TPM RSA key" },
    { "EC:id-ecPublicKey:1.2.840.10045.2.1", PROPS, shim_ec_keymgmt_functions, "TPM EC key" },
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM shim_signature[] = {
    { SHIM_RSA_SIG_NAME, PROPS, shim_rsa_signature_functions, "RSA signature in the TPM" },
    { SHIM_ECDSA_SIG_NAME, PROPS, shim_ecdsa_signature_functions, "ECDSA signature in the TPM" },
    { NULL, NULL, NULL, NULL },
};

/* PEM -> DER for our labels, then DER (structure TSS2) -> key, as tpm2-openssl does. */
static const OSSL_ALGORITHM shim_decoder[] = {
    { "DER", PROPS ",input=pem", shim_pem_decoder_functions, "TSS2/TPMTLS PEM to DER" },
    { "RSA:rsaEncryption:1.2.840.113549.1.1.1", PROPS ",input=der,structure=TSS2", shim_rsa_decoder_functions,
      "TSS2 key to TPM RSA key" },
    { "EC:id-ecPublicKey:1.2.840.10045.2.1", PROPS ",input=der,structure=TSS2", shim_ec_decoder_functions,
      "TSS2 key to TPM EC key" },
    { NULL, NULL, NULL, NULL },
};

static const OSSL_ALGORITHM *shim_query(void *provctx, int operation_id, int *no_cache)
{
    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return shim_keymgmt;
    case OSSL_OP_SIGNATURE:
        return shim_signature;
    case OSSL_OP_DECODER:
        return shim_decoder;
    }
    return NULL;
}

static const OSSL_ITEM *shim_get_reason_strings(void *provctx)
{
    return shim_reasons;
}

static const OSSL_PARAM shim_param_types[] = {
    { OSSL_PROV_PARAM_NAME, OSSL_PARAM_UTF8_PTR, NULL, 0, 0 },
    { OSSL_PROV_PARAM_STATUS, OSSL_PARAM_INTEGER, NULL, 0, 0 },
    { NULL, 0, NULL, 0, 0 },
};

static const OSSL_PARAM *shim_gettable_params(void *provctx)
{
    return shim_param_types;
}

static int shim_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    if ((p = shim_param_locate(params, OSSL_PROV_PARAM_NAME)) != NULL && p->data_type == OSSL_PARAM_UTF8_PTR)
        *(const char **)p->data = "tpmtls TPM shim provider";
    if ((p = shim_param_locate(params, OSSL_PROV_PARAM_STATUS)) != NULL)
        shim_param_set_int(p, shim_cb.sign != NULL);
    return 1;
}

static void shim_teardown(void *provctx)
{
    free(provctx);
}

static const OSSL_DISPATCH shim_dispatch[] = {
    { OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))shim_teardown },
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))shim_query },
    { OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))shim_get_reason_strings },
    { OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))shim_gettable_params },
    { OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))shim_get_params },
    { 0, NULL },
};

SHIM_EXPORT int OSSL_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                                   const OSSL_DISPATCH **out, void **provctx)
{
    shim_provctx *ctx = calloc(1, sizeof(*ctx));

    if (ctx == NULL)
        return 0;
    ctx->handle = handle;
    for (; in->function_id != 0; in++) {
        switch (in->function_id) {
        case OSSL_FUNC_CORE_NEW_ERROR:
            ctx->new_error = OSSL_FUNC_core_new_error(in);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            ctx->set_error_debug = OSSL_FUNC_core_set_error_debug(in);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            ctx->vset_error = OSSL_FUNC_core_vset_error(in);
            break;
        case OSSL_FUNC_BIO_READ_EX:
            ctx->bio_read_ex = OSSL_FUNC_BIO_read_ex(in);
            break;
        }
    }
    __atomic_add_fetch(&init_count, 1, __ATOMIC_SEQ_CST);
    *out = shim_dispatch;
    *provctx = ctx;
    return 1;
}
