// Shape and dtype checks of XLA FFI buffers for the CPU decode kernels: each failure is one ffi::Error naming the
// kernel, the buffer, what it must be and what it is. The checks read the buffers' descriptions once per call,
// never their elements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ej {

namespace ffi = xla::ffi;

inline std::string dtype_name(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::F64: return "float64";
    case ffi::DataType::S64: return "int64";
    default: return "dtype #" + std::to_string(static_cast<int>(type));
  }
}

// "float32 [2, 3]"; a negative entry of `dims` prints as `free` (any size there).
template <typename Dims>
std::string describe(ffi::DataType type, const Dims& dims, const char* free = "any") {
  std::string text = dtype_name(type) + " [";
  size_t i = 0;
  for (int64_t d : dims) text += (i++ ? ", " : "") + (d < 0 ? std::string(free) : std::to_string(d));
  return text + "]";
}

inline ffi::Error mismatch(const char* kernel, const std::string& name, const std::string& want,
                           const std::string& got) {
  return ffi::Error::InvalidArgument(std::string(kernel) + ": " + name + " must be " + want + ", got " + got);
}

// The name of a buffer in messages: `name`, or "name i" for the i-th of several (index >= 0).
inline std::string buffer_name(const char* name, int index) {
  return index < 0 ? std::string(name) : std::string(name) + " " + std::to_string(index);
}

// `buffer` (called `name` in `kernel`) holds `type` with dimensions `want` (a negative entry: any size there).
// Nothing is allocated unless it does not.
template <typename Dims>
ffi::Error expect(const char* kernel, const char* name, const ffi::AnyBuffer& buffer, ffi::DataType type,
                  const Dims& want, int index = -1) {
  auto got = buffer.dimensions();
  bool same = buffer.element_type() == type && got.size() == static_cast<size_t>(want.size());
  size_t i = 0;
  for (int64_t d : want) {
    if (same && d >= 0 && got[i] != d) same = false;
    ++i;
  }
  if (same) return ffi::Error::Success();
  return mismatch(kernel, buffer_name(name, index), describe(type, want), describe(buffer.element_type(), got));
}

inline ffi::Error expect(const char* kernel, const char* name, const ffi::AnyBuffer& buffer, ffi::DataType type,
                         std::initializer_list<int64_t> want, int index = -1) {
  return expect<std::initializer_list<int64_t>>(kernel, name, buffer, type, want, index);
}

inline ffi::Error expect_f32(const char* kernel, const char* name, const ffi::AnyBuffer& buffer,
                             std::initializer_list<int64_t> want, int index = -1) {
  return expect(kernel, name, buffer, ffi::DataType::F32, want, index);
}

// The first failure of a sequence of checks: `EJ_CHECK(expect(...))` returns it from the handler.
#define EJ_CHECK(check)                  \
  do {                                   \
    ffi::Error ej_error_ = (check);      \
    if (ej_error_.failure()) return ej_error_; \
  } while (0)

}  // namespace ej
