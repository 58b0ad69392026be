/*
 * tpmtls shim provider: OpenSSL plumbing only, no TPM logic.
 *
 * Private-key operations are handed to Python callbacks (registered with
 * tpmtls_set_callbacks through ctypes), which sign through the tpmtls pool.
 * The same image is loaded into two OpenSSL cores (cryptography's 4.x and the
 * system 3.0.x), so this code uses only the core dispatch table and the stable
 * OSSL_PARAM layout: never a libcrypto symbol (docs/architecture.md, "The shim provider").
 */
#ifndef TPMTLS_SHIM_H
#define TPMTLS_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/core_object.h>

#define SHIM_EXPORT __attribute__((visibility("default")))
/* OSSL_PARAM_UNMODIFIED lives in params.h beside libcrypto functions we must not use */
#define SHIM_PARAM_UNMODIFIED ((size_t)-1)

/* ---- what Python tells us about a key (filled by the load callback) ---- */
enum { SHIM_RSA = 1, SHIM_EC = 2 };

typedef struct {
    uint64_t id;                 /* Python-side registry id of the key object */
    int type;                    /* SHIM_RSA or SHIM_EC */
    int bits;
    int security_bits;
    int max_size;                /* largest signature, bytes */
    char group[32];              /* EC: "prime256v1", "secp384r1" */
    unsigned char pub[1024];     /* RSA: modulus n, big-endian; EC: uncompressed point */
    size_t pub_len;
    unsigned char e[16];         /* RSA public exponent, big-endian */
    size_t e_len;
} shim_keyinfo;

/* load: 1 loaded, 0 not ours (empty-handed), -1 error (reason via the error callback) */
typedef int (*shim_load_fn)(const unsigned char *der, size_t der_len, int expected_type, shim_keyinfo *out);
/* pem2der: bytes written to out (0: not a PEM we decode, -1: error) */
typedef long (*shim_pem2der_fn)(const unsigned char *pem, size_t pem_len,
                                unsigned char *out, size_t out_size);
/* sign: 1 ok, 0 error. prehashed: tbs is a digest of mdname; else the message. */
typedef int (*shim_sign_fn)(uint64_t id, const char *mdname, int pad_mode, int saltlen,
                            const char *mgf1_mdname, int prehashed,
                            const unsigned char *tbs, size_t tbs_len,
                            unsigned char *sig, size_t *sig_len);
/* last error of this thread, for the OpenSSL error queue */
typedef size_t (*shim_error_fn)(char *buf, size_t size);

struct shim_callbacks {
    shim_load_fn load;
    shim_pem2der_fn pem2der;
    shim_sign_fn sign;
    shim_error_fn error;
};
extern struct shim_callbacks shim_cb;
/* 0 once the interpreter is exiting: no callback may run then (shim_core.c) */
int shim_python_alive(void);

/* ---- one provider context per OpenSSL core that loaded us ---- */
typedef struct {
    const OSSL_CORE_HANDLE *handle;
    OSSL_FUNC_core_new_error_fn *new_error;
    OSSL_FUNC_core_set_error_debug_fn *set_error_debug;
    OSSL_FUNC_core_vset_error_fn *vset_error;
    OSSL_FUNC_BIO_read_ex_fn *bio_read_ex;
} shim_provctx;

/* ---- key data: shared by reference count (keymgmt dup = new reference) ---- */
typedef struct {
    int refs;
    int has_private;             /* 1 when backed by a TPM key (id valid) */
    shim_provctx *prov;
    shim_keyinfo info;
} shim_key;

shim_key *shim_key_new(shim_provctx *prov);
shim_key *shim_key_ref(shim_key *key);
void shim_key_unref(shim_key *key);

/* ---- errors: reason codes (see shim_reasons in shim_core.c) ---- */
enum {
    SHIM_R_NOT_LOADED = 1,       /* Python side not registered */
    SHIM_R_TPM_FAILED,           /* the callback failed; message says why */
    SHIM_R_BAD_PARAM,
    SHIM_R_NO_PRIVATE,
    SHIM_R_BUFFER,
};
void shim_error(shim_provctx *prov, int reason, const char *fmt, ...);
/* raise the Python side's last error (or `fallback`) on the OpenSSL error queue */
void shim_error_from_python(shim_provctx *prov, const char *fallback);

/* ---- local OSSL_PARAM helpers (shim_params.c): struct layout is stable ABI across 3.x/4.x ---- */
OSSL_PARAM *shim_param_locate(OSSL_PARAM *params, const char *key);
const OSSL_PARAM *shim_param_locate_const(const OSSL_PARAM *params, const char *key);
int shim_param_set_int(OSSL_PARAM *p, int value);
int shim_param_set_utf8(OSSL_PARAM *p, const char *value);
int shim_param_set_octets(OSSL_PARAM *p, const void *data, size_t len);
/* a big-endian unsigned number as an OSSL_PARAM_UNSIGNED_INTEGER (native endian) */
void shim_be_to_native(unsigned char *out, size_t out_size, const unsigned char *be, size_t len);
int shim_param_set_bn(OSSL_PARAM *p, const unsigned char *be, size_t len);
int shim_param_get_int(const OSSL_PARAM *p, int *value);
int shim_param_get_utf8(const OSSL_PARAM *p, char *buf, size_t size);
OSSL_PARAM shim_param_utf8(const char *key, char *value);
OSSL_PARAM shim_param_octets(const char *key, void *data, size_t len);
OSSL_PARAM shim_param_uint(const char *key, unsigned char *native, size_t len);
OSSL_PARAM shim_param_end(void);

/* ---- algorithm tables (defined in their own files) ---- */
extern const OSSL_DISPATCH shim_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH shim_ec_keymgmt_functions[];
extern const OSSL_DISPATCH shim_rsa_signature_functions[];
extern const OSSL_DISPATCH shim_ecdsa_signature_functions[];
extern const OSSL_DISPATCH shim_pem_decoder_functions[];
extern const OSSL_DISPATCH shim_rsa_decoder_functions[];
extern const OSSL_DISPATCH shim_ec_decoder_functions[];

/* Signature algorithm names are ours alone (keymgmt query_operation_name returns
 * them), so OpenSSL never picks our signature for somebody else's key. */
#define SHIM_RSA_SIG_NAME "TPMTLS-RSA"
#define SHIM_ECDSA_SIG_NAME "TPMTLS-ECDSA"

#endif
