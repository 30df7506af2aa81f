# src: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/util.c src/util.h
libautosp_a_SOURCES += src/exec.c src/exec.h src/train.c src/train.h src/dtype.h src/backend.h src/data.h
