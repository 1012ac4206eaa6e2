/* Which x86-64 kernel variant this processor and operating system can run (read by
 * twolevel/models/native.py to choose among the libraries setup.py builds): 2 for AVX-512
 * (F, DQ, VL, BW), 1 for AVX2 with FMA, 0 for the baseline; always 0 off x86-64 and on
 * compilers without __builtin_cpu_supports. GCC's and Clang's checks include the operating
 * system's support for the wider registers (XGETBV). */
#if defined(_WIN32)
#define TL_EXPORT __declspec(dllexport)
#else
#define TL_EXPORT __attribute__((visibility("default")))
#endif

TL_EXPORT int twolevel_x86_level(void) {
#if (defined(__x86_64__) || defined(__amd64__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

#ifdef TWOLEVEL_PYINIT
/* setup.py builds this file as an extension module; the Windows linker wants its init symbol
 * exported. Never called: Python loads the library with ctypes, not import. */
TL_EXPORT void *TWOLEVEL_PYINIT(void) { return 0; }
#endif
