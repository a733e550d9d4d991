// Matrix products of a few rows for decoding on the CPU, as XLA FFI custom calls.
//
// A decode step multiplies one row (a verification pass of speculative decoding: a few rows) by every weight, so
// it is bound by reading the weights. XLA:CPU runs such a product on one thread (Eigen shards a matrix-vector
// product over one thread) and one product after another, so two cores read at one core's speed, and a product
// of a few rows costs it several times one row's. Here every call splits its columns over a team of threads (the
// caller and helpers that spin between calls, as a decode step issues its products back to back, then sleep),
// each weight row is read once for up to 8 input rows, and `Experts` reads routed experts in place from the
// stacked [E, K, N] weights (no copy of the chosen experts), each chosen expert once for all the tokens that chose
// it (gemm.h). Each output column is one thread's dot product over K in index order, so results do not depend on
// the number of threads.
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
#include "gemm.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ej::kMaxRows;
using ej::Segment;

// Columns [c0, c1) of the call's products laid end to end.
void run_columns(const Segment* segments, int count, long c0, long c1) {
  long base = 0;
  for (int s = 0; s < count; ++s) {
    long lo = std::max(c0, base), hi = std::min(c1, base + segments[s].n);
    if (lo < hi) ej::segment_columns(segments[s], lo - base, hi - base);
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

// Appends the segments of `rows` rows (x[r] = x + r * x_step, y[r] = y + r * y_step) times w [k, n], kMaxRows rows
// per segment.
void add_rows(std::vector<Segment>& segments, const float* const* xs, float* const* ys, long rows, const float* w,
              long k, long n) {
  for (long r0 = 0; r0 < rows; r0 += kMaxRows) {
    Segment s{};
    s.rows = static_cast<int>(std::min<long>(kMaxRows, rows - r0));
    for (int r = 0; r < s.rows; ++r) {
      s.x[r] = xs[r0 + r];
      s.y[r] = ys[r0 + r];
    }
    s.w = w;
    s.k = k;
    s.n = n;
    segments.push_back(s);
  }
}

long columns(const std::vector<Segment>& segments) {
  long total = 0;
  for (const Segment& s : segments) total += s.n;
  return total;
}

// x [R, K] times each w_i [K, N_i] -> y_i [R, N_i]; each weight is read once for every 8 rows.
ffi::Error Products(ffi::AnyBuffer x, ffi::RemainingArgs weights, ffi::RemainingRets outputs) {
  EJ_CHECK(ej::expect_f32(kProducts, "x", x, {-1, -1}));
  if (weights.size() != outputs.size())
    return ffi::Error::InvalidArgument(std::string(kProducts) + ": one output per weight, got " +
                                       std::to_string(weights.size()) + " weights and " +
                                       std::to_string(outputs.size()) + " outputs");
  const long rows = x.dimensions()[0], k = x.dimensions()[1];
  std::vector<const float*> xs(rows);
  for (long r = 0; r < rows; ++r) xs[r] = x.typed_data<float>() + r * k;
  std::vector<float*> ys(rows);
  std::vector<Segment> segments;
  for (size_t i = 0; i < weights.size(); ++i) {
    auto w = weights.get<ffi::AnyBuffer>(i);
    auto y = outputs.get<ffi::AnyBuffer>(i);
    const int index = static_cast<int>(i);
    if (!w.has_value() || !y.has_value())
      return ffi::Error::InvalidArgument(std::string(kProducts) + ": " +
                                         ej::buffer_name(w.has_value() ? "output" : "weight", index) + " unreadable");
    EJ_CHECK(ej::expect_f32(kProducts, "weight", *w, {k, -1}, index));
    const long n = w->dimensions()[1];
    EJ_CHECK(ej::expect_f32(kProducts, "output", **y, {rows, n}, index));
    for (long r = 0; r < rows; ++r) ys[r] = (*y)->typed_data<float>() + r * n;
    add_rows(segments, xs.data(), ys.data(), rows, w->typed_data<float>(), k, n);
  }
  team().run(segments.data(), static_cast<int>(segments.size()), columns(segments));
  return ffi::Error::Success();
}

// The shapes of Experts' buffers: w [E, K, N], idx [T, J], x [T, K] (a token's row for each of its experts) or
// [T, J, K] (one row per pick), y [T, J, N].
ffi::Error check_experts(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w, const ffi::AnyBuffer& idx,
                         const ffi::AnyBuffer& y) {
  EJ_CHECK(ej::expect_f32(kExperts, "w", w, {-1, -1, -1}));
  const int64_t k = w.dimensions()[1], n = w.dimensions()[2];
  EJ_CHECK(ej::expect(kExperts, "idx", idx, ffi::DataType::S32, {-1, -1}));
  const int64_t tokens = idx.dimensions()[0], picks = idx.dimensions()[1];
  if (x.dimensions().size() == 3) {
    EJ_CHECK(ej::expect_f32(kExperts, "x", x, {tokens, picks, k}));
  } else if (x.element_type() != ffi::DataType::F32 || x.dimensions().size() != 2 || x.dimensions()[0] != tokens ||
             x.dimensions()[1] != k) {
    return ej::mismatch(kExperts, "x", ej::describe(ffi::DataType::F32, std::vector<int64_t>{tokens, k}) + " or " +
                        ej::describe(ffi::DataType::F32, std::vector<int64_t>{tokens, picks, k}) +
                        " (one row per token, or one per pick)", ej::describe(x.element_type(), x.dimensions()));
  }
  return ej::expect_f32(kExperts, "y", y, {tokens, picks, n});
}

// Rows x times the experts idx [T, J] of w [E, K, N] -> y [T, J, N]: the picks are grouped by expert, so each
// chosen expert's weights are read once for all the tokens that chose it (8 at a time).
ffi::Error Experts(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer idx, ffi::Result<ffi::AnyBuffer> y) {
  EJ_CHECK(check_experts(x, w, idx, *y));
  const long experts = w.dimensions()[0], k = w.dimensions()[1], n = w.dimensions()[2];
  const long picks = idx.element_count(), per_token = idx.dimensions()[1];
  const bool shared = x.dimensions().size() == 2;  // a token's one row serves each of its picks
  const int32_t* chosen = idx.typed_data<int32_t>();
  std::vector<long> first(experts + 1, 0);  // counting sort of the picks by expert
  for (long j = 0; j < picks; ++j) {
    const long e = chosen[j];
    if (e < 0 || e >= experts)
      return ffi::Error::InvalidArgument(std::string(kExperts) + ": idx[" + std::to_string(j / per_token) + ", " +
                                         std::to_string(j % per_token) + "] = " + std::to_string(e) +
                                         " is not an expert of w (allowed: 0 to " + std::to_string(experts - 1) +
                                         ")");
    ++first[e + 1];
  }
  for (long e = 0; e < experts; ++e) first[e + 1] += first[e];
  std::vector<const float*> xs(picks);
  std::vector<float*> ys(picks);
  std::vector<long> next(first.begin(), first.end() - 1);
  for (long j = 0; j < picks; ++j) {
    const long at = next[chosen[j]]++;
    xs[at] = x.typed_data<float>() + (shared ? j / per_token : j) * k;
    ys[at] = y->typed_data<float>() + j * n;
  }
  std::vector<Segment> segments;
  for (long e = 0; e < experts; ++e)
    add_rows(segments, xs.data() + first[e], ys.data() + first[e], first[e + 1] - first[e],
             w.typed_data<float>() + e * k * n, k, n);
  team().run(segments.data(), static_cast<int>(segments.size()), columns(segments));
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
