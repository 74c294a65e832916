# `cmake --install build --prefix P` lays out P/include/deltatune, P/lib/libdeltatune.*, P/bin/deltatune
# and P/lib/cmake/deltatune, so that an outside project can write
#   find_package(deltatune REQUIRED)   target_link_libraries(app PRIVATE deltatune::deltatune)
include(CMakePackageConfigHelpers)
set(DELTATUNE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/deltatune)

install(TARGETS deltatune EXPORT deltatuneTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS deltatune_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/deltatune DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT deltatuneTargets NAMESPACE deltatune:: DESTINATION ${DELTATUNE_CMAKE_DIR})

if(DELTATUNE_SHARED)
  set(DELTATUNE_STATIC_LIBRARY OFF)
else()
  set(DELTATUNE_STATIC_LIBRARY ON)
endif()
set(DELTATUNE_WITH_CUDA ${DELTATUNE_CUDA})
configure_package_config_file(cmake/deltatuneConfig.cmake.in ${PROJECT_BINARY_DIR}/deltatuneConfig.cmake
                              INSTALL_DESTINATION ${DELTATUNE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/deltatuneConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/deltatuneConfig.cmake ${PROJECT_BINARY_DIR}/deltatuneConfigVersion.cmake
              cmake/deltatunePrivateDeps.cmake
        DESTINATION ${DELTATUNE_CMAKE_DIR})
