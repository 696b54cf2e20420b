// Bidirectional attention of an encoder layer, float32, from the fused q/k/v projection.
//
// out[b, i, h, :] = softmax_j(q[b, i, h, :] . k[b, j, h, :] / sqrt(D), over the keys the mask
// keeps) @ v[b, :, h, :], with qkv laid out [B, S, 3, H, D] (the fused linear's output) and the
// result written [B, S, H, D] (what the output projection reads): no permuted copies of q, k, v
// or of the result. See attention.py for why it exists and how it is built and called.
//
// Built once per vector width: EMBER_W = 16 floats (AVX-512) or 8 (AVX2 + FMA). A task is one
// batch row and a group of heads: it packs their q (scaled), k (transposed, in blocks of KB keys)
// and v by reading the rows in order, then per head and per QB queries computes the scores against
// every key up to the last one the mask keeps (register tiles of QB x KB), an exact softmax over
// the row, and P V. Keys the mask drops get a score of -inf and a weight of ~1e-38 (nothing next
// to the row's largest, 1). Query rows past the last kept key (the padding of a right-padded row)
// are written as zeros: no kept row ever reads them as keys, and pooling skips them.
//
// The file also has a variant with narrow products (ember::encoder_attention_narrow, which only
// the int8 model calls): the same tasks and tiles, with q.k and P.V as pair dot products of bf16
// values where the build has AVX512-BF16 (library.AVX512_BF16; pack_bf16, attend_head_bf16 in
// attention_bf16.h, with a cheaper softmax that writes P.V's pairs), of int16 values in the AVX2
// build and in an AVX512-VNNI one (pack_int16, attend_head_int16 in attention_int16.h; plain
// AVX-512 has none).
//
// The rows come from one of two sources (attention_rows.h). FloatRows reads the fused projection's float32 output.
// Int8Rows reads its int32 accumulator (an int8 linear's, before the epilogue that would scale it
// back to float32) and dequantizes the columns a task needs into a row buffer as it packs them:
// x[c] = acc[c] * t[0] * u[0][c] + sum_{i>=1} t[i] * u[i][c], with t the row's terms and u the
// columns' (runner/int8/linear.py builds both). The projection's float32 output is then never
// written: at 4 x 256 tokens of MiniLM that is 4.7 MB written and read back per layer
// (ember::encoder_attention_int8, ember::encoder_attention_int8_narrow).

#include "common.h"

