/* A native function that burns CPU and calls back into Python, for the native-unwinding tests. */
typedef int (*callback_t)(int);

__attribute__((noinline)) double spprof_test_native_burn(long n) {
    volatile double x = 0;
    for (long i = 0; i < n; i++)
        x += i * 0.5;
    return x;
}

/* Burn `n` iterations, then call `cb` (Python, through a ctypes callback). */
__attribute__((noinline)) int spprof_test_call_back(callback_t cb, long n) {
    spprof_test_native_burn(n);
    return cb(1) + 1;
}
