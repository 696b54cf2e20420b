// The bf16 variant of attention.cpp (built where the CPU has AVX512-BF16), included by it after
// the float32 tiles and softmax it shares (QB, KB, softmax_rows) and the row sources.
#pragma once

namespace {

// The bf16 variant (built where the CPU has AVX512-BF16): q.k and P.V as vdpbf16ps dot products of
// bf16 pairs into float32 accumulators, half the instructions of the float32 FMAs; the scores,
// the softmax (softmax_rows_to_pairs) and the accumulators stay float32. Pairs run along the
// reduced dimension: (q[2i], q[2i+1]) . (k[2i], k[2i+1]) for the scores, (p[2i], p[2i+1]) .
// (v[2i], v[2i+1]) for P.V.
typedef uint32_t VP __attribute__((vector_size(64), aligned(4)));  // 16 pairs of bf16

inline VP load_pairs(const uint32_t* p) { return *reinterpret_cast<const VP*>(p); }
inline VP splat_pair(uint32_t x) { return (VP{} + 1) * x; }
inline VT dot_pairs(VT acc, VP a, VP b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}
// 32 floats -> 32 bf16 in order (round to nearest even): lo's 16, then hi's.
inline VP to_pairs(VT lo, VT hi) {
  VP out;
  asm("vcvtne2ps2bf16 %2, %1, %0" : "=v"(out) : "v"(hi), "v"(lo));
  return out;
}
inline uint32_t bf16_bits(float x) {  // round to nearest even, as vcvtne2ps2bf16 (finite x)
  uint32_t b;
  __builtin_memcpy(&b, &x, 4);
  return (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
}
inline uint32_t pair(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }

struct Bf16Products {  // attention_pairs.h's Products
  typedef VT Acc;
  static VT dot(VT acc, VP a, VP b) { return dot_pairs(acc, a, b); }
  static VT value(VT acc) { return acc; }
  static constexpr bool kScaled = false;
};

}  // namespace

#include "attention_pairs.h"  // pairs_times_values

namespace {

// The softmax of the bf16 variant. Its numerators are rounded to bf16 for P.V (a relative error
// of up to 2^-9), so 2^t needs only a cubic on the fraction (relative error < 8e-5): with the
// rounding and the power of two in one instruction each (vrndscaleps, vscalefps), a numerator
// takes 10 vector operations instead of softmax_rows' ~19, and it goes to P.V's pairs directly,
// without a round trip through the score rows. The scores are in base 2: q is packed scaled by
// log2(e) / sqrt(D). In a 4 x 256-token MiniLM layer the float32 softmax was a quarter of the
// kernel's time.
constexpr float kLog2e = 1.4426950408889634f;

inline VT round_to_integer(VT x) {  // to nearest, ties to even
  VT r;
  asm("vrndscaleps $0, %1, %0" : "=v"(r) : "v"(x));
  return r;
}
inline VT times_pow2(VT p, VT n) {  // p * 2^n for integer-valued n
  VT r;
  asm("vscalefps %2, %1, %0" : "=v"(r) : "v"(p), "v"(n));
  return r;
}
// 2^t for t <= 0 (a base-2 score minus its row's max). Below -126 (and for -inf, a dropped key)
// it returns 2^-126 ~ 1e-38, which adds nothing to a row whose largest term is 2^0 = 1.
inline VT exp2_nonpositive(VT t) {
  t = t < splat(-126.0f) ? splat(-126.0f) : t;
  const VT n = round_to_integer(t);
  const VT f = t - n;  // [-0.5, 0.5]
  VT p = splat(5.517132207751274e-2f);
  p = p * f + 2.4261054396629333e-1f;
  p = p * f + 6.932609677314758e-1f;
  p = p * f + 9.999281167984009e-1f;
  return times_pow2(p, n);
}

// The QB score rows' softmax numerators (Lp keys, base 2, given each row's running maximum) as bf16
// pairs into pp (Lp / 2 per row); returns 1 / sum per row in inv (the sum of the float32 numerators).
inline void softmax_rows_to_pairs(const float* sc, int64_t Lp, const VT* row_top, uint32_t* pp, float* inv) {
  for (int r = 0; r < QB; ++r) {
    const float* s = sc + r * Lp;
    const float top = largest_lane(row_top[r]);
    VT sum = {};
    for (int64_t j = 0; j < Lp; j += 2 * W) {
      const VT lo = exp2_nonpositive(load(s + j) - top), hi = exp2_nonpositive(load(s + j + W) - top);
      sum += lo + hi;
      *reinterpret_cast<VP*>(pp + r * (Lp / 2) + j / 2) = to_pairs(lo, hi);
    }
    inv[r] = inverse_of_sum(sum);
  }
}

// attend_head on pairs: q [L][D / 2] (scaled), k^T [Lk / KB][D / 2][KB], v [Lk / 2][D] pairs.
void attend_head_bf16(const uint32_t* q, const uint32_t* kt, const uint32_t* vv, const float* bias, int64_t L,
                      int64_t D, float* out, int64_t out_stride, Scratch<float>& scratch, Scratch<uint32_t>& probs) {
  const int64_t Lp = (L + 2 * W - 1) / (2 * W) * (2 * W), D2 = D / 2, Lp2 = Lp / 2;  // keys: whole pair vectors
  float* sc = scratch.reserve(QB * Lp);
  uint32_t* pp = probs.reserve(QB * Lp2);
  uint32_t qs[QB * 128];
  for (int64_t ib = 0; ib < L; ib += QB) {
    const int64_t rows = min_of<int64_t>(QB, L - ib);
    for (int r = 0; r < QB; ++r) {
      const uint32_t* row = q + (ib + min_of<int64_t>(r, rows - 1)) * D2;
      for (int64_t d = 0; d < D2; ++d) qs[r * D2 + d] = row[d];
    }
    VT top[QB];
    for (int r = 0; r < QB; ++r) top[r] = splat(-kInf);
    for (int64_t j = 0; j < Lp; j += KB) score_tile_pairs<Bf16Products>(kt + (j / KB) * D2 * KB, qs, D2, nullptr, nullptr, bias + j, &sc[j], Lp, top);
    float inv[QB];
    softmax_rows_to_pairs(sc, Lp, top, pp, inv);
    pairs_times_values<Bf16Products>(pp, Lp2, vv, (L + 1) / 2, D, ib, rows, inv, out, out_stride);
  }
}

// Packs them as bf16 pairs (attend_head_bf16's layout): q [L][D / 2] and k^T blocks [D / 2][KB]
// paired along d, v [Lk / 2][D] paired along the keys (row j is the low half when j is even).
template <class Rows>
void pack_bf16(const Rows& rows, int64_t b, float* row_buf, const bool* mask, const Shape& s, int64_t h0, int64_t GH,
               int64_t L, int64_t Lk, float scale, uint32_t* qp, uint32_t* kt, uint32_t* vv, float* bias) {
  const int64_t D = s.D, D2 = s.D / 2, HD = s.H * s.D;
  for (int64_t j = 0; j < L; ++j) {
    bias[j] = mask[j] ? 0.0f : -kInf;
    const float* row = rows.row(b, j, h0, GH, s, row_buf);
    const int shift = (j % 2) * 16;
    for (int64_t g = 0; g < GH; ++g) {
      const float* q = row + (h0 + g) * D;
      const float* k = q + HD;
      const float* v = k + HD;
      // D is a multiple of 2 W: whole pair vectors (to_pairs rounds as pair() and bf16_bits do).
      uint32_t* qd = &qp[(g * L + j) * D2];
      for (int64_t d = 0; d < D; d += 2 * W)
        *reinterpret_cast<VP*>(qd + d / 2) = to_pairs(load(q + d) * scale, load(q + d + W) * scale);
      uint32_t* block = &kt[g * D2 * Lk + (j / KB) * D2 * KB + j % KB];
      for (int64_t d = 0; d < D; d += 2 * W) {
        const VP kp = to_pairs(load(k + d), load(k + d + W));
        for (int i = 0; i < W; ++i) block[(d / 2 + i) * KB] = kp[i];
      }
      uint32_t* vd = &vv[(g * Lk / 2 + j / 2) * D];
      for (int64_t d = 0; d < D; d += W) {
        VP bits;
        __builtin_memcpy(&bits, v + d, sizeof bits);
        bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;  // bf16_bits on a vector
        *reinterpret_cast<VP*>(vd + d) |= bits << shift;
      }
    }
  }
}

}  // namespace
