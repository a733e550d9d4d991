// One decoded token's attention over its cache and Mamba state update, for batch-1 decoding on the CPU.
//
// XLA:CPU hands the attention's small reductions over the cache to a library call that costs far more than their
// arithmetic, and fuses the convolution that produces the Mamba inputs into the state update, recomputing it for
// every state element. Here each is one plain loop over the arrays, in float32, in the reference's order of terms.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One query q [kv, g, d] whose key and value k, v [kv, d] go to slot `pos` of the caches [1, S, kv, d] (updated in
// place), attending to slots 0..pos -> out [kv, g, d]; scores scaled by `scale`, softmax in float32.
ffi::Error Attention(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                     ffi::Buffer<ffi::F32> key_cache, ffi::Buffer<ffi::F32> value_cache,
                     ffi::Buffer<ffi::S32> position, ffi::Result<ffi::Buffer<ffi::F32>> out,
                     ffi::Result<ffi::Buffer<ffi::F32>> new_keys, ffi::Result<ffi::Buffer<ffi::F32>> new_values,
                     float scale) {
  auto qd = q.dimensions(), cd = key_cache.dimensions(), vd = value_cache.dimensions();
  if (qd.size() != 3 || cd.size() != 4 || vd.size() != 4 || cd[0] != 1 || cd[2] != qd[0] || cd[3] != qd[2] ||
      vd[1] != cd[1] || vd[2] != cd[2] || vd[3] != cd[3] || k.element_count() != static_cast<size_t>(qd[0] * qd[2]) ||
      v.element_count() != k.element_count())
    return ffi::Error::InvalidArgument("q [kv, g, d], k and v [kv, d], caches [1, S, kv, d]");
  const long kv = qd[0], groups = qd[1], d = qd[2], slots = cd[1];
  const long pos = position.typed_data()[0];
  if (pos < 0 || pos >= slots) return ffi::Error::InvalidArgument("position outside the cache");
  float* kp = new_keys->typed_data();  // aliases key_cache
  float* vp = new_values->typed_data();
  if (kp != key_cache.typed_data()) std::copy_n(key_cache.typed_data(), key_cache.element_count(), kp);
  if (vp != value_cache.typed_data()) std::copy_n(value_cache.typed_data(), value_cache.element_count(), vp);
  std::copy_n(k.typed_data(), kv * d, kp + pos * kv * d);
  std::copy_n(v.typed_data(), kv * d, vp + pos * kv * d);
  const float* qp = q.typed_data();
  float* op = out->typed_data();
  std::vector<float> scores(pos + 1);
  for (long h = 0; h < kv; ++h) {
    for (long g = 0; g < groups; ++g) {
      const float* qv = qp + (h * groups + g) * d;
      float top = -std::numeric_limits<float>::infinity();
      for (long s = 0; s <= pos; ++s) {
        const float* kr = kp + (s * kv + h) * d;
        float dot = 0.f;
        for (long i = 0; i < d; ++i) dot += qv[i] * kr[i];
        scores[s] = dot * scale;
        top = std::max(top, scores[s]);
      }
      float total = 0.f;
      for (long s = 0; s <= pos; ++s) {
        scores[s] = std::exp(scores[s] - top);
        total += scores[s];
      }
      float* o = op + (h * groups + g) * d;
      for (long i = 0; i < d; ++i) o[i] = 0.f;
      for (long s = 0; s <= pos; ++s) {
        const float p = scores[s] / total;
        const float* vr = vp + (s * kv + h) * d;
        for (long i = 0; i < d; ++i) o[i] += p * vr[i];
      }
    }
  }
  return ffi::Error::Success();
}

// Mamba-2 state update of one token: state [h, p, n] <- state * exp(dt A) + dt x B; y = state . C + D x.
// x [h, p], dt, A, D [h], B, C [g, n] (head h reads group h / (h / g)). `state` is updated in place.
ffi::Error SsmStep(ffi::Buffer<ffi::F32> state, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dt,
                   ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> c, ffi::Buffer<ffi::F32> d,
                   ffi::Result<ffi::Buffer<ffi::F32>> y, ffi::Result<ffi::Buffer<ffi::F32>> new_state) {
  auto sd = state.dimensions(), bd = b.dimensions();
  const size_t r = sd.size();  // [h, p, n] or [1, h, p, n]
  if (r < 3 || bd.size() != 2 || sd[r - 1] != bd[1] || sd[r - 3] % bd[0] != 0 || state.element_count() !=
      static_cast<size_t>(sd[r - 3] * sd[r - 2] * sd[r - 1]))
    return ffi::Error::InvalidArgument("state [h, p, n], B and C [g, n] with h divisible by g");
  const long heads = sd[r - 3], p = sd[r - 2], n = sd[r - 1], per_group = heads / bd[0];
  const float* s0 = state.typed_data();
  float* s1 = new_state->typed_data();  // may alias s0
  const float *xp = x.typed_data(), *dtp = dt.typed_data(), *ap = a.typed_data(), *bp = b.typed_data(),
              *cp = c.typed_data(), *dp = d.typed_data();
  float* yp = y->typed_data();
  for (long h = 0; h < heads; ++h) {
    const float decay = std::exp(dtp[h] * ap[h]);
    const float* bg = bp + (h / per_group) * n;
    const float* cg = cp + (h / per_group) * n;
    for (long i = 0; i < p; ++i) {
      const float xv = xp[h * p + i], dx = dtp[h] * xv;
      const float* src = s0 + (h * p + i) * n;
      float* dst = s1 + (h * p + i) * n;
      float acc = 0.f;
      for (long j = 0; j < n; ++j) {
        const float v = src[j] * decay + dx * bg[j];
        dst[j] = v;
        acc += v * cg[j];
      }
      yp[h * p + i] = acc + dp[h] * xv;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EjAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(EjSsmStep, SsmStep,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
