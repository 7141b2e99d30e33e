/* Cutting a rank's part of a tensor into chunks whose boundaries fall on the plan's pieces
 * (lsl_tiles.h). */
#include "lsl_tiles.h"

#include <string.h>

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* x with a * x = 1 (mod m), for a and m coprime, m >= 1 */
static uint64_t inverse(uint64_t a, uint64_t m)
{
    int64_t t = 0, nt = 1;
    int64_t r = (int64_t)m, nr = (int64_t)(a % m);
    while (nr) {
        int64_t q = r / nr, tmp = t - q * nt;
        t = nt, nt = tmp;
        tmp = r - q * nr;
        r = nr, nr = tmp;
    }
    return t < 0 ? (uint64_t)(t + (int64_t)m) : (uint64_t)t;
}

void lsl_i_tiles_make(uint64_t units, uint64_t unit_bytes, uint64_t origin, uint64_t piece,
                      uint64_t head, uint64_t full, lsl_i_tiles *t)
{
    memset(t, 0, sizeof *t);
    t->units = units;
    t->full = full ? full : 1;
    t->head = head && head < t->full ? head : t->full;
    if (piece && unit_bytes && units && piece <= ((uint64_t)1 << 40)) {
        /* Boundaries at unit k land on a piece multiple when origin + k * unit_bytes = 0 mod
         * piece: solvable when the gcd g divides the gap; then every L = piece / g units. */
        uint64_t g = gcd(unit_bytes, piece);
        uint64_t L = piece / g, gap = (piece - origin % piece) % piece;
        if (gap % g == 0 && L <= t->full) {
            uint64_t k0 = L == 1 ? 0
                                 : (uint64_t)((unsigned __int128)((gap / g) % L) *
                                              inverse((unit_bytes / g) % L, L) % L);
            uint64_t full_a = t->full / L * L, head_a;
            if (k0 == 0)
                head_a = t->head < L ? L : t->head / L * L;
            else
                head_a = k0 + (t->head > k0 ? (t->head - k0) / L * L : 0);
            t->full = full_a;
            t->head = head_a;
            t->aligned = 1;
        }
    }
    t->n = units == 0 ? 0 : units <= t->head ? 1 : 1 + ceil_div(units - t->head, t->full);
}

uint64_t lsl_i_tile_first(const lsl_i_tiles *t, uint64_t c)
{
    return c == 0 ? 0 : t->head + (c - 1) * t->full;
}

uint64_t lsl_i_tile_count(const lsl_i_tiles *t, uint64_t c)
{
    uint64_t first = lsl_i_tile_first(t, c), cap = c == 0 ? t->head : t->full;
    return t->units - first < cap ? t->units - first : cap;
}
