// The register tiles of attention.cpp's narrow variants (attention_bf16.h, attention_int16.h),
// each of which includes this after it defines its pairs (VP, load_pairs, splat_pair) and a
// Products type: Acc (the accumulator vector), dot(acc, p, v) (acc + the pair dot products of p
// and v), value(acc) (the float32 values of an accumulator) and kScaled (whether q's and k's rows
// carry scales, as int16 ones do).
#pragma once

namespace {

// score_tile on pairs: blk is one block of K^T as [D / 2][KB] pairs, qs [QB][D / 2] pairs; with
// kScaled, q_scale [QB] and key_scale [KB] the rows' scales (else unused).
template <class Products>
inline void score_tile_pairs(const uint32_t* blk, const uint32_t* qs, int64_t D2, const float* q_scale,
                             const float* key_scale, const float* bias, float* sc, int64_t Lp, VT* top) {
  typename Products::Acc acc[QB][JV] = {};
  for (int64_t d = 0; d < D2; ++d) {
    VP kv[JV];
    for (int v = 0; v < JV; ++v) kv[v] = load_pairs(blk + d * KB + v * W);
    for (int r = 0; r < QB; ++r) {
      const VP qd = splat_pair(qs[r * D2 + d]);
      for (int v = 0; v < JV; ++v) acc[r][v] = Products::dot(acc[r][v], qd, kv[v]);
    }
  }
  for (int r = 0; r < QB; ++r)
    for (int v = 0; v < JV; ++v) {
      VT x = Products::value(acc[r][v]);
      if constexpr (Products::kScaled) x = x * (load(key_scale + v * W) * q_scale[r]);
      x += load(bias + v * W);
      store(sc + r * Lp + v * W, x);
      top[r] = x > top[r] ? x : top[r];
    }
}

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
