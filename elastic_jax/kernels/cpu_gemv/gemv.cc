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
#include <thread>
#include <vector>

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
    for (int t = 1; t < threads_; ++t) std::thread([this, t] { helper(t); }).detach();
  }

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
  void helper(int t) {
    uint64_t seen = 0;
    for (;;) {
      auto since = std::chrono::steady_clock::now();
      unsigned spins = 0;
      while (generation_.load(std::memory_order_acquire) == seen) {
        // pause, and let any other runnable thread (XLA's own workers) have this core: a helper that spun
        // through a time slice would delay the step it waits for
        _mm_pause();
        if ((++spins & 15) == 0) sched_yield();
        if ((spins & 1023) == 0 && std::chrono::steady_clock::now() - since > std::chrono::milliseconds(2)) {
          std::unique_lock<std::mutex> lock(sleep_);
          sleepers_.fetch_add(1);
          wake_.wait(lock, [&] { return generation_.load() != seen; });
          sleepers_.fetch_sub(1);
          since = std::chrono::steady_clock::now();
        }
      }
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
  std::mutex sleep_;
  std::condition_variable wake_;
};

std::atomic<int> requested_threads{1};
std::mutex team_mutex;
std::atomic<Team*> team_ptr{nullptr};

// The team of the requested size (a new one after ej_set_threads changes it; an old team's helpers stay asleep).
Team& team() {
  Team* t = team_ptr.load(std::memory_order_acquire);
  if (t != nullptr && t->threads() == requested_threads.load()) return *t;
  std::lock_guard<std::mutex> lock(team_mutex);
  t = team_ptr.load();
  if (t == nullptr || t->threads() != requested_threads.load()) {
    t = new Team(requested_threads.load());  // never freed: its detached helpers hold it
    team_ptr.store(t, std::memory_order_release);
  }
  return *t;
}

ffi::Error check_f32(const ffi::AnyBuffer& b, const char* what) {
  if (b.element_type() != ffi::DataType::F32) return ffi::Error::InvalidArgument(std::string(what) + " must be float32");
  return ffi::Error::Success();
}

// x [K] times each w_i [K, N_i] -> y_i [N_i].
ffi::Error Products(ffi::AnyBuffer x, ffi::RemainingArgs weights, ffi::RemainingRets outputs) {
  if (auto e = check_f32(x, "x"); e.failure()) return e;
  if (weights.size() != outputs.size()) return ffi::Error::InvalidArgument("one output per weight");
  long k = static_cast<long>(x.element_count());
  std::vector<Segment> segments;
  long total = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    auto w = weights.get<ffi::AnyBuffer>(i);
    auto y = outputs.get<ffi::AnyBuffer>(i);
    if (!w.has_value() || !y.has_value()) return ffi::Error::InvalidArgument("bad operand");
    if (auto e = check_f32(*w, "weight"); e.failure()) return e;
    auto dims = w->dimensions();
    if (dims.size() != 2 || dims[0] != k) return ffi::Error::InvalidArgument("weight must be [K, N]");
    segments.push_back({x.typed_data<float>(), w->typed_data<float>(), (*y)->typed_data<float>(), k, dims[1]});
    total += dims[1];
  }
  team().run(segments.data(), static_cast<int>(segments.size()), total);
  return ffi::Error::Success();
}

// Rows x [R, K] (R = 1: the same row for every expert) times the experts idx [k] of w [E, K, N] -> y [k, N].
ffi::Error Experts(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Buffer<ffi::S32> idx, ffi::Result<ffi::AnyBuffer> y) {
  if (auto e = check_f32(x, "x"); e.failure()) return e;
  if (auto e = check_f32(w, "w"); e.failure()) return e;
  auto wd = w.dimensions();
  auto xd = x.dimensions();
  if (wd.size() != 3 || xd.size() != 2 || xd[1] != wd[1]) return ffi::Error::InvalidArgument("x [R, K], w [E, K, N]");
  long experts = wd[0], k = wd[1], n = wd[2], picks = static_cast<long>(idx.element_count());
  if (xd[0] != 1 && xd[0] != picks) return ffi::Error::InvalidArgument("x has 1 row or one per expert");
  std::vector<Segment> segments(picks);
  const int32_t* chosen = idx.typed_data();
  for (long j = 0; j < picks; ++j) {
    long e = std::min<long>(std::max<int32_t>(chosen[j], 0), experts - 1);
    segments[j] = {x.typed_data<float>() + (xd[0] == 1 ? 0 : j * k), w.typed_data<float>() + e * k * n,
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
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::AnyBuffer>());

extern "C" void ej_set_threads(int threads) { requested_threads.store(std::max(1, threads)); }
extern "C" int ej_threads() { return team().threads(); }
