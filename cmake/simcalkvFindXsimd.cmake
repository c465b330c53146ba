# Debian 12's xsimd target lists "xtl" as a link dependency without finding it; xsimd only needs
# xtl for its optional xtl::xcomplex support, which simcalkv does not use. Use xtl's own package
# when present, and otherwise stand in an empty target so that nothing links "-lxtl".
if(NOT TARGET xtl)
  find_package(xtl QUIET)
  if(NOT TARGET xtl)
    add_library(xtl INTERFACE IMPORTED)
  endif()
endif()
find_package(xsimd 8.1 REQUIRED)
