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

#include "common.h"

namespace {

constexpr int QB = W == 16 ? 8 : 4;  // query rows per register tile (AVX2 has 16 registers)
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
inline void softmax_rows(float* sc, int64_t Lp, const VT* row_top, float* inv) {
  for (int r = 0; r < QB; ++r) {
    float* s = sc + r * Lp;
    float top = row_top[r][0];
    for (int k = 1; k < W; ++k) top = top < row_top[r][k] ? row_top[r][k] : top;
    VT sum = {};
    for (int64_t j = 0; j < Lp; j += W) {
      const VT e = exp_nonpositive(load(s + j) - top);
      store(s + j, e);
      sum += e;
    }
    float total = 0.0f;
    for (int k = 0; k < W; ++k) total += sum[k];
    inv[r] = total > 0.0f ? 1.0f / total : 0.0f;
  }
}

struct Shape {
  int64_t B, S, H, D, qkv_stride_b, qkv_stride_s, mask_stride_b;
};

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

void attention(const float* qkv, const bool* key_mask, float* out, const Shape& s) {
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
    Scratch<float> q_buf, k_buf, v_buf, scores, bias_buf;
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
      float* qp = q_buf.reserve(GH * L * D);
      float* kt = k_buf.fill(GH * D * Lk, 0.0f);
      float* vv = v_buf.fill(GH * Lk * D, 0.0f);
      float* bias = bias_buf.fill(Lk, -kInf);
      const float* base = qkv + b * s.qkv_stride_b;
      for (int64_t j = 0; j < L; ++j) {
        bias[j] = mask[j] ? 0.0f : -kInf;
        const float* row = base + j * s.qkv_stride_s;
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
      for (int64_t g = 0; g < GH; ++g)
        attend_head(&qp[g * L * D], &kt[g * D * Lk], &vv[g * Lk * D], bias, L, D, out_b + (h0 + g) * D, HD, scores);
    }
  }
}

bool supported(int64_t D) { return D > 0 && D <= 256 && D % (2 * W) == 0; }

}  // namespace

extern "C" {

// Hands the library torch's shim functions and codes (library.bind_shim, once, at load).
void ember_attention_bind(void* const* functions, const int32_t* codes) { bind(functions, codes); }

// Floats per vector of this build: attention.py checks it against the CPU before using it.
int32_t ember_attention_vector_width() { return W; }

// The raw entry (eager calls through ctypes): returns 0, or 1 if D is not a multiple of 2 W.
int32_t ember_encoder_attention_f32(const float* qkv, const bool* key_mask, float* out, int64_t B, int64_t S,
                                    int64_t H, int64_t D, int64_t qkv_stride_b, int64_t qkv_stride_s,
                                    int64_t mask_stride_b) {
  if (!supported(D)) return 1;
  attention(qkv, key_mask, out, Shape{B, S, H, D, qkv_stride_b, qkv_stride_s, mask_stride_b});
  return 0;
}

// The AOTInductor C shim of ember::encoder_attention (what a compiled graph calls): qkv float32
// [B, S, 3 H D] with unit stride in its last dimension, key_mask bool [B, S] likewise.
AOTITorchError aoti_torch_cpu_encoder_attention(AtenTensorHandle qkv, AtenTensorHandle key_mask, int64_t num_heads,
                                                AtenTensorHandle* ret0) {
  View x, mask;
  if (!view(qkv, x) || !view(key_mask, mask) || x.dim != 3 || mask.dim != 2 || x.dtype != shim.dtype_float32 ||
      mask.dtype != shim.dtype_bool)
    return AOTI_TORCH_FAILURE;
  const int64_t B = x.sizes[0], S = x.sizes[1], HD = x.sizes[2] / 3;
  if (num_heads <= 0 || x.sizes[2] != 3 * HD || HD % num_heads || !supported(HD / num_heads) || x.strides[2] != 1 ||
      mask.sizes[0] != B || mask.sizes[1] != S || (S > 1 && mask.strides[1] != 1))
    return AOTI_TORCH_FAILURE;
  const int64_t sizes[3] = {B, S, HD};
  void* out_data;
  if (!allocate(3, sizes, shim.dtype_float32, ret0, &out_data)) return AOTI_TORCH_FAILURE;
  attention(static_cast<const float*>(x.data), static_cast<const bool*>(mask.data), static_cast<float*>(out_data),
            Shape{B, S, num_heads, HD / num_heads, x.strides[0], x.strides[1], mask.strides[0]});
  return AOTI_TORCH_SUCCESS;
}

}  // extern "C"
