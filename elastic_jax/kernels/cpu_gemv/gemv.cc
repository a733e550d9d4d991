// Vector x matrix products for batch-1 decoding on the CPU, as XLA FFI custom calls.
//
// A decode step multiplies one row by every weight, so it is bound by reading the weights. XLA:CPU runs such a
// product on one thread (Eigen shards a matrix-vector product over one thread) and one product after another, so
// two cores read at one core's speed. Here every call splits its columns over a team of threads (the caller and
// helpers that spin between calls, as a decode step issues its products back to back, then sleep), and
// `ej_experts` reads routed experts in place from the stacked [E, K, N] weights (no copy of the chosen experts).
// Each output column is one thread's dot product over K in index order, so results do not depend on the number
// of threads.
#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "checks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// y[n0:n1] = x[0:k] . w[0:k, n0:n1] for a row-major w with leading dimension ldw.
void gemv_columns(const float* x, const float* w, float* y, long k, long ldw, long n0, long n1) {
  for (long n = n0; n < n1; ++n) y[n] = 0.f;
  long r = 0;
  for (; r + 4 <= k; r += 4) {
    const float a0 = x[r], a1 = x[r + 1], a2 = x[r + 2], a3 = x[r + 3];
    const float* w0 = w + r * ldw;
    const float* w1 = w0 + ldw;
    const float* w2 = w1 + ldw;
    const float* w3 = w2 + ldw;
#pragma GCC ivdep
    for (long n = n0; n < n1; ++n) y[n] += a0 * w0[n] + a1 * w1[n] + a2 * w2[n] + a3 * w3[n];
  }
  for (; r < k; ++r) {
    const float a = x[r];
    const float* wr = w + r * ldw;
#pragma GCC ivdep
    for (long n = n0; n < n1; ++n) y[n] += a * wr[n];
  }
}

// One product of a call: y[n] = x . w[:, n] for n < n.
struct Segment {
  const float* x;
  const float* w;
  float* y;
  long k;
  long n;
};

// Columns [c0, c1) of the call's products laid end to end.
void run_columns(const Segment* segments, int count, long c0, long c1) {
  long base = 0;
  for (int s = 0; s < count; ++s) {
    long lo = std::max(c0, base), hi = std::min(c1, base + segments[s].n);
    if (lo < hi) gemv_columns(segments[s].x, segments[s].w, segments[s].y, segments[s].k, segments[s].n, lo - base,
                              hi - base);
    base += segments[s].n;
  }
}

// Thread t's first column: an even share, on a multiple of 16 columns (whole cache lines of output).
long share_start(long total, int threads, int t) {
  if (t >= threads) return total;
  return std::min(total, (total * t / threads) / 16 * 16);
}

class Team {
 public:
  explicit Team(int threads) : threads_(std::max(1, threads)) {
    helpers_.reserve(threads_ - 1);
    for (int t = 1; t < threads_; ++t) helpers_.emplace_back([this, t] { helper(t); });
  }

  // Stops and joins the helpers once the call in flight (if any) has returned. The team is never freed: a caller
  // that read it before it was replaced finds it busy for good and computes alone.
  void retire() {
    busy_.lock();  // never unlocked
    stop_.store(true);
    {
      std::lock_guard<std::mutex> lock(sleep_);
      wake_.notify_all();
    }
    for (std::thread& helper : helpers_) helper.join();
  }

  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  int threads() const { return threads_; }

