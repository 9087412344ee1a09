#pragma once
// Which instruction set the prefill kernel runs, chosen at run time from what the CPU offers, so a
// build with default flags (SSE2 for Eigen) still runs AVX2 or AVX-512 micro-kernels. The
// environment variable MMATTN_ISA (eigen, avx2, avx512) or set_isa() forces a path for tests and
// benchmarks; forcing one the CPU lacks is an Error, never a silent fallback.

#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>

#include "mmattn/config.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MMATTN_HAS_X86_KERNELS 1
#else
#define MMATTN_HAS_X86_KERNELS 0
#endif

namespace mmattn {

// kEigen: Eigen products, vectorised for whatever the build's flags allow; the portable path.
enum class Isa { kEigen, kAvx2, kAvx512 };
inline constexpr Isa kAllIsas[] = {Isa::kEigen, Isa::kAvx2, Isa::kAvx512};

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kEigen: break;
  }
  return "eigen";
}

inline std::optional<Isa> isa_from_name(const std::string& name) {
  for (Isa isa : kAllIsas)
    if (name == isa_name(isa)) return isa;
  return std::nullopt;
}

// Whether this CPU (and OS: the cpuid checks include XSAVE state) can run the path.
inline bool isa_supported(Isa isa) {
#if MMATTN_HAS_X86_KERNELS
  switch (isa) {
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    case Isa::kEigen: break;
  }
  return true;
#else
  return isa == Isa::kEigen;
#endif
}

inline Isa best_isa() {
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kEigen;
}

// The path MMATTN_ISA asks for, if it names one; an unknown name is an Error.
inline std::optional<Isa> isa_from_environment() {
  const char* value = std::getenv("MMATTN_ISA");
  if (value == nullptr || *value == '\0') return std::nullopt;
  const std::optional<Isa> isa = isa_from_name(value);
  MMATTN_REQUIRE(isa.has_value(), "MMATTN_ISA=" + std::string(value) + ": expected eigen, avx2 or avx512");
  return isa;
}

namespace detail {
inline void require_supported(Isa isa) {
  MMATTN_REQUIRE(isa_supported(isa), std::string("instruction set ") + isa_name(isa) +
                                         " requested but this CPU lacks it (best available: " +
                                         isa_name(best_isa()) + ")");
}
inline std::atomic<Isa>& isa_slot() {
  static std::atomic<Isa> slot([] {
    const std::optional<Isa> forced = isa_from_environment();
    if (forced) require_supported(*forced);
    return forced.value_or(best_isa());
  }());
  return slot;
}
}  // namespace detail

// The path the kernels take now.
inline Isa active_isa() { return detail::isa_slot().load(std::memory_order_relaxed); }

// Forces a path for the whole process (tests, benchmarks); not while kernels run on other threads.
inline void set_isa(Isa isa) {
  detail::require_supported(isa);
  detail::isa_slot().store(isa, std::memory_order_relaxed);
}

}  // namespace mmattn
