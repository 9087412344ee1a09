#pragma once
// A 3-D window inside one video over (frame, row, col), NATTEN na3d's semantics: a per-axis
// window (window1d.hpp) on each axis with its own size and dilation, sliding or partitioned in
// space, and optionally causal in time (a query sees its own frame and the frames - 1 before it,
// NATTEN's is_causal on the frame axis). Qwen2.5-VL's vision encoder windows a video frame by
// frame: partitioned(1, 8, 8).

#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct Window3D {
  WindowKind kind = WindowKind::sliding;  // of every axis, unless causal_frames
  index_t frames = 3, height = 7, width = 7;
  index_t dilation_f = 1, dilation_h = 1, dilation_w = 1;
  bool causal_frames = false;

  static Window3D sliding(index_t frames, index_t height, index_t width) {
    return {WindowKind::sliding, frames, height, width, 1, 1, 1, false};
  }
  static Window3D partitioned(index_t frames, index_t height, index_t width) {
    return {WindowKind::partitioned, frames, height, width, 1, 1, 1, false};
  }
  Window3D dilated(index_t f, index_t h, index_t w) const {
    Window3D r = *this;
    r.dilation_f = f, r.dilation_h = h, r.dilation_w = w;
    return r;
  }
  Window3D causal_in_time() const {
    Window3D r = *this;
    r.causal_frames = true;
    return r;
  }

  std::string name() const {
    std::string s = "window " + std::to_string(frames) + "x" + std::to_string(height) + "x" + std::to_string(width) +
                    " " + window_kind_name(kind);
    if (dilation_f != 1 || dilation_h != 1 || dilation_w != 1)
      s += " dil " + std::to_string(dilation_f) + "x" + std::to_string(dilation_h) + "x" + std::to_string(dilation_w);
    return causal_frames ? s + ", causal in time" : s;
  }
  void check(const Segment& query, const Segment& key) const {
    const std::string where = "policy: " + name();
    MMATTN_REQUIRE(frames > 0 && height > 0 && width > 0, where + ": window sizes must be positive");
    MMATTN_REQUIRE(dilation_f > 0 && dilation_h > 0 && dilation_w > 0, where + ": dilation must be positive");
    MMATTN_REQUIRE(kind != WindowKind::causal, where + ": for causality in time use causal_in_time()");
    MMATTN_REQUIRE(kind != WindowKind::sliding || (height % 2 == 1 && width % 2 == 1 && (causal_frames || frames % 2 == 1)),
                   where + ": a sliding window needs odd sizes to be centred (NATTEN defines its neighbourhood for "
                           "odd kernel sizes)");
    MMATTN_REQUIRE(query.is_video() && query.start == key.start,
                   where + ": a 3-D window applies to a video's own keys, not to " +
                       std::string(segment_kind_name(query.kind)) + "->" + segment_kind_name(key.kind) +
                       (query.start == key.start ? "" : " of another segment"));
  }
  KeySet keys(const Segment&, const Segment& key, index_t q) const {
    const GridCoord c = key.coord(q);
    KeySet s = KeySet::all(key);
    s.frame = axis_window(c.frame, key.frames, frames, dilation_f, causal_frames ? WindowKind::causal : kind);
    s.row = axis_window(c.row, key.rows, height, dilation_h, kind);
    s.col = axis_window(c.col, key.cols, width, dilation_w, kind);
    return s;
  }
};

}  // namespace mmattn
