#pragma once
// A 2-D window inside one image: per-axis windows (window1d.hpp) over its rows and cols, NATTEN's
// sliding neighbourhood with dilation or Swin / Qwen2.5-VL's partitioned windows, optionally
// causal by position on top. It applies to an image's keys seen from the same image only.

#include <string>

#include "mmattn/mask/key_set.hpp"

namespace mmattn {

struct Window2D {
  WindowKind kind = WindowKind::sliding;
  index_t height = 7, width = 7;
  index_t dilation_h = 1, dilation_w = 1;
  bool causal = false;  // also key position <= query position

  static Window2D sliding(index_t height, index_t width, index_t dilation_h = 1, index_t dilation_w = 1) {
    return {WindowKind::sliding, height, width, dilation_h, dilation_w, false};
  }
  static Window2D partitioned(index_t height, index_t width) {
    return {WindowKind::partitioned, height, width, 1, 1, false};
  }
  Window2D and_causal() const {
    Window2D w = *this;
    w.causal = true;
    return w;
  }

  AxisWindow row_window(index_t row, index_t grid_rows) const {
    return axis_window(row, grid_rows, height, dilation_h, kind);
  }
  AxisWindow col_window(index_t col, index_t grid_cols) const {
    return axis_window(col, grid_cols, width, dilation_w, kind);
  }

  std::string name() const {
    std::string s = "window " + std::to_string(height) + "x" + std::to_string(width) + " " + window_kind_name(kind);
    if (dilation_h != 1 || dilation_w != 1) s += " dil " + std::to_string(dilation_h) + "x" + std::to_string(dilation_w);
    return causal ? s + ", causal" : s;
  }
  void validate(const std::string& where) const {
    MMATTN_REQUIRE(height > 0 && width > 0, where + ": window size must be positive, got " +
                                                std::to_string(height) + " x " + std::to_string(width));
    MMATTN_REQUIRE(dilation_h > 0 && dilation_w > 0, where + ": dilation must be positive, got " +
                                                         std::to_string(dilation_h) + " x " +
                                                         std::to_string(dilation_w));
    MMATTN_REQUIRE(kind != WindowKind::sliding || (height % 2 == 1 && width % 2 == 1),
                   where + ": a sliding window needs odd sizes to be centred (NATTEN defines its neighbourhood for "
                           "odd kernel sizes), got " + std::to_string(height) + " x " + std::to_string(width));
    MMATTN_REQUIRE(kind != WindowKind::causal, where + ": a 2-D window is sliding or partitioned; for causality "
                                                       "use and_causal()");
  }
  void check(const Segment& query, const Segment& key) const {
    validate("policy: " + name());
    MMATTN_REQUIRE(query.is_image() && query.start == key.start,
                   "policy: a 2-D window applies to an image's own keys, not to " +
                       std::string(segment_kind_name(query.kind)) + "->" + segment_kind_name(key.kind) +
                       (query.start == key.start ? "" : " of another segment") + "; for videos use Window3D");
  }
  KeySet keys(const Segment&, const Segment& key, index_t q) const {
    const GridCoord c = key.coord(q);
    KeySet s = KeySet::all(key);
    s.row = row_window(c.row, key.rows);
    s.col = col_window(c.col, key.cols);
    if (causal) s.within(0, q + 1);
    return s;
  }
};

}  // namespace mmattn
