// io_test_util.hpp: scratch directories, whole-file I/O and numpy's python for the I/O tests.
#pragma once

#include <doctest/doctest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifndef PTQ_PYTHON
#define PTQ_PYTHON "/usr/bin/python3"
#endif

namespace ptq_io_test {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
struct temp_dir {
  std::string path;
  temp_dir() {
    const char* t = std::getenv("TMPDIR");
    std::string templ = std::string(t && *t ? t : "/tmp") + "/ptq_io_XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    REQUIRE(mkdtemp(buf.data()) != nullptr);
    path = buf.data();
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string operator/(const std::string& f) const { return path + "/" + f; }
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

inline doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }

// Runs `script` (written into dir) with numpy's python and `args`; returns what it printed.
// A missing python or numpy, or any failure of the script, FAILS the test.
inline std::string run_python(const temp_dir& dir, const std::string& script, const std::string& args) {
  spit(dir / "script.py", script);
  const std::string out = dir / "python.out";
  const std::string cmd = std::string(PTQ_PYTHON) + " " + (dir / "script.py") + " " + args + " > " + out + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string text = slurp(out);
  INFO("python output:\n" << text);
  REQUIRE(rc == 0);
  return text;
}

}  // namespace ptq_io_test
