// int8 x int8 -> int32 matrix product on a weight packed once for it: what torch._int_mm(a, w)
// computes, bit for bit. Two builds (int8_mm.py says why each exists and how it is called):
//
// AVX512-VNNI (EMBER_W=16), for the few rows of a single request. The packed weight (int8_mm.py
// pack) is [K, N] in panels of 64 columns (NV = 4 vectors of 16 int32 lanes): panel p holds, for
// each group of 4 rows k = 4t..4t+3, its 4 vectors' 16 columns with their 4 bytes side by side, the
// layout vpdpbusd reads. vpdpbusd multiplies unsigned bytes by signed bytes, so a row of a is read
// as a + 128 (its bytes XOR 0x80) and each column's accumulator starts at the compensation
// -128 * sum_k w[k, n]: exact in int32 while K * 255 * 128 < 2^31 (K < 65793). A task is a block
// of rows and one panel; the register tile is MR rows x NV vectors (24 of the 32 registers
// accumulate). Above kMaxRows rows the shim hands the product to torch's _int_mm (oneDNN), which
// packs the plain weight per call: that costs a few rows little and a batch nothing, where this
// kernel is on par.
//
// AVX2 (EMBER_W=8), for every row count: a CPU without int8 dot products has no fast _int_mm to
// hand a batch to. AVX2's byte multiply (vpmaddubsw) adds two u8 x s8 products into a saturating
// int16, which 8-bit activations overflow; vpmaddwd multiplies int16 pairs into int32 without
// saturation, so both operands are widened to int16 and every product is exact, signed by signed
// (no compensation). It does as many multiplies per instruction as the byte path. The packed
// weight stays int8 (half the bytes a call streams from L3 at a query's few rows, where that
// traffic, not the multiplies, is the limit): panels of 16 columns (2 vectors of 8 lanes), for
// each pair of rows k = 2t, 2t+1 the panel's columns with their two bytes side by side; each
// vector's 16 bytes are sign-extended to int16 as they are loaded (vpmovsxbw, on the shuffle pipes,
// not the multipliers). a is widened into a scratch first.
// Tasks are blocks of kRowBlock rows x kColumnBlock columns, K in steps of kDepth (so that the
// tile's rows of a and the panel's slice of the weight stay in L1).

#include "common.h"

