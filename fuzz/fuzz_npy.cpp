// libFuzzer target: parse_npy on arbitrary bytes. Either an array whose element count matches its
// shape, or mmattn::Error; never a crash, an out-of-bounds read or undefined behaviour.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mmattn/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const mmattn::NpyArray a = mmattn::parse_npy(std::string(reinterpret_cast<const char*>(data), size));
    std::size_t n = 1;
    for (const mmattn::index_t d : a.shape) n *= static_cast<std::size_t>(d);
    if (n != a.data.size()) std::abort();  // the element count must match the shape
  } catch (const mmattn::Error&) {
  }
  return 0;
}
