# ptqCuda.cmake: the Thrust / CUB layers: ptq::thrust_omp and ptq::thrust_cpp (host backends) and ptq::cuda (nvcc).
#
# CCCL (Thrust, CUB, libcu++) ships with the CUDA toolkit (<toolkit>/include/cccl). The
# host-backend targets need only those headers, no GPU and no nvcc; they are created
# when the headers are found (PTQ_CCCL_INCLUDE_DIR, else the toolkit's), otherwise a
# message says why and everything else builds as before. PTQ_ENABLE_CUDA (default ON
# when a CUDA compiler is found; /usr/local/cuda/bin/nvcc is tried when none is on PATH)
# enables the CUDA language and ptq::cuda, for sm_80 and sm_90 unless
# CMAKE_CUDA_ARCHITECTURES says otherwise.

include(CheckLanguage)
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc CACHE FILEPATH "CUDA compiler")
endif()
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  set(PTQ_CUDA_FOUND ON)
else()
  set(PTQ_CUDA_FOUND OFF)
endif()
option(PTQ_ENABLE_CUDA "Build ptq::cuda and the CUDA tests, benchmarks and example code (needs nvcc)" ${PTQ_CUDA_FOUND})

find_package(CUDAToolkit QUIET)
find_path(PTQ_CCCL_INCLUDE_DIR thrust/version.h
          HINTS ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}/include /usr/local/cuda/include
          PATH_SUFFIXES cccl NO_DEFAULT_PATH
          DOC "CCCL headers (Thrust, CUB, libcu++): <CUDA toolkit>/include/cccl")
find_package(OpenMP QUIET)

set(PTQ_THRUST_TARGETS)
if(PTQ_CCCL_INCLUDE_DIR)
  # ptq::thrust_omp (Thrust's OpenMP backend) and ptq::thrust_cpp (sequential): plain C++.
  foreach(backend omp cpp)
    string(TOUPPER ${backend} BACKEND)
    if(backend STREQUAL "omp" AND NOT OpenMP_CXX_FOUND)
      message(STATUS "ptq: no OpenMP for the C++ compiler, so no ptq::thrust_omp")
      continue()
    endif()
    add_library(ptq_thrust_${backend} INTERFACE)
    add_library(ptq::thrust_${backend} ALIAS ptq_thrust_${backend})
    set_target_properties(ptq_thrust_${backend} PROPERTIES EXPORT_NAME thrust_${backend})
    target_include_directories(ptq_thrust_${backend} SYSTEM INTERFACE ${PTQ_CCCL_INCLUDE_DIR})
    target_compile_definitions(ptq_thrust_${backend} INTERFACE THRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_${BACKEND})
    target_link_libraries(ptq_thrust_${backend} INTERFACE ptq)
    if(backend STREQUAL "omp")
      target_link_libraries(ptq_thrust_omp INTERFACE OpenMP::OpenMP_CXX)
    endif()
    list(APPEND PTQ_THRUST_TARGETS ptq_thrust_${backend})
  endforeach()
  message(STATUS "ptq: Thrust host backends (${PTQ_THRUST_TARGETS}) with CCCL from ${PTQ_CCCL_INCLUDE_DIR}")
else()
  message(STATUS "ptq: CCCL headers (thrust/version.h) not found (no CUDA toolkit; set PTQ_CCCL_INCLUDE_DIR): "
                 "no ptq::thrust_omp / ptq::thrust_cpp, their tests and benchmarks")
endif()

if(PTQ_ENABLE_CUDA)
  if(NOT PTQ_CUDA_FOUND)
    message(FATAL_ERROR "PTQ_ENABLE_CUDA is ON but no CUDA compiler was found: set CMAKE_CUDA_COMPILER "
                        "(e.g. /usr/local/cuda/bin/nvcc) or configure with -DPTQ_ENABLE_CUDA=OFF")
  endif()
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures of ptq's CUDA programs")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  add_library(ptq_cuda INTERFACE)
  add_library(ptq::cuda ALIAS ptq_cuda)
  set_target_properties(ptq_cuda PROPERTIES EXPORT_NAME cuda)
  target_link_libraries(ptq_cuda INTERFACE ptq CUDA::cudart)
  # Eigen's headers under nvcc call constexpr host functions from host/device code.
  target_compile_options(ptq_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -diag-suppress=20012>)
  list(APPEND PTQ_THRUST_TARGETS ptq_cuda)
  message(STATUS "ptq: CUDA enabled (${CMAKE_CUDA_COMPILER}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "ptq: CUDA disabled (PTQ_ENABLE_CUDA=OFF or no nvcc): no ptq::cuda, GPU tests or benchmarks")
endif()
