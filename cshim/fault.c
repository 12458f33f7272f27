/*
 * fault.c - test fault injection (NASMIG_FAULT_ENV; the list of faults is
 * NASMIG_FAULTS in nasmig.h).  Armed once, when the library loads; both the
 * library's own points and QEMU's glue (through nasmig_lib.fault) ask here,
 * so a fault's budget is counted in one place.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "shim.h"

static const char *const fault_names[NASMIG_FAULT_COUNT] = {
#define FAULT_NAME(name, num, str, what) [num] = str,
    NASMIG_FAULTS(FAULT_NAME)
#undef FAULT_NAME
};

#define FAULT_ALWAYS (-1)

/* Times each fault may still fire (FAULT_ALWAYS: no limit); 0: not armed. */
static int64_t fault_left[NASMIG_FAULT_COUNT];
static uint64_t fault_fired[NASMIG_FAULT_COUNT];
/* Nonzero once anything is armed: the only load on a hot path otherwise. */
static int fault_any;

const char *nasmig_fault_name(int fault)
{
    if (fault <= NASMIG_FAULT_NONE || fault >= NASMIG_FAULT_COUNT) {
        return NULL;
    }
    return fault_names[fault];
}

int nasmig_faults_armed(void)
{
    return __atomic_load_n(&fault_any, __ATOMIC_ACQUIRE);
}

uint64_t nasmig_fault_fired(int fault)
{
    if (!nasmig_fault_name(fault)) {
        return 0;
    }
    return __atomic_load_n(&fault_fired[fault], __ATOMIC_RELAXED);
}

/* spec: NAME, NAME:N or NAME:*, comma-separated.  Returns 0 or -EINVAL. */
int nasmig_fault_arm(const char *spec, char *err, size_t errlen)
{
    char buf[512], *save = NULL, *item;
    int f;

    if (strlen(spec) >= sizeof(buf)) {
        snprintf(err, errlen, "%s is too long", NASMIG_FAULT_ENV);
        return -EINVAL;
    }
    strcpy(buf, spec);
    for (item = strtok_r(buf, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        char *count = strchr(item, ':');
        int64_t n = 1;

        if (count) {
            *count++ = '\0';
            if (strcmp(count, "*") == 0) {
                n = FAULT_ALWAYS;
            } else {
                char *end;

                n = strtoll(count, &end, 10);
                if (*count == '\0' || *end != '\0' || n < 1) {
                    snprintf(err, errlen, "%s: bad count '%s' for %s "
                             "(a number >= 1, or *)", NASMIG_FAULT_ENV, count,
                             item);
                    return -EINVAL;
                }
            }
        }
        for (f = NASMIG_FAULT_NONE + 1; f < NASMIG_FAULT_COUNT; f++) {
            if (strcmp(item, fault_names[f]) == 0) {
                break;
            }
        }
        if (f == NASMIG_FAULT_COUNT) {
            snprintf(err, errlen, "%s: unknown fault '%s'", NASMIG_FAULT_ENV,
                     item);
            return -EINVAL;
        }
        __atomic_store_n(&fault_left[f], n, __ATOMIC_RELAXED);
        __atomic_store_n(&fault_any, 1, __ATOMIC_RELEASE);
    }
    return 0;
}

int nasmig_lib_fault(enum nasmig_fault fault)
{
    int64_t left;

    if (__builtin_expect(!nasmig_faults_armed(), 1) ||
        !nasmig_fault_name(fault)) {
        return 0;
    }
    left = __atomic_load_n(&fault_left[fault], __ATOMIC_RELAXED);
    for (;;) {
        if (left == 0) {
            return 0;
        }
        if (left == FAULT_ALWAYS ||
            __atomic_compare_exchange_n(&fault_left[fault], &left, left - 1,
                                        0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            __atomic_add_fetch(&fault_fired[fault], 1, __ATOMIC_RELAXED);
            return 1;
        }
    }
}