namespace {

// Query rows per register tile: QB x JV accumulators, the JV key (or value) vectors and a
// broadcast fill AVX2's 16 registers at QB = 6 (AVX-512: 8 of its 32; 12 gained nothing there).
constexpr int QB = W == 16 ? 8 : 6;
constexpr int JV = 2;                // key vectors per register tile
constexpr int KB = JV * W;           // keys per packed block of K^T

// exp(x) for x <= 0 (a score minus its row's max): 2^n * p(f), relative error < 2e-7. Below -87.3
// (and for -inf, a dropped key) it returns 2^-126 p(f) ~ 1e-38, which adds nothing to a row whose
// largest term is exp(0) = 1.
inline VT exp_nonpositive(VT x) {
  x = x < splat(-87.3f) ? splat(-87.3f) : x;
  const VT t = x * 1.4426950408889634f;
  const VT n = (t + 12582912.0f) - 12582912.0f;  // round to nearest: n >= -126
  const VT f = t - n;                             // [-0.5, 0.5]
  VT p = splat(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const VI exponent = (__builtin_convertvector(n, VI) + 127) << 23;
  return p * (VT)exponent;
}

// Scores of QB queries against NV * W keys (one block of K^T), stored with the mask's bias; `top`
// keeps each row's running maximum.
template <int NV>
inline void score_tile(const float* blk, const float* qs, int64_t D, const float* bias, float* sc, int64_t Lp,
                       VT* top) {
  VT acc[QB][NV] = {};
  for (int64_t d = 0; d < D; ++d) {
    VT kv[NV];
    for (int v = 0; v < NV; ++v) kv[v] = load(blk + d * KB + v * W);
    for (int r = 0; r < QB; ++r) {
      const VT qd = splat(qs[r * D + d]);
      for (int v = 0; v < NV; ++v) acc[r][v] += qd * kv[v];
    }
  }
  for (int r = 0; r < QB; ++r)
    for (int v = 0; v < NV; ++v) {
      const VT x = acc[r][v] + load(bias + v * W);
      store(sc + r * Lp + v * W, x);
      top[r] = x > top[r] ? x : top[r];
    }
}

// Softmax numerators of each of the QB score rows in place (Lp keys), given each row's running
// maximum; returns 1 / sum per row in inv.
inline float largest_lane(VT x) {
  float top = x[0];
  for (int k = 1; k < W; ++k) top = top < x[k] ? x[k] : top;
  return top;
}
inline float inverse_of_sum(VT x) {  // 1 / (the lanes' sum), 0 for a sum of 0
  float total = 0.0f;
  for (int k = 0; k < W; ++k) total += x[k];
  return total > 0.0f ? 1.0f / total : 0.0f;
}
inline void softmax_rows(float* sc, int64_t Lp, const VT* row_top, float* inv) {
  for (int r = 0; r < QB; ++r) {
    float* s = sc + r * Lp;
    const float top = largest_lane(row_top[r]);
    VT sum = {};
    for (int64_t j = 0; j < Lp; j += W) {
      const VT e = exp_nonpositive(load(s + j) - top);
      store(s + j, e);
      sum += e;
    }
    inv[r] = inverse_of_sum(sum);
  }
}

// Which narrow products this build has (ember_attention_narrow_products).
#if defined(__AVX512BF16__)
constexpr int32_t kNarrow = 1;  // bf16
#elif EMBER_W == 8 || defined(__AVX512VNNI__)
#define EMBER_INT16_ATTENTION 1
constexpr int32_t kNarrow = 2;  // int16
#else
constexpr int32_t kNarrow = 0;  // none
#endif

}  // namespace

#include "attention_rows.h"  // FloatRows, Int8Rows

#ifdef __AVX512BF16__
#include "attention_bf16.h"  // attend_head_bf16, pack_bf16
#endif
#ifdef EMBER_INT16_ATTENTION
#include "attention_int16.h"  // attend_head_int16, pack_int16
#endif

namespace {

// One head of one batch row, from packed buffers: q [L][D] (scaled), k^T in blocks [Lk / KB][D][KB],
// v [Lk][D]; writes the L query rows of out (row stride out_stride).
void attend_head(const float* q, const float* kt, const float* vv, const float* bias, int64_t L, int64_t D, float* out,
                 int64_t out_stride, Scratch<float>& scratch) {
  const int64_t Lp = (L + W - 1) / W * W;  // keys scored: whole vectors
  float* sc = scratch.reserve(QB * Lp);
  float qs[QB * 256];
  for (int64_t ib = 0; ib < L; ib += QB) {
    const int64_t rows = min_of<int64_t>(QB, L - ib);
    for (int r = 0; r < QB; ++r) {
      const float* row = q + (ib + min_of<int64_t>(r, rows - 1)) * D;
      for (int64_t d = 0; d < D; ++d) qs[r * D + d] = row[d];
    }
    VT top[QB];
    for (int r = 0; r < QB; ++r) top[r] = splat(-kInf);
    for (int64_t j = 0; j < Lp; j += KB) {
      const float* block = kt + (j / KB) * D * KB;
      if (j + KB <= Lp) score_tile<JV>(block, qs, D, bias + j, &sc[j], Lp, top);
      else score_tile<1>(block, qs, D, bias + j, &sc[j], Lp, top);
    }
    float inv[QB];
    softmax_rows(sc, Lp, top, inv);
    for (int64_t d0 = 0; d0 < D; d0 += 2 * W) {  // D is a multiple of 2 W
      VT a0[QB] = {}, a1[QB] = {};
      for (int64_t j = 0; j < L; ++j) {
        const VT v0 = load(vv + j * D + d0), v1 = load(vv + j * D + d0 + W);
        for (int r = 0; r < QB; ++r) {
          const VT p = splat(sc[r * Lp + j]);
          a0[r] += p * v0;
          a1[r] += p * v1;
        }
      }
      for (int r = 0; r < rows; ++r) {
        float* o = out + (ib + r) * out_stride + d0;
        store(o, a0[r] * inv[r]);
        store(o + W, a1[r] * inv[r]);
      }
    }
  }
}

// Packs one task's q (scaled), k^T and v as float32 (attend_head's layout).
template <class Rows>
void pack_f32(const Rows& rows, int64_t b, float* row_buf, const bool* mask, const Shape& s, int64_t h0, int64_t GH,
              int64_t L, int64_t Lk, float scale, float* qp, float* kt, float* vv, float* bias) {
  const int64_t D = s.D, HD = s.H * s.D;
  for (int64_t j = 0; j < L; ++j) {
    bias[j] = mask[j] ? 0.0f : -kInf;
    const float* row = rows.row(b, j, h0, GH, s, row_buf);
    for (int64_t g = 0; g < GH; ++g) {
      const float* q = row + (h0 + g) * D;
      const float* k = q + HD;
      const float* v = k + HD;
      float* qd = &qp[(g * L + j) * D];
      for (int64_t d = 0; d < D; ++d) qd[d] = q[d] * scale;
      float* block = &kt[g * D * Lk + (j / KB) * D * KB + j % KB];
      for (int64_t d = 0; d < D; ++d) block[d * KB] = k[d];
      for (int64_t d = 0; d < D; ++d) vv[(g * Lk + j) * D + d] = v[d];
    }
  }
}


template <class Rows>
void attention(const Rows& rows, const bool* key_mask, float* out, const Shape& s, bool narrow) {
  const int64_t B = s.B, S = s.S, H = s.H, D = s.D, HD = H * D;
  const float scale = 1.0f / __builtin_sqrtf(static_cast<float>(D));
  // A task is one batch row and a group of heads. Its q, k, v are packed by reading the rows in
  // order (the fused projection's rows are 3 H D floats apart: reading one head's slices row by
  // row misses the cache on every row). Groups: the fewest that give every thread 4 tasks.
  const int64_t threads = omp_get_max_threads();
  int64_t groups = H;
  for (int64_t g = 1; g <= H; ++g)
    if (H % g == 0 && B * g >= 4 * threads) { groups = g; break; }
  const int64_t GH = H / groups;
#pragma omp parallel
  {
    Scratch<float> q_buf, k_buf, v_buf, scores, bias_buf, row_scratch;
    Scratch<uint32_t> q_pairs, k_pairs, v_pairs, probs;
    Scratch<float> q_scales, key_scales, value_scales;
    float* row_buf = row_scratch.reserve(3 * HD);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * groups; ++task) {
      const int64_t b = task / groups, h0 = (task % groups) * GH;
      const bool* mask = key_mask + b * s.mask_stride_b;
      float* out_b = out + b * S * HD;
      int64_t L = S;  // keys up to the last one the mask keeps; later query rows are 0
      while (L > 0 && !mask[L - 1]) --L;
      for (int64_t i = L; i < S; ++i)
        for (int64_t c = h0 * D; c < (h0 + GH) * D; ++c) out_b[i * HD + c] = 0.0f;
      if (L == 0) continue;
      const int64_t Lk = (L + KB - 1) / KB * KB;  // keys packed: whole blocks, zeros past L
      float* bias = bias_buf.fill(Lk, -kInf);
#ifdef __AVX512BF16__
      if (narrow) {
        uint32_t* qp = q_pairs.reserve(GH * L * D / 2);
        uint32_t* kt = k_pairs.fill(GH * D / 2 * Lk, 0u);
        uint32_t* vv = v_pairs.fill(GH * Lk / 2 * D, 0u);
        pack_bf16(rows, b, row_buf, mask, s, h0, GH, L, Lk, scale * kLog2e, qp, kt, vv, bias);  // base-2 scores
        for (int64_t g = 0; g < GH; ++g)
          attend_head_bf16(&qp[g * L * D / 2], &kt[g * D / 2 * Lk], &vv[g * Lk / 2 * D], bias, L, D,
                           out_b + (h0 + g) * D, HD, scores, probs);
        continue;
      }
#endif
#ifdef EMBER_INT16_ATTENTION
      if (narrow && L >= kMinInt16Keys && L <= kMaxInt16Keys) {
        uint32_t* qp = q_pairs.reserve(GH * L * D / 2);
        uint32_t* kt = k_pairs.fill(GH * D / 2 * Lk, 0u);
        uint32_t* vv = v_pairs.fill(GH * Lk / 2 * D, 0u);
        float* q_scale = q_scales.reserve(GH * L);
        float* key_scale = key_scales.fill(GH * Lk, 0.0f);
        float* value_scale = value_scales.fill(GH * Lk, 0.0f);
        pack_int16(rows, b, row_buf, mask, s, h0, GH, L, Lk, scale, qp, q_scale, kt, key_scale, vv, value_scale, bias);
        for (int64_t g = 0; g < GH; ++g)
          attend_head_int16(&qp[g * L * D / 2], &q_scale[g * L], &kt[g * D / 2 * Lk], &key_scale[g * Lk],
                            &vv[g * Lk / 2 * D], &value_scale[g * Lk], bias, L, D, out_b + (h0 + g) * D, HD, scores,
                            probs);
        continue;
      }
#endif
      float* qp = q_buf.reserve(GH * L * D);
      float* kt = k_buf.fill(GH * D * Lk, 0.0f);
      float* vv = v_buf.fill(GH * Lk * D, 0.0f);
      pack_f32(rows, b, row_buf, mask, s, h0, GH, L, Lk, scale, qp, kt, vv, bias);
      for (int64_t g = 0; g < GH; ++g)
        attend_head(&qp[g * L * D], &kt[g * D * Lk], &vv[g * Lk * D], bias, L, D, out_b + (h0 + g) * D, HD, scores);
    }
  }
  (void)narrow;
}

bool supported(int64_t D) { return D > 0 && D <= 256 && D % (2 * W) == 0; }

}  // namespace

