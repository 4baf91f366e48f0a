// npz.hpp: read and write NumPy .npz archives (numpy.savez and numpy.savez_compressed) through libzip.
//
// An .npz is a zip archive whose members are "<key>.npy" files, stored (savez) or
// deflated (savez_compressed). read_npz returns every member as key -> array, the key
// being the member name without ".npy" ("arr_0", ... for positional arguments).
// Each member is parsed by npy.hpp's rules (dtypes, byte order, Fortran order,
// exact data size) and streamed straight into its array's storage, read to the end
// so that libzip checks its CRC-32. parse_npz does the same for an archive held in memory
// (libzip's buffer source; what the fuzz target fuzz_npz drives).
//
// Errors are ptq::error naming the file and, for a member, the key, e.g.
//   "ptq::io::read_npz: w.npz (key 'conv1'): unsupported dtype '<c8' (...)"
//   "ptq::io::read_npz: w.npz (key 'fc'): zip read error: CRC error"
// for: a missing or non-zip file, a member not named *.npy (directories included), an
// encrypted member, duplicate keys, a member whose declared size is impossible for its
// compressed size, a corrupt member (CRC or deflate error), and any .npy error.
// npz_file::at / get() report a missing key with the file, the key and the keys there are.
//
// write_npz writes what numpy.savez writes: one stored (uncompressed) "<key>.npy" member
// per array, in key order, each in write_npy's format; with compress = true what
// numpy.savez_compressed writes (deflated members, level 9). The archive is written to
// "<path>.tmp" and renamed over `path` only when complete, so a failure never leaves a
// partial file at `path`. An empty key, or an I/O or libzip failure, is a ptq::error
// naming the path (and the key).
#pragma once

#include <zip.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "npy.hpp"

namespace ptq::io {

namespace detail {
struct zip_closer {
  void operator()(zip_t* z) const { zip_discard(z); }
  void operator()(zip_file_t* f) const { zip_fclose(f); }
};
}  // namespace detail

namespace detail {
[[noreturn]] inline void fail_zip_open(const char* where, const std::string& path, int code) {
  zip_error_t e;
  zip_error_init_with_code(&e, code);
  const std::string what = zip_error_strerror(&e);
  zip_error_fini(&e);
  ptq::detail::fail(where, path, ": cannot open as a zip archive: ", what,
                    code == ZIP_ER_EXISTS ? " (two members have the same name)" : "");
}

// Every member of an open archive; `path` names it in errors.
inline std::map<std::string, array> read_npz_members(zip_t* archive, const std::string& path, const char* where) {
  std::unique_ptr<zip_t, detail::zip_closer> z(archive);
  std::map<std::string, array> out;
  const zip_int64_t count = zip_get_num_entries(z.get(), 0);
  for (zip_int64_t i = 0; i < count; ++i) {
    const auto idx = static_cast<zip_uint64_t>(i);
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(z.get(), idx, 0, &st) != 0 || !(st.valid & ZIP_STAT_NAME))
      ptq::detail::fail(where, path, ": member ", i, ": cannot read its directory entry: ", zip_strerror(z.get()));
    const std::string member = st.name;
    const std::string shown = detail::printable(member.data(), member.size());
    if (member.size() < 4 || member.compare(member.size() - 4, 4, ".npy") != 0)
      ptq::detail::fail(where, path, ": member '", shown,
                        "' is not a .npy file (an .npz holds only <key>.npy members)");
    const std::string key = member.substr(0, member.size() - 4);
    const std::string name = path + " (key '" + detail::printable(key.data(), key.size()) + "')";
    if (out.count(key))
      ptq::detail::fail(where, name, ": duplicate member '", shown, "' (two members have the same name)");
    if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE)
      ptq::detail::fail(where, name, ": the member is encrypted");
    if (!(st.valid & ZIP_STAT_SIZE) || !(st.valid & ZIP_STAT_COMP_SIZE))
      ptq::detail::fail(where, name, ": the member's sizes are unknown");
    // A stored member is its own size; deflate expands at most ~1032:1. Checked before
    // anything is allocated from the declared size.
    const bool stored = (st.valid & ZIP_STAT_COMP_METHOD) && st.comp_method == ZIP_CM_STORE;
    if (stored ? st.size != st.comp_size : st.size / 1100 > st.comp_size + 64)
      ptq::detail::fail(where, name, ": the declared size ", st.size, " is impossible for ", st.comp_size,
                        " compressed bytes", stored ? " (stored member)" : "");

    std::unique_ptr<zip_file_t, detail::zip_closer> f(zip_fopen_index(z.get(), idx, 0));
    if (!f) ptq::detail::fail(where, name, ": cannot open the member: ", zip_strerror(z.get()));
    auto read = [&](void* dst, std::size_t n) {
      std::size_t got = 0;
      while (got < n) {
        const zip_int64_t k = zip_fread(f.get(), static_cast<char*>(dst) + got, n - got);
        if (k < 0) ptq::detail::fail(where, name, ": zip read error: ", zip_file_strerror(f.get()));
        if (k == 0) break;
        got += static_cast<std::size_t>(k);
      }
      return got;
    };
    array a = detail::npy_access::parse(read, st.size, name, where);
    // Read to the end: libzip checks the CRC there, and nothing may follow the data.
    char extra;
    if (read(&extra, 1) != 0) ptq::detail::fail(where, name, ": the member has more bytes than it declares");
    out.emplace(key, std::move(a));
  }
  return out;
}
}  // namespace detail

