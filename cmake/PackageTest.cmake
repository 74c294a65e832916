# ctest's Package.InstallBuildRun (cmake -P): installs the build into a fresh prefix, builds
# examples/train_lora against it as an outside project would (find_package(deltatune)), runs it, and
# checks that the delta it saved loads (`deltatune inspect`). Inputs (-D): BUILD_DIR, SOURCE_DIR,
# WORK_DIR, GENERATOR, CXX_COMPILER, CLI.
function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}${err}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
run_step("install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})

# What consumers get must be relocatable and carry none of the build's own flags.
file(GLOB targets_files ${prefix}/lib*/cmake/deltatune/deltatuneTargets.cmake)
if(NOT targets_files)
  message(FATAL_ERROR "no deltatuneTargets.cmake under ${prefix}")
endif()
file(READ ${targets_files} exported)
foreach(leak -march -mtune -O3 ${SOURCE_DIR} ${BUILD_DIR})
  string(FIND "${exported}" "${leak}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "the exported package leaks '${leak}' to consumers:\n${exported}")
  endif()
endforeach()

run_step("configuring the example" ${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/train_lora -B ${WORK_DIR}/build
         -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
         -DCMAKE_PREFIX_PATH=${prefix})
run_step("building the example" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run_step("running the example" ${WORK_DIR}/build/train_lora ${SOURCE_DIR}/assets/models/bert-mini
         ${SOURCE_DIR}/assets/tasks/sentiment ${WORK_DIR}/run 3 24)
message(STATUS "${step_output}")
run_step("inspecting the saved delta" ${CLI} inspect --model ${SOURCE_DIR}/assets/models/bert-mini
         --delta ${WORK_DIR}/run/delta)
string(FIND "${step_output}" "lora" at)
if(at EQUAL -1)
  message(FATAL_ERROR "inspect does not describe a LoRA delta:\n${step_output}")
endif()
message(STATUS "${step_output}")
