/*
 * Key management for TPM keys: public parts plus an opaque Python key id.
 *
 * export gives public parts only and REFUSES any selection that includes the
 * private key: otherwise OpenSSL exports the key to the default provider, picks
 * the default signature there and fails with "missing private key" (docs/facts-openssl.md,
 * "A key provider's export must refuse the private half").
 * There is no import: a software key must never land here, or OpenSSL would
 * hand its private operations to us.
 */
#include <string.h>

#include "shim.h"

/* Each dispatch function declared with OpenSSL's own type before the table casts it to
 * void (*)(void): a definition that does not match the core's signature fails to compile. */
static OSSL_FUNC_keymgmt_new_fn km_new;
static OSSL_FUNC_keymgmt_free_fn km_free;
static OSSL_FUNC_keymgmt_dup_fn km_dup;
static OSSL_FUNC_keymgmt_load_fn km_load;
static OSSL_FUNC_keymgmt_has_fn km_has;
static OSSL_FUNC_keymgmt_match_fn km_match;
static OSSL_FUNC_keymgmt_get_params_fn rsa_get_params;
static OSSL_FUNC_keymgmt_gettable_params_fn rsa_gettable_params;
static OSSL_FUNC_keymgmt_export_fn rsa_export;
static OSSL_FUNC_keymgmt_export_types_fn rsa_export_types;
static OSSL_FUNC_keymgmt_query_operation_name_fn rsa_query_operation_name;
static OSSL_FUNC_keymgmt_get_params_fn ec_get_params;
static OSSL_FUNC_keymgmt_gettable_params_fn ec_gettable_params;
static OSSL_FUNC_keymgmt_export_fn ec_export;
static OSSL_FUNC_keymgmt_export_types_fn ec_export_types;
static OSSL_FUNC_keymgmt_query_operation_name_fn ec_query_operation_name;

static void *km_new(void *provctx)
{
    return shim_key_new(provctx);
}

static void km_free(void *keydata)
{
    shim_key_unref(keydata);
}

static void *km_dup(const void *keydata, int selection)
{
    return shim_key_ref((shim_key *)keydata);
}

/* The decoder hands us a shim_key* by reference; we take over its reference. */
static void *km_load(const void *reference, size_t reference_sz)
{
    shim_key *key;

    if (reference == NULL || reference_sz != sizeof(key))
        return NULL;
    memcpy(&key, reference, sizeof(key));
    return key;
}

static int km_has(const void *keydata, int selection)
{
    const shim_key *key = keydata;

    if (key == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) && !key->has_private)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) && key->info.pub_len == 0)
        return 0;
    return 1;
}

static int km_match(const void *a, const void *b, int selection)
{
    const shim_key *ka = a, *kb = b;

    if (ka->info.type != kb->info.type)
        return 0;
    if (ka->info.pub_len != kb->info.pub_len || memcmp(ka->info.pub, kb->info.pub, ka->info.pub_len) != 0)
        return 0;
    if (ka->info.type == SHIM_EC && strcmp(ka->info.group, kb->info.group) != 0)
        return 0;
    if (ka->info.type == SHIM_RSA
        && (ka->info.e_len != kb->info.e_len || memcmp(ka->info.e, kb->info.e, ka->info.e_len) != 0))
        return 0;
    return 1;
}

static int common_get_params(const shim_key *key, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_BITS)) != NULL && !shim_param_set_int(p, key->info.bits))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_SECURITY_BITS)) != NULL
        && !shim_param_set_int(p, key->info.security_bits))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_MAX_SIZE)) != NULL
        && !shim_param_set_int(p, key->info.max_size))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST)) != NULL
        && !shim_param_set_utf8(p, key->info.bits > 256 && key->info.type == SHIM_EC ? "SHA384" : "SHA256"))
        return 0;
    return 1;
}

static int rsa_get_params(void *keydata, OSSL_PARAM params[])
{
    const shim_key *key = keydata;
    OSSL_PARAM *p;

    if (!common_get_params(key, params))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_RSA_N)) != NULL
        && !shim_param_set_bn(p, key->info.pub, key->info.pub_len))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_RSA_E)) != NULL
        && !shim_param_set_bn(p, key->info.e, key->info.e_len))
        return 0;
    return 1;
}

static int ec_get_params(void *keydata, OSSL_PARAM params[])
{
    const shim_key *key = keydata;
    OSSL_PARAM *p;

    if (!common_get_params(key, params))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_GROUP_NAME)) != NULL
        && !shim_param_set_utf8(p, key->info.group))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT)) != NULL
        && !shim_param_set_utf8(p, "uncompressed"))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY)) != NULL
        && !shim_param_set_octets(p, key->info.pub, key->info.pub_len))
        return 0;
    if ((p = shim_param_locate(params, OSSL_PKEY_PARAM_PUB_KEY)) != NULL
        && !shim_param_set_octets(p, key->info.pub, key->info.pub_len))
        return 0;
    return 1;
}

