// The middle of an int8 feed-forward block in one pass: ffn_in's int32 accumulator -> float32
// (its row and channel scales, bias and float32 outlier channels) -> GELU -> ffn_out's int8 input
// (its smoothing, per-row asymmetric range on 255 steps, outlier channels). See int8_ffn.py for
// why it exists and how it is called; runner/int8/linear.py for what each step means.
//
// Per row: one pass computes the GELU, its smoothed value (kept in a row buffer in L1) and the
// row's range; a second pass over the buffer writes the int8 steps. The GELU is the int8 model's
// RationalGELU (the same rational function), the rounding is to nearest even, as torch.round.

#include "common.h"

namespace {

typedef int8_t VB __attribute__((vector_size(W), aligned(1)));

inline VI load_int(const int32_t* p) { return *reinterpret_cast<const VI*>(p); }

#if EMBER_W == 8
// Four vectors of int32 steps in -128..127 stored as 32 bytes in order. AVX2 has no vpmovdb, and
// GCC narrows a convertvector to int8 one lane at a time (vpextrd, shifts and ors); two saturating
// packs (exact in this range) and one lane permute instead.
typedef int16_t V16s __attribute__((vector_size(32)));
typedef char V32c __attribute__((vector_size(32)));
typedef char V32cu __attribute__((vector_size(32), aligned(1)));
inline void store_steps(int8_t* q, const VI (&steps)[4]) {
  const V16s low = __builtin_ia32_packssdw256(steps[0], steps[1]);  // per lane: s0 s1 (first half | second)
  const V16s high = __builtin_ia32_packssdw256(steps[2], steps[3]);
  const VI bytes = (VI)__builtin_ia32_packsswb256(low, high);  // dwords: s0 s1 s2 s3 (first halves) | second halves
  const VI order = {0, 4, 1, 5, 2, 6, 3, 7};
  *reinterpret_cast<V32cu*>(q) = (V32c)__builtin_ia32_permvarsi256(bytes, order);
}
#endif
inline VT vmin(VT a, VT b) { return a < b ? a : b; }
inline VT vmax(VT a, VT b) { return a > b ? a : b; }

// x + 1.5 * 2^23 rounds 0 <= x < 2^22 to the nearest integer (ties to even), which then sits in
// the low bits of the float: those bits minus kRoundBits are the integer.
constexpr float kRound = 12582912.0f;
constexpr int32_t kRoundBits = 0x4B400000;
constexpr float kLevels = 255.0f;
constexpr int32_t kZero = 128;

// RationalGELU (runner/int8/linear.py): x/2 (1 + u P(u^2) / Q(u^2)), u = clamp(x / (4 sqrt 2), -1, 1).
constexpr float kNum[6] = {4.5135159155f, 12.558530117f, 54.747072419f, 65.576324102f, 75.490634483f, 8.2817007375f};
constexpr float kDen[6] = {1.0f, 8.1157257896f, 29.815487258f, 63.251155192f, 79.691158462f, 39.294249807f};
constexpr float kInputScale = 0.7071067811865476f / 4.0f;

template <typename T>
inline T gelu(T x, T one) {
  T u = x * kInputScale;
  u = u < -one ? -one : u;
  u = u > one ? one : u;
  const T t = u * u;
  T p = t * kNum[5] + kNum[4];
  T q = t * kDen[5] + kDen[4];
  for (int i = 3; i >= 0; --i) {
    p = p * t + kNum[i];
    q = q * t + kDen[i];
  }
  return x * 0.5f * (one + u * p / q);
}

struct Dequant {  // what turns ffn_in's accumulator into its float32 output
  const float *row_scale, *row_low, *column_sum, *weight_scale, *bias, *outliers, *outlier_weight;
  int64_t k;
};
struct Requant {  // ffn_out's input quantization
  const float* inv_smoothing;
  const int64_t* outlier_index;
  int64_t k;
};
struct Outputs {
  int8_t* steps;
  float *scale, *low, *outliers;
};

// ffn_in's output at row m, column n, as a scalar (for the tail of a row and the outlier channels).
inline float dequant_one(const int32_t* acc, const Dequant& d, int64_t N, int64_t m, int64_t n) {
  const float s = d.row_scale[m], c = 128.0f * s + d.row_low[m];
  float x = (static_cast<float>(acc[m * N + n]) * s + c * d.column_sum[n]) * d.weight_scale[n] + d.bias[n];
  for (int64_t j = 0; j < d.k; ++j) x += d.outliers[m * d.k + j] * d.outlier_weight[j * N + n];
  return x;
}

void gelu_requantize(const int32_t* acc, int64_t M, int64_t N, const Dequant& d, const Requant& r, const Outputs& o) {
#pragma omp parallel
  {
    Scratch<float> row_buffer;
    float* smoothed = row_buffer.reserve(N);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const int32_t* a = acc + m * N;
      const float s = d.row_scale[m], c = 128.0f * s + d.row_low[m];
      const float* outl = d.outliers + m * d.k;
      const VT vs = splat(s), vc = splat(c), one = splat(1.0f);
      VT lo = splat(kInf), hi = splat(-kInf);
      int64_t n = 0;
      for (; n + W <= N; n += W) {
        VT x = (__builtin_convertvector(load_int(a + n), VT) * vs + vc * load(d.column_sum + n)) * load(d.weight_scale + n) +
               load(d.bias + n);
        for (int64_t j = 0; j < d.k; ++j) x += splat(outl[j]) * load(d.outlier_weight + j * N + n);
        const VT v = gelu(x, one) * load(r.inv_smoothing + n);
        store(smoothed + n, v);
        lo = vmin(lo, v);
        hi = vmax(hi, v);
      }
      float low = kInf, high = -kInf;
      for (; n < N; ++n) {
        const float v = gelu(dequant_one(acc, d, N, m, n), 1.0f) * r.inv_smoothing[n];
        smoothed[n] = v;
        low = min_of(low, v);
        high = v > high ? v : high;
      }
      for (int i = 0; i < W; ++i) {
        low = min_of(low, lo[i]);
        high = hi[i] > high ? hi[i] : high;
      }
      float scale = (high - low) / kLevels;
      scale = scale > 1e-8f ? scale : 1e-8f;
      const float inverse = 1.0f / scale;
      o.scale[m] = scale;
      o.low[m] = low;
      for (int64_t j = 0; j < r.k; ++j) o.outliers[m * r.k + j] = gelu(dequant_one(acc, d, N, m, r.outlier_index[j]), 1.0f);
      int8_t* q = o.steps + m * N;
      const VT vlow = splat(low), vinv = splat(inverse), vround = splat(kRound);
      const VI bits = (VI{} + 1) * (kRoundBits + kZero);
      n = 0;
#if EMBER_W == 8
      for (; n + 4 * W <= N; n += 4 * W) {
        VI steps[4];
        for (int v = 0; v < 4; ++v) steps[v] = (VI)((load(smoothed + n + v * W) - vlow) * vinv + vround) - bits;
        store_steps(q + n, steps);
      }
#endif
      for (; n + W <= N; n += W) {
        const VT t = (load(smoothed + n) - vlow) * vinv + vround;
        *reinterpret_cast<VB*>(q + n) = __builtin_convertvector((VI)t - bits, VB);
      }
      for (; n < N; ++n) {
        const float t = (smoothed[n] - low) * inverse + kRound;
        int32_t b;
        __builtin_memcpy(&b, &t, 4);
        q[n] = static_cast<int8_t>(b - kRoundBits - kZero);
      }
    }
  }
}