extern "C" {

// Hands the library torch's shim functions and codes (library.bind_shim, once, at load).
void ember_attention_bind(void* const* functions, const int32_t* codes) { bind(functions, codes); }

// Floats per vector of this build: attention.py checks it against the CPU before using it.
int32_t ember_attention_vector_width() { return W; }

// The narrow products of this build: 1 bf16 (built with AVX512-BF16), 2 int16 (AVX2, or
// AVX512-VNNI without BF16), 0 none.
int32_t ember_attention_narrow_products() { return kNarrow; }

// The fewest keys a batch row needs for the narrow products to run (shorter rows: float32).
int64_t ember_attention_narrow_min_keys() {
#ifdef EMBER_INT16_ATTENTION
  return kMinInt16Keys;
#else
  return 0;
#endif
}

// The raw entries (eager calls through ctypes): return 0, 1 if D is not a multiple of 2 W, or 2 if
// narrow products are asked of a build without them.
int32_t ember_encoder_attention(const float* qkv, const bool* key_mask, float* out, int64_t B, int64_t S, int64_t H,
                                int64_t D, int64_t qkv_stride_b, int64_t qkv_stride_s, int64_t mask_stride_b,
                                int32_t narrow) {
  if (!supported(D)) return 1;
  if (narrow && !kNarrow) return 2;
  attention(FloatRows{qkv, qkv_stride_b, qkv_stride_s}, key_mask, out, Shape{B, S, H, D, mask_stride_b}, narrow != 0);
  return 0;
}

// From the int32 accumulator: acc [B, S, 3 H D] (unit stride last), row_terms [B S, T] and
// column_terms [T, 3 H D], both contiguous; returns 3 if T is not in 1..Int8Rows::kMaxTerms.
int32_t ember_encoder_attention_int8(const int32_t* acc, const float* row_terms, const float* column_terms, int64_t T,
                                     const bool* key_mask, float* out, int64_t B, int64_t S, int64_t H, int64_t D,
                                     int64_t acc_stride_b, int64_t acc_stride_s, int64_t mask_stride_b, int32_t narrow) {
  if (!supported(D)) return 1;
  if (narrow && !kNarrow) return 2;
  if (T < 1 || T > Int8Rows::kMaxTerms) return 3;
  attention(Int8Rows{acc, acc_stride_b, acc_stride_s, row_terms, column_terms, T}, key_mask, out,
            Shape{B, S, H, D, mask_stride_b}, narrow != 0);
  return 0;
}

}  // extern "C"

