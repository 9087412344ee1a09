#pragma once
// Longformer's dilated sliding window on positions: the keys q - left * d, ..., q - d, q, q + d,
// ..., q + right * d (every d-th position around the query, dilation d). It is defined on
// positions, so it applies to text keys, whose grid is one row of positions; there the band is one
// strided per-axis window on the col axis.

#include <algorithm>
#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct DilatedBandRule {
  index_t left = 0, right = 0, dilation = 1;

  std::string name() const {
    return "dilated band (" + std::to_string(left) + ", " + std::to_string(right) + ") x " + std::to_string(dilation);
  }
  void check(const Segment&, const Segment& key) const {
    MMATTN_REQUIRE(left >= 0 && right >= 0 && dilation > 0,
                   "policy: a dilated band needs left, right >= 0 and dilation > 0, got " + name());
    MMATTN_REQUIRE(key.is_text(), "policy: a dilated band is defined on positions, so it applies to text keys, not to " +
                                      std::string(segment_kind_name(key.kind)) + " keys");
  }
  KeySet keys(const Segment&, const Segment& key, index_t q) const {
    KeySet s = KeySet::all(key);
    // Steps of d from q, saturated so that left * d and right * d never overflow.
    index_t first = q - dilation * std::min(left, q / dilation);
    if (first < key.start) {  // the first position >= key.start on q's residue, without overflow
      const index_t steps = (key.start - first - 1) / dilation + 1;
      if (steps > (key.end() - 1 - first) / dilation) return s.col = {0, 0, 1}, s;
      first += steps * dilation;
    }
    const index_t steps_right = q < key.end() ? std::min(right, (key.end() - 1 - q) / dilation) : -1;
    const index_t last = q + dilation * steps_right;  // < q when the band ends before q
    if (first > last || first >= key.end()) {
      s.col = {0, 0, 1};
    } else {
      s.col = {first - key.start, std::min(last, key.end() - 1) - key.start + 1, dilation};
    }
    return s;
  }
};

}  // namespace mmattn