bool indices_valid(const int64_t* index, int64_t k, int64_t N) {
  for (int64_t j = 0; j < k; ++j)
    if (index[j] < 0 || index[j] >= N) return false;
  return true;
}

}  // namespace

extern "C" {

// Hands the library torch's shim functions and codes (library.bind_shim, once, at load).
void ember_int8_ffn_bind(void* const* functions, const int32_t* codes) { bind(functions, codes); }

int32_t ember_int8_ffn_vector_width() { return W; }

// The raw entry (eager calls through ctypes; every array contiguous): returns 0, or 1 if an
// outlier index is outside [0, N).
int32_t ember_int8_gelu_requantize(const int32_t* acc, int64_t M, int64_t N, const float* row_scale,
                                   const float* row_low, const float* column_sum, const float* weight_scale,
                                   const float* bias, const float* outliers, int64_t k, const float* outlier_weight,
                                   const float* next_inv_smoothing, const int64_t* next_outlier_index, int64_t next_k,
                                   int8_t* steps, float* scale, float* low, float* next_outliers) {
  if (!indices_valid(next_outlier_index, next_k, N)) return 1;
  gelu_requantize(acc, M, N, Dequant{row_scale, row_low, column_sum, weight_scale, bias, outliers, outlier_weight, k},
                  Requant{next_inv_smoothing, next_outlier_index, next_k}, Outputs{steps, scale, low, next_outliers});
  return 0;
}

// The AOTInductor C shim of ember::int8_gelu_requantize (what a compiled graph calls). Every input
// must be contiguous: acc int32 [M, N]; row_scale, row_low float32 [M, 1]; column_sum,
// weight_scale, bias, next_inv_smoothing float32 [N]; outliers [M, k]; outlier_weight [k, N];
// next_outlier_index int64 [1, k2] (2-d: inductor would inline a short 1-d one as literals).
// Returns steps int8 [M, N], scale and low [M, 1], outliers [M, k2].
AOTITorchError aoti_torch_cpu_int8_gelu_requantize(
    AtenTensorHandle acc, AtenTensorHandle row_scale, AtenTensorHandle row_low, AtenTensorHandle column_sum,
    AtenTensorHandle weight_scale, AtenTensorHandle bias, AtenTensorHandle outliers, AtenTensorHandle outlier_weight,
    AtenTensorHandle next_inv_smoothing, AtenTensorHandle next_outlier_index, AtenTensorHandle* ret0,
    AtenTensorHandle* ret1, AtenTensorHandle* ret2, AtenTensorHandle* ret3) {
  View a, rs, rl, cs, ws, b, ol, ow, nis, nidx;
  if (!view(acc, a) || !view(row_scale, rs) || !view(row_low, rl) || !view(column_sum, cs) || !view(weight_scale, ws) ||
      !view(bias, b) || !view(outliers, ol) || !view(outlier_weight, ow) || !view(next_inv_smoothing, nis) ||
      !view(next_outlier_index, nidx) || a.dim != 2 || a.dtype != shim.dtype_int32 || nidx.dim != 2 ||
      nidx.sizes[0] != 1 || nidx.dtype != shim.dtype_int64 || ol.dim != 2 || ow.dim != 2)
    return AOTI_TORCH_FAILURE;
  const int64_t M = a.sizes[0], N = a.sizes[1], k = ol.sizes[1], next_k = nidx.sizes[1];
  const auto contiguous = [](const View& v, int64_t rows, int64_t cols) {
    const int64_t numel = rows * cols;
    if (v.dtype != shim.dtype_float32 && v.dtype != shim.dtype_int32 && v.dtype != shim.dtype_int64) return false;
    int64_t count = 1;
    for (int64_t i = 0; i < v.dim; ++i) count *= v.sizes[i];
    if (count != numel) return false;
    int64_t stride = 1;
    for (int64_t i = v.dim - 1; i >= 0; --i) {
      if (v.sizes[i] != 1 && v.strides[i] != stride) return false;
      stride *= v.sizes[i];
    }
    return true;
  };
  const View* floats[] = {&rs, &rl, &cs, &ws, &b, &ol, &ow, &nis};
  for (const View* v : floats)
    if (v->dtype != shim.dtype_float32) return AOTI_TORCH_FAILURE;
  if (!contiguous(a, M, N) || !contiguous(rs, M, 1) || !contiguous(rl, M, 1) || !contiguous(cs, N, 1) ||
      !contiguous(ws, N, 1) || !contiguous(b, N, 1) || ol.sizes[0] != M || !contiguous(ol, M, k) ||
      ow.sizes[0] != k || !contiguous(ow, k, N) || !contiguous(nis, N, 1) || !contiguous(nidx, 1, next_k) ||
      !indices_valid(static_cast<const int64_t*>(nidx.data), next_k, N))
    return AOTI_TORCH_FAILURE;
  const int64_t steps_sizes[2] = {M, N}, row_sizes[2] = {M, 1}, outlier_sizes[2] = {M, next_k};
  AtenTensorHandle unused[4];
  AtenTensorHandle* rets[4] = {ret0 ? ret0 : &unused[0], ret1 ? ret1 : &unused[1], ret2 ? ret2 : &unused[2],
                               ret3 ? ret3 : &unused[3]};
  void *steps, *scale, *low, *next_outliers;
  if (!allocate(2, steps_sizes, shim.dtype_int8, rets[0], &steps) ||
      !allocate(2, row_sizes, shim.dtype_float32, rets[1], &scale) ||
      !allocate(2, row_sizes, shim.dtype_float32, rets[2], &low) ||
      !allocate(2, outlier_sizes, shim.dtype_float32, rets[3], &next_outliers))
    return AOTI_TORCH_FAILURE;
  gelu_requantize(static_cast<const int32_t*>(a.data), M, N,
                  Dequant{static_cast<const float*>(rs.data), static_cast<const float*>(rl.data),
                          static_cast<const float*>(cs.data), static_cast<const float*>(ws.data),
                          static_cast<const float*>(b.data), static_cast<const float*>(ol.data),
                          static_cast<const float*>(ow.data), k},
                  Requant{static_cast<const float*>(nis.data), static_cast<const int64_t*>(nidx.data), next_k},
                  Outputs{static_cast<int8_t*>(steps), static_cast<float*>(scale), static_cast<float*>(low),
                          static_cast<float*>(next_outliers)});
  for (int i = 0; i < 4; ++i)  // an output the graph does not read comes as a null pointer
    if (rets[i] == &unused[i]) shim.delete_tensor(unused[i]);
  return AOTI_TORCH_SUCCESS;
}

}  // extern "C"
