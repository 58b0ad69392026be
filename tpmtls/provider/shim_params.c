/*
 * Local OSSL_PARAM helpers. The OSSL_PARAM struct layout is stable ABI across
 * OpenSSL 3.x and 4.x, but its helper functions live in libcrypto, which this
 * image must not link (it serves two cores): see shim.h.
 */
#include <string.h>

#include "shim.h"

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

void shim_be_to_native(unsigned char *out, size_t out_size, const unsigned char *be, size_t len)
{
    /* OSSL_PARAM_UNSIGNED_INTEGER is a native-endian number of data_size bytes */
    memset(out, 0, out_size);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    memcpy(out + out_size - len, be, len);
#else
    for (size_t i = 0; i < len; i++)
        out[i] = be[len - 1 - i];
#endif
}

int shim_param_set_bn(OSSL_PARAM *p, const unsigned char *be, size_t len)
{
    if (p->data_type != OSSL_PARAM_UNSIGNED_INTEGER)
        return 0;
    p->return_size = len;
    if (p->data == NULL)
        return 1;
    if (p->data_size < len)
        return 0;
    shim_be_to_native(p->data, p->data_size, be, len);
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

