#pragma once
// The token sequence: an ordered list of image segments (rows x cols patch grids in raster order)
// and text segments, in any interleaving.

#include <algorithm>
#include <string>
#include <vector>

#include "mmattn/config.hpp"

namespace mmattn {

enum class SegmentKind : unsigned char { text, image };

struct Segment {
  SegmentKind kind = SegmentKind::text;
  index_t start = 0;   // first position in the sequence
  index_t length = 0;  // tokens; rows * cols for images
  index_t rows = 1, cols = 0;  // image grid; text is one row

  bool is_image() const { return kind == SegmentKind::image; }
  index_t end() const { return start + length; }
};

struct TokenCoord {
  index_t segment = 0;
  index_t row = 0, col = 0;  // inside the image grid; text: row 0, col = offset in the segment
};

class SequenceLayout {
 public:
  SequenceLayout& add_text(index_t length) {
    MMATTN_REQUIRE(length > 0, "layout: a text segment needs at least one token, got " + std::to_string(length));
    return push({SegmentKind::text, size(), length, 1, length});
  }
  SequenceLayout& add_image(index_t rows, index_t cols) {
    MMATTN_REQUIRE(rows > 0 && cols > 0, "layout: an image grid must be at least 1 x 1, got " +
                                             std::to_string(rows) + " x " + std::to_string(cols));
    return push({SegmentKind::image, size(), rows * cols, rows, cols});
  }

  // The common prompt shape: `images` grids of rows x cols, then `text_tokens` of text.
  static SequenceLayout images_then_text(index_t images, index_t rows, index_t cols, index_t text_tokens) {
    SequenceLayout layout;
    for (index_t i = 0; i < images; ++i) layout.add_image(rows, cols);
    if (text_tokens > 0) layout.add_text(text_tokens);
    return layout;
  }

  index_t size() const { return segments_.empty() ? 0 : segments_.back().end(); }
  const std::vector<Segment>& segments() const { return segments_; }
  const Segment& segment(index_t i) const { return segments_[static_cast<size_t>(i)]; }
  index_t num_segments() const { return static_cast<index_t>(segments_.size()); }
  index_t image_tokens() const { return count_tokens(SegmentKind::image); }
  index_t text_tokens() const { return count_tokens(SegmentKind::text); }

  void validate() const { MMATTN_REQUIRE(size() > 0, "layout: the sequence has no tokens"); }

  index_t segment_index(index_t pos) const {
    MMATTN_REQUIRE(pos >= 0 && pos < size(), "layout: position " + std::to_string(pos) + " is outside [0, " +
                                                 std::to_string(size()) + ")");
    auto it = std::upper_bound(segments_.begin(), segments_.end(), pos,
                               [](index_t p, const Segment& s) { return p < s.start; });
    return static_cast<index_t>(it - segments_.begin()) - 1;
  }
  TokenCoord locate(index_t pos) const {
    const index_t si = segment_index(pos);
    const Segment& s = segment(si);
    const index_t offset = pos - s.start;
    return {si, offset / s.cols, offset % s.cols};
  }
  index_t position(const TokenCoord& c) const {
    MMATTN_REQUIRE(c.segment >= 0 && c.segment < num_segments(), "layout: no segment " + std::to_string(c.segment));
    const Segment& s = segment(c.segment);
    MMATTN_REQUIRE(c.row >= 0 && c.row < s.rows && c.col >= 0 && c.col < s.cols,
                   "layout: (" + std::to_string(c.row) + ", " + std::to_string(c.col) + ") is outside segment " +
                       std::to_string(c.segment));
    return s.start + c.row * s.cols + c.col;
  }

 private:
  SequenceLayout& push(Segment s) {
    segments_.push_back(s);
    return *this;
  }
  index_t count_tokens(SegmentKind kind) const {
    index_t n = 0;
    for (const Segment& s : segments_) n += s.kind == kind ? s.length : 0;
    return n;
  }
  std::vector<Segment> segments_;
};

}  // namespace mmattn
