// What Ember's kernels share: the C shim functions they call, vector types and helpers, scratch.
//
// Headers are kept to <cstdint>, <cstdlib> and <omp.h>: a kernel's build is on a first start's
// critical path, and <immintrin.h> with the standard containers was two thirds of attention.cpp's
// 1.2 s. Vectors are GCC/Clang vector extensions; loads and stores go through a 4-byte-aligned
// vector type. Each kernel file defines its own EMBER_KERNEL_BIND entry (library.bind_shim).
#pragma once

#include <cstdint>
#include <cstdlib>

#include <omp.h>

// The few AOTInductor C shim calls a shim entry makes (torch/csrc/inductor/aoti_torch/c/shim.h),
// taken as function pointers from the running torch at load (library.py bind_shim): a kernel
// library then needs neither torch's headers nor a link to libtorch, which took half of its
// first-start build (0.4 s each of ~2 s).
typedef struct AtenTensorOpaque* AtenTensorHandle;
typedef int32_t AOTITorchError;
constexpr AOTITorchError AOTI_TORCH_SUCCESS = 0, AOTI_TORCH_FAILURE = 1;

namespace {
struct Shim {
  AOTITorchError (*get_dim)(AtenTensorHandle, int64_t*);
  AOTITorchError (*get_dtype)(AtenTensorHandle, int32_t*);
  AOTITorchError (*get_sizes)(AtenTensorHandle, int64_t**);
  AOTITorchError (*get_strides)(AtenTensorHandle, int64_t**);
  AOTITorchError (*get_data_ptr)(AtenTensorHandle, void**);
  AOTITorchError (*empty_strided)(int64_t, const int64_t*, const int64_t*, int32_t, int32_t, int32_t, AtenTensorHandle*);
  AOTITorchError (*delete_tensor)(AtenTensorHandle);
  AOTITorchError (*int_mm_out)(AtenTensorHandle, AtenTensorHandle, AtenTensorHandle);
  int32_t dtype_float32, dtype_bool, dtype_int8, dtype_int32, dtype_int64, device_cpu;
};
Shim shim{};

// Stores what bind_shim hands over: the functions in Shim's order, then the dtype and device codes.
inline void bind(void* const* functions, const int32_t* codes) {
  shim.get_dim = reinterpret_cast<decltype(shim.get_dim)>(functions[0]);
  shim.get_dtype = reinterpret_cast<decltype(shim.get_dtype)>(functions[1]);
  shim.get_sizes = reinterpret_cast<decltype(shim.get_sizes)>(functions[2]);
  shim.get_strides = reinterpret_cast<decltype(shim.get_strides)>(functions[3]);
  shim.get_data_ptr = reinterpret_cast<decltype(shim.get_data_ptr)>(functions[4]);
  shim.empty_strided = reinterpret_cast<decltype(shim.empty_strided)>(functions[5]);
  shim.delete_tensor = reinterpret_cast<decltype(shim.delete_tensor)>(functions[6]);
  shim.int_mm_out = reinterpret_cast<decltype(shim.int_mm_out)>(functions[7]);
  shim.dtype_float32 = codes[0];
  shim.dtype_bool = codes[1];
  shim.dtype_int8 = codes[2];
  shim.dtype_int32 = codes[3];
  shim.dtype_int64 = codes[4];
  shim.device_cpu = codes[5];
}

// A tensor handle's sizes, strides, dtype and data, read through the shim (false on failure).
struct View {
  int64_t dim = 0;
  int64_t* sizes = nullptr;
  int64_t* strides = nullptr;
  int32_t dtype = -1;
  void* data = nullptr;
};
inline bool view(AtenTensorHandle t, View& v) {
  return shim.get_dim != nullptr && !shim.get_dim(t, &v.dim) && !shim.get_sizes(t, &v.sizes) &&
         !shim.get_strides(t, &v.strides) && !shim.get_dtype(t, &v.dtype) && !shim.get_data_ptr(t, &v.data);
}
// A new contiguous CPU tensor of `dim` (<= 4) sizes and `dtype`, and its data (false on failure).
inline bool allocate(int64_t dim, const int64_t* sizes, int32_t dtype, AtenTensorHandle* out, void** data) {
  if (dim < 0 || dim > 4) return false;
  int64_t strides[4];
  int64_t stride = 1;
  for (int64_t d = dim - 1; d >= 0; --d) {
    strides[d] = stride;
    stride *= sizes[d];
  }
  return !shim.empty_strided(dim, sizes, strides, dtype, shim.device_cpu, 0, out) && !shim.get_data_ptr(*out, data);
}
}  // namespace

#ifndef EMBER_W
#error "EMBER_W (floats per vector: 8 or 16) must be defined"
#endif

namespace {

constexpr int W = EMBER_W;
typedef float VT __attribute__((vector_size(W * 4), aligned(4)));
typedef int32_t VI __attribute__((vector_size(W * 4), aligned(4)));

inline VT load(const float* p) { return *reinterpret_cast<const VT*>(p); }
inline void store(float* p, VT v) { *reinterpret_cast<VT*>(p) = v; }
inline VT splat(float x) { return (VT{} + 1.0f) * x; }  // x * 1 is x exactly: folds to a broadcast

constexpr float kInf = __builtin_inff();
template <typename T> inline T min_of(T a, T b) { return a < b ? a : b; }

// A growable scratch array (malloc'd; only for trivially copyable T).
template <typename T>
struct Scratch {
  T* data = nullptr;
  int64_t capacity = 0;
  ~Scratch() { std::free(data); }
  T* reserve(int64_t n) {
    if (n > capacity) {
      std::free(data);
      data = static_cast<T*>(std::malloc(sizeof(T) * (n > 0 ? n : 1)));
      capacity = n;
    }
    return data;
  }
  T* fill(int64_t n, T value) {
    T* p = reserve(n);
    for (int64_t i = 0; i < n; ++i) p[i] = value;
    return p;
  }
};

}  // namespace
