#pragma once
// Chunked local attention (Llama-4's attention_chunk_size): positions are cut into chunks of
// `chunk` from position 0, and a query sees the keys of its own chunk up to itself.

#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct ChunkedRule {
  index_t chunk = 8192;

  std::string name() const { return "chunked local " + std::to_string(chunk); }
  void check(const Segment&, const Segment&) const {
    MMATTN_REQUIRE(chunk > 0, "policy: a chunked-local rule needs chunk > 0, got " + std::to_string(chunk));
  }
  KeySet keys(const Segment&, const Segment& key, index_t q) const {
    return KeySet::all(key).within(q / chunk * chunk, q + 1);
  }
};

}  // namespace mmattn
