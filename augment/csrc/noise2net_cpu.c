/* Noise2Net's random Res2Net block on a CPU, everything but its hierarchical convs (which stay in PyTorch / oneDNN),
   fused into few passes over the pixels; augment/noise2net.py holds the same block in PyTorch (res2net_block) and
   calls these through augment/cpu_kernels.py, which compiles this file on first use.

   Layouts: images z, y [m, 3, hw] float; group tensors [m, width, hw], float or bf16 (uint16 bits, rounded to
   nearest even); per-image weights at base + i * stride. hw must be a multiple of 16 (V divides it) and width
   of 8. Every function loops over the m images of its sub-batch and runs on the calling thread. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define V 16 /* floats per vector: one register of the target (wider vectors spill and run slower) */
#elif defined(__AVX__)
#define V 8
#else
#define V 4 /* SSE, NEON */
#endif
#define TILE 256 /* pixels per tile: a tile of every channel stays in L1 */
#define INLINE static inline __attribute__((always_inline))
#define MIN(a, b) ((a) < (b) ? (a) : (b))

typedef float vf __attribute__((vector_size(4 * V), aligned(4)));
typedef uint32_t vu __attribute__((vector_size(4 * V), aligned(4)));
typedef uint16_t vh __attribute__((vector_size(2 * V), aligned(2)));

INLINE vf load(const void *base, int bf16, int64_t at) { /* V values at base[at], float or bf16 */
    if (!bf16) return *(const vf *)((const float *)base + at);
    vu u = __builtin_convertvector(*(const vh *)((const uint16_t *)base + at), vu) << 16;
    return (vf)u;
}

INLINE void store(void *base, int bf16, int64_t at, vf x) {
    if (!bf16) {
        *(vf *)((float *)base + at) = x;
        return;
    }
    vu u = (vu)x;
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even (finite values) */
    *(vh *)((uint16_t *)base + at) = __builtin_convertvector(u >> 16, vh);
}

INLINE vf relu(vf x) { return (vf)((vu)x & ~(vu)(x < 0)); } /* NaN stays NaN, like torch.relu */

INLINE vf expand(const float *z, int64_t hw, int64_t at, const float *a) { /* relu(a . [z; 1]) at pixels at.. */
    return relu(a[0] * *(const vf *)(z + at) + a[1] * *(const vf *)(z + hw + at) + a[2] * *(const vf *)(z + 2 * hw + at) +
                a[3]);
}

/* Per-image mean and biased 3x3 covariance of z, then the expansion weight [P, 3] with its instance norm folded
   in: affine [P, 4] = (w, -w . mean) / sqrt(var + 1e-5), var = w^T cov w. */
void n2n_expand_affine(const float *z, const float *weight, float *affine, int64_t m, int64_t planes, int64_t hw) {
    for (int64_t i = 0; i < m; i++) {
        const float *zi = z + i * 3 * hw;
        double mean[3] = {0}, cov[3][3] = {{0}};
        for (int c = 0; c < 3; c++) { /* float partial sums per tile, double across tiles (as below) */
            for (int64_t p0 = 0; p0 < hw; p0 += TILE) {
                vf s = {0};
                for (int64_t p = p0; p < MIN(hw, p0 + TILE); p += V) s += *(const vf *)(zi + c * hw + p);
                for (int k = 0; k < V; k++) mean[c] += s[k];
            }
            mean[c] /= hw;
        }
        for (int64_t p0 = 0; p0 < hw; p0 += TILE) {
            vf s[3][3] = {{{0}}};
            for (int64_t p = p0; p < MIN(hw, p0 + TILE); p += V) {
                vf d[3];
                for (int c = 0; c < 3; c++) d[c] = *(const vf *)(zi + c * hw + p) - (float)mean[c];
                for (int c = 0; c < 3; c++)
                    for (int e = c; e < 3; e++) s[c][e] += d[c] * d[e];
            }
            for (int c = 0; c < 3; c++)
                for (int e = c; e < 3; e++)
                    for (int k = 0; k < V; k++) cov[c][e] += s[c][e][k];
        }
        const float *w = weight + i * planes * 3;
        float *a = affine + i * planes * 4;
        for (int64_t o = 0; o < planes; o++) {
            double var = 0, shift = 0;
            for (int c = 0; c < 3; c++)
                for (int e = 0; e < 3; e++) var += w[3 * o + c] * (c <= e ? cov[c][e] : cov[e][c]) / hw * w[3 * o + e];
            const double r = 1.0 / sqrt(var + 1e-5);
            for (int c = 0; c < 3; c++) {
                a[4 * o + c] = (float)(w[3 * o + c] * r);
                shift -= w[3 * o + c] * r * mean[c];
            }
            a[4 * o + 3] = (float)shift;
        }
    }
}

/* One group's pass over the pixels. With prev (the previous group's conv output [m, width, hw], float or bf16)
   its normalised activation u = relu(prev * prev_scale + prev_shift) goes into y through the final 1x1 conv's
   columns prev_col .. prev_col + width - 1 (y = ... when y_init, else y += ...). This group's input is
   v = relu(affine . [z; 1]) (+ u unless own_col >= 0). With own_col >= 0 (the last group, which has no conv) v goes
   into y through columns own_col ..; otherwise v is written to out (float or bf16), or with w1x1 ([width, width]
   per image, a 1x1 conv) w1x1 @ v. project: [3, cols] per image; y [m, 3, hw] float. Returns 0, or 1 when the
   tile buffer of the 1x1 conv could not be allocated (nothing written). */