  void run(const Segment* segments, int count, long total) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (threads_ == 1 || total < 64 || !busy.owns_lock()) {  // a second caller at once computes alone
      run_columns(segments, count, 0, total);
      return;
    }
    segments_ = segments;
    count_ = count;
    total_ = total;
    pending_.store(threads_ - 1);
    generation_.fetch_add(1);
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(sleep_);
      wake_.notify_all();
    }
    run_columns(segments, count, 0, share_start(total, threads_, 1));
    for (unsigned spins = 1; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      _mm_pause();
      if ((spins & 15) == 0) sched_yield();
    }
  }

 private:
  // Waits for the next call's generation (spinning, then asleep after 2 ms); false once the team stops.
  bool await(uint64_t seen) {
    auto since = std::chrono::steady_clock::now();
    unsigned spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      if (stop_.load(std::memory_order_relaxed)) return false;
      // pause, and let any other runnable thread (XLA's own workers) have this core: a helper that spun
      // through a time slice would delay the step it waits for
      _mm_pause();
      if ((++spins & 15) == 0) sched_yield();
      if ((spins & 1023) == 0 && std::chrono::steady_clock::now() - since > std::chrono::milliseconds(2)) {
        std::unique_lock<std::mutex> lock(sleep_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
        sleepers_.fetch_sub(1);
        since = std::chrono::steady_clock::now();
      }
    }
    return true;
  }

  void helper(int t) {
    uint64_t seen = 0;
    while (await(seen)) {
      seen = generation_.load(std::memory_order_acquire);
      run_columns(segments_, count_, share_start(total_, threads_, t), share_start(total_, threads_, t + 1));
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  const int threads_;
  std::mutex busy_;
  const Segment* segments_ = nullptr;
  int count_ = 0;
  long total_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex sleep_;
  std::condition_variable wake_;
  std::vector<std::thread> helpers_;
};

// The current team (null until the first call after a change of size) and the size asked for.
std::mutex team_mutex;
int requested_threads = 1;  // guarded by team_mutex
std::atomic<Team*> team_ptr{nullptr};

// The team of the requested size: one atomic read per call, made on the first call after ej_set_threads.
Team& team() {
  Team* t = team_ptr.load(std::memory_order_acquire);
  if (t != nullptr) return *t;
  std::lock_guard<std::mutex> lock(team_mutex);
  t = team_ptr.load();
  if (t == nullptr) {
    t = new Team(requested_threads);  // never freed (Team::retire)
    team_ptr.store(t, std::memory_order_release);
  }
  return *t;
}

constexpr const char* kProducts = "elastic_jax_products";
constexpr const char* kExperts = "elastic_jax_experts";

// x [K] times each w_i [K, N_i] -> y_i [N_i].
ffi::Error Products(ffi::AnyBuffer x, ffi::RemainingArgs weights, ffi::RemainingRets outputs) {
  EJ_CHECK(ej::expect_f32(kProducts, "x", x, {-1}));
  if (weights.size() != outputs.size())
    return ffi::Error::InvalidArgument(std::string(kProducts) + ": one output per weight, got " +
                                       std::to_string(weights.size()) + " weights and " +
                                       std::to_string(outputs.size()) + " outputs");
  const long k = x.dimensions()[0];
  std::vector<Segment> segments(weights.size());
  long total = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    auto w = weights.get<ffi::AnyBuffer>(i);
    auto y = outputs.get<ffi::AnyBuffer>(i);
    const int index = static_cast<int>(i);
    if (!w.has_value() || !y.has_value())
      return ffi::Error::InvalidArgument(std::string(kProducts) + ": " +
                                         ej::buffer_name(w.has_value() ? "output" : "weight", index) + " unreadable");
    EJ_CHECK(ej::expect_f32(kProducts, "weight", *w, {k, -1}, index));
    const long n = w->dimensions()[1];
    EJ_CHECK(ej::expect_f32(kProducts, "output", **y, {n}, index));
    segments[i] = {x.typed_data<float>(), w->typed_data<float>(), (*y)->typed_data<float>(), k, n};
    total += n;
  }
  team().run(segments.data(), static_cast<int>(segments.size()), total);
  return ffi::Error::Success();
}

// The shapes of Experts' buffers: x [R, K] (R = 1 or one row per pick), w [E, K, N], idx [picks], y [picks, N].
ffi::Error check_experts(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w, const ffi::AnyBuffer& idx,
                         const ffi::AnyBuffer& y) {
  EJ_CHECK(ej::expect_f32(kExperts, "w", w, {-1, -1, -1}));
  const int64_t k = w.dimensions()[1], n = w.dimensions()[2];
  EJ_CHECK(ej::expect(kExperts, "idx", idx, ffi::DataType::S32, {-1}));
  const int64_t picks = idx.dimensions()[0];
  EJ_CHECK(ej::expect_f32(kExperts, "x", x, {-1, k}));
  if (x.dimensions()[0] != 1 && x.dimensions()[0] != picks)
    return ej::mismatch(kExperts, "x", "float32 [1, " + std::to_string(k) + "] or [" + std::to_string(picks) +
                        ", " + std::to_string(k) + "] (one row, or one per expert)",
                        ej::describe(x.element_type(), x.dimensions()));
  return ej::expect_f32(kExperts, "y", y, {picks, n});
}

// Rows x [R, K] (R = 1: the same row for every expert) times the experts idx [k] of w [E, K, N] -> y [k, N].
ffi::Error Experts(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer idx, ffi::Result<ffi::AnyBuffer> y) {
  EJ_CHECK(check_experts(x, w, idx, *y));
  const long experts = w.dimensions()[0], k = w.dimensions()[1], n = w.dimensions()[2];
  const long picks = idx.dimensions()[0], rows = x.dimensions()[0];
  std::vector<Segment> segments(picks);
  const int32_t* chosen = idx.typed_data<int32_t>();
  for (long j = 0; j < picks; ++j) {
    const long e = chosen[j];
    if (e < 0 || e >= experts)
      return ffi::Error::InvalidArgument(std::string(kExperts) + ": idx[" + std::to_string(j) + "] = " +
                                         std::to_string(e) + " is not an expert of w (allowed: 0 to " +
                                         std::to_string(experts - 1) + ")");
    segments[j] = {x.typed_data<float>() + (rows == 1 ? 0 : j * k), w.typed_data<float>() + e * k * n,
                   y->typed_data<float>() + j * n, k, n};
  }
  team().run(segments.data(), static_cast<int>(picks), picks * n);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EjProducts, Products,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().RemainingArgs().RemainingRets());
XLA_FFI_DEFINE_HANDLER_SYMBOL(EjExperts, Experts,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

// Threads per product from the next call on; the old team's helpers are joined before this returns.
extern "C" void ej_set_threads(int threads) {
  Team* old = nullptr;
  {
    std::lock_guard<std::mutex> lock(team_mutex);
    requested_threads = std::max(1, threads);
    Team* t = team_ptr.load();
    if (t != nullptr && t->threads() != requested_threads) {
      old = t;
      team_ptr.store(nullptr, std::memory_order_release);
    }
  }
  if (old != nullptr) old->retire();
}

extern "C" int ej_threads() { return team().threads(); }