namespace {

#if EMBER_W == 16

typedef int32_t V16 __attribute__((vector_size(64)));
typedef int32_t V16u __attribute__((vector_size(64), aligned(4)));  // loads and stores: no alignment assumed

constexpr int NV = 4;                   // vectors of 16 columns per panel
constexpr int PANEL = NV * 16;          // columns per panel
constexpr int MR = 6;                   // rows per register tile
constexpr int64_t ROW_BLOCK = 16 * MR;  // rows per task
constexpr int64_t kMaxRows = 256;       // rows up to which the shim runs this kernel
constexpr int32_t kFlip = static_cast<int32_t>(0x80808080u);

// acc += the dot products of a's unsigned and b's signed byte quads (vpdpbusd; inline assembly, as
// GCC's and Clang's builtins for it differ).
inline V16 dpbusd(V16 acc, V16 a, V16 b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}
inline V16 splat_int(int32_t x) { return (V16{} + 1) * x; }

// Rows m0..m0+R of c, columns of one panel (nv vectors of it), from the panel's packed weight.
template <int R, int NVT>
inline void tile(const int8_t* a, int64_t K, const int8_t* panel, const int32_t* compensation, int32_t* c, int64_t N) {
  V16 acc[R][NVT];
  for (int v = 0; v < NVT; ++v) {
    const V16 start = *reinterpret_cast<const V16u*>(compensation + v * 16);
    for (int r = 0; r < R; ++r) acc[r][v] = start;
  }
  const V16 flip = splat_int(kFlip);
  const int64_t groups = K / 4;
  for (int64_t t = 0; t < groups; ++t) {
    V16 w[NVT];
    for (int v = 0; v < NVT; ++v) w[v] = *reinterpret_cast<const V16u*>(panel + (t * NV + v) * 64);
    for (int r = 0; r < R; ++r) {
      int32_t word;
      __builtin_memcpy(&word, a + r * K + 4 * t, 4);
      const V16 x = splat_int(word) ^ flip;
      for (int v = 0; v < NVT; ++v) acc[r][v] = dpbusd(acc[r][v], x, w[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NVT; ++v) *reinterpret_cast<V16u*>(c + r * N + v * 16) = acc[r][v];
}

// tile<R, NVT> for rows = R, R - 1, ..., 1 (the last tile of a block may be short).
template <int R, int NVT>
inline void rows_tile(int64_t rows, const int8_t* a, int64_t K, const int8_t* panel, const int32_t* comp, int32_t* c,
                      int64_t N) {
  if constexpr (R > 1) {
    if (rows < R) return rows_tile<R - 1, NVT>(rows, a, K, panel, comp, c, N);
  }
  tile<R, NVT>(a, K, panel, comp, c, N);
}

// c [M, N] = a [M, K] @ w, w packed by pack(); K % 4 == 0, N % 16 == 0.
void matmul(const int8_t* a, int64_t M, int64_t K, const int8_t* packed, const int32_t* compensation, int64_t N,
            int32_t* c) {
  const int64_t panels = (N + PANEL - 1) / PANEL, blocks = (M + ROW_BLOCK - 1) / ROW_BLOCK;
  const int64_t panel_bytes = (K / 4) * NV * 64;
#pragma omp parallel for collapse(2) schedule(static)  // panels outer: each thread keeps its panels in cache
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = p * PANEL, nv = min_of<int64_t>(NV, (N - n0) / 16);
      const int8_t* panel = packed + p * panel_bytes;
      const int64_t m_end = min_of<int64_t>(M, (b + 1) * ROW_BLOCK);
      for (int64_t m = b * ROW_BLOCK; m < m_end; m += MR) {
        const int64_t rows = min_of<int64_t>(MR, m_end - m);
        const int8_t* am = a + m * K;
        int32_t* cm = c + m * N + n0;
        const int32_t* comp = compensation + n0;
        switch (nv) {
          case 4: rows_tile<MR, 4>(rows, am, K, panel, comp, cm, N); break;
          case 3: rows_tile<MR, 3>(rows, am, K, panel, comp, cm, N); break;
          case 2: rows_tile<MR, 2>(rows, am, K, panel, comp, cm, N); break;
          default: rows_tile<MR, 1>(rows, am, K, panel, comp, cm, N); break;
        }
      }
    }
}

// The packed weight's shape and dtype for K, N (the shim checks them).
inline bool packed_matches(const View& p, int64_t K, int64_t N) {
  return p.dtype == shim.dtype_int8 && p.dim == 2 && p.sizes[0] == (N + PANEL - 1) / PANEL && p.sizes[1] == K / 4 * NV * 64;
}

#elif EMBER_W == 8

typedef int32_t V8 __attribute__((vector_size(32)));
typedef int32_t V8u __attribute__((vector_size(32), aligned(4)));
typedef int16_t H16 __attribute__((vector_size(32)));
typedef int8_t B16u __attribute__((vector_size(16), aligned(1)));

constexpr int NV = 2;                         // vectors of 8 columns per panel
constexpr int PANEL = NV * 8;                 // columns per panel
constexpr int MR = 6;                         // rows per register tile (12 of the 16 registers accumulate)
constexpr int64_t kRowBlock = 96;             // rows per task
constexpr int64_t kColumnBlock = 64;          // columns per task
constexpr int64_t kDepth = 384;               // K per pass over a task's tiles
constexpr int64_t kMaxRows = INT64_MAX;       // the shim never hands over to _int_mm
constexpr int64_t kWidenRows = 4 * MR;        // rows of a block above which it widens each weight slice once

inline V8 splat_int(int32_t x) { return (V8{} + 1) * x; }
// acc + the products of a's and b's int16 pairs, each pair summed (vpmaddwd: exact in int32).
inline V8 madd(V8 acc, V8 a, V8 b) { return acc + (V8)__builtin_ia32_pmaddwd256((H16)a, (H16)b); }

// 8 columns' int8 pairs (16 bytes), sign-extended to the int16 pairs vpmaddwd reads (vpmovsxbw).
inline V8 widen_pairs(const int8_t* bytes) {
  typedef char C16 __attribute__((vector_size(16)));
  return (V8)__builtin_ia32_pmovsxbw256((C16) * reinterpret_cast<const B16u*>(bytes));
}
// 8 columns' pairs of a weight slice: int8 (widened as loaded) or int16 (widened before).
inline V8 weight_pairs(const int8_t* panel, int64_t i) { return widen_pairs(panel + i * 16); }
inline V8 weight_pairs(const int16_t* panel, int64_t i) { return *reinterpret_cast<const V8u*>(panel + i * 16); }

// Rows of c (R of them), columns of one panel, over `pairs` pairs of K from a's int16 rows and the
// panel's slice (Wt: int8_t or int16_t); starts from 0 (first pass) or from what c holds.
template <int R, typename Wt>
inline void tile(const int16_t* a, int64_t K, const Wt* panel, int64_t pairs, bool first, int32_t* c, int64_t N) {
  V8 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = first ? V8{} : *reinterpret_cast<const V8u*>(c + r * N + v * 8);
  for (int64_t t = 0; t < pairs; ++t) {
    V8 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = weight_pairs(panel, t * NV + v);
    for (int r = 0; r < R; ++r) {
      int32_t word;
      __builtin_memcpy(&word, a + r * K + 2 * t, 4);
      const V8 x = splat_int(word);
      for (int v = 0; v < NV; ++v) acc[r][v] = madd(acc[r][v], x, w[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V8u*>(c + r * N + v * 8) = acc[r][v];
}

// The block's rows m0..m_end of c, one panel's columns, from its slice (Wt: as in tile).
template <typename Wt>
inline void block_rows(const int16_t* a, int64_t m0, int64_t m_end, int64_t K, const Wt* panel, int64_t pairs,
                       bool first, int32_t* c, int64_t N) {
  for (int64_t m = m0; m < m_end; m += MR) {
    const int64_t rows = min_of<int64_t>(MR, m_end - m);
    const int16_t* am = a + m * K;
    int32_t* cm = c + m * N;
    switch (rows) {
      case 6: tile<6>(am, K, panel, pairs, first, cm, N); break;
      case 5: tile<5>(am, K, panel, pairs, first, cm, N); break;
      case 4: tile<4>(am, K, panel, pairs, first, cm, N); break;
      case 3: tile<3>(am, K, panel, pairs, first, cm, N); break;
      case 2: tile<2>(am, K, panel, pairs, first, cm, N); break;
      default: tile<1>(am, K, panel, pairs, first, cm, N); break;
    }
  }
}

// c [M, N] = a [M, K] @ w, w packed by int8_mm.py pack(w, AVX2); K % 4 == 0, N % 16 == 0. A block
// of more than kWidenRows rows reads each slice of the weight once per register tile: it widens the
// slice into an int16 copy in L1 first, so that its tiles' loop has no widening in it.
void matmul(const int8_t* a, int64_t M, int64_t K, const int8_t* packed, const int32_t*, int64_t N, int32_t* c) {
  Scratch<int16_t> widened;  // a as int16 (glibc reuses the freed block: no page faults per call)
  int16_t* a16 = widened.reserve(M * K);
  const int64_t row_blocks = (M + kRowBlock - 1) / kRowBlock, column_blocks = (N + kColumnBlock - 1) / kColumnBlock;
  const int64_t panels = N / PANEL;
#pragma omp parallel
  {
    alignas(32) int16_t slice16[kDepth * PANEL];
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M * K; ++i) a16[i] = a[i];
#pragma omp for collapse(2) schedule(static)
    for (int64_t cb = 0; cb < column_blocks; ++cb)
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
        const int64_t m0 = rb * kRowBlock, m_end = min_of<int64_t>(M, (rb + 1) * kRowBlock);
        const bool widen_first = m_end - m0 > kWidenRows;
        const int64_t p_end = min_of<int64_t>(panels, (cb + 1) * kColumnBlock / PANEL);
        for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
          const int64_t pairs = min_of<int64_t>(kDepth, K - k0) / 2;
          for (int64_t p = cb * kColumnBlock / PANEL; p < p_end; ++p) {
            const int8_t* panel = packed + p * K * PANEL + k0 * PANEL;
            int32_t* cp = c + p * PANEL;
            if (widen_first) {
              for (int64_t i = 0; i < pairs * 2 * PANEL; ++i) slice16[i] = panel[i];
              block_rows<int16_t>(a16 + k0, m0, m_end, K, slice16, pairs, k0 == 0, cp, N);
            } else {
              block_rows<int8_t>(a16 + k0, m0, m_end, K, panel, pairs, k0 == 0, cp, N);
            }
          }
        }
      }
  }
}

inline bool packed_matches(const View& p, int64_t K, int64_t N) {
  return p.dtype == shim.dtype_int8 && p.dim == 2 && p.sizes[0] == N / PANEL && p.sizes[1] == K * PANEL;
}

#else
#error "int8_mm.cpp is built for AVX512-VNNI (EMBER_W=16) or AVX2 (EMBER_W=8)"
#endif

bool supported(int64_t K, int64_t N) { return K > 0 && K % 4 == 0 && K < 65793 && N > 0 && N % 16 == 0; }

}  // namespace

extern "C" {

void ember_int8_mm_bind(void* const* functions, const int32_t* codes) { bind(functions, codes); }

int32_t ember_int8_mm_vector_width() { return W; }

// Rows up to which the shim runs this kernel (above: torch's _int_mm).
int64_t ember_int8_mm_max_rows() { return kMaxRows; }

// c [M, N] = a [M, K] @ w (contiguous a and c): returns 0, or 1 if K, N are not supported.
int32_t ember_int8_mm(const int8_t* a, int64_t M, int64_t K, const int8_t* packed, const int32_t* compensation,
                      int64_t N, int32_t* c) {
  if (!supported(K, N)) return 1;
  matmul(a, M, K, packed, compensation, N, c);
  return 0;
}

// The AOTInductor C shim of ember::int8_mm (what a compiled graph calls): a int8 [M, K] and
// weight int8 [K, N], both with unit stride in their last dimension, a's rows contiguous; packed
// (int8, this build's layout) and compensation int32 [N] from int8_mm.py pack. Returns int32
// [M, N]: this kernel up to kMaxRows rows, torch's _int_mm on weight above.
AOTITorchError aoti_torch_cpu_int8_mm(AtenTensorHandle a, AtenTensorHandle weight, AtenTensorHandle packed,
                                      AtenTensorHandle compensation, AtenTensorHandle* ret0) {
  View x, w, p, comp;
  if (!view(a, x) || !view(weight, w) || !view(packed, p) || !view(compensation, comp) || x.dim != 2 || w.dim != 2 ||
      x.dtype != shim.dtype_int8 || w.dtype != shim.dtype_int8 || comp.dtype != shim.dtype_int32 || comp.dim != 1)
    return AOTI_TORCH_FAILURE;
  const int64_t M = x.sizes[0], K = x.sizes[1], N = w.sizes[1];
  if (w.sizes[0] != K || !supported(K, N) || comp.sizes[0] != N || comp.strides[0] != 1 || !packed_matches(p, K, N) ||
      p.strides[1] != 1 || p.strides[0] != p.sizes[1])
    return AOTI_TORCH_FAILURE;
  const bool own = M <= kMaxRows;  // else torch's _int_mm, which takes any strides
  if (own && M > 0 && (x.strides[1] != 1 || (M > 1 && x.strides[0] != K))) return AOTI_TORCH_FAILURE;
  const int64_t sizes[2] = {M, N};
  void* out;
  if (!allocate(2, sizes, shim.dtype_int32, ret0, &out)) return AOTI_TORCH_FAILURE;
  if (!own) {
    if (shim.int_mm_out(*ret0, a, weight) == AOTI_TORCH_SUCCESS) return AOTI_TORCH_SUCCESS;
    shim.delete_tensor(*ret0);
    return AOTI_TORCH_FAILURE;
  }
  matmul(static_cast<const int8_t*>(x.data), M, K, static_cast<const int8_t*>(p.data),
         static_cast<const int32_t*>(comp.data), N, static_cast<int32_t*>(out));
  return AOTI_TORCH_SUCCESS;
}

}  // extern "C"
