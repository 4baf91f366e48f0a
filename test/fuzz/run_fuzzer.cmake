# run_fuzzer.cmake: runs one libFuzzer target over a scratch copy of its seed corpus for a bounded time.
# cmake -DFUZZER=exe -DSEEDS=dir -DSCRATCH=dir -DSECONDS=n -DSECONDS_CI=n -P run_fuzzer.cmake
# The repository's corpus is only read; new inputs go to SCRATCH (emptied first). Fails on
# any finding (crash, sanitizer report, leak, timeout > 10 s per input, more than 2 GB RSS).
if("$ENV{CI}" STREQUAL "true")
  set(SECONDS ${SECONDS_CI})
endif()
file(REMOVE_RECURSE ${SCRATCH})
file(MAKE_DIRECTORY ${SCRATCH}/corpus ${SCRATCH}/artifacts)
file(GLOB seeds ${SEEDS}/*)
if(NOT seeds)
  message(FATAL_ERROR "no seed inputs in ${SEEDS}")
endif()
file(COPY ${seeds} DESTINATION ${SCRATCH}/corpus)
execute_process(COMMAND ${FUZZER} -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
                        -artifact_prefix=${SCRATCH}/artifacts/ ${SCRATCH}/corpus
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(GLOB found ${SCRATCH}/artifacts/*)
  message(FATAL_ERROR "${FUZZER} exited with ${rc}; the input is in: ${found}")
endif()
