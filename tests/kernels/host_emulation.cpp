// Host emulation of the sympow CUDA C kernels, for tests on machines without a GPU.
//
// The kernel sources are compiled by g++ as they are, with the CUDA built-ins they use defined here:
// every block runs in turn, each of its threads as a std::thread, __syncthreads() is a std::barrier, the
// dynamic shared memory is one buffer per block and atomicAdd an std::atomic_ref. __half and
// __nv_bfloat16 are 16-bit stand-ins with round-to-nearest-even conversions. This checks the kernels'
// arithmetic and indexing (not their speed, nor warp-level timing, which they do not rely on).
#include <atomic>
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define SYMPOW_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static thread_local float* emulated_shared = nullptr;
static thread_local std::barrier<>* emulated_barrier = nullptr;

#define SYMPOW_SHARED_FLOATS(name) float* name = emulated_shared
static inline void __syncthreads() { emulated_barrier->arrive_and_wait(); }
static inline float atomicAdd(float* address, float value) {
    return std::atomic_ref<float>(*address).fetch_add(value);
}
static inline float __int_as_float(unsigned bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
using std::isfinite;
using std::min;

struct __half {
    std::uint16_t bits;
};
struct __nv_bfloat16 {
    std::uint16_t bits;
};
static inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h.bits, 2);
    return static_cast<float>(f);
}
static inline __half __float2half_rn(float x) {
    _Float16 f = static_cast<_Float16>(x);
    __half h;
    std::memcpy(&h.bits, &f, 2);
    return h;
}
static inline float __bfloat162float(__nv_bfloat16 b) {
    std::uint32_t bits = static_cast<std::uint32_t>(b.bits) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
static inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    std::uint32_t bits;
    std::memcpy(&bits, &x, 4);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return __nv_bfloat16{static_cast<std::uint16_t>(bits >> 16)};
}

#include "sympow_chunked.cu"
#include "sympow_recurrent.cu"

namespace {

template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <typename... A>
int launch(void (*kernel)(A...), unsigned gx, unsigned gy, unsigned bx, std::size_t shared_bytes,
            void** args) {
    gridDim = dim3{gx, gy, 1};
    blockDim = dim3{bx, 1, 1};
    // The block's shared memory, then a canary region that a kernel must not touch.
    constexpr std::size_t canary = 256;
    const std::size_t floats = shared_bytes / sizeof(float);
    std::vector<float> shared(floats + canary);
    for (unsigned y = 0; y < gy; ++y) {
        for (unsigned x = 0; x < gx; ++x) {
            std::fill(shared.begin(), shared.end(), std::nanf(""));  // unwritten shared memory is NaN
            std::fill(shared.begin() + floats, shared.end(), 12345.0f);
            std::barrier<> barrier(bx);
            std::vector<std::thread> threads;
            threads.reserve(bx);
            for (unsigned t = 0; t < bx; ++t) {
                threads.emplace_back([&, t, x, y] {
                    threadIdx = dim3{t, 0, 0};
                    blockIdx = dim3{x, y, 0};
                    emulated_shared = shared.data();
                    emulated_barrier = &barrier;
                    call(kernel, args, std::index_sequence_for<A...>{});
                    barrier.arrive_and_drop();
                });
            }
            for (auto& thread : threads) thread.join();
            for (std::size_t i = floats; i < shared.size(); ++i)
                if (shared[i] != 12345.0f) return 2;  // written past the launcher's shared-memory size
        }
    }
    return 0;
}

}  // namespace

#define SYMPOW_ENTRY(...)                                            \
    if (name == #__VA_ARGS__) {                                     \
        return launch(&__VA_ARGS__, gx, gy, bx, shared_bytes, args); \
    }

extern "C" int emulate_launch(const char* name_expression, unsigned gx, unsigned gy, unsigned bx,
                              std::size_t shared_bytes, void** args) {
    const std::string name(name_expression);
#define SYMPOW_DTYPE(T)                              \
    SYMPOW_ENTRY(sympow_chunk_states<T, 1>)          \
    SYMPOW_ENTRY(sympow_chunk_states<T, 2>)          \
    SYMPOW_ENTRY(sympow_chunk_states<T, 4>)          \
    SYMPOW_ENTRY(sympow_chunk_output<T, 1>)          \
    SYMPOW_ENTRY(sympow_chunk_output<T, 2>)          \
    SYMPOW_ENTRY(sympow_chunk_output<T, 4>)          \
    SYMPOW_ENTRY(sympow_recurrent_state<T, 1>)       \
    SYMPOW_ENTRY(sympow_recurrent_state<T, 2>)       \
    SYMPOW_ENTRY(sympow_recurrent_state<T, 4>)       \
    SYMPOW_ENTRY(sympow_recurrent_output<T>)
    SYMPOW_DTYPE(float)
    SYMPOW_DTYPE(__half)
    SYMPOW_DTYPE(__nv_bfloat16)
    return 1;  // unknown name (2: a kernel wrote past its shared memory)
}
