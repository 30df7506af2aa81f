# src/exec: the executor (included by Makefile.am)
libautosp_a_SOURCES += src/exec/exec.h src/exec/internal.h src/exec/exec.c src/exec/walk.c src/exec/state.c \
	src/exec/optim.c src/exec/tier.c
