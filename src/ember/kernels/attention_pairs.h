// P.V of attention.cpp's narrow variants (attention_bf16.h, attention_int16.h), each of which
// includes this after it defines its pairs (VP, load_pairs, splat_pair) and a Products type:
// Acc (the accumulator vector), dot(acc, p, v) (acc + the pair dot products of p and v) and
// value(acc) (the float32 values of an accumulator).
#pragma once

namespace {

// Rows ib .. ib + rows of out (row stride out_stride) = factor[r] * sum over the key pairs of
// p's pairs (QB rows of Lp2 pairs in pp) times v's ([pairs][D] pairs in vv).
template <class Products>
inline void pairs_times_values(const uint32_t* pp, int64_t Lp2, const uint32_t* vv, int64_t pairs, int64_t D,
                               int64_t ib, int64_t rows, const float* factor, float* out, int64_t out_stride) {
  using Acc = typename Products::Acc;
  for (int64_t d0 = 0; d0 < D; d0 += 2 * W) {
    Acc a0[QB] = {}, a1[QB] = {};
    for (int64_t i = 0; i < pairs; ++i) {
      const VP v0 = load_pairs(vv + i * D + d0), v1 = load_pairs(vv + i * D + d0 + W);
      for (int r = 0; r < QB; ++r) {
        const VP p = splat_pair(pp[r * Lp2 + i]);
        a0[r] = Products::dot(a0[r], p, v0);
        a1[r] = Products::dot(a1[r], p, v1);
      }
    }
    for (int r = 0; r < rows; ++r) {
      float* o = out + (ib + r) * out_stride + d0;
      store(o, Products::value(a0[r]) * factor[r]);
      store(o + W, Products::value(a1[r]) * factor[r]);
    }
  }
}

}  // namespace
