// The .npy reader: round trips through the writer and through headers numpy writes (versions 1.0
// and 2.0, '<f4', '<f2', '<f8', 0-d to 3-d shapes), and a clear error for every malformed file.

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mmattn/npy.hpp"
#include "test_util.hpp"

namespace mmattn::test {
namespace {

std::vector<float> iota(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = 0.25f * float(i) - 3.0f;
  return v;
}

template <class T>
std::string raw(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// A version-2.0 header (uint32 length), as numpy writes when the dict outgrows 65535 bytes.
std::string header_v2(const std::string& dict) {
  std::string h = std::string("\x93NUMPY", 6) + '\x02' + '\x00';
  const auto n = static_cast<std::uint32_t>(dict.size());
  for (int i = 0; i < 4; ++i) h += static_cast<char>((n >> (8 * i)) & 0xff);
  return h + dict;
}

std::string load_error(const std::string& bytes, const std::vector<index_t>& expected = {}) {
  const std::string path = (std::filesystem::temp_directory_path() / "mmattn_npy_test.npy").string();
  std::ofstream(path, std::ios::binary) << bytes;
  const std::string msg = error_message([&] { expected.empty() ? load_npy(path) : load_npy(path, expected); });
  std::remove(path.c_str());
  return msg;
}

TEST(Npy, RoundTripThroughAFile) {
  const std::vector<index_t> shape = {7, 3, 5};
  const std::vector<float> values = iota(7 * 3 * 5);
  const std::string path = (std::filesystem::temp_directory_path() / "mmattn_npy_round_trip.npy").string();
  save_npy(path, shape, values.data());
  const NpyArray a = load_npy(path, {-1, 3, 5});
  std::remove(path.c_str());
  EXPECT_EQ(a.shape, shape);
  EXPECT_EQ(a.descr, "<f4");
  EXPECT_EQ(a.data, values);
  const TensorView<const float> v = a.view_thd();
  EXPECT_EQ(v.tokens, 7);
  EXPECT_EQ(v(6, 2, 4), values.back());
  EXPECT_EQ(v(1, 2, 3), values[1 * 15 + 2 * 5 + 3]);
  EXPECT_EQ(npy_header(shape).size() % 64, 0u);  // numpy aligns the data to 64 bytes
}

TEST(Npy, HeadersAsNumpyWritesThem) {
  // 1-d, 0-d and a double-quoted, unpadded dict; version 2.0; '<f2' and '<f8' converted.
  const std::vector<float> five = iota(5);
  NpyArray a = parse_npy(npy_header({5}) + raw(five));
  EXPECT_EQ(a.shape, (std::vector<index_t>{5}));
  EXPECT_EQ(a.data, five);
  a = parse_npy(npy_header({}) + raw(std::vector<float>{2.5f}));
  EXPECT_TRUE(a.shape.empty());
  EXPECT_EQ(a.data, std::vector<float>{2.5f});
  a = parse_npy(header_v2("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 2)}\n") + raw(iota(4)));
  EXPECT_EQ(a.shape, (std::vector<index_t>{2, 2}));
  EXPECT_EQ(a.data, iota(4));

  std::vector<Eigen::half> halves;
  for (const float f : five) halves.push_back(Eigen::half(f));
  a = parse_npy(npy_header({5}, "<f2") + raw(halves));
  EXPECT_EQ(a.descr, "<f2");
  EXPECT_EQ(a.data, five);  // quarter steps are exact in half precision
  std::vector<double> doubles(five.begin(), five.end());
  a = parse_npy(npy_header({1, 5}, "<f8") + raw(doubles));
  EXPECT_EQ(a.data, five);
}

TEST(Npy, MalformedFilesGetClearErrors) {
  const std::vector<float> six = iota(6);
  const std::string good = npy_header({2, 3}) + raw(six);

  EXPECT_TRUE(contains(load_error("PK\x03\x04 not numpy at all"), "bad magic"));
  EXPECT_TRUE(contains(load_error(""), "bad magic"));
  std::string v9 = good;
  v9[6] = '\x09';
  EXPECT_TRUE(contains(load_error(v9), "unsupported format version 9.0"));

  EXPECT_TRUE(contains(load_error(npy_header({2, 3}, "<i4") + raw(six)), "unsupported dtype '<i4'"));
  EXPECT_TRUE(contains(load_error(npy_header({2, 3}, ">f4") + raw(six)), "unsupported dtype '>f4'"));
  EXPECT_TRUE(contains(load_error(npy_header({2, 3}, "<f4", /*fortran_order=*/true) + raw(six)), "Fortran-order"));

  const std::string truncated = good.substr(0, good.size() - 5);
  const std::string msg = load_error(truncated);
  EXPECT_TRUE(contains(msg, "truncated data")) << msg;
  EXPECT_TRUE(contains(msg, "needs 24 bytes, the file has 19")) << msg;
  EXPECT_TRUE(contains(load_error(good.substr(0, 30)), "truncated header"));
  EXPECT_TRUE(contains(load_error(good.substr(0, 9)), "truncated before the header length"));
  EXPECT_TRUE(contains(load_error(good + "xx"), "2 bytes after the data"));

  EXPECT_TRUE(contains(load_error(header_v2("{'descr': '<f4', 'shape': (6,)}\n") + raw(six)), "no 'fortran_order'"));
  EXPECT_TRUE(contains(load_error(header_v2("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}\n") + raw(six)),
                       "malformed shape entry 'x'"));

  const std::string shape_msg = load_error(good, {2, 4});
  EXPECT_TRUE(contains(shape_msg, "shape mismatch: has (2, 3), expected (2, 4)")) << shape_msg;
  EXPECT_TRUE(contains(load_error(good, {-1, 3, 1}), "expected (*, 3, 1)"));
  EXPECT_TRUE(contains(load_error(good), "<no exception>"));
  EXPECT_TRUE(contains(error_message([] { load_npy("/nonexistent/dir/q.npy"); }), "cannot open /nonexistent/dir/q.npy"));
  EXPECT_TRUE(contains(error_message([&] { parse_npy(good).view_thd(); }), "needs a 3-d array"));
}

// The element count comes from the header, so its product is checked before any byte count or
// allocation derives from it: a product past 2^40 or past index_t is refused, whatever the file
// holds; an extent of 0 makes an empty array however large the others. The writer checks too.
TEST(Npy, ShapesWhoseSizeOverflowsAreRefused) {
  const std::string some_data = raw(iota(6));
  for (const std::vector<index_t>& shape :
       {std::vector<index_t>{3037000500, 3037000500},                  // 9.2e18: wraps int64
        std::vector<index_t>{999999999999999999, 999999999999999999},  // the largest extents parsed
        std::vector<index_t>{index_t{1} << 20, index_t{1} << 21},      // 2^41 elements: fits, too large
        std::vector<index_t>{index_t{1} << 31, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}}) {  // 2^41 over many axes
    const std::string msg = error_message([&] { parse_npy(npy_header(shape) + some_data, "big.npy"); });
    EXPECT_TRUE(contains(msg, "npy: big.npy: shape " + npy_shape_string(shape) + " is too large")) << msg;
  }
  EXPECT_TRUE(contains(error_message([&] { parse_npy(npy_header({index_t{1} << 40}) + some_data); }),
                       "truncated data: shape (1099511627776,) of <f4 needs 4398046511104 bytes, the file has 24"));
  EXPECT_TRUE(contains(load_error(header_v2("{'descr': '<f4', 'fortran_order': False, 'shape': (1234567890123456789,)}\n")),
                       "malformed shape entry '1234567890123456789'"));  // 19 digits: not parsed at all

  const NpyArray empty = parse_npy(npy_header({0, 999999999999999999}));
  EXPECT_EQ(empty.shape, (std::vector<index_t>{0, 999999999999999999}));
  EXPECT_TRUE(empty.data.empty());
  EXPECT_TRUE(contains(error_message([&] { parse_npy(npy_header({999999999999999999, 0}) + "x"); }),
                       "1 bytes after the data"));

  const float x = 1.0f;
  EXPECT_TRUE(contains(error_message([&] { npy_bytes({3037000500, 3037000500}, &x); }), "npy: writing: shape"));
  EXPECT_TRUE(contains(error_message([&] { npy_bytes({2, -1}, &x); }), "npy: writing: negative extent in shape (2, -1)"));
  EXPECT_EQ(npy_bytes({0, 5}, nullptr), npy_header({0, 5}));
}

}  // namespace
}  // namespace mmattn::test
