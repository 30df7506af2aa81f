# src: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/util.c src/util.h