namespace {
// Checks key_mask bool [B, S] (unit stride in its last dimension) and num_heads against a [B, S,
// 3 H D] input x, and allocates the float32 [B, S, H D] result.
bool check_and_allocate(const View& x, const View& mask, int64_t num_heads, bool narrow, AtenTensorHandle* ret0,
                        void** out_data) {
  if ((narrow && !kNarrow) || x.dim != 3 || mask.dim != 2 || mask.dtype != shim.dtype_bool) return false;
  const int64_t B = x.sizes[0], S = x.sizes[1], HD = x.sizes[2] / 3;
  if (num_heads <= 0 || x.sizes[2] != 3 * HD || HD % num_heads || !supported(HD / num_heads) || x.strides[2] != 1 ||
      mask.sizes[0] != B || mask.sizes[1] != S || (S > 1 && mask.strides[1] != 1))
    return false;
  const int64_t sizes[3] = {B, S, HD};
  return allocate(3, sizes, shim.dtype_float32, ret0, out_data);
}

// The C shims from the float32 projection: qkv float32 [B, S, 3 H D]; returns float32 [B, S, H D].
AOTITorchError shim_attention(AtenTensorHandle qkv, AtenTensorHandle key_mask, int64_t num_heads, bool narrow,
                              AtenTensorHandle* ret0) {
  View x, mask;
  void* out;
  if (!view(qkv, x) || !view(key_mask, mask) || x.dtype != shim.dtype_float32 ||
      !check_and_allocate(x, mask, num_heads, narrow, ret0, &out))
    return AOTI_TORCH_FAILURE;
  const int64_t HD = x.sizes[2] / 3;
  attention(FloatRows{static_cast<const float*>(x.data), x.strides[0], x.strides[1]}, static_cast<const bool*>(mask.data),
            static_cast<float*>(out), Shape{x.sizes[0], x.sizes[1], num_heads, HD / num_heads, mask.strides[0]}, narrow);
  return AOTI_TORCH_SUCCESS;
}

// The C shims from the int32 accumulator: acc int32 [B, S, 3 H D], row_terms float32 [B, S, T]
// and column_terms float32 [T, 3 H D], both contiguous; returns float32 [B, S, H D].
AOTITorchError shim_attention_int8(AtenTensorHandle acc, AtenTensorHandle row_terms, AtenTensorHandle column_terms,
                                   AtenTensorHandle key_mask, int64_t num_heads, bool narrow, AtenTensorHandle* ret0) {
  View x, rt, ct, mask;
  if (!view(acc, x) || !view(row_terms, rt) || !view(column_terms, ct) || !view(key_mask, mask) ||
      x.dtype != shim.dtype_int32 || rt.dtype != shim.dtype_float32 || ct.dtype != shim.dtype_float32 || x.dim != 3 ||
      rt.dim != 3 || ct.dim != 2)
    return AOTI_TORCH_FAILURE;
  const int64_t B = x.sizes[0], S = x.sizes[1], N = x.sizes[2], T = ct.sizes[0];
  if (T < 1 || T > Int8Rows::kMaxTerms || ct.sizes[1] != N || ct.strides[1] != 1 || ct.strides[0] != N ||
      rt.sizes[0] != B || rt.sizes[1] != S || rt.sizes[2] != T || rt.strides[2] != 1 || (S > 1 && rt.strides[1] != T) ||
      (B > 1 && rt.strides[0] != S * T))
    return AOTI_TORCH_FAILURE;
  void* out;
  if (!check_and_allocate(x, mask, num_heads, narrow, ret0, &out)) return AOTI_TORCH_FAILURE;
  const Int8Rows rows{static_cast<const int32_t*>(x.data), x.strides[0], x.strides[1], static_cast<const float*>(rt.data),
                      static_cast<const float*>(ct.data), T};
  attention(rows, static_cast<const bool*>(mask.data), static_cast<float*>(out),
            Shape{B, S, num_heads, N / 3 / num_heads, mask.strides[0]}, narrow);
  return AOTI_TORCH_SUCCESS;
}
}  // namespace

