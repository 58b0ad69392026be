/* Provider entry point, algorithm tables, errors, key references, OSSL_PARAM helpers. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

/* Each dispatch function declared with OpenSSL's own type before the table casts it to
 * void (*)(void): a definition that does not match the core's signature fails to compile. */
static OSSL_FUNC_provider_teardown_fn shim_teardown;
static OSSL_FUNC_provider_query_operation_fn shim_query;
static OSSL_FUNC_provider_get_reason_strings_fn shim_get_reason_strings;
static OSSL_FUNC_provider_gettable_params_fn shim_gettable_params;
static OSSL_FUNC_provider_get_params_fn shim_get_params;
SHIM_EXPORT OSSL_provider_init_fn OSSL_provider_init;

struct shim_callbacks shim_cb;

/*
 * Python may only be called while its interpreter runs. `import tpmtls` sets the
 * callbacks; an atexit hook calls tpmtls_shutdown() before the interpreter tears
 * down its modules, because OpenSSL frees keys (and may even sign, from a daemon
 * thread) during the final garbage collection, when a ctypes callback would crash
 * the process (docs/facts-openssl.md, "A TPM key freed at interpreter exit").
 */
static int python_alive;

/* Called from Python (ctypes) before any OpenSSL core loads us. */
SHIM_EXPORT void tpmtls_set_callbacks(shim_load_fn load, shim_pem2der_fn pem2der, shim_sign_fn sign,
                                      shim_error_fn error)
{
    shim_cb.load = load;
    shim_cb.pem2der = pem2der;
    shim_cb.sign = sign;
    shim_cb.error = error;
    __atomic_store_n(&python_alive, 1, __ATOMIC_SEQ_CST);
}

/* Called from Python at interpreter exit: from now on no callback runs. */
SHIM_EXPORT void tpmtls_shutdown(void)
{
    __atomic_store_n(&python_alive, 0, __ATOMIC_SEQ_CST);
}

int shim_python_alive(void)
{
    return __atomic_load_n(&python_alive, __ATOMIC_SEQ_CST);
}

/* sizeof(shim_keyinfo): Python's ctypes mirror (KeyInfo) checks it before registering callbacks,
 * so a struct changed on one side only is refused at load instead of corrupting memory. */
SHIM_EXPORT size_t tpmtls_keyinfo_size(void)
{
    return sizeof(shim_keyinfo);
}

/* How many OpenSSL cores have initialised us: `tpmtls doctor` shows it. */
static int init_count;
SHIM_EXPORT int tpmtls_init_count(void)
{
    return __atomic_load_n(&init_count, __ATOMIC_SEQ_CST);
}

/*
 * Freed keys are queued here, not reported by a callback: OpenSSL frees keys from
 * wherever the last reference goes (a garbage collection, an exception unwinding a
 * frame, a thread holding a Python lock), and calling Python there would crash at
 * exit, deadlock on a lock the thread holds, or clobber a pending exception. Python
 * drains the queue when it loads the next key (tpmtls_take_freed).
 */
static pthread_mutex_t freed_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *freed;
static size_t freed_len, freed_cap;

static void freed_prepare(void)
{
    pthread_mutex_lock(&freed_lock);
}

static void freed_release(void)
{
    pthread_mutex_unlock(&freed_lock);
}

/* fork() while another thread held the lock must not leave it locked in the child */
__attribute__((constructor)) static void freed_atfork(void)
{
    pthread_atfork(freed_prepare, freed_release, freed_release);
}

static void defer_free(uint64_t id)
{
    pthread_mutex_lock(&freed_lock);
    if (freed_len == freed_cap) {
        size_t cap = freed_cap ? freed_cap * 2 : 64;
        uint64_t *grown = realloc(freed, cap * sizeof(*freed));

        if (grown == NULL) { /* out of memory: Python keeps one stale entry, harmless */
            pthread_mutex_unlock(&freed_lock);
            return;
        }
        freed = grown;
        freed_cap = cap;
    }
    freed[freed_len++] = id;
    pthread_mutex_unlock(&freed_lock);
}

/* Move up to `max` freed key ids into `out`; returns how many. */
SHIM_EXPORT size_t tpmtls_take_freed(uint64_t *out, size_t max)
{
    size_t n;

    pthread_mutex_lock(&freed_lock);
    n = freed_len < max ? freed_len : max;
    memcpy(out, freed, n * sizeof(*out));
    memmove(freed, freed + n, (freed_len - n) * sizeof(*freed));
    freed_len -= n;
    pthread_mutex_unlock(&freed_lock);
    return n;
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
    if (key->has_private)
        defer_free(key->info.id);
    free(key);
}

/* ---- errors ---- */

static const OSSL_ITEM shim_reasons[] = {
    { SHIM_R_NOT_LOADED, "tpmtls Python side not available (import tpmtls first; not during interpreter exit)" },
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

    if (shim_cb.error != NULL && shim_python_alive())
        shim_cb.error(msg, sizeof(msg));
    shim_error(prov, SHIM_R_TPM_FAILED, "%s", msg[0] ? msg : fallback);
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

    if ((p = shim_param_locate(params, OSSL_PROV_PARAM_NAME)) != NULL && p->data_type == OSSL_PARAM_UTF8_PTR
        && p->data != NULL && p->data_size >= sizeof(const char *)) {
        *(const char **)p->data = "tpmtls TPM shim provider";
        p->return_size = strlen("tpmtls TPM shim provider");
    }
    if ((p = shim_param_locate(params, OSSL_PROV_PARAM_STATUS)) != NULL)
        shim_param_set_int(p, shim_cb.sign != NULL && shim_python_alive());
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