int n2n_group_pass(const float *z, const float *affine, int64_t affine_stride, const void *prev, int prev_bf16,
                    const float *prev_scale, const float *prev_shift, const float *project, int64_t project_stride,
                    int64_t cols, int64_t prev_col, int64_t own_col, float *y, int y_init, const float *w1x1,
                    int64_t w1x1_stride, void *out, int out_bf16, int64_t m, int64_t width, int64_t hw) {
    float *sp = w1x1 ? aligned_alloc(64, width * TILE * sizeof(float)) : NULL; /* this tile's conv input */
    if (w1x1 && !sp) return 1;
    for (int64_t i = 0; i < m; i++) {
        const float *zi = z + i * 3 * hw, *a = affine + i * affine_stride, *pk = project + i * project_stride;
        const float *ps = prev ? prev_scale + i * width : NULL, *pb = prev ? prev_shift + i * width : NULL;
        float *yi = y + i * 3 * hw;
        for (int64_t p0 = 0; p0 < hw; p0 += TILE) {
            const int64_t n = MIN(TILE, hw - p0);
            for (int64_t p = 0; p < n; p += V) {
                const int64_t at = p0 + p;
                vf y0 = {0}, y1 = {0}, y2 = {0};
                if (!y_init) {
                    y0 = *(vf *)(yi + at);
                    y1 = *(vf *)(yi + hw + at);
                    y2 = *(vf *)(yi + 2 * hw + at);
                }
                for (int64_t c = 0; c < width; c++) {
                    vf v = expand(zi, hw, at, a + 4 * c);
                    if (prev) {
                        const vf u = relu(load(prev, prev_bf16, (i * width + c) * hw + at) * ps[c] + pb[c]);
                        y0 += pk[prev_col + c] * u;
                        y1 += pk[cols + prev_col + c] * u;
                        y2 += pk[2 * cols + prev_col + c] * u;
                        if (own_col < 0) v += u;
                    }
                    if (own_col >= 0) {
                        y0 += pk[own_col + c] * v;
                        y1 += pk[cols + own_col + c] * v;
                        y2 += pk[2 * cols + own_col + c] * v;
                    } else if (w1x1) {
                        *(vf *)(sp + c * TILE + p) = v;
                    } else {
                        store(out, out_bf16, (i * width + c) * hw + at, v);
                    }
                }
                if (prev || own_col >= 0) {
                    *(vf *)(yi + at) = y0;
                    *(vf *)(yi + hw + at) = y1;
                    *(vf *)(yi + 2 * hw + at) = y2;
                }
            }
            if (!w1x1 || own_col >= 0) continue;
            const float *w = w1x1 + i * w1x1_stride;
            for (int64_t c0 = 0; c0 < width; c0 += 8) { /* 8 output channels at a time, accumulated in registers */
                for (int64_t p = 0; p < n; p += V) {
                    vf acc[8] = {{0}};
                    for (int64_t d = 0; d < width; d++) {
                        const vf s = *(const vf *)(sp + d * TILE + p);
                        for (int j = 0; j < 8; j++) acc[j] += w[(c0 + j) * width + d] * s;
                    }
                    for (int j = 0; j < 8; j++) store(out, out_bf16, (i * width + c0 + j) * hw + p0 + p, acc[j]);
                }
            }
        }
    }
    free(sp);
    return 0;
}

/* Instance norm statistics of x [m * channels, hw] (eps 1e-5, biased variance): normalised = x * scale + shift. */
void n2n_norm_stats(const void *x, int x_bf16, float *scale, float *shift, int64_t m, int64_t channels, int64_t hw) {
    for (int64_t ic = 0; ic < m * channels; ic++) {
        double s = 0, ss = 0;
        for (int64_t p0 = 0; p0 < hw; p0 += TILE) {
            vf ts = {0}, tss = {0};
            for (int64_t p = p0; p < MIN(hw, p0 + TILE); p += V) {
                const vf v = load(x, x_bf16, ic * hw + p);
                ts += v;
                tss += v * v;
            }
            for (int k = 0; k < V; k++) {
                s += ts[k];
                ss += tss[k];
            }
        }
        const double mean = s / hw, var = ss / hw - mean * mean;
        scale[ic] = (float)(1.0 / sqrt((var < 0 ? 0 : var) + 1e-5)); /* rounding below 0 clamped, NaN kept */
        shift[ic] = (float)-mean * scale[ic];
    }
}

/* z[i] += eps[i] * instance_norm(y[i]) in place (no ReLU): the block's residual step; y [m, 3, hw]. */
void n2n_residual(float *z, const float *y, const float *eps, int64_t m, int64_t hw) {
    float scale[3], shift[3];
    for (int64_t i = 0; i < m; i++) {
        n2n_norm_stats(y + i * 3 * hw, 0, scale, shift, 1, 3, hw);
        for (int c = 0; c < 3; c++) {
            const float a = eps[i] * scale[c], b = eps[i] * shift[c];
            for (int64_t p = 0; p < hw; p += V) *(vf *)(z + (i * 3 + c) * hw + p) += *(const vf *)(y + (i * 3 + c) * hw + p) * a + b;
        }
    }
}