extern "C" {

// The AOTInductor C shim of ember::encoder_attention (what a compiled graph calls).
AOTITorchError aoti_torch_cpu_encoder_attention(AtenTensorHandle qkv, AtenTensorHandle key_mask, int64_t num_heads,
                                                AtenTensorHandle* ret0) {
  return shim_attention(qkv, key_mask, num_heads, false, ret0);
}

// The C shim of ember::encoder_attention_narrow (fails in a build without narrow products).
AOTITorchError aoti_torch_cpu_encoder_attention_narrow(AtenTensorHandle qkv, AtenTensorHandle key_mask,
                                                     int64_t num_heads, AtenTensorHandle* ret0) {
  return shim_attention(qkv, key_mask, num_heads, true, ret0);
}

// The C shims of ember::encoder_attention_int8 and ember::encoder_attention_int8_narrow.
AOTITorchError aoti_torch_cpu_encoder_attention_int8(AtenTensorHandle acc, AtenTensorHandle row_terms,
                                                     AtenTensorHandle column_terms, AtenTensorHandle key_mask,
                                                     int64_t num_heads, AtenTensorHandle* ret0) {
  return shim_attention_int8(acc, row_terms, column_terms, key_mask, num_heads, false, ret0);
}

AOTITorchError aoti_torch_cpu_encoder_attention_int8_narrow(AtenTensorHandle acc, AtenTensorHandle row_terms,
                                                          AtenTensorHandle column_terms, AtenTensorHandle key_mask,
                                                          int64_t num_heads, AtenTensorHandle* ret0) {
  return shim_attention_int8(acc, row_terms, column_terms, key_mask, num_heads, true, ret0);
}

}  // extern "C"
