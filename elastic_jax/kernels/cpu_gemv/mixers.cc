// Decoded tokens' attention over their cache and one token's Mamba state update, for batch-1 decoding on the CPU.
//
// XLA:CPU hands the attention's small reductions over the cache to a library call that costs far more than their
// arithmetic, and fuses the convolution that produces the Mamba inputs into the state update, recomputing it for
// every state element. Here each is one plain loop over the arrays, in float32, in the reference's order of terms.
// Each handler first checks every buffer's dtype and shape (checks.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Buf = ffi::AnyBuffer;
using Out = ffi::Result<ffi::AnyBuffer>;
constexpr const char* kAttention = "elastic_jax_attention";
constexpr const char* kSsmStep = "elastic_jax_ssm_step";

// The shapes of Attention's buffers, all float32 but the int32 scalar position.
ffi::Error check_attention(const Buf& q, const Buf& k, const Buf& v, const Buf& key_cache, const Buf& value_cache,
                           const Buf& position, const Buf& out, const Buf& new_keys, const Buf& new_values) {
  EJ_CHECK(ej::expect_f32(kAttention, "q", q, {-1, -1, -1, -1}));
  const int64_t length = q.dimensions()[0], kv = q.dimensions()[1], groups = q.dimensions()[2],
                d = q.dimensions()[3];
  EJ_CHECK(ej::expect_f32(kAttention, "key_cache", key_cache, {1, -1, kv, d}));
  const int64_t slots = key_cache.dimensions()[1];
  EJ_CHECK(ej::expect_f32(kAttention, "value_cache", value_cache, {1, slots, kv, d}));
  EJ_CHECK(ej::expect_f32(kAttention, "k", k, {length, kv, d}));
  EJ_CHECK(ej::expect_f32(kAttention, "v", v, {length, kv, d}));
  EJ_CHECK(ej::expect(kAttention, "position", position, ffi::DataType::S32, {}));
  EJ_CHECK(ej::expect_f32(kAttention, "out", out, {length, kv, groups, d}));
  EJ_CHECK(ej::expect_f32(kAttention, "new_keys", new_keys, {1, slots, kv, d}));
  return ej::expect_f32(kAttention, "new_values", new_values, {1, slots, kv, d});
}

// One query q [kv, g, d] at slot `last` attending to slots 0..last of the caches kp, vp [S, kv, d] -> o [kv, g, d];
// scores scaled by `scale`, softmax in float32.
void attend(const float* q, const float* kp, const float* vp, float* o, long kv, long groups, long d, long last,
            float scale, std::vector<float>& scores) {
  for (long h = 0; h < kv; ++h) {
    for (long g = 0; g < groups; ++g) {
      const float* qv = q + (h * groups + g) * d;
      float top = -std::numeric_limits<float>::infinity();
      for (long s = 0; s <= last; ++s) {
        const float* kr = kp + (s * kv + h) * d;
        float dot = 0.f;
        for (long i = 0; i < d; ++i) dot += qv[i] * kr[i];
        scores[s] = dot * scale;
        top = std::max(top, scores[s]);
      }
      float total = 0.f;
      for (long s = 0; s <= last; ++s) {
        scores[s] = std::exp(scores[s] - top);
        total += scores[s];
      }
      float* out = o + (h * groups + g) * d;
      for (long i = 0; i < d; ++i) out[i] = 0.f;
      for (long s = 0; s <= last; ++s) {
        const float p = scores[s] / total;
        const float* vr = vp + (s * kv + h) * d;
        for (long i = 0; i < d; ++i) out[i] += p * vr[i];
      }
    }
  }
}

// L queries q [L, kv, g, d] whose keys and values k, v [L, kv, d] go to slots pos..pos+L-1 of the caches
// [1, S, kv, d] (updated in place), query i attending to slots 0..pos+i -> out [L, kv, g, d].
ffi::Error Attention(Buf q, Buf k, Buf v, Buf key_cache, Buf value_cache, Buf position, Out out, Out new_keys,
                     Out new_values, float scale) {
  EJ_CHECK(check_attention(q, k, v, key_cache, value_cache, position, *out, *new_keys, *new_values));
  const long length = q.dimensions()[0], kv = q.dimensions()[1], groups = q.dimensions()[2], d = q.dimensions()[3];
  const long slots = key_cache.dimensions()[1];
  const long pos = position.typed_data<int32_t>()[0];
  if (pos < 0 || pos + length > slots)
    return ffi::Error::InvalidArgument(std::string(kAttention) + ": positions " + std::to_string(pos) + " to " +
                                       std::to_string(pos + length - 1) + " outside the cache (allowed: 0 to " +
                                       std::to_string(slots - 1) + ")");
  float* kp = new_keys->typed_data<float>();  // aliases key_cache
  float* vp = new_values->typed_data<float>();
  if (kp != key_cache.typed_data<float>()) std::copy_n(key_cache.typed_data<float>(), key_cache.element_count(), kp);
  if (vp != value_cache.typed_data<float>())
    std::copy_n(value_cache.typed_data<float>(), value_cache.element_count(), vp);
  std::copy_n(k.typed_data<float>(), length * kv * d, kp + pos * kv * d);
  std::copy_n(v.typed_data<float>(), length * kv * d, vp + pos * kv * d);
  std::vector<float> scores(pos + length);
  for (long i = 0; i < length; ++i)
    attend(q.typed_data<float>() + i * kv * groups * d, kp, vp, out->typed_data<float>() + i * kv * groups * d, kv,
           groups, d, pos + i, scale, scores);
  return ffi::Error::Success();
}

