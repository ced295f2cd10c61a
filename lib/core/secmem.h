/*
 * secmem.h - memory for secrets and key material.
 *
 * Each allocation is its own anonymous mapping, marked MADV_DONTDUMP so
 * that it never appears in a core file, locked in RAM when the memory
 * lock limit allows (so it is not written to swap), and wiped before it
 * is unmapped.  Thread-safe.  Used for --object secret values, passwords,
 * master and slot keys, and (through libgcrypt's allocation hooks, see
 * lib/crypto) for the ciphers' key schedules.
 */
#ifndef QIMG_CORE_SECMEM_H
#define QIMG_CORE_SECMEM_H

#include <stdbool.h>
#include <stddef.h>

/* Zeroed memory of len bytes (16-byte aligned), or NULL. */
void *qimg_secmem_alloc(size_t len);
/* Wipe and release p (NULL is fine).  p must come from qimg_secmem_alloc. */
void qimg_secmem_free(void *p);
/* True when p was returned by qimg_secmem_alloc and not yet freed. */
bool qimg_secmem_owns(const void *p);
/* Usable size of a secure allocation (0 for other pointers). */
size_t qimg_secmem_size(const void *p);
/* Overwrite len bytes at p with zeroes in a way the compiler keeps. */
void qimg_wipe(void *p, size_t len);

#endif /* QIMG_CORE_SECMEM_H */
