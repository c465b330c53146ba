# The header layers of include/simcalkv (docs/design.md), checked on every test run:
#  - the core (everything but io/ and cuda/) includes no nlohmann-json, no mmap and nothing of io/;
#  - kernels/ includes no policy header (policy.hpp, stages.hpp, policies/);
#  - core.hpp (the light umbrella) does not include the registry;
#  - a policy includes another policy only where it runs that policy's stages (PyramidKV: SnapKV);
#  - the CUDA headers share with the CPU library only its plain headers (options.hpp, plan_view.hpp,
#    page_table.hpp), which include nothing of the library: one plan type and one paged addressing
#    serve both sides.
# Usage: cmake -DROOT=<include/simcalkv> -P check_header_layers.cmake
file(GLOB_RECURSE headers RELATIVE ${ROOT} ${ROOT}/*.hpp)
set(problems "")
foreach(h IN LISTS headers)
  if(h MATCHES "^(io|cuda)/")
    continue()
  endif()
  file(STRINGS ${ROOT}/${h} includes REGEX "^#include")
  foreach(line IN LISTS includes)
    if(line MATCHES "nlohmann|sys/mman.h|simcalkv/io/")
      string(APPEND problems "  ${h}: the core must not need io's dependencies: ${line}\n")
    endif()
    if(h STREQUAL "core.hpp" AND line MATCHES "simcalkv/registry\\.hpp")
      string(APPEND problems "  core.hpp: the light umbrella must not pull in the registry (every policy): ${line}\n")
    endif()
    if(h MATCHES "^kernels/" AND line MATCHES "simcalkv/(policy|stages)\\.hpp|simcalkv/policies/")
      string(APPEND problems "  ${h}: a kernel must not include policy code: ${line}\n")
    endif()
    if(h MATCHES "^policies/" AND line MATCHES "simcalkv/policies/([a-z_]+)\\.hpp")
      set(target ${CMAKE_MATCH_1})
      if(NOT (target STREQUAL "match" OR (h STREQUAL "policies/pyramidkv.hpp" AND target STREQUAL "snapkv")))
        string(APPEND problems "  ${h}: includes another policy's header: ${line}\n")
      endif()
    endif()
  endforeach()
endforeach()
file(GLOB cuda_headers RELATIVE ${ROOT} ${ROOT}/cuda/*.cuh ${ROOT}/cuda/*/*.cuh)
foreach(h IN LISTS cuda_headers plan_view.hpp page_table.hpp)
  file(STRINGS ${ROOT}/${h} includes REGEX "^#include \"simcalkv/")
  foreach(line IN LISTS includes)
    if(NOT line MATCHES "simcalkv/(cuda/|options\\.hpp|plan_view\\.hpp|page_table\\.hpp)" OR (h MATCHES "^(plan_view|page_table)\\.hpp$"))
      string(APPEND problems "  ${h}: shares more than the plain headers with the CPU library: ${line}\n")
    endif()
  endforeach()
endforeach()
if(problems)
  message(FATAL_ERROR "header layering broken:\n${problems}")
endif()
list(LENGTH headers count)
message(STATUS "header layers hold over ${count} headers")