// The shapes of SsmStep's buffers (all float32): state [h, p, n] or [1, h, p, n], x [h, p], dt, A, D [h],
// B, C [g, n] with h a multiple of g, y [h, p], and the new state shaped as the old.
ffi::Error check_ssm_step(const Buf& state, const Buf& x, const Buf& dt, const Buf& a, const Buf& b, const Buf& c,
                          const Buf& d, const Buf& y, const Buf& new_state) {
  const bool lead = state.dimensions().size() == 4;
  EJ_CHECK(lead ? ej::expect_f32(kSsmStep, "state", state, {1, -1, -1, -1})
                : ej::expect_f32(kSsmStep, "state", state, {-1, -1, -1}));
  auto sd = state.dimensions();
  const int64_t heads = sd[sd.size() - 3], p = sd[sd.size() - 2], n = sd[sd.size() - 1];
  EJ_CHECK(ej::expect_f32(kSsmStep, "B", b, {-1, n}));
  const int64_t groups = b.dimensions()[0];
  if (groups < 1 || heads % groups != 0)
    return ej::mismatch(kSsmStep, "B", "[g, " + std::to_string(n) + "] with " + std::to_string(heads) +
                        " heads a multiple of g", ej::describe(b.element_type(), b.dimensions()));
  EJ_CHECK(ej::expect_f32(kSsmStep, "C", c, {groups, n}));
  EJ_CHECK(ej::expect_f32(kSsmStep, "x", x, {heads, p}));
  EJ_CHECK(ej::expect_f32(kSsmStep, "dt", dt, {heads}));
  EJ_CHECK(ej::expect_f32(kSsmStep, "A", a, {heads}));
  EJ_CHECK(ej::expect_f32(kSsmStep, "D", d, {heads}));
  EJ_CHECK(ej::expect_f32(kSsmStep, "y", y, {heads, p}));
  return ej::expect(kSsmStep, "new_state", new_state, ffi::DataType::F32, sd);
}

// Mamba-2 state update of one token: state [h, p, n] <- state * exp(dt A) + dt x B; y = state . C + D x.
// x [h, p], dt, A, D [h], B, C [g, n] (head h reads group h / (h / g)). `state` is updated in place.
ffi::Error SsmStep(Buf state, Buf x, Buf dt, Buf a, Buf b, Buf c, Buf d, Out y, Out new_state) {
  EJ_CHECK(check_ssm_step(state, x, dt, a, b, c, d, *y, *new_state));
  auto sd = state.dimensions();
  const long heads = sd[sd.size() - 3], p = sd[sd.size() - 2], n = sd[sd.size() - 1];
  const long per_group = heads / b.dimensions()[0];
  const float* s0 = state.typed_data<float>();
  float* s1 = new_state->typed_data<float>();  // may alias s0
  const float *xp = x.typed_data<float>(), *dtp = dt.typed_data<float>(), *ap = a.typed_data<float>(),
              *bp = b.typed_data<float>(), *cp = c.typed_data<float>(), *dp = d.typed_data<float>();
  float* yp = y->typed_data<float>();
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

// Attention: q, k, v, key_cache, value_cache, position -> out, new_keys, new_values; SsmStep: state, x, dt, A, B,
// C, D -> y, new_state. Every buffer is an AnyBuffer, its dtype and shape checked by the handler.
XLA_FFI_DEFINE_HANDLER_SYMBOL(EjAttention, Attention,
                              ffi::Ffi::Bind().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>().Attr<float>("scale"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(EjSsmStep, SsmStep,
                              ffi::Ffi::Bind().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>().Ret<Buf>().Ret<Buf>());
