#pragma once
// A tiny .npy reader and writer, so a runtime can dump Q, K, V from a real model (numpy.save) and
// the strategy advisor can read them back without a new dependency.
//
// Reads format versions 1.0, 2.0 and 3.0, C order, little-endian '<f4' (and '<f2', '<f8',
// converted to float); every element arrives as float. Anything else is refused with an
// mmattn::Error that names the file and what is wrong: bad magic, unsupported version or dtype,
// Fortran order, a malformed header, truncated or trailing data, a shape other than the one
// expected. bfloat16 has no numpy dtype: save such tensors with `x.astype(np.float32)`.

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "mmattn/config.hpp"
#include "mmattn/tensor_view.hpp"

namespace mmattn {

struct NpyArray {
  std::vector<index_t> shape;  // C order: the last axis varies fastest
  std::string descr;           // the dtype as the file names it, e.g. "<f4"
  std::vector<float> data;     // every element, converted to float

  index_t size() const { return static_cast<index_t>(data.size()); }
  // A [tokens, heads, head_dim] array as the view the kernels take.
  TensorView<const float> view_thd() const {
    MMATTN_REQUIRE(shape.size() == 3, "npy: view_thd needs a 3-d array [tokens, heads, head_dim], got " +
                                          std::to_string(shape.size()) + " dimensions");
    return mmattn::view_thd<const float>(data.data(), shape[0], shape[1], shape[2]);
  }
};

inline std::string npy_shape_string(const std::vector<index_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

namespace detail {

inline constexpr char kNpyMagic[] = "\x93NUMPY";  // 6 bytes, then major and minor version bytes
inline constexpr size_t kNpyMagicSize = 6;

inline bool host_is_little_endian() {
  const std::uint16_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

inline std::uint32_t read_le(const std::string& bytes, size_t at, size_t n) {
  std::uint32_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= std::uint32_t(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
  return v;
}

// The text after `'key':` in the header dict (keys may be quoted either way), up to the end.
inline std::string npy_field(const std::string& header, const std::string& key, const std::string& name) {
  for (const char quote : {'\'', '"'}) {
    const std::string quoted = quote + key + quote;
    const size_t at = header.find(quoted);
    if (at == std::string::npos) continue;
    const size_t colon = header.find(':', at + quoted.size());
    MMATTN_REQUIRE(colon != std::string::npos, "npy: " + name + ": malformed header, no ':' after " + quoted);
    const size_t value = header.find_first_not_of(" \t", colon + 1);
    MMATTN_REQUIRE(value != std::string::npos, "npy: " + name + ": malformed header, no value for " + quoted);
    return header.substr(value);
  }
  detail::fail("npy: " + name + ": malformed header, no '" + key + "' in " + header);
}

inline std::vector<index_t> parse_npy_shape(const std::string& field, const std::string& name) {
  MMATTN_REQUIRE(!field.empty() && field[0] == '(', "npy: " + name + ": malformed shape " + field.substr(0, 40));
  const size_t close = field.find(')');
  MMATTN_REQUIRE(close != std::string::npos, "npy: " + name + ": malformed shape, no ')'");
  std::vector<index_t> shape;
  std::stringstream items(field.substr(1, close - 1));
  for (std::string item; std::getline(items, item, ',');) {
    const size_t a = item.find_first_not_of(" \t\nL"), b = item.find_last_not_of(" \t\nL");
    if (a == std::string::npos) continue;  // "(3,)": nothing after the last comma
    const std::string digits = item.substr(a, b - a + 1);
    MMATTN_REQUIRE(digits.find_first_not_of("0123456789") == std::string::npos && digits.size() < 19,
                   "npy: " + name + ": malformed shape entry '" + digits + "'");
    shape.push_back(std::stoll(digits));
  }
  return shape;
}

// The product of a shape's extents, refused with an error where it overflows or passes 2^40
// elements (4 TiB of floats, beyond any file this reads), so the byte counts derived from it fit
// in index_t. An extent of 0 makes it 0 whatever the others: numpy writes (0, n) for any n.
inline index_t npy_element_count(const std::vector<index_t>& shape, const std::string& what) {
  constexpr index_t kMaxElements = index_t{1} << 40;
  bool empty = false;
  for (const index_t d : shape) {
    MMATTN_REQUIRE(d >= 0, what + ": negative extent in shape " + npy_shape_string(shape));
    empty |= d == 0;
  }
  if (empty) return 0;
  index_t count = 1;
  for (const index_t d : shape)
    MMATTN_REQUIRE(!__builtin_mul_overflow(count, d, &count) && count <= kMaxElements,
                   what + ": shape " + npy_shape_string(shape) + " is too large (more than 2^40 elements)");
  return count;
}

template <class T>
void npy_convert(const char* src, index_t n, float* dst) {
  for (index_t i = 0; i < n; ++i) {
    T x;
    std::memcpy(&x, src + i * static_cast<index_t>(sizeof(T)), sizeof(T));
    dst[i] = static_cast<float>(x);
  }
}

}  // namespace detail

// Parses a whole .npy file held in memory. `name` labels the errors (usually the path).
inline NpyArray parse_npy(const std::string& bytes, const std::string& name = "<memory>") {
  using detail::read_le;
  MMATTN_REQUIRE(bytes.size() >= detail::kNpyMagicSize + 2 &&
                     bytes.compare(0, detail::kNpyMagicSize, detail::kNpyMagic, detail::kNpyMagicSize) == 0,
                 "npy: " + name + ": bad magic, not a .npy file (it must start with \\x93NUMPY)");
  const int major = static_cast<unsigned char>(bytes[6]), minor = static_cast<unsigned char>(bytes[7]);
  MMATTN_REQUIRE(major >= 1 && major <= 3, "npy: " + name + ": unsupported format version " + std::to_string(major) +
                                                "." + std::to_string(minor) + " (1.0, 2.0 and 3.0 are read)");
  const size_t len_bytes = major == 1 ? 2 : 4;  // 1.0: uint16 header length; 2.0 and 3.0: uint32
  MMATTN_REQUIRE(bytes.size() >= 8 + len_bytes, "npy: " + name + ": truncated before the header length");
  const size_t header_len = read_le(bytes, 8, len_bytes), data_at = 8 + len_bytes + header_len;
  MMATTN_REQUIRE(bytes.size() >= data_at, "npy: " + name + ": truncated header (" + std::to_string(header_len) +
                                              " bytes announced, " + std::to_string(bytes.size() - 8 - len_bytes) +
                                              " present)");
  const std::string header = bytes.substr(8 + len_bytes, header_len);

  NpyArray a;
  const std::string descr = detail::npy_field(header, "descr", name);
  MMATTN_REQUIRE(descr.size() >= 2 && (descr[0] == '\'' || descr[0] == '"'),
                 "npy: " + name + ": malformed descr " + descr.substr(0, 20));
  const size_t descr_end = descr.find(descr[0], 1);
  MMATTN_REQUIRE(descr_end != std::string::npos, "npy: " + name + ": malformed descr, no closing quote");
  a.descr = descr.substr(1, descr_end - 1);
  const std::string fortran = detail::npy_field(header, "fortran_order", name);
  MMATTN_REQUIRE(fortran.compare(0, 5, "False") == 0 || fortran.compare(0, 4, "True") == 0,
                 "npy: " + name + ": malformed fortran_order " + fortran.substr(0, 10));
  MMATTN_REQUIRE(fortran.compare(0, 4, "True") != 0,
                 "npy: " + name + ": Fortran-order arrays are not supported; save with np.ascontiguousarray(x)");
  a.shape = detail::parse_npy_shape(detail::npy_field(header, "shape", name), name);

  index_t itemsize = 0;
  if (a.descr == "<f4") itemsize = 4;
  if (a.descr == "<f2") itemsize = 2;
  if (a.descr == "<f8") itemsize = 8;
  MMATTN_REQUIRE(itemsize > 0, "npy: " + name + ": unsupported dtype '" + a.descr +
                                   "' (little-endian float32 '<f4' is read, and '<f2', '<f8' converted)");
  MMATTN_REQUIRE(detail::host_is_little_endian(), "npy: " + name + ": reading needs a little-endian host");

  const index_t count = detail::npy_element_count(a.shape, "npy: " + name);
  const index_t expected = count * itemsize, present = static_cast<index_t>(bytes.size() - data_at);  // <= 2^43
  MMATTN_REQUIRE(present >= expected, "npy: " + name + ": truncated data: shape " + npy_shape_string(a.shape) + " of " +
                                          a.descr + " needs " + std::to_string(expected) + " bytes, the file has " +
                                          std::to_string(present));
  MMATTN_REQUIRE(present == expected, "npy: " + name + ": " + std::to_string(present - expected) +
                                          " bytes after the data of shape " + npy_shape_string(a.shape));
  a.data.resize(static_cast<size_t>(count));
  const char* src = bytes.data() + data_at;
  if (itemsize == 4) detail::npy_convert<float>(src, count, a.data.data());
  if (itemsize == 2) detail::npy_convert<Eigen::half>(src, count, a.data.data());
  if (itemsize == 8) detail::npy_convert<double>(src, count, a.data.data());
  return a;
}

inline NpyArray load_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MMATTN_REQUIRE(f.good(), "npy: cannot open " + path);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return parse_npy(bytes, path);
}

// load_npy, and the shape must be `expected` (an entry of -1 matches any extent).
inline NpyArray load_npy(const std::string& path, const std::vector<index_t>& expected) {
  NpyArray a = load_npy(path);
  bool same = a.shape.size() == expected.size();
  for (size_t i = 0; same && i < expected.size(); ++i) same = expected[i] < 0 || expected[i] == a.shape[i];
  std::string want = npy_shape_string(expected);
  for (size_t at = want.find("-1"); at != std::string::npos; at = want.find("-1")) want.replace(at, 2, "*");
  MMATTN_REQUIRE(same, "npy: " + path + ": shape mismatch: has " + npy_shape_string(a.shape) + ", expected " + want);
  return a;
}

// The header of a version-1.0 file: magic, version, length, dict padded to a multiple of 64
// bytes. Any descr and order may be written, so tests can build files the reader must refuse.
inline std::string npy_header(const std::vector<index_t>& shape, const std::string& descr = "<f4",
                              bool fortran_order = false) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': " + (fortran_order ? "True" : "False") +
                     ", 'shape': " + npy_shape_string(shape) + ", }";
  const size_t unpadded = detail::kNpyMagicSize + 4 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  MMATTN_REQUIRE(dict.size() <= 0xffff, "npy: a header of " + std::to_string(dict.size()) +
                                            " bytes does not fit version 1.0's 16-bit length");
  std::string h(detail::kNpyMagic, detail::kNpyMagicSize);
  h += '\x01';
  h += '\x00';
  h += static_cast<char>(dict.size() & 0xff);
  h += static_cast<char>(dict.size() >> 8);
  return h + dict;
}

// A whole '<f4' file: data holds prod(shape) floats in C order.
inline std::string npy_bytes(const std::vector<index_t>& shape, const float* data) {
  MMATTN_REQUIRE(detail::host_is_little_endian(), "npy: writing needs a little-endian host");
  const index_t count = detail::npy_element_count(shape, "npy: writing");
  std::string out = npy_header(shape);
  if (count > 0) out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(count) * sizeof(float));
  return out;
}

inline void save_npy(const std::string& path, const std::vector<index_t>& shape, const float* data) {
  std::ofstream f(path, std::ios::binary);
  MMATTN_REQUIRE(f.good(), "npy: cannot create " + path);
  const std::string bytes = npy_bytes(shape, data);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  MMATTN_REQUIRE(f.good(), "npy: writing " + path + " failed");
}

}  // namespace mmattn
