#pragma once
// A set of sequence positions shaped like a block: `rows` runs of `cols` consecutive positions,
// `pitch` apart. A text span is one row; a patch of an image grid has pitch = the grid's width.

#include "mmattn/config.hpp"

namespace mmattn {

struct TokenRect {
  index_t start = 0;
  index_t pitch = 0;
  index_t rows = 0, cols = 0;

  static TokenRect span(index_t start, index_t length) { return {start, length, 1, length}; }

  index_t size() const { return rows * cols; }
  bool contiguous() const { return rows == 1 || pitch == cols; }
  index_t first() const { return start; }
  index_t last() const { return start + (rows - 1) * pitch + cols - 1; }
  index_t at(index_t i) const { return start + (i / cols) * pitch + i % cols; }

  friend bool operator==(const TokenRect& a, const TokenRect& b) {
    return a.start == b.start && a.pitch == b.pitch && a.rows == b.rows && a.cols == b.cols;
  }
  friend bool operator!=(const TokenRect& a, const TokenRect& b) { return !(a == b); }
};

}  // namespace mmattn
