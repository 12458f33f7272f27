/*
 * hash.c - the keyed page hash and its keys: on the source it makes the
 * map's filters and every reference's 128-bit hash, on the destination it
 * checks every block before the block fills a page.
 */
#include <string.h>

#include "shim.h"

/* Keyed page hash.
 *
 * NH (the universal hash of UMAC/VMAC): sum over word pairs of
 * (m[2i]+k[2i]) * (m[2i+1]+k[2i+1]) in 64-bit arithmetic, 32-bit adds.
 * For a random key two different pages collide with probability <= 2^-32
 * per pass; two passes with keys shifted by 4 words are independent, so the
 * 128-bit result collides with probability <= 2^-64.  A guest that does not
 * know the key cannot aim for a collision.  The finaliser is a bijection that
 * spreads the bits the map keeps as its filter.
 */
static inline uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* One NH term: a word pair of the page against two words of a key. */
static inline uint64_t nh_term(uint32_t m0, uint32_t m1, const uint32_t *k)
{
    return (uint64_t)(uint32_t)(m0 + k[0]) * (uint32_t)(m1 + k[1]);
}

__attribute__((optimize("O3"), target_clones("avx2", "default")))
void nasmig_hash_page(const struct nasmig_hash_key *key, const void *page,
                      uint64_t out[2])
{
    const uint32_t *m = page;
    const uint32_t *k = key->nh;
    uint64_t a = 0, b = 0;
    unsigned i;

    for (i = 0; i < NASMIG_NH_WORDS; i += 2) {
        a += nh_term(m[i], m[i + 1], k + i);
        b += nh_term(m[i], m[i + 1], k + i + NASMIG_NH_SHIFT);
    }
    out[0] = fmix64(a ^ key->fin[0]);
    out[1] = fmix64(b ^ key->fin[1]);
}

/*
 * One pass over a page for both hashes a destination's fill needs: the
 * migration key's 128 bits (to verify the block) and the first word of the
 * tracking key's (to map the page for the next migration).  Each equals
 * nasmig_hash_page's with that key; three lanes instead of four, and the
 * page read once.
 */
__attribute__((optimize("O3"), target_clones("avx2", "default")))
void nasmig_hash_page_fill(const struct nasmig_hash_key *mig,
                           const struct nasmig_hash_key *track,
                           const void *page, uint64_t mig_out[2],
                           uint64_t *track_out)
{
    const uint32_t *m = page;
    const uint32_t *k = mig->nh, *t = track->nh;
    uint64_t a = 0, b = 0, c = 0;
    unsigned i;

    for (i = 0; i < NASMIG_NH_WORDS; i += 2) {
        a += nh_term(m[i], m[i + 1], k + i);
        b += nh_term(m[i], m[i + 1], k + i + NASMIG_NH_SHIFT);
        c += nh_term(m[i], m[i + 1], t + i);
    }
    mig_out[0] = fmix64(a ^ mig->fin[0]);
    mig_out[1] = fmix64(b ^ mig->fin[1]);
    *track_out = fmix64(c ^ track->fin[0]);
}

/* Go installs the keys it derives from the seeds (sizeof the key each). */
void nasmig_set_key(const void *expanded)
{
    memcpy(&nasmig_g.key, expanded, sizeof(nasmig_g.key));
}

void nasmig_set_mig_key(const void *expanded)
{
    memcpy(&nasmig_g.mig_key, expanded, sizeof(nasmig_g.mig_key));
}
