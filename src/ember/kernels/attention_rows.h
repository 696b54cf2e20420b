// Where attention.cpp's tasks read the rows of the fused q/k/v projection: its float32 output
// (FloatRows) or an int8 linear's int32 accumulator, dequantized on the way (Int8Rows).
#pragma once

#include "common.h"

namespace {

// A batch of B rows of S tokens, H heads of D; the key mask's batch stride.
struct Shape {
  int64_t B, S, H, D, mask_stride_b;
};

// The fused projection's float32 output [B, S, 3 H D] (unit stride in the last dimension).
struct FloatRows {
  const float* qkv;
  int64_t stride_b, stride_s;
  // Row j of batch row b (the task's heads h0 .. h0 + GH of q, k and v are what pack reads).
  const float* row(int64_t b, int64_t j, int64_t, int64_t, const Shape&, float*) const {
    return qkv + b * stride_b + j * stride_s;
  }
};

// The projection's int32 accumulator [B, S, 3 H D], with row terms [B S, T] (contiguous) and
// column terms [T, 3 H D] (contiguous) that scale it back to float32; 1 <= T <= kMaxTerms.
struct Int8Rows {
  static constexpr int64_t kMaxTerms = 16;  // an Int8Linear has 7: scale, offset, 4 outlier values, 1
  const int32_t* acc;
  int64_t stride_b, stride_s;
  const float* row_terms;
  const float* column_terms;
  int64_t T;
  // Row j of batch row b, the task's columns dequantized into buf (3 H D floats; the others are
  // left as they are: pack reads only these).
  const float* row(int64_t b, int64_t j, int64_t h0, int64_t GH, const Shape& s, float* __restrict buf) const {
    const int64_t HD = s.H * s.D, N = 3 * HD;
    const int32_t* __restrict a = acc + b * stride_b + j * stride_s;
    const float* t = row_terms + (b * s.S + j) * T;
    VT terms[kMaxTerms];  // locals: the stores to buf cannot alias them, so they stay in registers
    for (int64_t i = 0; i < T; ++i) terms[i] = splat(t[i]);
    for (int64_t part = 0; part < 3; ++part)
      for (int64_t c = part * HD + h0 * s.D; c < part * HD + (h0 + GH) * s.D; c += W) {
        const VT x = __builtin_convertvector(*reinterpret_cast<const VI*>(a + c), VT);
        VT y = x * (terms[0] * load(column_terms + c));
        for (int64_t i = 1; i < T; ++i) y += terms[i] * load(column_terms + i * N + c);
        store(buf + c, y);
      }
    return buf;
  }
};

}  // namespace
