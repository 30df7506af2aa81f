# src/plan: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/plan/plan.h src/plan/passes.h src/plan/sp.c src/plan/graphcost.c src/plan/sac.c \
	src/plan/memplan.c src/plan/explain.c src/plan/plan.c
check_PROGRAMS += tests/test_plan
TESTS += tests/test_plan
tests_test_plan_SOURCES = tests/test_plan.c
tests_test_plan_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_plan_LDADD = $(ASP_TEST_LIBS)
