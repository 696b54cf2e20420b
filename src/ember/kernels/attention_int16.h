// The int16 variant of attention.cpp (the AVX2 build, and an AVX512-VNNI one for CPUs without
// AVX512-BF16), included by it after the float32 tiles and softmax it shares (QB, KB,
// exp_nonpositive) and the row sources.
//
// Without bf16 dot products, vpmaddwd multiplies int16 pairs into int32 sums at twice the rate of
// float32 FMAs (its adds run on all four of a Zen's vector pipes, not only the two FMA ones);
// AVX512-VNNI's vpdpwssd does the multiply and the add in one instruction.
// q.k and P.V become pair dot products of int16 values, each row scaled to its own range:
// - q (already times 1 / sqrt(D)) and k per row of a head, to +-key_range(D), where D products of
//   two such values cannot overflow int32: score = acc * sq[i] * sk[j];
// - v per key row, its scale folded into the softmax numerators: p'[j] = exp(s[j] - top) * sv[j],
//   so that out[i] = sum_j p'[j] v16[j] / sum_j exp(s[j] - top);
// - p' per query row, to a scale sp at which the row's sum of |p16| times kValueRange fits int32
//   (and no p16 exceeds 32767): a flat row of many keys gets fewer levels per weight, a peaked row
//   (most of them) nearly 15 bits for its few large weights.
// Each value is rounded once to a grid of 2^12-2^15 levels (q and k: 2^13 at D = 32, 2^12 at
// D = 256), finer than bf16's 2^8 mantissa, so the relative error of the result is ~2e-4 where
// the bf16 variant's is ~2e-3. Rows of fewer than kMinInt16Keys keys run float32. Only
// the int8 model calls it, whose gate measures the whole model (runner/int8). Pairs run along the
// reduced dimension, as in the bf16 variant: (q[2t], q[2t+1]) . (k[2t], k[2t+1]) for the scores,
// (p[2j], p[2j+1]) . (v[2j][d], v[2j+1][d]) for P.V; a uint32 holds a pair, the lower index low.
#pragma once

namespace {

typedef int16_t H16 __attribute__((vector_size(W * 4)));
typedef uint32_t VP __attribute__((vector_size(W * 4), aligned(4)));  // W pairs of int16
typedef int64_t Q __attribute__((vector_size(W * 4)));

constexpr int32_t kValueRange = 8191;  // |v16| <= this: 2 * 32767 * 8191 per pair fits int32
constexpr int64_t kMaxInt16Keys = 65536;  // longer rows run in float32 (p16's budget shrinks with the keys)
// Shorter rows run in float32: their per-row scaling costs more than the int16 products save. The
// op against the float32 one on a Zen 4, 32 rows of 18 / 48 / 96 tokens, AVX2 build 1.30 / 1.08 /
// 0.96x the time, AVX512-VNNI build 1.26 / 1.11 / 0.93x (4 x 256: 0.88x, 0.81x).
constexpr int64_t kMinInt16Keys = 96;

// The largest |q16| = |k16| for head size D: D * range^2 < 2^31.
inline int32_t key_range(int64_t D) {
  int32_t r = 1;
  while (static_cast<int64_t>(r + 1) * (r + 1) * D < (int64_t{1} << 31)) ++r;
  return r < 32767 ? r : 32767;
}

inline VP load_pairs(const uint32_t* p) { return *reinterpret_cast<const VP*>(p); }
inline VP splat_pair(uint32_t x) { return (VP{} + 1) * x; }
#if EMBER_W == 8
inline VI madd_pairs(VI acc, VP a, VP b) { return acc + (VI)__builtin_ia32_pmaddwd256((H16)a, (H16)b); }
inline VI round_to_int(VT x) { return (VI)__builtin_ia32_cvtps2dq256(x); }  // to nearest (MXCSR's default)
#else
// AVX512-VNNI: the pair products and the add in one instruction (vpdpwssd; inline assembly, as for vpdpbusd).
inline VI madd_pairs(VI acc, VP a, VP b) {
  asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}
inline VI round_to_int(VT x) {  // to nearest (MXCSR's default)
  VI r;
  asm("vcvtps2dq %1, %0" : "=v"(r) : "v"(x));
  return r;
}
#endif
inline VT to_float(VI x) { return __builtin_convertvector(x, VT); }

struct Int16Products {  // attention_pairs.h's Products
  typedef VI Acc;
  static VI dot(VI acc, VP a, VP b) { return madd_pairs(acc, a, b); }
  static VT value(VI acc) { return to_float(acc); }
  static constexpr bool kScaled = true;
};

}  // namespace

