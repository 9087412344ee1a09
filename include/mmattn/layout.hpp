#pragma once
// The token sequence: an ordered list of segments in any interleaving. Text is a run of tokens,
// an image a rows x cols patch grid in raster order, a video frames x rows x cols (one grid per
// frame, frame after frame). Every segment is a (frames, rows, cols) grid, text being 1 x 1 x n,
// so mask rules see one kind of coordinate.

#include <algorithm>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "mmattn/config.hpp"

namespace mmattn {

namespace detail {
// Boost's hash_combine: mixes v into seed so that the order of the values matters.
inline void hash_combine(std::size_t& seed, std::size_t v) { seed ^= v + 0x9e3779b97f4a7c15ull + (seed << 6) + (seed >> 2); }
}  // namespace detail

enum class SegmentKind : unsigned char { text, image, video };
inline constexpr int kSegmentKinds = 3;

inline const char* segment_kind_name(SegmentKind k) {
  constexpr const char* names[kSegmentKinds] = {"text", "image", "video"};
  return names[static_cast<int>(k)];
}

// A token's coordinates inside its segment.
struct GridCoord {
  index_t frame = 0, row = 0, col = 0;
};

struct Segment {
  SegmentKind kind = SegmentKind::text;
  index_t start = 0;   // first position in the sequence
  index_t length = 0;  // tokens: frames * rows * cols
  index_t frames = 1, rows = 1, cols = 0;

  bool is_image() const { return kind == SegmentKind::image; }
  bool is_video() const { return kind == SegmentKind::video; }
  bool is_text() const { return kind == SegmentKind::text; }
  index_t end() const { return start + length; }
  index_t frame_size() const { return rows * cols; }

  GridCoord coord(index_t pos) const {  // pos inside the segment
    const index_t offset = pos - start, f = offset / frame_size(), in_frame = offset % frame_size();
    return {f, in_frame / cols, in_frame % cols};
  }
  index_t position(index_t frame, index_t row, index_t col) const {
    return start + (frame * rows + row) * cols + col;
  }
  friend bool operator==(const Segment& a, const Segment& b) {
    return a.kind == b.kind && a.start == b.start && a.length == b.length && a.frames == b.frames &&
           a.rows == b.rows && a.cols == b.cols;
  }
  friend bool operator!=(const Segment& a, const Segment& b) { return !(a == b); }
};

struct TokenCoord {
  index_t segment = 0;
  index_t row = 0, col = 0;  // inside the grid; text: row 0, col = offset in the segment
  index_t frame = 0;         // videos only
};

class SequenceLayout {
 public:
  SequenceLayout& add_text(index_t length) {
    MMATTN_REQUIRE(length > 0, "layout: a text segment needs at least one token, got " + std::to_string(length));
    return push(SegmentKind::text, 1, 1, length);
  }
  // Appends `length` text tokens to the last segment when it is text, else as a new text segment.
  // Decode grows the layout this way: one segment however many tokens are generated, where
  // add_text(1) per token made one segment per token and a step's plan visited each of them.
  // Segment indices do not move, so per-segment policy overrides keep naming the same segments;
  // an override naming the last text segment covers the new tokens.
  SequenceLayout& extend_text(index_t length) {
    MMATTN_REQUIRE(length > 0, "layout: extend_text needs at least one token, got " + std::to_string(length));
    if (segments_.empty() || !segments_.back().is_text()) return add_text(length);
    Segment& last = segments_.back();
    detail::checked_add(size(), length, "layout");
    last.length += length;
    last.cols += length;
    return *this;
  }
  SequenceLayout& add_image(index_t rows, index_t cols) {
    MMATTN_REQUIRE(rows > 0 && cols > 0, "layout: an image grid must be at least 1 x 1, got " +
                                             std::to_string(rows) + " x " + std::to_string(cols));
    return push(SegmentKind::image, 1, rows, cols);
  }
  // One video: `frames` grids of rows x cols, frame after frame. One segment, so a window may
  // span frames.
  SequenceLayout& add_video(index_t frames, index_t rows, index_t cols) {
    MMATTN_REQUIRE(frames > 0 && rows > 0 && cols > 0, "layout: a video must be at least 1 x 1 x 1, got " +
                                                           std::to_string(frames) + " x " + std::to_string(rows) +
                                                           " x " + std::to_string(cols));
    return push(SegmentKind::video, frames, rows, cols);
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
  index_t video_tokens() const { return count_tokens(SegmentKind::video); }
  index_t text_tokens() const { return count_tokens(SegmentKind::text); }
  index_t tokens_of(SegmentKind kind) const { return count_tokens(kind); }

  friend bool operator==(const SequenceLayout& a, const SequenceLayout& b) { return a.segments_ == b.segments_; }
  friend bool operator!=(const SequenceLayout& a, const SequenceLayout& b) { return !(a == b); }
  // Equal layouts hash alike; O(segments).
  std::size_t hash() const {
    std::size_t h = segments_.size();
    for (const Segment& s : segments_)
      for (const index_t v : {static_cast<index_t>(s.kind), s.length, s.frames, s.rows, s.cols})
        detail::hash_combine(h, std::hash<index_t>{}(v));
    return h;
  }

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
    const GridCoord g = segment(si).coord(pos);
    return {si, g.row, g.col, g.frame};
  }
  index_t position(const TokenCoord& c) const {
    MMATTN_REQUIRE(c.segment >= 0 && c.segment < num_segments(), "layout: no segment " + std::to_string(c.segment));
    const Segment& s = segment(c.segment);
    MMATTN_REQUIRE(c.frame >= 0 && c.frame < s.frames && c.row >= 0 && c.row < s.rows && c.col >= 0 && c.col < s.cols,
                   "layout: (" + (s.is_video() ? std::to_string(c.frame) + ", " : std::string()) +
                       std::to_string(c.row) + ", " + std::to_string(c.col) + ") is outside segment " +
                       std::to_string(c.segment));
    return s.position(c.frame, c.row, c.col);
  }

 private:
  SequenceLayout& push(SegmentKind kind, index_t frames, index_t rows, index_t cols) {
    const index_t length = detail::checked_mul(detail::checked_mul(frames, rows, "layout"), cols, "layout");
    detail::checked_add(size(), length, "layout");
    segments_.push_back({kind, size(), length, frames, rows, cols});
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
