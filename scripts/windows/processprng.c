/*
 * bcryptprimitives.dll for Wine 8, which lacks ProcessPrng: Rust's standard library
 * (1.78 and later) takes all its randomness from it on Windows. Built by
 * scripts/windows-deps with x86_64-w64-mingw32-gcc and put in the test prefix only;
 * never shipped: real Windows 10 and later have ProcessPrng.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
