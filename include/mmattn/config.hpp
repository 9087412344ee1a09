#pragma once
// Version, index type and the one error type every precondition failure throws.

#include <cstdint>
#include <stdexcept>
#include <string>

#define MMATTN_VERSION_MAJOR 0
#define MMATTN_VERSION_MINOR 1
#define MMATTN_VERSION_PATCH 0

namespace mmattn {

inline const char* version_string() { return "0.1.0"; }

// Signed, so stride arithmetic and "one before the start" never wrap.
using index_t = std::int64_t;

// Thrown for bad input, before anything is written. The message names the argument.
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
[[noreturn]] inline void fail(const std::string& what) { throw Error("mmattn: " + what); }

// a * b and a + b for sizes that come from users: an overflow is an Error naming `what`.
inline index_t checked_mul(index_t a, index_t b, const char* what) {
  index_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) fail(std::string(what) + ": size overflows a 64-bit index");
  return r;
}
inline index_t checked_add(index_t a, index_t b, const char* what) {
  index_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) fail(std::string(what) + ": size overflows a 64-bit index");
  return r;
}
}  // namespace detail

}  // namespace mmattn

// The message expression is evaluated only when the check fails.
#define MMATTN_REQUIRE(cond, message)                     \
  do {                                                    \
    if (!(cond)) ::mmattn::detail::fail(message);         \
  } while (0)
