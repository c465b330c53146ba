# Fails unless every object of simcalkv::dispatch defines only code of its own architecture.
#
# Each src/kernels_<arch>.cpp is compiled with that architecture's flags. An inline function or
# template instantiation it emits (a weak symbol) that is not tagged with the architecture, such
# as std::vector<float>::resize or a non-template helper, would also be emitted by the program's
# other translation units under the same name; the linker keeps one copy, possibly the AVX-512
# one, and a CPU without AVX-512 would then crash in code that never asked for it. So every weak
# symbol of kernels_<arch>.cpp.o must name the architecture's xsimd type.
#   cmake -DNM=nm -DLIB=libsimcalkv_dispatch.a -P check_variant_symbols.cmake
execute_process(COMMAND ${NM} -C --defined-only ${LIB} OUTPUT_VARIABLE listing RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} failed on ${LIB}")
endif()
set(tag_sse2 "xsimd::sse2")
set(tag_avx2 "xsimd::fma3<xsimd::avx2>")
set(tag_avx512 "xsimd::avx512bw")
set(tag_neon64 "xsimd::neon64")
string(REPLACE "\n" ";" lines "${listing}")
set(object "")
set(bad "")
set(objects 0)
set(checked 0)
foreach(line IN LISTS lines)
  if(line MATCHES "^kernels_([a-z0-9]+)\\.cpp\\.o:$")
    set(object ${CMAKE_MATCH_1})
    math(EXPR objects "${objects} + 1")
  elseif(line MATCHES "^[0-9a-f]+ [WVu] (.*)$")
    set(symbol "${CMAKE_MATCH_1}")
    math(EXPR checked "${checked} + 1")
    string(FIND "${symbol}" "${tag_${object}}" at)
    # The personality routine's reference and xsimd's NEON reinterpret wrappers (one NEON variant
    # only, so nothing else defines them differently) carry no architecture.
    if(at EQUAL -1 AND NOT symbol STREQUAL "DW.ref.__gxx_personality_v0" AND NOT symbol MATCHES "^xsimd::kernel::wrap::")
      string(APPEND bad "\n  kernels_${object}.cpp.o: ${symbol}")
    endif()
  endif()
endforeach()
if(objects EQUAL 0)
  message(FATAL_ERROR "no kernels_<arch>.cpp.o objects in ${LIB}")
endif()
if(bad)
  message(FATAL_ERROR "simcalkv::dispatch emits code not tagged with its architecture (an ODR hazard):${bad}")
endif()
message(STATUS "${objects} kernel variant objects, ${checked} weak symbols, all tagged with their architecture")