// Every array of the .npz at `path`, by key (member name without ".npy").
inline std::map<std::string, array> read_npz(const std::string& path) {
  constexpr const char* where = "ptq::io::read_npz";
  int code = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
  if (!z) detail::fail_zip_open(where, path, code);
  return detail::read_npz_members(z, path, where);
}

// The same for a whole .npz held in memory (`size` bytes at `bytes`, not copied, only
// read during the call); `name` names it in error messages.
inline std::map<std::string, array> parse_npz(const void* bytes, std::size_t size, const std::string& name) {
  constexpr const char* where = "ptq::io::parse_npz";
  ptq::detail::require(bytes != nullptr || size == 0, where, name, ": bytes is null");
  // libzip opens an empty buffer as a new, empty archive; an empty file is refused (as read_npz does).
  ptq::detail::require(size > 0, where, name, ": cannot open as a zip archive: Not a zip archive (0 bytes)");
  zip_error_t e;
  zip_error_init(&e);
  zip_source_t* src = zip_source_buffer_create(bytes, size, 0, &e);
  if (!src) {
    const std::string what = zip_error_strerror(&e);
    zip_error_fini(&e);
    ptq::detail::fail(where, name, ": cannot read the bytes: ", what);
  }
  zip_t* z = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &e);
  if (!z) {
    zip_source_free(src);
    const int code = zip_error_code_zip(&e);
    zip_error_fini(&e);
    detail::fail_zip_open(where, name, code);
  }
  zip_error_fini(&e);
  return detail::read_npz_members(z, name, where);
}

// Writes `arrays` as an .npz at `path` (see the top of this file).
inline void write_npz(const std::string& path, const std::map<std::string, array>& arrays, bool compress = false) {
  constexpr const char* where = "ptq::io::write_npz";
  std::vector<std::string> members;  // the .npy bytes; libzip reads them at zip_close
  members.reserve(arrays.size());
  for (const auto& [key, a] : arrays) {
    ptq::detail::require(!key.empty(), where, path, ": an array has an empty key");
    std::string m = detail::npy_header_bytes(a.type(), a.shape());
    const std::size_t at = m.size();
    m.resize(at + a.nbytes());
    if (a.nbytes()) std::memcpy(&m[at], a.bytes(), a.nbytes());
    if (!detail::host_is_little_endian() && itemsize(a.type()) > 1)
      detail::npy_access::swap_bytes(reinterpret_cast<unsigned char*>(&m[at]), static_cast<std::size_t>(a.size()),
                                     itemsize(a.type()));
    members.push_back(std::move(m));
  }
  const std::string tmp = path + ".tmp";
  int code = 0;
  zip_t* z = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  if (!z) detail::fail_zip_open(where, tmp, code);
  std::unique_ptr<zip_t, detail::zip_closer> guard(z);
  std::size_t i = 0;
  for (const auto& kv : arrays) {
    const std::string& m = members[i++];
    zip_source_t* src = zip_source_buffer(z, m.data(), m.size(), 0);
    const zip_int64_t idx = src ? zip_file_add(z, (kv.first + ".npy").c_str(), src, ZIP_FL_ENC_UTF_8) : -1;
    if (idx < 0) {
      if (src) zip_source_free(src);
      ptq::detail::fail(where, path, " (key '", kv.first, "'): cannot add the member: ", zip_strerror(z));
    }
    if (zip_set_file_compression(z, static_cast<zip_uint64_t>(idx), compress ? ZIP_CM_DEFLATE : ZIP_CM_STORE,
                                 compress ? 9 : 0) != 0)
      ptq::detail::fail(where, path, " (key '", kv.first, "'): ", zip_strerror(z));
  }
  if (zip_close(z) != 0) {
    const std::string what = zip_strerror(z);
    std::remove(tmp.c_str());
    ptq::detail::fail(where, path, ": cannot write ", tmp, ": ", what);
  }
  guard.release();  // zip_close freed it
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    ptq::detail::fail(where, path, ": cannot rename ", tmp, " to it");
  }
}

// arrays.at(key), or a ptq::error naming `file`, the key and the keys there are.
inline const array& get(const std::map<std::string, array>& arrays, const std::string& key, const std::string& file) {
  const auto it = arrays.find(key);
  if (it == arrays.end()) {
    std::string keys;
    for (const auto& kv : arrays) keys += (keys.empty() ? "'" : ", '") + kv.first + "'";
    ptq::detail::fail("ptq::io::get", file, ": no key '", key, "' (keys: ", keys.empty() ? "none" : keys, ")");
  }
  return it->second;
}

// An .npz read whole at construction; at(key) throws naming the file and the key.
class npz_file {
 public:
  explicit npz_file(const std::string& path) : path_(path), arrays_(read_npz(path)) {}

  const array& at(const std::string& key) const { return get(arrays_, key, path_); }
  bool contains(const std::string& key) const { return arrays_.count(key) != 0; }
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    for (const auto& kv : arrays_) k.push_back(kv.first);
    return k;
  }
  const std::map<std::string, array>& arrays() const { return arrays_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::map<std::string, array> arrays_;
};

}  // namespace ptq::io
