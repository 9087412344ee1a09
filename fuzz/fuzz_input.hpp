#pragma once
// Reads a fuzzer's bytes as small numbers; past the end every read is 0, so any input is valid.

#include <cstddef>
#include <cstdint>

#include "mmattn/config.hpp"

namespace fuzz {

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}
  std::uint8_t byte() { return n_ ? (--n_, *p_++) : 0; }
  // A number in [lo, hi].
  mmattn::index_t in(mmattn::index_t lo, mmattn::index_t hi) {
    const unsigned v = static_cast<unsigned>(byte()) << 8 | byte();
    return lo + static_cast<mmattn::index_t>(v % static_cast<unsigned>(hi - lo + 1));
  }
  bool flip() { return byte() & 1; }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
};

}  // namespace fuzz