#include "attention_pairs.h"  // pairs_times_values

namespace {

// 2 W int32 values (each in -32768..32767) -> 2 W int16 in order, as W pairs: vpackssdw packs
// within each 128-bit lane, a permute of 64-bit lanes (vpermq) puts them back in order.
inline VP to_pairs(VI lo, VI hi) {
#if EMBER_W == 8
  const Q packed = (Q)__builtin_ia32_packssdw256(lo, hi);
  return (VP)__builtin_shufflevector(packed, packed, 0, 2, 1, 3);
#else
  Q packed;
  asm("vpackssdw %2, %1, %0" : "=v"(packed) : "v"(lo), "v"(hi));
  return (VP)__builtin_shufflevector(packed, packed, 0, 2, 4, 6, 1, 3, 5, 7);
#endif
}

inline float largest_magnitude(const float* x, int64_t n) {  // n a multiple of W
  VT m = {};
  for (int64_t i = 0; i < n; i += W) {
    const VT v = load(x + i);
    const VT a = v < 0 ? -v : v;
    m = a > m ? a : m;
  }
  return largest_lane(m);
}

// n floats (a multiple of 2 W) times inv, rounded, as n / 2 pairs in order.
inline void quantize_pairs(const float* x, int64_t n, float inv, uint32_t* out) {
  for (int64_t i = 0; i < n; i += 2 * W)
    *reinterpret_cast<VP*>(out + i / 2) = to_pairs(round_to_int(load(x + i) * inv), round_to_int(load(x + i + W) * inv));
}

// The QB score rows' softmax numerators (Lp keys, given each row's running maximum) times each
// key's value scale, as int16 pairs along the keys into pp (Lp / 2 per row); p_scale[r] the row's
// scale and inv[r] 1 / (the sum of its numerators).
inline void softmax_rows_to_pairs(float* sc, int64_t Lp, const VT* row_top, const float* value_scale, uint32_t* pp,
                                  float* p_scale, float* inv) {
  for (int r = 0; r < QB; ++r) {
    float* s = sc + r * Lp;
    const float row_max = largest_lane(row_top[r]);
    VT sum = {}, weighted = {}, top = {};
    for (int64_t j = 0; j < Lp; j += W) {
      const VT e = exp_nonpositive(load(s + j) - row_max);
      sum += e;
      const VT p = e * load(value_scale + j);
      store(s + j, p);
      weighted += p;
      top = p > top ? p : top;
    }
    inv[r] = inverse_of_sum(sum);
    float total = 0.0f;
    for (int k = 0; k < W; ++k) total += weighted[k];
    // sum_j |p16| <= total / scale + Lp / 2 (rounding): keep that times kValueRange under 2^31.
    const float budget = static_cast<float>((int64_t{1} << 31) / kValueRange - Lp);
    float scale = total / budget;
    const float peak = largest_lane(top) / 32767.0f;
    scale = scale > peak ? scale : peak;
    p_scale[r] = scale;
    quantize_pairs(s, Lp, scale > 0.0f ? 1.0f / scale : 0.0f, pp + r * (Lp / 2));
  }
}

// attend_head on int16 pairs: q [L][D / 2] (scaled) with q_scale [L], k^T [Lk / KB][D / 2][KB]
// with key_scale [Lk], v [Lk / 2][D] with value_scale [Lk] (0 past L).
void attend_head_int16(const uint32_t* q, const float* q_scale, const uint32_t* kt, const float* key_scale,
                       const uint32_t* vv, const float* value_scale, const float* bias, int64_t L, int64_t D,
                       float* out, int64_t out_stride, Scratch<float>& scratch, Scratch<uint32_t>& probs) {
  const int64_t Lp = (L + 2 * W - 1) / (2 * W) * (2 * W), D2 = D / 2, Lp2 = Lp / 2;  // keys: whole pair vectors
  float* sc = scratch.reserve(QB * Lp);
  uint32_t* pp = probs.reserve(QB * Lp2);
  uint32_t qs[QB * 128];
  float qsc[QB];
  for (int64_t ib = 0; ib < L; ib += QB) {
    const int64_t rows = min_of<int64_t>(QB, L - ib);
    for (int r = 0; r < QB; ++r) {
      const int64_t i = ib + min_of<int64_t>(r, rows - 1);
      for (int64_t d = 0; d < D2; ++d) qs[r * D2 + d] = q[i * D2 + d];
      qsc[r] = q_scale[i];
    }
    VT top[QB];
    for (int r = 0; r < QB; ++r) top[r] = splat(-kInf);
    for (int64_t j = 0; j < Lp; j += KB)  // Lp: whole blocks of KB = 2 W keys
      score_tile_pairs<Int16Products>(kt + (j / KB) * D2 * KB, qs, D2, qsc, key_scale + j, bias + j, &sc[j], Lp, top);
    float inv[QB], p_scale[QB];
    softmax_rows_to_pairs(sc, Lp, top, value_scale, pp, p_scale, inv);
    float factor[QB];
    for (int r = 0; r < QB; ++r) factor[r] = p_scale[r] * inv[r];
    pairs_times_values<Int16Products>(pp, Lp2, vv, (L + 1) / 2, D, ib, rows, factor, out, out_stride);
  }
}

// Packs one task's q (scaled), k^T and v as int16 pairs (attend_head_int16's layout) with their
// rows' scales: q [L][D / 2] and k^T blocks [D / 2][KB] paired along d, v [Lk / 2][D] paired
// along the keys (row j is the low half when j is even). kt and vv must be zero-filled.
template <class Rows>
void pack_int16(const Rows& rows, int64_t b, float* row_buf, const bool* mask, const Shape& s, int64_t h0, int64_t GH,
                int64_t L, int64_t Lk, float scale, uint32_t* qp, float* q_scale, uint32_t* kt, float* key_scale,
                uint32_t* vv, float* value_scale, float* bias) {
  const int64_t D = s.D, D2 = s.D / 2, HD = s.H * s.D;
  const float range = static_cast<float>(key_range(D));
  alignas(64) float scaled[256];
  alignas(64) uint32_t kp[128];
  for (int64_t j = 0; j < L; ++j) {
    bias[j] = mask[j] ? 0.0f : -kInf;
    const float* row = rows.row(b, j, h0, GH, s, row_buf);
    const int shift = (j % 2) * 16;
    for (int64_t g = 0; g < GH; ++g) {
      const float* q = row + (h0 + g) * D;
      const float* k = q + HD;
      const float* v = k + HD;
      for (int64_t d = 0; d < D; d += W) store(scaled + d, load(q + d) * scale);
      const float q_top = largest_magnitude(scaled, D);
      q_scale[g * L + j] = q_top / range;
      quantize_pairs(scaled, D, q_top > 0.0f ? range / q_top : 0.0f, &qp[(g * L + j) * D2]);
      const float k_top = largest_magnitude(k, D);
      key_scale[g * Lk + j] = k_top / range;
      quantize_pairs(k, D, k_top > 0.0f ? range / k_top : 0.0f, kp);
      uint32_t* block = &kt[g * D2 * Lk + (j / KB) * D2 * KB + j % KB];
      for (int64_t t = 0; t < D2; ++t) block[t * KB] = kp[t];
      const float v_top = largest_magnitude(v, D);
      value_scale[g * Lk + j] = v_top / kValueRange;
      const VT v_inv = splat(v_top > 0.0f ? kValueRange / v_top : 0.0f);
      uint32_t* vd = &vv[(g * Lk / 2 + j / 2) * D];
      for (int64_t d = 0; d < D; d += W) {
        const VP bits = (VP)round_to_int(load(v + d) * v_inv) & 0xFFFFu;
        *reinterpret_cast<VP*>(vd + d) |= bits << shift;
      }
    }
  }
}

}  // namespace
