# ptqDependencies.cmake: find ptq's required dependencies, naming the Debian package when one is missing.
find_package(Eigen3 3.4 QUIET NO_MODULE)
if(NOT TARGET Eigen3::Eigen)
  message(FATAL_ERROR "ptq needs Eigen 3.4 (Eigen3Config.cmake not found). "
                      "On Debian/Ubuntu: apt-get install libeigen3-dev")
endif()
find_package(Boost 1.74 QUIET CONFIG)
if(NOT TARGET Boost::headers)
  message(FATAL_ERROR "ptq needs the Boost headers >= 1.74 (Boost.Math). "
                      "On Debian/Ubuntu: apt-get install libboost-dev")
endif()
