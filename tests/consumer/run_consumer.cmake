# cmake -P script run by ctest. Builds and runs tests/consumer in WORK_DIR, either against
# a copy of mmattn installed from MMATTN_BINARY_DIR or with MMATTN_SOURCE_DIR added as a subdirectory.
# Inputs: CONSUMER_DIR WORK_DIR GENERATOR CXX_COMPILER MMATTN_VERSION, and MMATTN_BINARY_DIR or MMATTN_SOURCE_DIR.

function(run)
  string(JOIN " " cmd ${ARGN})
  message(STATUS "> ${cmd}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${cmd}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR}) # no cache or prefix left from an earlier run
set(args -S ${CONSUMER_DIR} -B ${WORK_DIR}/build -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
if(DEFINED MMATTN_BINARY_DIR)
  run(${CMAKE_COMMAND} --install ${MMATTN_BINARY_DIR} --prefix ${WORK_DIR}/prefix)
  list(APPEND args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DMMATTN_VERSION=${MMATTN_VERSION})
else()
  list(APPEND args -DMMATTN_SOURCE_DIR=${MMATTN_SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} ${args})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
