/* Reference for benchmarks/bench_metrics.py, not part of hostscope: the least a compiled
 * per-second path does. Built by benchmarks/flat_reference.py with the C compiler when one
 * is installed, loaded with ctypes, and measured beside the sampler (docs/metrics.md).
 *
 * parse_numbers: the whitespace-separated tokens of a procfs file, every token made only
 * of digits converted to a 64-bit integer (what the collectors' parsers reduce a file to).
 * rates: per-second rates of n counters as 32-bit floats (a history row). */
#include <stddef.h>
#include <stdint.h>

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\t'; }

size_t parse_numbers(const char *buf, size_t n, int64_t *out, size_t max) {
    size_t k = 0, i = 0;
    while (i < n && k < max) {
        while (i < n && is_space(buf[i])) i++;
        size_t start = i;
        int digits = 1;
        int64_t v = 0;
        for (; i < n && !is_space(buf[i]); i++) {
            char c = buf[i];
            if (c >= '0' && c <= '9') v = v * 10 + (c - '0');
            else digits = 0;
        }
        if (i > start && digits) out[k++] = v;
    }
    return k;
}

void rates(const int64_t *now, const int64_t *prev, float *row, size_t n, double inv_dt) {
    for (size_t j = 0; j < n; j++) row[j] = (float)((double)(now[j] - prev[j]) * inv_dt);
}
