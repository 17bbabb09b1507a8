/* The multi-step IF/LIF sequence of neurons._FusedSequence on the CPU, one pass over memory each way.
 *
 * Neurons are walked in blocks of BLOCK whose membranes stay in a local array for all T steps, so x, the
 * saved pre-spike membranes h and the spikes are each streamed once, where the op-by-op torch version
 * makes about a dozen passes. Blocks are shared out by OpenMP: torch already loaded its libgomp.so.1,
 * so this library binds to the same runtime and thread pool instead of competing with it.
 * Layout: [T, N] float32, contiguous. hard != 0: reset to v_reset; else reset by subtracting v_th.
 */
#include <stdint.h>

#define BLOCK 512

void lif_forward(const float *x, float *h_out, float *s_out, float *v_out, int64_t T, int64_t N, float a, float b,
                 float c, float v0, float v_th, float v_reset, int hard, int threads) {
    int64_t blocks = (N + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < blocks; k++) {
        int64_t start = k * BLOCK, m = N - start < BLOCK ? N - start : BLOCK;
        float v[BLOCK];
        for (int64_t i = 0; i < m; i++) v[i] = v0;
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * N + start;
            float *ht = h_out + t * N + start, *st = s_out + t * N + start;
            for (int64_t i = 0; i < m; i++) {
                float h = a * v[i] + b * xt[i] + c;
                float s = h >= v_th ? 1.0f : 0.0f;
                ht[i] = h;
                st[i] = s;
                v[i] = hard ? (s != 0.0f ? v_reset : h) : h - s * v_th;
            }
        }
        for (int64_t i = 0; i < m; i++) v_out[start + i] = v[i];
    }
}

/* One step without autograd (scoring, evaluation, conversion): reads x and the membrane (v_in, or the
 * scalar v0 when v_in is NULL), writes spikes and the new membrane; four passes instead of about eight. */
void neuron_step(const float *x, const float *v_in, float v0, float *s_out, float *v_out, int64_t N, float a, float b,
                 float c, float v_th, float v_reset, int hard, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < N; i++) {
        float h = a * (v_in ? v_in[i] : v0) + b * x[i] + c;
        float s = h >= v_th ? 1.0f : 0.0f;
        s_out[i] = s;
        v_out[i] = hard ? (s != 0.0f ? v_reset : h) : h - s * v_th;
    }
}

/* g_x[t] = b * g_h[t], with g_h[t] = g_s[t] * sg[t] + g_v * (hard ? h[t] < v_th : 1) and g_v = a * g_h[t],
 * walking t backwards (the reset itself is detached). sg holds the surrogate gradient at h - v_th; when it
 * is NULL the default ATan surrogate is computed here, alpha/2 / (1 + (pi/2 alpha x)^2), sparing T x N
 * of memory traffic several times over. */
void lif_backward(const float *g_s, const float *sg, const float *h, float *g_x, int64_t T, int64_t N, float a,
                  float b, float v_th, int hard, float atan_alpha, int threads) {
    const float slope = 1.57079632679489662f * atan_alpha, half = 0.5f * atan_alpha;
    int64_t blocks = (N + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < blocks; k++) {
        int64_t start = k * BLOCK, m = N - start < BLOCK ? N - start : BLOCK;
        float gv[BLOCK];
        for (int64_t i = 0; i < m; i++) gv[i] = 0.0f;
        for (int64_t t = T - 1; t >= 0; t--) {
            int64_t o = t * N + start;
            for (int64_t i = 0; i < m; i++) {
                float x = h[o + i] - v_th;
                float keep = hard ? (x < 0.0f ? 1.0f : 0.0f) : 1.0f;
                float g = sg ? sg[o + i] : half / (1.0f + (slope * x) * (slope * x));
                float gh = g_s[o + i] * g + gv[i] * keep;
                g_x[o + i] = b * gh;
                gv[i] = a * gh;
            }
        }
    }
}