#define COMMON_GETTABLE                                                                                      \
    { OSSL_PKEY_PARAM_BITS, OSSL_PARAM_INTEGER, NULL, 0, 0 },                                               \
    { OSSL_PKEY_PARAM_SECURITY_BITS, OSSL_PARAM_INTEGER, NULL, 0, 0 },                                      \
    { OSSL_PKEY_PARAM_MAX_SIZE, OSSL_PARAM_INTEGER, NULL, 0, 0 },                                           \
    { OSSL_PKEY_PARAM_DEFAULT_DIGEST, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 }

static const OSSL_PARAM rsa_gettable[] = {
    COMMON_GETTABLE,
    { OSSL_PKEY_PARAM_RSA_N, OSSL_PARAM_UNSIGNED_INTEGER, NULL, 0, 0 },
    { OSSL_PKEY_PARAM_RSA_E, OSSL_PARAM_UNSIGNED_INTEGER, NULL, 0, 0 },
    { NULL, 0, NULL, 0, 0 },
};

static const OSSL_PARAM ec_gettable[] = {
    COMMON_GETTABLE,
    { OSSL_PKEY_PARAM_GROUP_NAME, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
    { OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
    { OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, OSSL_PARAM_OCTET_STRING, NULL, 0, 0 },
    { OSSL_PKEY_PARAM_PUB_KEY, OSSL_PARAM_OCTET_STRING, NULL, 0, 0 },
    { NULL, 0, NULL, 0, 0 },
};

static const OSSL_PARAM *rsa_gettable_params(void *provctx)
{
    return rsa_gettable;
}

static const OSSL_PARAM *ec_gettable_params(void *provctx)
{
    return ec_gettable;
}

static int export_refused(int selection)
{
    /* public parts only: see the comment at the top of this file */
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
}

static int rsa_export(void *keydata, int selection, OSSL_CALLBACK *cb, void *cbarg)
{
    const shim_key *key = keydata;
    unsigned char n[sizeof(key->info.pub)], e[sizeof(key->info.e)];
    OSSL_PARAM params[3];

    if (export_refused(selection) || !(selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY))
        return 0;
    shim_be_to_native(n, key->info.pub_len, key->info.pub, key->info.pub_len);
    shim_be_to_native(e, key->info.e_len, key->info.e, key->info.e_len);
    params[0] = shim_param_uint(OSSL_PKEY_PARAM_RSA_N, n, key->info.pub_len);
    params[1] = shim_param_uint(OSSL_PKEY_PARAM_RSA_E, e, key->info.e_len);
    params[2] = shim_param_end();
    return cb(params, cbarg);
}

static int ec_export(void *keydata, int selection, OSSL_CALLBACK *cb, void *cbarg)
{
    shim_key *key = keydata;
    OSSL_PARAM params[3];
    int n = 0;

    if (export_refused(selection))
        return 0;
    /* a point means nothing without its curve: the group goes with the public key */
    if (selection & (OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS | OSSL_KEYMGMT_SELECT_PUBLIC_KEY))
        params[n++] = shim_param_utf8(OSSL_PKEY_PARAM_GROUP_NAME, key->info.group);
    if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY)
        params[n++] = shim_param_octets(OSSL_PKEY_PARAM_PUB_KEY, key->info.pub, key->info.pub_len);
    if (n == 0)
        return 0;
    params[n] = shim_param_end();
    return cb(params, cbarg);
}

static const OSSL_PARAM *rsa_export_types(int selection)
{
    static const OSSL_PARAM types[] = {
        { OSSL_PKEY_PARAM_RSA_N, OSSL_PARAM_UNSIGNED_INTEGER, NULL, 0, 0 },
        { OSSL_PKEY_PARAM_RSA_E, OSSL_PARAM_UNSIGNED_INTEGER, NULL, 0, 0 },
        { NULL, 0, NULL, 0, 0 },
    };
    return export_refused(selection) ? NULL : types;
}

static const OSSL_PARAM *ec_export_types(int selection)
{
    static const OSSL_PARAM types[] = {
        { OSSL_PKEY_PARAM_GROUP_NAME, OSSL_PARAM_UTF8_STRING, NULL, 0, 0 },
        { OSSL_PKEY_PARAM_PUB_KEY, OSSL_PARAM_OCTET_STRING, NULL, 0, 0 },
        { NULL, 0, NULL, 0, 0 },
    };
    return export_refused(selection) ? NULL : types;
}

static const char *rsa_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? SHIM_RSA_SIG_NAME : NULL;
}

static const char *ec_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? SHIM_ECDSA_SIG_NAME : NULL;
}

#define KEYMGMT_COMMON                                                                \
    { OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))km_new },                                \
    { OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))km_free },                              \
    { OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))km_dup },                                \
    { OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))km_load },                              \
    { OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))km_has },                                \
    { OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))km_match }

const OSSL_DISPATCH shim_rsa_keymgmt_functions[] = {
    KEYMGMT_COMMON,
    { OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))rsa_get_params },
    { OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))rsa_gettable_params },
    { OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))rsa_export },
    { OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))rsa_export_types },
    { OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))rsa_query_operation_name },
    { 0, NULL },
};

const OSSL_DISPATCH shim_ec_keymgmt_functions[] = {
    KEYMGMT_COMMON,
    { OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))ec_get_params },
    { OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))ec_gettable_params },
    { OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))ec_export },
    { OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))ec_export_types },
    { OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))ec_query_operation_name },
    { 0, NULL },
};
